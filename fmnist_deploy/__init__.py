"""fmnist-deploy: the course's Fashion-MNIST network, trained exactly, exported, run and measured.

    from fmnist_deploy import load
    predictor = load("fmnist_mlp.onnx")          # ONNX Runtime; torch is never imported
    prediction = predictor.predict(images)       # uint8 [N,28,28] raw pixels
    prediction.labels, prediction.top_k(3)

Where the code lives: the stage packages are folders at the top of the repository, mapped
under this namespace by `pyproject.toml`'s `package-dir` table: `fmnist_deploy.training` is
`training/`, `.export` is `export/`, `.runtime` is `runtime/`, `.benchmarks` is `benchmarks/`,
`.scaleout` is `scaleout/`, `.serving` is `serving/`. This folder (`fmnist_deploy/`) is the
ground floor every stage stands on: the contract (`contract.py`), errors (`errors.py`), atomic writes (`atomic.py`), integrity checks, packaged
file locations and how commands start (`launch.py`).

Every name below is imported on first use (PEP 562): `import fmnist_deploy` loads neither
numpy nor torch, `from fmnist_deploy import load` stays torch-free, and the export-side names
(`run_export`, `verify_file`, `GateError`, ...) import torch only when touched.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it; imported on first attribute access.
_LAZY = {
    "BACKENDS": "fmnist_deploy.runtime",
    "OptionError": "fmnist_deploy.runtime",
    "Predictor": "fmnist_deploy.runtime",
    "Prediction": "fmnist_deploy.runtime",
    "FilesPrediction": "fmnist_deploy.runtime",
    "RuntimeFailure": "fmnist_deploy.runtime",
    "load": "fmnist_deploy.runtime",
    "read_image": "fmnist_deploy.runtime.images",
    "decode_image": "fmnist_deploy.runtime.images",
    "FmnistError": "fmnist_deploy.errors",
    "UsageError": "fmnist_deploy.errors",
    "InputError": "fmnist_deploy.errors",
    "ModelError": "fmnist_deploy.errors",
    "DeviceError": "fmnist_deploy.errors",
    "IntegrityError": "fmnist_deploy.errors",
    "OutputError": "fmnist_deploy.errors",
    "IntegrityWarning": "fmnist_deploy.integrity",
    "run_export": "fmnist_deploy.export.api",
    "verify_file": "fmnist_deploy.export.api",
    "ExportError": "fmnist_deploy.export.checks",
    "GateError": "fmnist_deploy.export.checks",
    "GateReport": "fmnist_deploy.export.checks",
}
_SUBMODULES = ("contract", "kinds")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fmnist-deploy")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"fmnist_deploy.{name}")
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module 'fmnist_deploy' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)  # the public names only: no imports or helpers of this module


__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])
