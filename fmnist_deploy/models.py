"""The model files shipped with the distribution (package data), so every tool works from any folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fmnist_deploy.contract import STEM, SUFFIXES

# runtime backend -> the packaged file it runs by default
DEFAULT_FILES = {
    "onnxruntime": STEM + SUFFIXES["onnx"],
    "torchscript": STEM + SUFFIXES["torchscript"],
    "pt2": STEM + SUFFIXES["pt2"],
    "eager": STEM + SUFFIXES["pt"],
}


def models_dir() -> Path:
    """The folder holding the packaged model files, sidecars, golden vectors and sample images."""
    return Path(str(resources.files("fmnist_deploy.artifacts")))


def default_model(backend: str = "onnxruntime") -> Path:
    """The packaged model file a backend runs when no --model is given."""
    return models_dir() / DEFAULT_FILES[backend]


__all__ = ["DEFAULT_FILES", "default_model", "models_dir"]
