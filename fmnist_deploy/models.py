"""Where the toolkit's files live outside the working directory: the model files shipped with the
distribution (package data), so every tool works from any folder, and the per-user cache."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from fmnist_deploy.kinds import READERS, default_file

# runtime backend -> the packaged file it runs by default (from the registry: the first kind it reads)
DEFAULT_FILES = {reader.name: default_file(reader.name) for reader in READERS}


def models_dir() -> Path:
    """The folder holding the packaged model files, sidecars, golden vectors and sample images."""
    return Path(str(resources.files("fmnist_deploy.artifacts")))


def cache_root() -> Path:
    """Per-user files (the decompressed data set, quick benchmark reports): $XDG_CACHE_HOME/fmnist-deploy,
    else ~/.cache/fmnist-deploy."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fmnist-deploy"


def default_model(backend: str = "onnxruntime") -> Path:
    """The packaged model file a backend runs when no --model is given."""
    return models_dir() / DEFAULT_FILES[backend]


__all__ = ["DEFAULT_FILES", "cache_root", "default_model", "models_dir"]
