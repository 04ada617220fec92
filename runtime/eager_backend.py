"""Eager PyTorch backend (.pt weights file): the network as plain functional ops.

It reads the weights file safely (`weights_only=True`) and computes the eval-mode
forward pass from the state_dict and recipe the file carries; it does not import the
training package, so it also serves as an independent check of the exported graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.base import TorchBackend
from runtime.errors import ModelError, first_line

WEIGHTS_FORMAT = "fmnist-deploy/weights"
LAYERS = ("fc1", "fc2", "fc3")


class EagerBackend(TorchBackend):
    name = "eager"
    suffixes = (".pt",)

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import pickle

        import torch

        from runtime.torch_common import torch_device

        self.torch_device = torch_device(device)
        try:
            payload = torch.load(str(path), map_location=self.torch_device, weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            raise ModelError(f"{path}: not a readable weights file ({first_line(exc, 160)})") from None
        if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
            raise ModelError(f"{path}: expected a {WEIGHTS_FORMAT} file written by fmnist-train")
        state, recipe = payload["model"], payload["recipe"]
        expected = {f"{layer}.{p}" for layer in LAYERS for p in ("weight", "bias")}
        if set(state) != expected:
            raise ModelError(f"{path}: state_dict has {sorted(state)}, expected {sorted(expected)}")
        self.params = [(state[f"{layer}.weight"], state[f"{layer}.bias"]) for layer in LAYERS]
        self.norm = (float(recipe["norm_mean"]), float(recipe["norm_std"]))
        self.module = self._forward
        self.device = device
        self.metadata = self._describe(payload)

    @staticmethod
    def _describe(payload: dict[str, Any]) -> dict[str, Any]:
        """The weights file's facts in the shape of the export contract."""
        recipe = payload["recipe"]
        return {
            "contract_version": "1.0",
            "format": "pt",
            "precision": "fp32",
            "inputs": [{"name": "image", "dtype": "uint8", "shape": ["N", 28, 28]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["N", 10]},
                        {"name": "probabilities", "dtype": "float32", "shape": ["N", 10]}],
            "class_names": list(payload["class_names"]),
            "normalisation": {"formula": "(x / 255 - mean) / std", "scale": 255.0, "mean": recipe["norm_mean"],
                              "std": recipe["norm_std"], "inside_graph": False},
            "test_accuracy": payload.get("test_accuracy"),
            "recipe": recipe,
        }

    def _forward(self, image: Any) -> tuple[Any, Any]:
        import torch
        from torch.nn import functional as F

        x = image.to(torch.float32).div(255).sub(self.norm[0]).div(self.norm[1]).reshape(image.shape[0], -1)  # (N, 784)
        (w1, b1), (w2, b2), (w3, b3) = self.params
        x = F.relu(F.linear(x, w1, b1))  # (N, 128); dropout is the identity in eval mode
        x = F.relu(F.linear(x, w2, b2))  # (N, 64)
        logits = F.linear(x, w3, b3)  # (N, 10)
        return logits, torch.softmax(logits, dim=-1)
