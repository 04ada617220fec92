"""Checkpoints (resumable, written every epoch) and the final weights file.

Both are plain dicts of tensors and primitives, so `torch.load(path,
weights_only=True)` reads them: nothing is unpickled beyond tensors.
"""

from __future__ import annotations

import io
import pickle
import platform
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist_deploy.atomic import write_bytes_atomic
from fmnist_deploy.errors import ModelError, first_line
from fmnist_deploy.integrity import CONTENT_KEY, IntegrityError, check_content, content_digest
from fmnist_deploy.training.config import Recipe

CHECKPOINT_FORMAT = "fmnist-deploy/checkpoint"
WEIGHTS_FORMAT = "fmnist-deploy/weights"
FORMAT_VERSION = 2  # 2: the payload carries a digest of its own content, checked on load


class CheckpointError(ModelError):
    """A file is not a checkpoint or weights file of this project (or is damaged)."""


def _cpu_state(module_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def versions() -> dict[str, str]:
    """Python, torch and torchvision versions, recorded in the weights file."""
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


@dataclass(frozen=True)
class Checkpoint:
    """The complete state of a run after `len(history)` epochs."""

    recipe: Recipe
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    history: list[dict[str, float]]
    rng_cpu: torch.Tensor
    rng_cuda: torch.Tensor | None
    data_sha256: dict[str, str]
    device: str
    loader: str

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return len(self.history)

    @classmethod
    def capture(
        cls,
        recipe: Recipe,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        history: list[Any],
        data_sha256: dict[str, str],
        device: torch.device,
        loader: str,
    ) -> Checkpoint:
        """Snapshot a run after an epoch: weights on the CPU, optimizer, history and every RNG state."""
        return cls(
            recipe=recipe,
            model=_cpu_state(model),
            optimizer=optimizer.state_dict(),
            history=[asdict(h) for h in history],
            rng_cpu=torch.get_rng_state(),
            rng_cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            data_sha256=dict(data_sha256),
            device=str(device),
            loader=loader,
        )


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write the checkpoint atomically as a plain dict that `weights_only=True` reads."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "epoch": ckpt.epoch,
        "recipe": ckpt.recipe.to_dict(),
        "model": ckpt.model,
        "optimizer": ckpt.optimizer,
        "history": ckpt.history,
        "rng": {"cpu": ckpt.rng_cpu, "cuda": ckpt.rng_cuda},
        "data_sha256": ckpt.data_sha256,
        "device": ckpt.device,
        "loader": ckpt.loader,
    }
    write_bytes_atomic(path, _serialise(payload))


def _serialise(payload: dict[str, Any]) -> bytes:
    """torch.save into memory, with a digest of the content: saved to a file, the archive's root
    folder would take the (random) temporary file's name, and the same tensors would give
    different bytes."""
    buffer = io.BytesIO()
    torch.save({**payload, CONTENT_KEY: content_digest(payload)}, buffer)
    return buffer.getvalue()


def _load_dict(path: Path, expected_format: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    from fmnist_deploy.bounds import MAX_MODEL_BYTES, check_zip, read_regular

    try:  # read once, bounded; the archive's records are size-checked before torch expands them
        data = read_regular(path, MAX_MODEL_BYTES, "torch file")
        if data[:4] != b"PK\x03\x04":  # torch.save has written zip archives since torch 1.6
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint (not a zip archive: damaged or another format)"
            )
        check_zip(data, path)
    except IntegrityError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    # torch.load reports a foreign file through many types (a text file: KeyError).
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first_line(exc, 160)})") from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {expected_format} file, found {found!r}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {payload.get('format_version')!r}, this tool reads {FORMAT_VERSION}"
        )
    try:
        check_content(payload, str(path))
    except IntegrityError as exc:
        raise CheckpointError(str(exc)) from None
    return payload


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint safely (`weights_only=True`) and check its structure."""
    payload = _load_dict(path, CHECKPOINT_FORMAT)
    try:
        return Checkpoint(
            recipe=Recipe.from_dict(payload["recipe"]),
            model=payload["model"],
            optimizer=payload["optimizer"],
            history=payload["history"],
            rng_cpu=payload["rng"]["cpu"],
            rng_cuda=payload["rng"]["cuda"],
            data_sha256=payload["data_sha256"],
            device=payload["device"],
            loader=payload["loader"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint is missing or has a bad field ({first_line(exc)})") from None


@dataclass(frozen=True)
class Weights:
    """The final, deployable result of a run: what export and runtime read."""

    recipe: Recipe
    model: dict[str, torch.Tensor]  # course-compatible state_dict
    class_names: tuple[str, ...]
    test_loss: float
    test_accuracy: float
    per_class_accuracy: list[float]
    confusion_matrix: list[list[int]]
    data_sha256: dict[str, str]
    versions: dict[str, str]
    device: str
    loader: str


def save_weights(path: Path, weights: Weights) -> None:
    """Write the final weights file atomically as a plain dict that `weights_only=True` reads."""
    payload = {"format": WEIGHTS_FORMAT, "format_version": FORMAT_VERSION, **asdict(weights)}
    payload["recipe"] = weights.recipe.to_dict()
    payload["class_names"] = list(weights.class_names)
    write_bytes_atomic(path, _serialise(payload))


def load_weights(path: Path) -> Weights:
    """Read a weights file safely (`weights_only=True`) and check its structure."""
    payload = _load_dict(path, WEIGHTS_FORMAT)
    try:
        recipe = Recipe.from_dict(payload["recipe"])
        return Weights(
            recipe=recipe,
            model=payload["model"],
            class_names=tuple(payload["class_names"]),
            test_loss=float(payload["test_loss"]),
            test_accuracy=float(payload["test_accuracy"]),
            per_class_accuracy=list(payload["per_class_accuracy"]),
            confusion_matrix=payload["confusion_matrix"],
            data_sha256=payload["data_sha256"],
            versions=payload["versions"],
            device=payload["device"],
            loader=payload["loader"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights file is missing or has a bad field ({exc})") from None


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Weights",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "save_weights",
    "versions",
]
