"""Eager PyTorch backend (.pt weights file): the network as plain functional ops.

It reads the weights file safely (`weights_only=True`) and computes the eval-mode
forward pass from the state_dict and recipe the file carries; it does not import the
training package, so it also serves as an independent check of the exported graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmnist_deploy.contract import describe
from fmnist_deploy.integrity import check_content
from fmnist_deploy.runtime.base import TorchBackend
from fmnist_deploy.runtime.errors import ModelError

WEIGHTS_FORMAT = "fmnist-deploy/weights"
LAYERS = ("fc1", "fc2", "fc3")


class EagerBackend(TorchBackend):
    """The weights file written by fmnist-train, run as three linear layers with ReLU."""

    name = "eager"
    platform = "pytorch"
    reader = "torch.load"

    def _load(self, path: Path, data: bytes, device: Any) -> tuple[Any, dict[str, Any]]:
        import io

        import torch

        payload = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
            raise ModelError(f"{path}: expected a {WEIGHTS_FORMAT} file written by fmnist-train")
        check_content(payload, str(path))  # a flipped byte in a tensor is refused, not answered from
        try:
            state, recipe = payload["model"], payload["recipe"]
            norm = (float(recipe["norm_mean"]), float(recipe["norm_std"]))
            meta = describe(
                fmt="pt",
                precision="fp32",
                class_names=list(payload["class_names"]),
                norm_mean=norm[0],
                norm_std=norm[1],
                inside_graph=False,
                test_accuracy=payload.get("test_accuracy"),
                recipe=recipe,
            )
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{path}: weights file lacks or mangles {exc}") from None
        expected = {f"{layer}.{p}" for layer in LAYERS for p in ("weight", "bias")}
        if not isinstance(state, dict) or set(state) != expected:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ModelError(f"{path}: state_dict has {found}, expected {sorted(expected)}")
        self.params = [(state[f"{layer}.weight"], state[f"{layer}.bias"]) for layer in LAYERS]
        self.norm = norm
        return self._forward, meta

    def _forward(self, image: Any) -> tuple[Any, Any]:
        import torch
        from torch.nn import functional as F

        x = image.to(torch.float32).div(255).sub(self.norm[0]).div(self.norm[1]).reshape(image.shape[0], -1)  # (N, 784)
        (w1, b1), (w2, b2), (w3, b3) = self.params
        x = F.relu(F.linear(x, w1, b1))  # (N, 128); dropout is the identity in eval mode
        x = F.relu(F.linear(x, w2, b2))  # (N, 64)
        logits = F.linear(x, w3, b3)  # (N, 10)
        return logits, torch.softmax(logits, dim=-1)
