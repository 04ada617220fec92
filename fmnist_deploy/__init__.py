"""fmnist-deploy: the course's Fashion-MNIST network, trained exactly, exported, run and measured.

    from fmnist_deploy import load
    predictor = load("fmnist_mlp.onnx")          # ONNX Runtime; torch is never imported
    prediction = predictor.predict(images)       # uint8 [N,28,28] raw pixels
    prediction.labels, prediction.top_k(3)

The stages live in sub-packages (`fmnist_deploy.training`, `.export`, `.runtime`,
`.benchmarks`); the contract every file follows is `fmnist_deploy.contract`. The
export-side names below (`run_export`, `verify_file`, `GateError`, ...) import torch,
so they are loaded on first use: `from fmnist_deploy import load` stays torch-free.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import Any

from fmnist_deploy import contract
from fmnist_deploy.runtime import (
    BACKENDS,
    DeviceError,
    InputError,
    ModelError,
    OptionError,
    Prediction,
    Predictor,
    RuntimeFailure,
    load,
)

try:
    __version__ = _metadata.version("fmnist-deploy")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "run_export": "fmnist_deploy.export.api",
    "verify_file": "fmnist_deploy.export.api",
    "ExportError": "fmnist_deploy.export.checks",
    "GateError": "fmnist_deploy.export.checks",
    "GateReport": "fmnist_deploy.export.checks",
    "read_image": "fmnist_deploy.runtime.images",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fmnist_deploy' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "DeviceError",
    "ExportError",
    "GateError",
    "GateReport",
    "InputError",
    "ModelError",
    "OptionError",
    "Prediction",
    "Predictor",
    "RuntimeFailure",
    "__version__",
    "contract",
    "load",
    "read_image",
    "run_export",
    "verify_file",
]
