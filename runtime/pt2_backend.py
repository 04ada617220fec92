"""torch.export backend (.pt2): torch.export.load, metadata from the archive's extra file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from runtime.base import Backend, check_metadata
from runtime.errors import ModelError

METADATA_FILE = "fmnist_deploy.json"


class Pt2Backend(Backend):
    name = "pt2"
    suffixes = (".pt2",)

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch

        from runtime.torch_common import torch_device

        self._device = torch_device(device)
        extra = {METADATA_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except (RuntimeError, ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{path}: torch.export.load cannot read it ({str(exc).strip().splitlines()[0][:200]})") from None
        if self._device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self._device)
        self.module = program.module()
        self.device = device
        self.metadata = check_metadata(json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}, str(path))

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from runtime.torch_common import run_torch

        return run_torch(self.module, images, self._device)
