"""Shared tools of the reliability suite: hostile files, and proof that nothing else changed."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

SOAK_HELP = "run the long reliability soaks (more kills, more fuzz cases)"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False, help=SOAK_HELP)


def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import HealthCheck, settings

    common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
    # make test: the same examples every run (a red CI is a real bug, not luck); --soak: many more, new ones
    settings.register_profile("ci", max_examples=150, derandomize=True, **common)
    settings.register_profile("soak", max_examples=3000, **common)
    settings.load_profile("soak" if config.getoption("--soak") else "ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak: opt in with --soak (make soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


class Payload:
    """Unpickling this creates `marker`: the proof that a reader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def malicious_pickle(marker: Path) -> bytes:
    """A raw pickle stream that runs code when loaded without restrictions."""
    return pickle.dumps({"x": Payload(marker)}, protocol=2)


def malicious_torch_file(marker: Path) -> bytes:
    """A torch.save archive whose data.pkl runs code (torch.load(weights_only=False) would run it)."""
    buffer = io.BytesIO()
    torch.save({"format": "fmnist-deploy/weights", "x": Payload(marker)}, buffer)
    return buffer.getvalue()


def replace_records(archive: bytes, replacements: dict[str, bytes]) -> bytes:
    """The same zip archive with some records' bytes replaced (matched by the path below the root folder)."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            inner = info.filename.split("/", 1)[1]
            target.writestr(info.filename, replacements.get(inner, source.read(info.filename)))
    return out.getvalue()


def fingerprints(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders: what a run must leave as it was."""
    result = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                result[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result
