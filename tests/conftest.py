from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"


@pytest.fixture(scope="session")
def data():
    """The real, verified data set (`make data` provides it, in the per-user cache)."""
    from fmnist_deploy.training.data import load

    return load(download=False)
