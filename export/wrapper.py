"""The network wrapped with its preprocessing: raw uint8 pixels in, logits and probabilities out."""

from __future__ import annotations

import copy
import torch
from torch import nn

from training.checkpoint import Weights
from training.model import FashionMLP


class Deployable(nn.Module):
    """uint8 (N, 28, 28) -> logits (N, 10), probabilities (N, 10).

    The normalisation uses the same float32 operations as training
    (`training.model.normalise`), so the graph reproduces eager logits exactly.
    """

    # One constant, baked into the scripted graph; a single name also keeps TorchScript's
    # constant order (a set, ordered by string hash) from varying between processes.
    __constants__ = ["norm"]

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.norm = (float(mean), float(std))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.to(torch.float32).div(255).sub(self.norm[0]).div(self.norm[1])  # (N, 28, 28)
        logits = self.net(x)  # (N, 10)
        return logits, torch.softmax(logits, dim=-1)


def from_weights(weights: Weights) -> Deployable:
    """A fresh eval-mode Deployable built from a weights file's recipe and state_dict."""
    net = FashionMLP.from_recipe(weights.recipe)
    net.load_state_dict(weights.model)
    return Deployable(net, weights.recipe.norm_mean, weights.recipe.norm_std).eval()


def eval_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode: exports never touch, nor depend on the mode of, the caller's module."""
    return copy.deepcopy(module).eval()
