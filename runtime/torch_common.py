"""What the three torch backends share: device resolution and the numpy <-> tensor edge."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fmnist_deploy.runtime.errors import DeviceError

TorchModel = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def torch_device(device: str) -> torch.device:
    """The torch.device for `device`; CUDA without a GPU is a DeviceError, never a CPU fallback."""
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda: torch.cuda.is_available() is False on this machine")
    return torch.device(device)


@torch.inference_mode()
def run_torch(model: TorchModel, images: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28) numpy -> logits, probabilities numpy through a torch model on `device`."""
    x = torch.from_numpy(images).to(device, non_blocking=False)  # (N, 28, 28) uint8
    logits, probs = model(x)
    return logits.cpu().numpy(), probs.cpu().numpy()
