"""The training recipe: one frozen dataclass whose defaults are the course's."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fmnist_deploy.contract import CLASS_NAMES  # noqa: F401 - the training stage names the classes the contract fixes


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (and nothing that does not).

    Saved inside every checkpoint so that a checkpoint rebuilds its model and
    resumes its run without the user repeating a flag.
    """

    epochs: int = 100
    lr: float = 1e-3
    momentum: float = 0.0
    batch_size: int = 100
    seed: int = 0
    in_features: int = 784
    hidden1: int = 128
    hidden2: int = 64
    n_classes: int = 10
    dropout: float = 0.2
    norm_mean: float = 0.5
    norm_std: float = 0.5
    train_limit: int | None = None  # train on the first N training images only

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, as saved in checkpoints and file metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Rebuild a recipe saved by `to_dict`, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known: {sorted(known)}")
        return cls(**data)
