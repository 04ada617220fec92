"""Every file the toolkit reads is bounded: special files refused without blocking, sidecars capped, pickled
payloads walked with a budget, image decoding capped by mode x pixels, PNG rows counted, --output streamed."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist_deploy.runtime import ModelError, load
from fmnist_deploy.runtime.errors import InputError
from fmnist_deploy.runtime.images import MAX_DECODE_BYTES, read_image
from fmnist_deploy.training.checkpoint import CheckpointError, load_weights
from tests.conftest import ARTIFACTS, console_script

PEAK_RSS_MB = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024"


# --- special files named as inputs ------------------------------------------------------------------


def test_fifos_named_as_inputs_are_refused_without_blocking(tmp_path: Path) -> None:
    names = ["x.png", "x.npy", "x.idx", "x.gz"]
    for name in names:
        os.mkfifo(tmp_path / name)
    done = subprocess.run(
        [console_script("fmnist-predict"), *names], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    for name in names:
        assert f"error: {name}: a FIFO, not a regular file; refused" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# --- sidecars -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_sidecar_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    model = tmp_path / "fmnist_mlp.onnx"
    model.write_bytes((ARTIFACTS / "fmnist_mlp.onnx").read_bytes())
    sidecar = tmp_path / "fmnist_mlp.onnx.json"
    if kind == "fifo":
        os.mkfifo(sidecar)
    else:
        sidecar.symlink_to("/dev/zero")
    with pytest.raises(ModelError, match="not a regular file; refused"):
        load(model)


def test_a_sidecar_over_the_cap_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "fmnist_mlp.onnx"
    model.write_bytes((ARTIFACTS / "fmnist_mlp.onnx").read_bytes())
    (tmp_path / "fmnist_mlp.onnx.json").write_bytes(b" " * (2 * 1024 * 1024))
    with pytest.raises(ModelError, match="over the 1,048,576 byte limit"):
        load(model)


# --- pickled payloads: shared references and deep nesting ---------------------------------------------


def _weights_file_holding(tmp_path: Path, value_pickle: bytes) -> Path:
    """A torch.save archive of a weights-like dict whose "model" entry is the raw pickle `value_pickle`."""
    sentinel = "S" * 16
    buffer = __import__("io").BytesIO()
    torch.save(
        {"format": "fmnist-deploy/weights", "format_version": 2, "content_sha256": "0" * 64, "model": sentinel},
        buffer,
    )
    path = tmp_path / "hostile.pt"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                opcode = b"X" + struct.pack("<I", len(sentinel)) + sentinel.encode()
                assert opcode in data
                data = data.replace(opcode, value_pickle)
            out.writestr(info, data)
    return path


def _shared_2_pow_60() -> bytes:
    value: list = []
    for _ in range(60):
        value = [value, value]  # 2**60 paths through 61 lists
    return pickle.dumps(value, protocol=2)[2:-1]  # the value's opcodes, without PROTO and STOP


def _nested(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST x depth, then APPEND each into the one below


@pytest.mark.parametrize("value", ["shared", "deep"])
def test_hostile_pickle_shapes_are_one_line_and_quick(tmp_path: Path, value: str) -> None:
    path = _weights_file_holding(tmp_path, _shared_2_pow_60() if value == "shared" else _nested(200_000))
    with pytest.raises(CheckpointError, match="unexpected content"):
        load_weights(path)
    done = subprocess.run(
        [console_script("fmnist-predict"), str(ARTIFACTS / "samples" / "0000_ankle_boot.png"), "--model", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "unexpected content" in done.stderr, done.stderr


# --- images: decode memory by mode x pixels, missing rows ---------------------------------------------


def _float_tiff(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "wide.tif"
    Image.fromarray(np.zeros((8000, 8000), np.float32)).save(path, compression="tiff_adobe_deflate")
    return path


def test_a_small_tiff_that_decodes_to_gigabytes_is_refused_under_the_cap(tmp_path: Path) -> None:
    path = _float_tiff(tmp_path)
    assert path.stat().st_size < 1024 * 1024
    script = (
        "import sys\nfrom pathlib import Path\nfrom fmnist_deploy.runtime.images import read_image\n"
        "try:\n    read_image(Path(sys.argv[1])); outcome = 'answered'\n"
        "except Exception as exc:\n    outcome = str(exc)\n"
        f"print({PEAK_RSS_MB}); print(outcome)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    peak, outcome = done.stdout.strip().splitlines()[-2:]
    assert "MiB to decode, over the 768 MiB limit per image" in outcome, done.stdout + done.stderr
    assert int(peak) < MAX_DECODE_BYTES // 2**20, f"peak RSS {peak} MB"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_rows(rows: int, color: int, palette: bool = False) -> bytes:
    channels = {0: 1, 2: 3, 3: 1}[color]
    scanlines = b"".join(b"\x00" + bytes([7] * 28 * channels) for _ in range(rows))
    head = _chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, color, 0, 0, 0))
    plte = _chunk(b"PLTE", bytes(range(256)) * 3) if palette else b""
    return b"\x89PNG\r\n\x1a\n" + head + plte + _chunk(b"IDAT", zlib.compress(scanlines)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize(("color", "palette"), [(0, False), (2, False), (3, True)], ids=["gray", "rgb", "palette"])
def test_a_png_with_missing_rows_is_refused_on_both_decode_paths(tmp_path: Path, color: int, palette: bool) -> None:
    """Gray and RGB go to libspng first, a palette PNG straight to Pillow: each refuses 5 rows of 28."""
    short = tmp_path / "short.png"
    short.write_bytes(_png_with_rows(5, color, palette))
    with pytest.raises(InputError, match="PNG image data holds .* of the .* bytes its 28x28 header needs"):
        read_image(short)
    whole = tmp_path / "whole.png"
    whole.write_bytes(_png_with_rows(28, color, palette))
    assert read_image(whole).shape == (28, 28)


# --- --output streams ----------------------------------------------------------------------------------


def test_output_streams_instead_of_holding_every_answer(tmp_path: Path) -> None:
    n = 200_000
    idx = tmp_path / "many-idx3-ubyte"
    with open(idx, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28))
        block = np.random.default_rng(0).integers(0, 256, (1000, 28, 28), dtype=np.uint8).tobytes()
        for _ in range(n // 1000):
            f.write(block)
    out = tmp_path / "answers.jsonl"
    script = (
        "import sys\nfrom fmnist_deploy.runtime.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print({PEAK_RSS_MB}, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(idx), "--output", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    peak = int(done.stderr.strip().splitlines()[-1])
    assert sum(1 for _ in open(out)) == n
    # holding 200 000 records costs ~230 MB more (measured 1.17 GB for 1 M); streamed, only one chunk's worth
    assert peak < 400, f"peak RSS {peak} MB for {n} answers"
    warnings.warn(f"--output of {n} answers: peak RSS {peak} MB", stacklevel=1)


def test_a_zip_bomb_weights_file_is_refused_by_export_and_train(tmp_path: Path) -> None:
    from tests.reliability.crafted import zip_bomb

    bomb = zip_bomb(tmp_path, ARTIFACTS / "fmnist_mlp.pt")
    with pytest.raises(CheckpointError, match="refused as a zip bomb"):
        load_weights(bomb)
