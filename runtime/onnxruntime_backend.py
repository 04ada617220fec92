"""ONNX Runtime backend: numpy in, numpy out, no torch import.

On CUDA (onnxruntime-gpu) the session runs through IO binding: per batch size one uint8
input and two float32 outputs stay allocated on the GPU, and, unless turned off, each
batch size is captured once as a CUDA graph (`enable_cuda_graph`, one `gpu_graph_id` per
size, at most `graph_cache` sizes; other sizes run bound but uncaptured). TF32 is off
(`use_tf32=0`): with ORT's default (on) the logits are ~3e-3 from the CPU's, thirty
times the golden tolerance (measured on an H200); `tf32=True` is an explicit opt-in,
held to contract.TF32_LOGIT_TOLERANCE instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES
from fmnist_deploy.exportset import read_current
from fmnist_deploy.integrity import IntegrityError
from fmnist_deploy.kinds import wrong_kind_hint
from fmnist_deploy.runtime.base import Backend
from fmnist_deploy.runtime.errors import DeviceError, ModelError, OptionError, first_line
from fmnist_deploy.runtime.metadata import check_metadata, read_sidecar
from fmnist_deploy.runtime.onnx_check import MAX_ONNX_BYTES, check_model_bytes

CUDA_INSTALL_HINT = "pip install onnxruntime-gpu (it replaces onnxruntime: pip uninstall onnxruntime first)"
DEFAULT_GRAPH_CACHE = 8  # batch sizes captured per session; ORT keeps every captured graph until the session ends


def cuda_provider_options(*, tf32: bool = False, cuda_graph: bool = True, device_id: int = 0) -> dict[str, str]:
    """The CUDAExecutionProvider's options: TF32 off unless asked for, CUDA graphs on unless turned off."""
    options = {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


class GraphIds:
    """Which batch size replays which captured ORT CUDA graph: ids 1..capacity, handed out first come.

    ORT cannot drop a captured graph short of closing the session, so the set is bounded
    instead of evicted: a size that comes after the last id runs uncaptured (id -1, which
    ORT reads as "no capture, no replay"; 0 is reserved).
    """

    UNCAPTURED = -1

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise OptionError(f"graph_cache {capacity!r}: expected a whole number >= 0")
        self.capacity = capacity
        self.ids: dict[int, int] = {}

    def id_for(self, batch: int) -> tuple[int, bool]:
        """(graph id, whether this call is its first: a capture) for a batch size."""
        if batch in self.ids:
            return self.ids[batch], False
        if len(self.ids) >= self.capacity:
            return self.UNCAPTURED, False
        self.ids[batch] = len(self.ids) + 1
        return self.ids[batch], True


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
    platform = "onnxruntime_onnx"
    options = ("threads", "optimization", "spinning", "tf32", "cuda_graph", "graph_cache")

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        """'not installed: pip install onnxruntime-gpu' for cuda when this onnxruntime has no CUDA provider."""
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            return "not installed: pip install onnxruntime"
        if device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return f"not installed: {CUDA_INSTALL_HINT}"
        return None

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        *,
        threads: int | None = None,
        optimization: str = "all",
        spinning: bool | None = None,
        tf32: bool | None = None,
        cuda_graph: bool | None = None,
        graph_cache: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if device != "cuda":
            given = [
                n
                for n, v in (("tf32", tf32), ("cuda_graph", cuda_graph), ("graph_cache", graph_cache))
                if v is not None
            ]
            if given:
                raise OptionError(f"{', '.join(given)}: CUDA options, for device cuda (device is {device})")
        self.tf32 = bool(tf32)
        self.cuda_graph = cuda_graph is not False
        self._cuda_graph_asked = cuda_graph  # None: on where it works (a failed capture is recorded, then off)
        self.cuda_graph_error: str | None = None
        self.graphs = GraphIds(DEFAULT_GRAPH_CACHE if graph_cache is None else graph_cache)
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
                    f"(available: {', '.join(ort.get_available_providers())}); {CUDA_INSTALL_HINT}"
                )
            if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels torch installed, if any
                ort.preload_dlls()
            cuda = cuda_provider_options(tf32=self.tf32, cuda_graph=self.cuda_graph)
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:  # read once, bounded, checked as data; the session is built from these same bytes
            data = read_current(path, MAX_ONNX_BYTES, "model file")
            check_model_bytes(path, data)  # an ONNX protobuf or, by its identifier, an .ort flatbuffer
        except IntegrityError as exc:
            raise ModelError(f"{exc}{wrong_kind_hint(path, self.name)}") from None
        self._session_args = (data, options)
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors for damaged files
            hint = wrong_kind_hint(path, self.name)
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)}){hint}") from None
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # ORT silently falls back to the CPU when its CUDA libraries are missing.
            raise DeviceError(
                f"device cuda: ONNX Runtime fell back to {self.session.get_providers()}; "
                "check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
        self.device = device
        self.providers = self.session.get_providers()
        self.provider_options = self.session.get_provider_options().get(self.providers[0], {})
        self.metadata = check_metadata(self._metadata(path), str(path))
        self._check_io(path)
        # InferenceSession.run re-checks the input names and, when an execution provider fails, silently
        # retries on others; the base class has checked the input already and a silent provider change is
        # what this runtime refuses, so the session's C-level run is called directly where it exists.
        inner = getattr(self.session, "_sess", None)
        self._call = inner.run if inner is not None and callable(getattr(inner, "run", None)) else self._public_run
        self._names = list(OUTPUT_NAMES)
        self._bound: dict[int, _Bound] = {}  # batch size -> its IO binding on the GPU (captured sizes only)
        self.capture_ms: dict[int, float] = {}  # batch size -> the calls that captured its graph, apart
        if device == "cuda":
            self.chunk_rows = 1 << 20  # the GPU takes a large batch whole: the CPU's cache-sized slices cost here

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

    def execution(self) -> tuple[str, str, int | None]:
        """The execution provider the session really uses; threads as the session options set them."""
        threads = self.session.get_session_options().intra_op_num_threads
        return self.providers[0], str(self.metadata.get("precision", "fp32")), threads or None

    def _public_run(self, names: list[str], feed: dict[str, np.ndarray], options: Any) -> list[np.ndarray]:
        return self.session.run(names, feed, options)

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.device == "cuda":
            bound = self.bind(images.shape[0])
            bound.input.update_inplace(images)  # host -> GPU, uint8: the normalisation runs on the GPU
            bound.run()
            logits, probs = bound.binding.copy_outputs_to_cpu()  # GPU -> host, the bound outputs in order
            return logits, probs
        try:
            logits, probs = self._call(self._names, {INPUT_NAME: images}, None)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors (a graph that fails at run)
            raise ModelError(f"ONNX Runtime run failed ({first_line(exc)})") from None
        return logits, probs

    def bind(self, batch: int) -> _Bound:
        """The GPU-resident input and outputs of one batch size, bound to the session (and, the first
        time for a size with a graph id left, its CUDA graph captured: the time that takes is kept
        apart in `capture_ms`). Sizes past the graph cache get a fresh, uncaptured binding each call."""
        import time

        import onnxruntime as ort

        if batch in self._bound:
            return self._bound[batch]
        graph_id, first = self.graphs.id_for(batch) if self.cuda_graph else (GraphIds.UNCAPTURED, False)
        bound = _Bound(self.session, ort, batch, graph_id)
        if first:
            start = time.perf_counter_ns()
            try:
                for _ in range(3):  # ORT runs a size plainly before it captures it; the third call replays
                    bound.run()
            except ModelError as exc:
                if self._cuda_graph_asked:  # asked for explicitly: its failure is the caller's to see
                    raise
                return self._without_graphs(str(exc), batch)
            self.capture_ms[batch] = (time.perf_counter_ns() - start) / 1e6
            self._bound[batch] = bound
        return bound

    def _without_graphs(self, why: str, batch: int) -> _Bound:
        """A capture failed where graphs were only the default: the same session options without CUDA graphs,
        the reason kept in `cuda_graph_error` (reports name it) instead of an error for the caller."""
        import onnxruntime as ort

        self.cuda_graph_error = why
        self.cuda_graph = False
        self._bound.clear()
        self.capture_ms.clear()
        cuda = cuda_provider_options(tf32=self.tf32, cuda_graph=False)
        data, options = self._session_args
        self.session = ort.InferenceSession(data, options, providers=[("CUDAExecutionProvider", cuda)])
        self.provider_options = self.session.get_provider_options().get("CUDAExecutionProvider", {})
        return _Bound(self.session, ort, batch, GraphIds.UNCAPTURED)


class _Bound:
    """One batch size's device buffers and IO binding; `run` replays its graph (or runs uncaptured)."""

    def __init__(self, session: Any, ort: Any, batch: int, graph_id: int, device: str = "cuda") -> None:
        # The addresses must not change between a capture and its replays: the OrtValues live as long as this.
        self.input = ort.OrtValue.ortvalue_from_shape_and_type((batch, *IMAGE_SHAPE), np.uint8, device, 0)
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type((batch, N_CLASSES), np.float32, device, 0)
        self.probs = ort.OrtValue.ortvalue_from_shape_and_type((batch, N_CLASSES), np.float32, device, 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(INPUT_NAME, self.input)
        self.binding.bind_ortvalue_output(OUTPUT_NAMES[0], self.logits)
        self.binding.bind_ortvalue_output(OUTPUT_NAMES[1], self.probs)
        self.options = ort.RunOptions()
        self.options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.graph_id = graph_id
        self.session = session

    def run(self) -> None:
        """The model on the bound buffers (synchronous: ORT waits for its stream before returning)."""
        try:
            self.session.run_with_iobinding(self.binding, self.options)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
            hint = "; load with cuda_graph=False to run uncaptured" if self.graph_id != GraphIds.UNCAPTURED else ""
            raise ModelError(f"ONNX Runtime CUDA run failed ({first_line(exc)}){hint}") from None
