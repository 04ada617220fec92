"""The one interface every backend implements, and the checks shared by all of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.errors import InputError, ModelError

CONTRACT_MAJOR = "1"
ARCHIVE_METADATA = "fmnist_deploy.json"  # the extra file holding the metadata in .torchscript / .pt2 archives
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")
IMAGE_SHAPE = (28, 28)


def describe(array: Any) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype} [{','.join(map(str, array.shape))}]"
    return type(array).__name__


def check_images(images: Any) -> np.ndarray:
    """uint8 (N, 28, 28) or one (28, 28) image -> C-contiguous uint8 (N, 28, 28); anything else is an error."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[-2:] != IMAGE_SHAPE \
            or images.ndim not in (2, 3) or (images.ndim == 3 and images.shape[0] == 0):
        raise InputError(f"expected uint8 [N,28,28] (N >= 1) or [28,28], got {describe(images)}")
    if images.ndim == 2:
        images = images[None]
    return np.ascontiguousarray(images)


def check_metadata(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """The contract a file claims must be one this runtime speaks."""
    if not meta:
        raise ModelError(f"{source}: no fmnist-deploy metadata; export the model with fmnist-export")
    version = str(meta.get("contract_version", ""))
    if version.split(".")[0] != CONTRACT_MAJOR:
        raise ModelError(f"{source}: contract version {version or 'missing'}, this runtime reads {CONTRACT_MAJOR}.x")
    inputs = [(i.get("name"), i.get("dtype"), i.get("shape")) for i in meta.get("inputs", [])]
    outputs = [o.get("name") for o in meta.get("outputs", [])]
    names = meta.get("class_names", [])
    if inputs != [(INPUT_NAME, "uint8", ["N", *IMAGE_SHAPE])] or outputs != list(OUTPUT_NAMES) or len(names) != 10:
        raise ModelError(
            f"{source}: declares inputs {inputs}, outputs {outputs}, {len(names)} class names; "
            f"expected image uint8 [N,28,28] -> logits, probabilities float32 [N,10] with 10 class names"
        )
    return meta


def archive_metadata(extra: dict[str, Any], source: str) -> dict[str, Any]:
    """The checked metadata of a TorchScript / .pt2 archive, from its extra files as the loader filled them."""
    text = extra.get(ARCHIVE_METADATA, "")
    return check_metadata(json.loads(text) if text else {}, source)


def read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{sidecar}: unreadable sidecar ({exc})") from None


class Backend:
    """A loaded model file. Subclasses set `name` and `suffixes` and implement `_run`.

    `_run` receives checked, contiguous uint8 (N, 28, 28) and returns float32
    logits and probabilities (N, 10); `metadata` is the file's own description.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    metadata: dict[str, Any]
    device: str

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # Large batches run in slices of this many images: a slice's activations stay in the CPU
    # caches (1024 x 784 float32 = 3 MB), where one 10 000-image call would stream 31 MB.
    chunk_rows: ClassVar[int] = 1024

    def _checked(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self._run(images)
        n = images.shape[0]
        if logits.shape != (n, 10) or probs.shape != (n, 10) or logits.dtype != np.float32 or probs.dtype != np.float32:
            raise ModelError(f"{self.name}: model returned {describe(logits)} and {describe(probs)}, "
                             f"expected float32 [{n},10] twice")
        return logits, probs

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
        if n <= self.chunk_rows:
            return self._checked(images)
        logits = np.empty((n, 10), dtype=np.float32)
        probs = np.empty((n, 10), dtype=np.float32)
        for start in range(0, n, self.chunk_rows):
            stop = min(start + self.chunk_rows, n)
            logits[start:stop], probs[start:stop] = self._checked(images[start:stop])
        return logits, probs


class TorchBackend(Backend):
    """What the torch backends share: a callable `module` on `torch_device`, numpy at the edges.

    torch is imported only when one of them runs, so the ONNX path stays torch-free.
    """

    module: Any  # (N, 28, 28) uint8 tensor -> logits, probabilities
    torch_device: Any  # torch.device

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from runtime.torch_common import run_torch

        return run_torch(self.module, images, self.torch_device)


@dataclass(frozen=True)
class Prediction:
    """What a model says about N images."""

    logits: np.ndarray  # (N, 10) float32
    probabilities: np.ndarray  # (N, 10) float32
    indices: np.ndarray  # (N,) int64, argmax
    labels: list[str]  # (N,) class names of the argmax

    def top_k(self, k: int, class_names: tuple[str, ...]) -> list[list[tuple[str, float]]]:
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [[(class_names[j], float(p[j])) for j in row] for row, p in zip(order, self.probabilities)]


class Predictor:
    """A backend plus the class names and contract read from the model file itself."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.metadata = backend.metadata
        self.class_names: tuple[str, ...] = tuple(backend.metadata["class_names"])

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    def predict(self, images: np.ndarray) -> Prediction:
        """uint8 (N, 28, 28) or (28, 28) raw pixels -> logits, probabilities, indices, class names."""
        logits, probs = self.backend.run(check_images(images))
        indices = logits.argmax(axis=1)
        return Prediction(logits, probs, indices, [self.class_names[i] for i in indices])
