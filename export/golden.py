"""Golden vectors: fixed test images with their eager logits, the one reference every backend checks.

Written as a plain .npz (no pickled objects, `np.load(..., allow_pickle=False)` reads
it) with fixed zip timestamps, so the same weights always give the same bytes.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.atomic import write_bytes_atomic

GOLDEN_VERSION = 1
PER_CLASS = 10
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Golden:
    images: np.ndarray  # (G, 28, 28) uint8
    labels: np.ndarray  # (G,) int64
    indices: np.ndarray  # (G,) int64, positions in the official test set
    logits: np.ndarray  # (G, 10) float32, eager PyTorch
    probabilities: np.ndarray  # (G, 10) float32
    weights_sha256: str
    class_names: tuple[str, ...]
    format_version: int = GOLDEN_VERSION


def select(labels: np.ndarray, per_class: int = PER_CLASS) -> np.ndarray:
    """The first `per_class` test images of every class, in test-set order."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def save(path: Path, golden: Golden) -> None:
    arrays = {
        "format_version": np.array(golden.format_version, dtype=np.int64),
        "images": golden.images,
        "labels": golden.labels,
        "indices": golden.indices,
        "logits": golden.logits,
        "probabilities": golden.probabilities,
        "weights_sha256": np.array(golden.weights_sha256),
        "class_names": np.array(golden.class_names),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)
            archive.writestr(entry, member.getvalue())
    write_bytes_atomic(path, buffer.getvalue())


def load(path: Path) -> Golden:
    with np.load(path, allow_pickle=False) as f:
        version = int(f["format_version"])
        if version != GOLDEN_VERSION:
            raise ValueError(f"{path}: golden format version {version}, this tool reads {GOLDEN_VERSION}")
        return Golden(
            images=f["images"],
            labels=f["labels"],
            indices=f["indices"],
            logits=f["logits"],
            probabilities=f["probabilities"],
            weights_sha256=str(f["weights_sha256"]),
            class_names=tuple(str(c) for c in f["class_names"]),
            format_version=version,
        )


def write_samples(folder: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], count: int = 10) -> list[Path]:
    """The first `count` test images as 8-bit grayscale PNGs named `<index>_<true class>.png`."""
    from PIL import Image

    paths = []
    for index in range(count):
        slug = class_names[int(labels[index])].lower().replace("/", "_").replace(" ", "_").replace("-", "_")
        path = folder / f"{index:04d}_{slug}.png"
        buffer = io.BytesIO()
        Image.fromarray(images[index], mode="L").save(buffer, format="PNG")
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths
