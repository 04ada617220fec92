"""Runtime stage: load an exported model file and run it, one module per backend.

    from fmnist_deploy.runtime import load
    predictor = load("artifacts/fmnist_mlp.onnx")        # backend from the file: ONNX Runtime
    prediction = predictor.predict(images)                # uint8 [N,28,28] or [28,28]
    prediction.labels, prediction.probabilities

The ONNX path imports onnxruntime and numpy only; torch is imported by the torch
backends, when one is chosen.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

from fmnist_deploy import kinds
from fmnist_deploy.contract import sidecar_path
from fmnist_deploy.integrity import IntegrityError, IntegrityWarning, sidecar_check
from fmnist_deploy.kinds import DEVICES
from fmnist_deploy.models import DEFAULT_FILES, default_model
from fmnist_deploy.runtime.base import Backend, TorchBackend
from fmnist_deploy.runtime.errors import DeviceError, InputError, ModelError, OptionError, RuntimeFailure
from fmnist_deploy.runtime.predictor import FilesPrediction, Prediction, Predictor
from fmnist_deploy.trust import Trust


def _backend_class(reader: kinds.Reader) -> type[Backend]:
    module, name = reader.target.split(":")
    return getattr(importlib.import_module(module), name)


# name -> Backend class, from the registry (fmnist_deploy.kinds.READERS); importing a backend's module
# imports no engine: each imports its own (onnxruntime, torch, openvino) when a file is loaded.
BACKENDS: dict[str, type[Backend]] = {reader.name: _backend_class(reader) for reader in kinds.READERS}


def backend_for(path: Path) -> str:
    """The backend `auto` runs a file with, from its name (`.onnx`, `.torchscript`, `.pt2`, `.pt`, ...)."""
    return kinds.backend_for(path)


def load(
    path: str | Path | None = None,
    backend: str = "auto",
    device: str = "cpu",
    *,
    trust: Trust | None = None,
    **options: Any,
) -> Predictor:
    """Load a model file and return its Predictor.

    path: the model file; None loads the file installed with the package for `backend`
    (`fmnist_mlp.onnx` for auto), as the commands do without --model.

    A TorchScript or .pt2 file carries code: it loads only when `trust` says so (a trusted
    signature, a pinned sha256, or `Trust(code=True)`) or it is a file packaged with the toolkit;
    see `fmnist_deploy.trust`. ONNX and .pt weights are data and load without it.

    backend: "auto" (from the suffix) or one of BACKENDS, which then reads the file whatever its
    suffix (its bytes are still checked); device: "cpu" or "cuda"
    (an error, not a CPU fallback, when CUDA cannot really be used). Options go to the
    backend: for onnxruntime `threads`, `optimization` ("all", "extended", "basic",
    "disabled") and `spinning`; for openvino `threads` and `hint` ("latency", "throughput").
    """
    if path is None:
        path = default_model("onnxruntime" if backend == "auto" or backend not in DEFAULT_FILES else backend)
    path = Path(path)
    if device not in DEVICES:
        raise DeviceError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    name = kinds.backend_for(path) if backend == "auto" else backend
    if name not in BACKENDS:
        raise ModelError(f"backend {backend!r}: expected auto or one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    kinds.check_reads(name, path)
    cls = BACKENDS[name]
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        takes = ", ".join(cls.options) if cls.options else "none"
        raise OptionError(f"the {name} backend does not take {', '.join(unknown)}; its options: {takes}")
    side: dict[str, Any] = {}
    kind = kinds.kind_named(path) or kinds.READER[name].default_kind  # a name no kind claims: the backend's kind
    if kind.sidecar:  # a weights file carries a digest of its own content instead
        try:
            side, note = sidecar_check(path)
        except IntegrityError as exc:
            raise ModelError(str(exc)) from None
        if note is not None:
            warnings.warn(note, IntegrityWarning, stacklevel=2)
    if issubclass(cls, TorchBackend):
        backend_instance = cls(path, device, trust=trust, **options)
    else:
        backend_instance = cls(path, device, **options)
    if side:
        _check_sidecar_metadata(path, side, backend_instance.metadata)
    return Predictor(backend_instance, path)


def _check_sidecar_metadata(path: Path, side: dict[str, Any], meta: dict[str, Any]) -> None:
    """A sidecar beside the file must describe it as the file describes itself (class names, contract...)."""
    described = {k: v for k, v in side.items() if k not in ("file", "file_sha256")}
    if described != meta:
        differing = sorted(k for k in set(described) | set(meta) if described.get(k) != meta.get(k))
        raise ModelError(
            f"{sidecar_path(path)}: differs from the metadata inside {path.name} in "
            f"{', '.join(differing[:5])}; restore the sidecar or re-export"
        )


__all__ = [
    "BACKENDS",
    "DeviceError",
    "FilesPrediction",
    "InputError",
    "ModelError",
    "OptionError",
    "Prediction",
    "Predictor",
    "RuntimeFailure",
    "Trust",
    "backend_for",
    "load",
]
