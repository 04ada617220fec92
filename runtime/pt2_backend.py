"""torch.export backend (.pt2): torch.export.load, metadata from the archive's extra file."""

from __future__ import annotations

import zipfile
from pathlib import Path

from runtime.base import ARCHIVE_METADATA, TorchBackend, archive_metadata
from runtime.errors import ModelError, first_line


class Pt2Backend(TorchBackend):
    name = "pt2"
    suffixes = (".pt2",)

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch

        from runtime.torch_common import torch_device

        self.torch_device = torch_device(device)
        extra = {ARCHIVE_METADATA: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except (RuntimeError, ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{path}: torch.export.load cannot read it ({first_line(exc)})") from None
        if self.torch_device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.torch_device)
        self.module = program.module()
        self.device = device
        self.metadata = archive_metadata(extra, str(path))
