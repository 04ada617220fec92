"""The course network, pure: no I/O, no data, no device logic."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fmnist_deploy.training.config import Recipe


class FashionMLP(nn.Module):
    """784 -> 128 -> 64 -> 10 with ReLU and dropout, as in the course notes.

    Layer names match the course code (fc1, dropout1, fc2, dropout2, fc3) so a
    state_dict moves between the two unchanged. Input: normalised float images
    (N, 1, 28, 28) or (N, 784); output: logits (N, 10).
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden1: int = 128,
        hidden2: int = 64,
        n_classes: int = 10,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden1)
        self.dropout1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.dropout2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(hidden2, n_classes)

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> FashionMLP:
        """The network with the recipe's layer sizes and dropout."""
        return cls(recipe.in_features, recipe.hidden1, recipe.hidden2, recipe.n_classes, recipe.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 28, 28) or (N, 784) -> logits (N, 10)."""
        x = x.reshape(x.shape[0], -1)  # (N, 784)
        x = self.dropout1(F.relu(self.fc1(x)))  # (N, 128)
        x = self.dropout2(F.relu(self.fc2(x)))  # (N, 64)
        return self.fc3(x)  # (N, 10)


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 pixels -> float32, with the exact operations of ToTensor + Normalize.

    ToTensor divides by 255 and Normalize subtracts then divides; doing the same
    float32 operations in the same order keeps the fast loader bit-identical.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {images.dtype}")
    return images.to(torch.float32).div(255).sub(mean).div(std)
