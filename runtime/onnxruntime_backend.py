"""ONNX Runtime backend: numpy in, numpy out, no torch import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAMES
from fmnist_deploy.runtime.base import Backend, check_metadata, read_sidecar, wrong_kind_hint
from fmnist_deploy.runtime.errors import DeviceError, ModelError, OptionError, first_line

# option value -> onnxruntime.GraphOptimizationLevel member
OPTIMIZATION_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disabled": "ORT_DISABLE_ALL",
}


class OnnxRuntimeBackend(Backend):
    """An ONNX Runtime InferenceSession on the CPU or CUDA execution provider."""

    name = "onnxruntime"
    suffixes = (".onnx",)
    options = ("threads", "optimization", "spinning")

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        *,
        threads: int | None = None,
        optimization: str = "all",
        spinning: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        if optimization not in OPTIMIZATION_LEVELS:
            raise OptionError(f"optimization {optimization!r}: expected one of {', '.join(OPTIMIZATION_LEVELS)}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise OptionError(f"threads {threads!r}: expected a whole number >= 1")
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
        if threads is not None:
            options.intra_op_num_threads = threads
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError(
                    "device cuda: this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
                )
            if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels torch installed, if any
                ort.preload_dlls()
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors for damaged files
            hint = wrong_kind_hint(path, "onnx")
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)}){hint}") from None
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # ORT silently falls back to the CPU when its CUDA libraries are missing.
            raise DeviceError(
                f"device cuda: ONNX Runtime fell back to {self.session.get_providers()}; "
                "check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
        self.device = device
        self.providers = self.session.get_providers()
        self.metadata = check_metadata(self._metadata(path), str(path))
        self._check_io(path)
        # InferenceSession.run re-checks the input names and, when an execution provider fails, silently
        # retries on others; the base class has checked the input already and a silent provider change is
        # what this runtime refuses, so the session's C-level run is called directly where it exists.
        inner = getattr(self.session, "_sess", None)
        self._call = inner.run if inner is not None and callable(getattr(inner, "run", None)) else self._public_run
        self._names = list(OUTPUT_NAMES)

    def _metadata(self, path: Path) -> dict[str, Any]:
        """metadata_props (one JSON value per key), else the sidecar for files from other tools."""
        try:  # a damaged file can hold bytes that are not UTF-8 (UnicodeDecodeError) or not JSON
            custom = self.session.get_modelmeta().custom_metadata_map
            if custom:
                return {k: json.loads(v) for k, v in custom.items()}
        except ValueError as exc:
            raise ModelError(f"{path}: metadata_props are not UTF-8 JSON values ({type(exc).__name__})") from None
        return read_sidecar(path)  # files from other tools may only have the sidecar

    def _check_io(self, path: Path) -> None:
        inputs = [(i.name, i.type, i.shape) for i in self.session.get_inputs()]
        outputs = [(o.name, o.type) for o in self.session.get_outputs()]
        ok_in = (
            len(inputs) == 1
            and inputs[0][0] == INPUT_NAME
            and inputs[0][1] == "tensor(uint8)"
            and len(inputs[0][2]) == 3
            and not isinstance(inputs[0][2][0], int)
            and tuple(inputs[0][2][1:]) == IMAGE_SHAPE
        )
        ok_out = [o[0] for o in outputs] == list(OUTPUT_NAMES) and all(o[1] == "tensor(float)" for o in outputs)
        if not (ok_in and ok_out):
            raise ModelError(
                f"{path}: graph has inputs {inputs} and outputs {outputs}; expected image tensor(uint8) "
                "[N,28,28] with a dynamic N, and logits, probabilities tensor(float)"
            )

    def _public_run(self, names: list[str], feed: dict[str, np.ndarray], options: Any) -> list[np.ndarray]:
        return self.session.run(names, feed, options)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self._call(self._names, {INPUT_NAME: images}, None)
        return logits, probs
