"""The network wrapped with its preprocessing: raw uint8 pixels in, logits and probabilities out."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fmnist_deploy.training.checkpoint import Weights
from fmnist_deploy.training.model import FashionMLP


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
        """uint8 (N, 28, 28) -> logits, probabilities (N, 10)."""
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


class FoldedDeployable(nn.Module):
    """The same function with the normalisation folded into fc1: one fewer pass over the input.

    (x/255 - m)/s @ W.T + b  ==  x @ (W/(255 s)).T + (b - (m/s) W.sum(1)), computed in
    float64 and rounded once to float32. Only the rounding differs from Deployable; the
    export gate holds every folded file to the same 1e-5 logit parity as the others.
    """

    def __init__(self, source: Deployable) -> None:
        super().__init__()
        net = source.net
        mean, std = source.norm
        w1 = net.fc1.weight.detach().double()
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0])
        with torch.no_grad():
            self.fc1.weight.copy_((w1 / (255.0 * std)).float())
            self.fc1.bias.copy_((net.fc1.bias.detach().double() - (mean / std) * w1.sum(dim=1)).float())
        self.fc2 = copy.deepcopy(net.fc2)
        self.fc3 = copy.deepcopy(net.fc3)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, 28, 28) -> logits, probabilities (N, 10), normalisation inside fc1."""
        x = image.to(torch.float32).reshape(image.shape[0], -1)  # (N, 784) raw pixel values
        x = torch.relu(self.fc1(x))  # (N, 128), normalisation included
        x = torch.relu(self.fc2(x))  # (N, 64); dropout is the identity in eval mode
        logits = self.fc3(x)  # (N, 10)
        return logits, torch.softmax(logits, dim=-1)


def numpy_runner(
    module: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """uint8 (N, 28, 28) numpy -> (logits, probabilities) numpy through a torch module on the CPU."""

    @torch.no_grad()
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = module(torch.from_numpy(images))
        return logits.numpy(), probs.numpy()

    return run
