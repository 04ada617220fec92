"""torch.export backend (.pt2): torch.export.load, metadata from the archive's extra file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmnist_deploy import kinds
from fmnist_deploy.contract import ARCHIVE_METADATA
from fmnist_deploy.integrity import inspect_pt2
from fmnist_deploy.runtime.base import TorchBackend
from fmnist_deploy.runtime.metadata import archive_metadata


class Pt2Backend(TorchBackend):
    """An ExportedProgram read with `torch.export.load`, moved to the device, run as a module."""

    name = "pt2"
    platform = "torch_export"
    reader = "torch.export.load"

    def _load(self, path: Path, data: bytes, device: Any) -> tuple[Any, dict[str, Any]]:
        import io
        import zipfile

        import torch

        from fmnist_deploy.errors import quiet_logger

        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise ValueError("not a zip archive")  # reported with what the file looks like instead
        if kinds.sniff(path) is kinds.KIND["aoti"]:  # never opened: loading one runs its compiled code
            raise ValueError("not an ExportedProgram archive")
        # Before torch sees it: torch.export.load unpickles sample_inputs without restrictions and hands
        # the graph's size expressions to sympy, which evaluates them.
        inspect_pt2(path, data)
        extra = {ARCHIVE_METADATA: ""}
        # torch.export.load logs a full traceback for a file it cannot read, then raises; the backend
        # reports that error in one line instead.
        with quiet_logger("torch.export"):
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        return program.module(), archive_metadata(extra, str(path))
