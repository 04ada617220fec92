"""TorchScript backend (.torchscript): torch.jit.load, metadata from the archive's extra file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.base import Backend, check_metadata
from runtime.errors import ModelError

METADATA_FILE = "fmnist_deploy.json"


class TorchScriptBackend(Backend):
    name = "torchscript"
    suffixes = (".torchscript",)

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch

        from runtime.torch_common import torch_device

        self._device = torch_device(device)
        extra = {METADATA_FILE: ""}
        try:
            self.module = torch.jit.load(str(path), map_location=self._device, _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"{path}: torch.jit.load cannot read it ({str(exc).strip().splitlines()[0][:200]})") from None
        self.module.eval()
        self.device = device
        self.metadata = check_metadata(json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}, str(path))

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from runtime.torch_common import run_torch

        return run_torch(self.module, images, self._device)
