"""The one interface every exported format implements; the table of formats comes from the registry.

A format is a module with a NAME and four functions (a kind made from another kind's file, such
as int8 or the ONNX Runtime format, writes with `derive` instead of `export`); which module
exports which kind, its suffix, whether it is portable or native code, is declared once in
`fmnist_deploy.kinds`. The export API and the gate dispatch through FORMATS only, as the runtime
dispatches through its BACKENDS.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import torch

from fmnist_deploy.errors import ModelError
from fmnist_deploy.export.checks import Check, Runner
from fmnist_deploy.kinds import exported_kinds, kind_named


class ExportFormat(Protocol):
    """What the export API and the gate need of a format."""

    NAME: str  # its kind in fmnist_deploy.kinds

    def export(
        self, module: torch.nn.Module, path: Path, meta: dict[str, Any], *, opset: int | None = None
    ) -> dict[str, Any]:
        """Write `module` (a Deployable) to `path` with `meta` inside; return the metadata as written,
        completed with what the exporter did (format, exporter versions, folding, opset).
        A kind made from another kind's file has `derive(source, path) -> metadata` instead."""
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


FORMATS: dict[str, ExportFormat] = {k.name: importlib.import_module(k.exporter) for k in exported_kinds()}  # type: ignore[misc]


def format_of(path: Path) -> str:
    """The format a file's name says it is (`.onnx`, `.torchscript`, `.pt2`, `.aoti.pt2`, ...): the longest suffix wins."""
    kind = kind_named(path)
    if kind is None or kind.name not in FORMATS:
        known = ", ".join(k.suffix for k in exported_kinds() if not k.folder)
        raise ModelError(f"{path}: unknown model file type; expected one of {known}")
    return kind.name
