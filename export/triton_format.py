"""triton: a Triton model repository (a folder) around the gated ONNX file, with a KServe manifest.

Made from the gated ONNX file (its kind's `source`) as int8 and ort are, but a folder: `derive` lays out
`<repository>/fmnist_mlp/` (config.pbtxt, labels.txt, 1/model.onnx and its sidecar) and
`<repository>/inferenceservice.yaml` (`export/triton_repository.py`), where `path` is the model folder,
so `fmnist-export --format triton --output REPOSITORY` writes the repository into REPOSITORY itself.
Its model is the ONNX file's bytes: it is read and run as that file; its own checks are the repository's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmnist_deploy.contract import sidecar_path
from fmnist_deploy.export import onnx_format
from fmnist_deploy.export.checks import Check, Runner
from fmnist_deploy.export.triton_repository import VERSION, check_repository, write_repository

NAME = "triton"


def model_file(path: Path) -> Path:
    """The ONNX file inside the model folder `path`."""
    return path / VERSION / "model.onnx"


def derive(source: Path, path: Path) -> dict[str, Any]:
    """Lay out the repository `path.parent` around a copy of the gated ONNX file `source` (and its sidecar)."""
    write_repository(source, path.parent)
    return onnx_format.read_metadata(model_file(path))


def written(path: Path) -> list[Path]:
    """Every file the repository holds, as `derive` wrote them."""
    return [
        path / "config.pbtxt",
        path / "labels.txt",
        model_file(path),
        sidecar_path(model_file(path)),
        path.parent / "inferenceservice.yaml",
    ]


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata inside the repository's ONNX file."""
    return onnx_format.read_metadata(model_file(path))


def structure_checks(path: Path, expected_opset: int | None) -> list[Check]:
    """The repository's checks: config.pbtxt parsed as Triton's ModelConfig, its fields, labels, the model file
    (the ONNX file inside it is the gated file's copy: its own checks ran on that file)."""
    return [Check(name, ok, detail) for name, ok, detail in check_repository(path.parent)]


def runners(path: Path) -> dict[str, Runner]:
    """The repository's ONNX file run as any ONNX file is."""
    return onnx_format.runners(model_file(path))
