"""OpenVINO backend: the same ONNX file, compiled by OpenVINO for the CPU, float32 pinned.

OpenVINO's CPU plugin runs float32 models in bfloat16 on CPUs with AMX or AVX512-BF16
unless told otherwise: measured on such a Xeon, the logits then differ from ONNX Runtime's
by ~1e-2, a thousand times the contract's tolerance. This backend sets the inference
precision to f32 and reports it. It needs `pip install 'fmnist-deploy[openvino]'`; no torch.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAMES
from fmnist_deploy.kinds import wrong_kind_hint
from fmnist_deploy.runtime.base import Backend
from fmnist_deploy.runtime.errors import DeviceError, ModelError, OptionError, first_line
from fmnist_deploy.runtime.metadata import check_metadata

HINTS = ("latency", "throughput")
INSTALL_HINT = "pip install 'fmnist-deploy[openvino]'"


class OpenVinoBackend(Backend):
    """An OpenVINO CompiledModel of the ONNX file on the CPU, one infer request per thread."""

    name = "openvino"
    platform = "openvino"
    options = ("threads", "hint")
    # OpenVINO splits a large batch across its threads itself: measured here at batch 10 000, slices of
    # 1 024 rows took 9.7 ms, of 4 096 rows 8.8 ms, one call 8.7 ms (ONNX Runtime: ~10.4 ms either way).
    chunk_rows = 4096

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        """'not installed: ...' when OpenVINO cannot be imported (it is an optional extra)."""
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            return f"not installed: {INSTALL_HINT}"
        return None

    def __init__(self, path: Path, device: str = "cpu", *, threads: int | None = None, hint: str = "latency") -> None:
        if device != "cpu":
            raise DeviceError(f"device {device}: the openvino backend runs on the CPU; use onnxruntime for cuda")
        if hint not in HINTS:
            raise OptionError(f"hint {hint!r}: expected one of {', '.join(HINTS)}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise OptionError(f"threads {threads!r}: expected a whole number >= 1")
        try:
            import openvino
        except ImportError:
            raise ModelError(f"the openvino backend needs OpenVINO: {INSTALL_HINT}") from None
        core = openvino.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint.upper()}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        from fmnist_deploy.exportset import read_current, resolve
        from fmnist_deploy.integrity import IntegrityError
        from fmnist_deploy.runtime.onnx_check import MAX_ONNX_BYTES, check_onnx

        try:  # checked as data before OpenVINO parses it, as the onnxruntime backend does
            check_onnx(path, read_current(path, MAX_ONNX_BYTES, "model file"))
        except IntegrityError as exc:
            raise ModelError(f"{exc}{wrong_kind_hint(path, self.name)}") from None
        try:
            model = core.read_model(str(resolve(path)))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own untyped errors for damaged files
            hint_text = wrong_kind_hint(path, self.name)
            raise ModelError(f"{path}: OpenVINO cannot load it ({first_line(exc)}){hint_text}") from None
        self._check_io(path, model)
        self.device = device
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.metadata = check_metadata(self._metadata(path, model), str(path))
        self._local = threading.local()

    def execution(self) -> tuple[str, str, int | None]:
        """OpenVINO on the CPU, at the precision and thread count the compiled model reports."""
        return "openvino:CPU", self.precision, int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or None

    @staticmethod
    def _metadata(path: Path, model: Any) -> dict[str, Any]:
        """The ONNX metadata_props, as OpenVINO's ONNX reader keeps them (one JSON value per key)."""
        try:
            framework = model.get_rt_info()["framework"]
            return {key: json.loads(value.astype(str)) for key, value in framework.items()}
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: no readable metadata_props for the openvino backend ({exc})") from None

    @staticmethod
    def _check_io(path: Path, model: Any) -> None:
        import openvino

        rows, cols = IMAGE_SHAPE
        inputs, outputs = model.inputs, model.outputs
        ok = (
            len(inputs) == 1
            and inputs[0].get_any_name() == INPUT_NAME
            and inputs[0].get_element_type() == openvino.Type.u8
            and inputs[0].get_partial_shape() == openvino.PartialShape([-1, rows, cols])
            and [o.get_any_name() for o in outputs] == list(OUTPUT_NAMES)
            and all(o.get_element_type() == openvino.Type.f32 for o in outputs)
        )
        if not ok:
            seen_in = [
                (i.get_any_name(), i.get_element_type().get_type_name(), str(i.get_partial_shape())) for i in inputs
            ]
            seen_out = [(o.get_any_name(), o.get_element_type().get_type_name()) for o in outputs]
            raise ModelError(
                f"{path}: graph has inputs {seen_in} and outputs {seen_out}; expected image u8 [?,28,28] "
                "and logits, probabilities f32"
            )

    def _request(self) -> Any:
        """One infer request per thread: a request holds its own buffers and is not thread-safe."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self._request().infer({0: images}, share_inputs=True)
        return result[0], result[1]
