"""TorchScript backend (.torchscript): torch.jit.load, metadata from the archive's extra file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmnist_deploy.contract import ARCHIVE_METADATA
from fmnist_deploy.runtime.base import TorchBackend
from fmnist_deploy.runtime.metadata import archive_metadata


class TorchScriptBackend(TorchBackend):
    """A scripted module read with `torch.jit.load`."""

    name = "torchscript"
    platform = "pytorch_libtorch"  # as Triton names it
    reader = "torch.jit.load"

    def _load(self, path: Path, data: bytes, device: Any) -> tuple[Any, dict[str, Any]]:
        import io

        import torch

        extra = {ARCHIVE_METADATA: ""}
        module = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra)
        return module.eval(), archive_metadata(extra, str(path))
