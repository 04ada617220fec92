"""The one interface every backend implements, and the checks shared by all of them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fmnist_deploy.contract import ARCHIVE_METADATA, IMAGE_SHAPE, N_CLASSES, SUFFIXES, contract_problems, sidecar_path
from fmnist_deploy.integrity import IntegrityError
from fmnist_deploy.runtime.errors import InputError, ModelError, OptionError, first_line
from fmnist_deploy.trust import Trust, require_trusted


def describe(array: Any) -> str:
    """`float64 [3,32,32]` for an array, the type name for anything else: for error messages."""
    if isinstance(array, np.ndarray):
        return f"{array.dtype} [{','.join(map(str, array.shape))}]"
    return type(array).__name__


def check_images(images: Any) -> np.ndarray:
    """uint8 (N, 28, 28), (N, 28, 28, 1) or one (28, 28) image -> C-contiguous uint8 (N, 28, 28).

    Anything else is an InputError naming what was given.
    """
    if (
        type(images) is np.ndarray
        and images.dtype == np.uint8
        and images.ndim == 3
        and images.shape[1:] == IMAGE_SHAPE
        and images.shape[0]
        and images.flags.c_contiguous
    ):
        return images  # the common case, decided in a few attribute reads
    given = images
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]  # (N, 28, 28, 1): channels-last grayscale, as image libraries give it
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.shape[-2:] != IMAGE_SHAPE
        or images.ndim not in (2, 3)
        or (images.ndim == 3 and images.shape[0] == 0)
    ):
        raise InputError(f"expected uint8 [N,28,28] (N >= 1), [N,28,28,1] or [28,28], got {describe(given)}")
    if images.ndim == 2:
        images = images[None]
    return np.ascontiguousarray(images)


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """The contract a file claims must be one this runtime speaks (`fmnist_deploy.contract`)."""
    problems = contract_problems(meta)
    if problems:
        raise ModelError(f"{source}: {'; '.join(problems)}")
    return meta


def archive_metadata(extra: dict[str, Any], source: str) -> dict[str, Any]:
    """The metadata of a TorchScript / .pt2 archive, parsed from its extra files as the loader filled them."""
    text = extra.get(ARCHIVE_METADATA, "")
    try:
        return json.loads(text) if text else {}
    except ValueError as exc:
        raise ModelError(f"{source}: its {ARCHIVE_METADATA} is not JSON ({exc})") from None


KIND_BACKEND = {"onnx": "onnxruntime", "torchscript": "torchscript", "pt2": "pt2", "pt": "eager"}
KIND_DESCRIPTION = {
    "onnx": "an ONNX file",
    "torchscript": "a TorchScript archive",
    "pt2": "a torch.export (.pt2) archive",
    "pt": "a torch.save weights file (.pt)",
    "aoti": "an AOTInductor package (compiled native code)",
}


def file_kind(path: Path) -> str | None:
    """What a model file's bytes look like, whatever its name: onnx, torchscript, pt2, pt, aoti, or None."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        elif head[:1] == b"\x08":  # protobuf field 1 (ir_version), varint: how every ONNX ModelProto starts
            return "onnx"
        else:
            return None
    except (OSError, zipfile.BadZipFile):
        return None
    parts = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if any(p.startswith("data/aotinductor/") for p in parts):
        return "aoti"
    if any(p.startswith("code/") for p in parts):
        return "torchscript"
    if "models/model.json" in parts or "archive_format" in parts:
        return "pt2"
    if "data.pkl" in parts:
        return "pt"
    return None


def wrong_kind_hint(path: Path, expected: str) -> str:
    """'; this is an ONNX file: use --backend onnxruntime or rename it to .onnx' when the bytes say so, else ''."""
    kind = file_kind(path)
    if kind is None or kind == expected:
        return ""
    if kind == "aoti":  # loading one runs its code: no backend does (fmnist-export --verify --trust-native-code)
        return f"; this is {KIND_DESCRIPTION[kind]}, which the runtime does not load"
    return f"; this is {KIND_DESCRIPTION[kind]}: use --backend {KIND_BACKEND[kind]} or rename it to {SUFFIXES[kind]}"


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar beside a model file, or {} when there is none."""
    from fmnist_deploy.bounds import MAX_SIDECAR_BYTES
    from fmnist_deploy.exportset import read_current, resolve

    sidecar = sidecar_path(path)
    if not os.path.lexists(resolve(sidecar)):
        return {}
    try:  # a regular file under a size cap: a FIFO or a link to /dev/zero is refused, never read
        return json.loads(read_current(sidecar, MAX_SIDECAR_BYTES, "sidecar").decode("utf-8"))
    except IntegrityError as exc:
        raise ModelError(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{sidecar}: unreadable sidecar ({first_line(exc)})") from None


class Backend:
    """A loaded model file. Subclasses set `name` and `suffixes` and implement `_run`.

    `_run` receives checked, contiguous uint8 (N, 28, 28) and returns float32
    logits and probabilities (N, 10); `metadata` is the file's own description.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    platform: ClassVar[str]  # the model's platform as Triton's model metadata names it
    options: ClassVar[tuple[str, ...]] = ()  # keyword options the constructor takes beyond path and device
    metadata: dict[str, Any]
    device: str

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        """Why this backend cannot run on `device` here for want of a package ('not installed: pip install
        ...'), or None. Checked without loading a model, so a benchmark can list the cell instead of stopping.
        A missing GPU is not reported here: that is a DeviceError of its own."""
        return None

    def execution(self) -> tuple[str, str, int | None]:
        """(provider, precision, threads) that actually run the file: e.g. ("CPUExecutionProvider", "fp32", 2);
        threads None when the engine picks them itself."""
        raise NotImplementedError

    # Large batches run in slices of this many images: a slice's activations stay in the CPU
    # caches (1024 x 784 float32 = 3 MB), where one 10 000-image call would stream 31 MB.
    chunk_rows: ClassVar[int] = 1024

    def _checked(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self._run(images)
        n = images.shape[0]
        if (
            logits.shape != (n, N_CLASSES)
            or probs.shape != (n, N_CLASSES)
            or logits.dtype != np.float32
            or probs.dtype != np.float32
        ):
            raise ModelError(
                f"{self.name}: model returned {describe(logits)} and {describe(probs)}, expected float32 [{n},10] twice"
            )
        return logits, probs

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checked uint8 (N, 28, 28) -> float32 logits and probabilities (N, 10), in cache-sized slices."""
        n = images.shape[0]
        if n <= self.chunk_rows:
            return self._checked(images)
        logits = np.empty((n, N_CLASSES), dtype=np.float32)
        probs = np.empty((n, N_CLASSES), dtype=np.float32)
        for start in range(0, n, self.chunk_rows):
            stop = min(start + self.chunk_rows, n)
            logits[start:stop], probs[start:stop] = self._checked(images[start:stop])
        return logits, probs


class TorchBackend(Backend):
    """What the torch backends share: device resolution, error wrapping, metadata, numpy at the edges.

    A subclass implements `_load(path, data, device) -> (module, metadata)` from the file's bytes,
    read once (bounded), checked for trust when the format carries code (`fmnist_deploy.trust`) and,
    for a zip archive, for its expanded sizes (`fmnist_deploy.bounds`); the module maps a
    uint8 (N, 28, 28) tensor to logits and probabilities. torch is imported only when one
    of these backends is constructed, so the ONNX path stays torch-free.
    """

    reader: ClassVar[str]  # the torch function that reads the file, named in errors
    kind: ClassVar[str]  # the file_kind() this backend reads
    # threads: torch's intra-op threads. torch keeps one such setting per process, so a value given here
    # applies to every torch model of the process; None leaves it as it is.
    # On CUDA (runtime.torch_cuda): graphs per batch size, how many are kept, the largest captured, chunk size.
    options: ClassVar[tuple[str, ...]] = ("threads", "cuda_graphs", "graph_cache", "max_graph_batch", "chunk_rows")
    module: Any
    torch_device: Any  # torch.device
    runner: Any = None  # a torch_cuda.CudaRunner on CUDA
    threads: int  # torch's intra-op threads once loaded

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        threads: int | None = None,
        *,
        trust: Trust | None = None,
        **cuda_options: Any,
    ) -> None:
        import pickle
        import zipfile

        import torch

        from fmnist_deploy.bounds import MAX_MODEL_BYTES, check_zip
        from fmnist_deploy.exportset import read_current
        from fmnist_deploy.runtime.torch_common import torch_device

        if device != "cuda" and cuda_options:
            raise OptionError(f"{', '.join(cuda_options)}: CUDA options, for device cuda (device is {device})")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise OptionError(f"threads {threads!r}: expected a whole number >= 1")
        self.torch_device = torch_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        try:
            # Read once, bounded; every check below and the loader itself see these same bytes.
            data = read_current(path, MAX_MODEL_BYTES, "model file")
            if data[:4] != b"PK\x03\x04":  # every torch format is a zip archive: nothing to trust or load
                raise ValueError("not a zip archive")
            self.trusted = require_trusted(path, data, self.kind, trust or Trust())
            check_zip(data, path)  # torch would expand every record in memory
            self.module, meta = self._load(path, data, self.torch_device)
        except IntegrityError as exc:
            raise ModelError(str(exc)) from None
        # torch reports a damaged or foreign file through many types (a text file: KeyError).
        except (
            RuntimeError,
            ValueError,
            OSError,
            KeyError,
            EOFError,
            zipfile.BadZipFile,
            pickle.UnpicklingError,
        ) as exc:
            hint = wrong_kind_hint(path, self.kind)
            raise ModelError(f"{path}: {self.reader} cannot read it ({first_line(exc, 160)}){hint}") from None
        self.device = device
        self.metadata = check_metadata(meta, str(path))
        if device == "cuda":
            from fmnist_deploy.runtime.torch_cuda import CudaOptions, CudaRunner

            self.runner = CudaRunner(self.module, self.torch_device, CudaOptions(**cuda_options))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """On CUDA the runner takes the batch whole (it streams large ones itself); on the CPU, cache-sized slices."""
        if self.runner is not None:
            return self._checked(images)
        return super().run(images)

    def _load(self, path: Path, data: bytes, device: Any) -> tuple[Any, dict[str, Any]]:
        """(module, metadata) from the file's bytes, already read and checked."""
        raise NotImplementedError

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.runner is not None:
            return self.runner.run(images)
        from fmnist_deploy.runtime.torch_common import run_torch

        return run_torch(self.module, images, self.torch_device)

    def execution(self) -> tuple[str, str, int | None]:
        """torch on its device; precision from the file, threads torch's intra-op pool."""
        import torch

        return f"torch:{self.device}", str(self.metadata.get("precision", "fp32")), torch.get_num_threads()


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~0.7 µs per prediction at batch 1
class Prediction:
    """What a model says about N images."""

    logits: np.ndarray  # (N, 10) float32
    probabilities: np.ndarray  # (N, 10) float32
    indices: np.ndarray  # (N,) int64, argmax
    class_names: tuple[str, ...] = ()  # the model's, index -> name

    @property
    def labels(self) -> list[str]:
        """The class name of each image's argmax (built on access: most calls at batch 1 never read it)."""
        names = self.class_names
        return [names[i] for i in self.indices.tolist()]

    def top_k(self, k: int, class_names: tuple[str, ...] | None = None) -> list[list[tuple[str, float]]]:
        """The k most probable classes of each image, as (class name, probability), most probable first.

        The class names are the model's own unless others are given.
        """
        names = self.class_names if class_names is None else class_names
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(self.probabilities, order, axis=1).tolist()  # exact floats, in one call
        return [
            [(names[j], p) for j, p in zip(row, probs, strict=True)]
            for row, probs in zip(order.tolist(), chosen, strict=True)
        ]


@dataclass(frozen=True)
class FilesPrediction:
    """Answers for files: the images that could be read with their prediction, and the inputs that could not."""

    inputs: list[str]  # the images answered, in input order (an image of a batch file is `file[i]`)
    prediction: Prediction | None  # row i answers inputs[i]; None when no image could be read
    errors: dict[str, str]  # input -> why it got no answer
    notes: dict[str, str]  # input -> a hint about an answered image (e.g. it may want --invert)


@dataclass(frozen=True)
class Description:
    """What serves a loaded model, as its callers (the server's model metadata, the benchmarks) report it."""

    platform: str  # Triton's name for it: onnxruntime_onnx, pytorch_libtorch, ...
    backend: str  # a key of runtime.BACKENDS
    device: str  # cpu or cuda
    provider: str  # what actually executes: ONNX Runtime's execution provider, openvino:CPU, torch:cpu
    precision: str  # fp32, int8, f32 (OpenVINO's name), ...
    threads: int | None  # intra-op threads; None when the engine chooses
    contract: dict[str, Any]  # the file's own inputs, outputs, class names and contract version


class Predictor:
    """A backend plus the class names and contract read from the model file itself."""

    def __init__(self, backend: Backend, path: Path | None = None) -> None:
        self.backend = backend
        self.path = path  # the model file, when loaded from one
        self.metadata = backend.metadata
        self.class_names: tuple[str, ...] = tuple(backend.metadata["class_names"])

    def __repr__(self) -> str:
        threads = getattr(self.backend, "threads", None)
        extra = f", threads={threads}" if threads is not None else ""
        return f"Predictor(file={str(self.path) if self.path else None!r}, backend={self.backend_name!r}, device={self.device!r}{extra})"

    @property
    def backend_name(self) -> str:
        """The backend that runs the file (a key of runtime.BACKENDS)."""
        return self.backend.name

    @property
    def device(self) -> str:
        """cpu or cuda: where the model runs."""
        return self.backend.device

    def describe(self) -> Description:
        """Platform, backend, device, provider, precision, threads and contract: the one view of what runs."""
        provider, precision, threads = self.backend.execution()
        contract = {
            key: self.metadata[key] for key in ("contract_version", "inputs", "outputs") if key in self.metadata
        }
        contract["class_names"] = list(self.class_names)
        return Description(
            self.backend.platform, self.backend.name, self.device, provider, precision, threads, contract
        )

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checked uint8 (N, 28, 28) -> float32 logits and probabilities (N, 10), nothing else: the server's
        batches, whose shape the protocol has checked already."""
        return self.backend.run(images)

    def predict(self, images: np.ndarray) -> Prediction:
        """uint8 (N, 28, 28), (N, 28, 28, 1) or one (28, 28) image of raw pixels -> logits, probabilities,
        indices and class names."""
        logits, probs = self.backend.run(check_images(images))
        indices = logits.argmax(axis=1)
        return Prediction(logits, probs, indices, self.class_names)

    def predict_files(
        self, paths: Iterable[str | Path], *, invert: bool = False, chunk: int = 1024, workers: int | None = None
    ) -> FilesPrediction:
        """Classify image files, .npy / IDX batch files and folders with exactly `fmnist-predict`'s preprocessing.

        A file that cannot be read is listed in `errors`; the others are still answered.
        Image files are decoded by `workers` processes (default: one per core; 1 decodes
        in this process) and run through the model `chunk` at a time, so memory stays
        bounded by the answers.
        """
        from fmnist_deploy.runtime.inputs import chunks, iter_items

        names: list[str] = []
        parts: list[Prediction] = []
        errors: dict[str, str] = {}
        notes: dict[str, str] = {}
        for batch in chunks(iter_items(paths, invert=invert, workers=workers), chunk):
            good = [item for item in batch if item.error is None]
            errors.update({item.name: item.error for item in batch if item.error is not None})
            notes.update({item.name: item.note for item in good if item.note is not None})
            if good:
                names += [item.name for item in good]
                parts.append(self.predict(np.stack([item.image for item in good])))
        if not parts:
            return FilesPrediction([], None, errors, notes)
        logits = np.concatenate([p.logits for p in parts])
        probs = np.concatenate([p.probabilities for p in parts])
        indices = np.concatenate([p.indices for p in parts])
        return FilesPrediction(names, Prediction(logits, probs, indices, self.class_names), errors, notes)
