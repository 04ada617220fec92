"""What a caller holds: a Predictor (a loaded backend with the model's own class names) and its answers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.runtime import records
from fmnist_deploy.runtime.arrays import check_images
from fmnist_deploy.runtime.base import Backend
from fmnist_deploy.runtime.inputs import chunks, iter_items


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
    sources: list[tuple[str, str, int]] = field(default_factory=list)  # every input in order: (input, path, index)

    def records(self, k: int = 1) -> list[dict[str, Any]]:
        """Every input's record (`fmnist_deploy.runtime.records`: fmnist-predict --json's shape), in input order."""
        row = {name: i for i, name in enumerate(self.inputs)}
        top = records.top_k_entries(self.prediction, k) if self.prediction is not None else []
        return [
            records.failure(name, path, index, self.errors[name])
            if name in self.errors
            else records.answer(name, path, index, top[row[name]])
            for name, path, index in self.sources
        ]


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
        """Classify files of every input kind (`runtime.input_kinds`) and folders of them, exactly as fmnist-predict.

        A file that cannot be read is listed in `errors`; the others are still answered.
        Image files are decoded by `workers` processes (default: one per core; 1 decodes
        in this process) and run through the model `chunk` at a time, so memory stays
        bounded by the answers.
        """
        names: list[str] = []
        parts: list[Prediction] = []
        errors: dict[str, str] = {}
        notes: dict[str, str] = {}
        sources: list[tuple[str, str, int]] = []
        for batch in chunks(iter_items(paths, invert=invert, workers=workers), chunk):
            sources += [(item.name, item.path, item.index) for item in batch]
            good = [item for item in batch if item.error is None]
            errors.update({item.name: item.error for item in batch if item.error is not None})
            notes.update({item.name: item.note for item in good if item.note is not None})
            if good:
                names += [item.name for item in good]
                parts.append(self.predict(np.stack([item.image for item in good])))
        if not parts:
            return FilesPrediction([], None, errors, notes, sources)
        logits = np.concatenate([p.logits for p in parts])
        probs = np.concatenate([p.probabilities for p in parts])
        indices = np.concatenate([p.indices for p in parts])
        return FilesPrediction(names, Prediction(logits, probs, indices, self.class_names), errors, notes, sources)
