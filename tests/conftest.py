from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"


def console_script(name: str) -> str:
    """The installed command `name` (fmnist-predict, ...) beside this interpreter, as a user starts it."""
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path is not None, f"{name} is not installed beside {sys.executable}"
    return path


@pytest.fixture(scope="session")
def data():
    """The real, verified data set (`make data` provides it, in the per-user cache)."""
    from fmnist_deploy.training.data import load

    return load(download=False)
