"""TorchScript backend (.torchscript): torch.jit.load, metadata from the archive's extra file."""

from __future__ import annotations

from pathlib import Path

from runtime.base import ARCHIVE_METADATA, TorchBackend, archive_metadata
from runtime.errors import ModelError, first_line


class TorchScriptBackend(TorchBackend):
    name = "torchscript"
    suffixes = (".torchscript",)

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch

        from runtime.torch_common import torch_device

        self.torch_device = torch_device(device)
        extra = {ARCHIVE_METADATA: ""}
        try:
            self.module = torch.jit.load(str(path), map_location=self.torch_device, _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"{path}: torch.jit.load cannot read it ({first_line(exc)})") from None
        self.module.eval()
        self.device = device
        self.metadata = archive_metadata(extra, str(path))
