"""Golden vectors: fixed test images with their reference logits, the one reference every backend checks.

The reference is computed in float64 (numpy, from the weights and the course's
normalisation) and rounded once to float32, so it does not depend on the float32
kernels of the machine that wrote it: every machine writes the same bytes. Every
comparison against it uses the contract's LOGIT_TOLERANCE, never equality.

Written as a plain .npz (no pickled objects, `np.load(..., allow_pickle=False)` reads
it) with fixed zip timestamps, so the same weights always give the same bytes.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist_deploy.atomic import write_bytes_atomic
from fmnist_deploy.contract import LOGIT_TOLERANCE
from fmnist_deploy.errors import InputError

GOLDEN_VERSION = 2  # 1: eager float32 logits (machine-dependent); 2: float64 reference rounded to float32
PER_CLASS = 10
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
REFERENCE = "float64 numpy forward pass of the weights in eval mode, rounded once to float32"
LAYERS = ("fc1", "fc2", "fc3")


class GoldenError(InputError, ValueError):
    """golden.npz is missing, damaged, or of another format version."""


@dataclass(frozen=True)
class Golden:
    """The golden images with their labels, test-set positions and reference outputs."""

    images: np.ndarray  # (G, 28, 28) uint8
    labels: np.ndarray  # (G,) int64
    indices: np.ndarray  # (G,) int64, positions in the official test set
    logits: np.ndarray  # (G, 10) float32, see REFERENCE
    probabilities: np.ndarray  # (G, 10) float32
    weights_sha256: str
    class_names: tuple[str, ...]
    format_version: int = GOLDEN_VERSION
    reference: str = REFERENCE
    logit_tolerance: float = LOGIT_TOLERANCE


def reference_outputs(
    state: Mapping[str, np.ndarray], mean: float, std: float, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The network's eval-mode logits and softmax for uint8 images, in float64, rounded once to float32 (pure).

    `state` is the course network's state_dict as arrays (fc1/fc2/fc3 weight and bias);
    dropout is the identity in eval mode.
    """
    x = (images.reshape(len(images), -1).astype(np.float64) / 255.0 - mean) / std  # (G, 784)
    for layer in LAYERS:
        x = x @ np.asarray(state[f"{layer}.weight"], np.float64).T + np.asarray(state[f"{layer}.bias"], np.float64)
        if layer != LAYERS[-1]:
            x = np.maximum(x, 0.0)  # (G, 128), then (G, 64)
    shifted = np.exp(x - x.max(axis=1, keepdims=True))  # (G, 10)
    return x.astype(np.float32), (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def select(labels: np.ndarray, per_class: int = PER_CLASS) -> np.ndarray:
    """The first `per_class` test images of every class, in test-set order."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def save(path: Path, golden: Golden) -> None:
    """Write the .npz atomically, byte-stable for the same content."""
    arrays = {
        "format_version": np.array(golden.format_version, dtype=np.int64),
        "images": golden.images,
        "labels": golden.labels,
        "indices": golden.indices,
        "logits": golden.logits,
        "probabilities": golden.probabilities,
        "weights_sha256": np.array(golden.weights_sha256),
        "class_names": np.array(golden.class_names),
        "reference": np.array(golden.reference),
        "logit_tolerance": np.array(golden.logit_tolerance, dtype=np.float64),
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


def to_json(golden: Golden) -> str:
    """The same golden vectors as JSON, for languages without an .npz reader (generated, never edited):
    images as base64 of the raw uint8 bytes, logits and probabilities as the exact float32 values."""
    document = {
        "format_version": golden.format_version,
        "reference": golden.reference,
        "logit_tolerance": golden.logit_tolerance,
        "weights_sha256": golden.weights_sha256,
        "class_names": list(golden.class_names),
        "shape": list(golden.images.shape),
        "images_base64": base64.b64encode(np.ascontiguousarray(golden.images, dtype=np.uint8).tobytes()).decode(),
        "labels": [int(v) for v in golden.labels],
        "indices": [int(v) for v in golden.indices],
        "logits": [[float(v) for v in row] for row in golden.logits],
        "probabilities": [[float(v) for v in row] for row in golden.probabilities],
    }
    return json.dumps(document, indent=1) + "\n"


def load(path: Path) -> Golden:
    """Read golden.npz (never unpickling); a missing, damaged or foreign file is a GoldenError."""
    try:
        with np.load(path, allow_pickle=False) as f:
            version = int(f["format_version"])
            if version != GOLDEN_VERSION:
                raise GoldenError(
                    f"{path}: golden format version {version}, this tool reads {GOLDEN_VERSION}; "
                    "re-export with fmnist-export"
                )
            golden = Golden(
                images=f["images"],
                labels=f["labels"],
                indices=f["indices"],
                logits=f["logits"],
                probabilities=f["probabilities"],
                weights_sha256=str(f["weights_sha256"]),
                class_names=tuple(str(c) for c in f["class_names"]),
                format_version=version,
                reference=str(f["reference"]),
                logit_tolerance=float(f["logit_tolerance"]),
            )
    except GoldenError:
        raise
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        raise GoldenError(f"{path}: not a readable golden.npz ({type(exc).__name__}: {str(exc)[:120]})") from None
    n = len(golden.images)
    if (
        golden.images.dtype != np.uint8
        or golden.images.shape[1:] != (28, 28)
        or golden.logits.shape != (n, 10)
        or golden.probabilities.shape != (n, 10)
        or golden.logits.dtype != np.float32
        or n == 0
    ):
        raise GoldenError(
            f"{path}: arrays of unexpected shapes (images {golden.images.dtype} {golden.images.shape}, "
            f"logits {golden.logits.dtype} {golden.logits.shape})"
        )
    return golden


def write_samples(
    folder: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], count: int = 10
) -> list[Path]:
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
