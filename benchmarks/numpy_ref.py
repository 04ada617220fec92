"""The network in plain numpy: the reference floor the toolkit's backends are measured against."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class NumpyMLP:
    """uint8 (N, 28, 28) -> logits, probabilities, with numpy's BLAS; eval mode (no dropout)."""

    def __init__(self, weights_path: Path) -> None:
        import torch

        payload = torch.load(weights_path, map_location="cpu", weights_only=True)
        state, recipe = payload["model"], payload["recipe"]
        # Transposed once, so every call multiplies contiguous (N, in) @ (in, out).
        self.layers = [
            (state[f"{n}.weight"].numpy().T.copy(), state[f"{n}.bias"].numpy().copy()) for n in ("fc1", "fc2", "fc3")
        ]
        self.mean = np.float32(recipe["norm_mean"])
        self.std = np.float32(recipe["norm_std"])

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 28, 28) -> float32 logits and probabilities (N, 10), in plain numpy."""
        x = images.reshape(images.shape[0], -1).astype(np.float32)  # (N, 784)
        x = (x / np.float32(255) - self.mean) / self.std
        (w1, b1), (w2, b2), (w3, b3) = self.layers
        x = np.maximum(x @ w1 + b1, 0)  # (N, 128)
        x = np.maximum(x @ w2 + b2, 0)  # (N, 64)
        logits = x @ w3 + b3  # (N, 10)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return logits, e / e.sum(axis=1, keepdims=True)
