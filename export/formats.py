"""The one interface every exported format implements, and the table of formats.

A format is a module with a NAME, a SUFFIX and four functions; the export API and the
gate dispatch through FORMATS only, as the runtime dispatches through its BACKENDS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from fmnist_deploy.export import aoti_format, onnx_format, pt2_format, torchscript_format
from fmnist_deploy.export.checks import Check, Runner


class ExportFormat(Protocol):
    """What the export API and the gate need of a format."""

    NAME: str
    SUFFIX: str
    PORTABLE: bool  # runs on any machine (False: compiled for this one; left out of --format all)
    NATIVE_CODE: bool  # loading the file runs code from it (the gate then needs trust)

    def export(
        self, module: torch.nn.Module, path: Path, meta: dict[str, Any], *, opset: int | None = None
    ) -> dict[str, Any]:
        """Write `module` (a Deployable) to `path` with `meta` inside; return the metadata as written,
        completed with what the exporter did (format, exporter versions, folding, opset)."""
        ...

    def read_metadata(self, path: Path) -> dict[str, Any]:
        """The metadata stored inside the file."""
        ...

    def structure_checks(self, path: Path, expected_opset: int | None) -> list[Check]:
        """Checks of the file's structure against the contract (names, shapes, no training nodes, ...)."""
        ...

    def runners(self, path: Path) -> dict[str, Runner]:
        """Labelled ways of running the file: uint8 (N, 28, 28) -> logits, probabilities."""
        ...


FORMATS: dict[str, ExportFormat] = {m.NAME: m for m in (onnx_format, torchscript_format, pt2_format, aoti_format)}


def format_of(path: Path) -> str:
    """The format a file's name says it is (`.onnx`, `.torchscript`, `.pt2`, `.aoti.pt2`): the longest suffix wins."""
    for name, fmt in sorted(FORMATS.items(), key=lambda item: -len(item[1].SUFFIX)):
        if path.name.endswith(fmt.SUFFIX):
            return name
    known = ", ".join(f.SUFFIX for f in FORMATS.values())
    raise ValueError(f"{path}: unknown model file type; expected one of {known}")
