"""Hostile model files, built in a test's tmp_path: what an attacker would hand the toolkit.

Each builder returns the path of a file that, read by an unguarded loader, runs code, writes a
file or exhausts memory; the marker file it names must stay absent when the toolkit reads it.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import torch

from fmnist_deploy.contract import sha256_file, sidecar_path
from tests.conftest import ARTIFACTS


def _with_sidecar(path: Path, original: Path) -> Path:
    """A sidecar recomputed for the tampered file, as whoever supplies a file can write one."""
    meta = json.loads(sidecar_path(original).read_text())
    meta["file_sha256"] = sha256_file(path)
    sidecar_path(path).write_text(json.dumps(meta))
    return path


def _rewrite_zip(source: Path, dest: Path, edit, extra: dict[str, bytes] | None = None, compress=()) -> Path:
    """Copy a zip archive record by record, passing each record's bytes through edit(name, data)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as out:
        for info in src.infolist():
            out.writestr(info, edit(info.filename, src.read(info)), compress_type=zipfile.ZIP_STORED)
        root = src.namelist()[0].split("/", 1)[0]
        for name, data in (extra or {}).items():
            kind = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            out.writestr(f"{root}/{name}", data, compress_type=kind)
    return dest


def evil_pt2(tmp_path: Path, expr: str, name: str = "evil.pt2") -> Path:
    """The packaged .pt2 with its batch symbol's expression replaced by `expr` (sympify evaluates it)."""

    def edit(record: str, data: bytes) -> bytes:
        if record.endswith("models/model.json"):
            text = data.decode()
            text = re.sub(r'"expr_str": "[^"]*"', lambda _: json.dumps({"expr_str": expr})[1:-1], text)
            return text.encode()
        return data

    path = _rewrite_zip(ARTIFACTS / "fmnist_mlp.pt2", tmp_path / name, edit)
    return _with_sidecar(path, ARTIFACTS / "fmnist_mlp.pt2")


def pt2_with_size(tmp_path: Path, size: int) -> Path:
    """The packaged .pt2 with the first tensor dimension 128 declared as `size`."""

    def edit(record: str, data: bytes) -> bytes:
        if record.endswith("models/model.json"):
            return data.decode().replace('"as_int": 128}', f'"as_int": {size}}}', 1).encode()
        return data

    path = _rewrite_zip(ARTIFACTS / "fmnist_mlp.pt2", tmp_path / "huge.pt2", edit)
    return _with_sidecar(path, ARTIFACTS / "fmnist_mlp.pt2")


def shell_marker_command(marker: Path) -> str:
    return f"s40 + 0*__import__('os').system('touch {marker}')"


def zip_bomb(tmp_path: Path, original: Path, size: int = 300 * 1024 * 1024) -> Path:
    """`original` with one more record: `size` zero bytes, deflated to ~0.1% of that."""
    dest = tmp_path / f"bomb{original.suffix}"
    name = "data/bomb" if original.suffix != ".pt" else "data/99"
    path = _rewrite_zip(original, dest, lambda _, data: data, {name: bytes(size)}, compress=(name,))
    return _with_sidecar(path, original) if sidecar_path(original).exists() else path


EVIL_TORCHSCRIPT_SOURCE = '''
from typing import Tuple

import torch


class Writer(torch.nn.Module):
    """Loading this module writes bytes into any file: __setstate__ maps it with torch.from_file."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.written = 0

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool, int]:
        return (self.target, self.training, self.written)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool, int]) -> None:
        self.target = state[0]
        self.training = state[1]
        mapped = torch.from_file(self.target, shared=True, size=6, dtype=torch.uint8)
        self.written = int(mapped.fill_(65).sum())

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = image.float().reshape(image.shape[0], -1)[:, :10]
        return x, torch.softmax(x, dim=1)
'''


def evil_torchscript(tmp_path: Path, marker: Path) -> Path:
    """A TorchScript archive whose loading writes `marker` (torch.from_file in __setstate__), with the
    packaged file's metadata so it looks like a model of the contract."""
    import importlib.util
    import sys

    source = tmp_path / "evil_writer.py"
    source.write_text(EVIL_TORCHSCRIPT_SOURCE)
    spec = importlib.util.spec_from_file_location("evil_writer", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["evil_writer"] = module
    spec.loader.exec_module(module)
    scripted = torch.jit.script(module.Writer(str(marker)))
    with zipfile.ZipFile(ARTIFACTS / "fmnist_mlp.torchscript") as z:
        meta = next(z.read(n) for n in z.namelist() if n.endswith("extra/fmnist_deploy.json"))
    path = tmp_path / "evil.torchscript"
    torch.jit.save(scripted, str(path), _extra_files={"fmnist_deploy.json": meta})
    return _with_sidecar(path, ARTIFACTS / "fmnist_mlp.torchscript")
