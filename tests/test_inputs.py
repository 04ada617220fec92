"""Files to model input: the fast PNG path gives Pillow's pixels, the decode processes give the in-process answers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from fmnist_deploy.benchmarks.cli import main as bench_cli
from fmnist_deploy.runtime import images, inputs
from fmnist_deploy.runtime.images import read_image
from fmnist_deploy.runtime.inputs import iter_items


def _png(array: np.ndarray, mode: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)  # the mode follows the array's dtype and shape
    assert image.mode == mode
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _pillow(path: Path, invert: bool) -> np.ndarray:
    return images._read_with_pillow(path, path, invert)


RNG = np.random.default_rng(7)
TEXT = PngImagePlugin.PngInfo()
TEXT.add_text("Comment", "IDAT in a text chunk must not confuse the chunk walk")
# (name, PNG bytes, whether the fast path must take it)
CASES = [
    ("gray 28x28", _png(RNG.integers(0, 256, (28, 28), dtype=np.uint8), "L"), True),
    ("gray 56x40", _png(RNG.integers(0, 256, (40, 56), dtype=np.uint8), "L"), True),
    ("gray 1x1", _png(np.array([[200]], dtype=np.uint8), "L"), True),
    ("rgb 30x20", _png(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB"), True),
    ("gray with text", _png(RNG.integers(0, 256, (28, 28), dtype=np.uint8), "L", pnginfo=TEXT), True),
    ("gray with gamma", _png(RNG.integers(0, 256, (28, 28), dtype=np.uint8), "L", gamma=0.45), True),
    ("gray, one value transparent", _png(RNG.integers(0, 256, (28, 28), dtype=np.uint8), "L", transparency=0), False),
    (
        "rgb, one colour transparent",
        _png(RNG.integers(0, 4, (28, 28, 3), dtype=np.uint8), "RGB", transparency=(1, 1, 1)),
        False,
    ),
    ("rgba", _png(RNG.integers(0, 256, (28, 28, 4), dtype=np.uint8), "RGBA"), False),
    ("gray+alpha", _png(RNG.integers(0, 256, (28, 28, 2), dtype=np.uint8), "LA"), False),
    ("16-bit", _png(RNG.integers(0, 65536, (28, 28), dtype=np.uint16), "I;16"), False),
]
_PALETTE = io.BytesIO()
Image.fromarray(RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8), mode="RGB").convert("P").save(_PALETTE, format="PNG")
CASES.append(("palette", _PALETTE.getvalue(), False))


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize(("name", "data", "fast"), CASES, ids=[c[0] for c in CASES])
def test_every_png_gives_pillows_pixels_and_the_fast_path_takes_what_it_should(
    tmp_path: Path, name: str, data: bytes, fast: bool, invert: bool
) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(data)
    assert (images._fast_png(data) is not None) == fast, name
    assert np.array_equal(read_image(path, invert=invert), _pillow(path, invert))


def test_random_grayscale_and_rgb_pngs_decode_as_pillow_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    for i in range(60):
        shape = (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        rgb = i % 2 == 1
        array = rng.integers(0, 256, (*shape, 3) if rgb else shape, dtype=np.uint8)
        path = tmp_path / f"{i}.png"
        path.write_bytes(_png(array, "RGB" if rgb else "L", compress_level=int(rng.integers(0, 10))))
        assert images._fast_png(path.read_bytes()) is not None
        assert np.array_equal(read_image(path), _pillow(path, False)), (i, shape, rgb)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:],  # a flipped byte in the image data
        lambda b: b[:16] + b"\xff\xff\xff\xff" + b[20:],  # an IHDR width of 4 billion
    ],
    ids=["truncated", "flipped byte", "huge width"],
)
def test_a_damaged_png_gets_the_same_verdict_as_from_pillow(tmp_path: Path, damage) -> None:
    path = tmp_path / "damaged.png"
    path.write_bytes(damage(_png(np.full((28, 28), 90, np.uint8), "L")))
    try:
        expected: np.ndarray | str = _pillow(path, False)
    except images.InputError as exc:
        expected = str(exc)
    try:
        got: np.ndarray | str = read_image(path)
    except images.InputError as exc:
        got = str(exc)
    if isinstance(expected, str):
        assert got == expected
    else:  # Pillow still reads it: the fast path may refuse it (then Pillow answers) but never answer differently
        assert isinstance(got, np.ndarray) and np.array_equal(got, expected)


def _folder(tmp_path: Path, data, n: int) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "empty").mkdir()
    for i in range(n):
        target = folder / ("sub" if i % 7 == 0 else "") / f"img_{i:04d}.png"
        Image.fromarray(data.test_images[i].numpy(), mode="L").save(target)
    (folder / "img_0003.5.png").write_bytes(b"not a png")
    (folder / "bright.png").write_bytes(_png(np.full((28, 28), 250, np.uint8), "L"))
    np.save(folder / "batch.npy", data.test_images[:3].numpy())
    return folder


def _same(a: inputs.Item, b: inputs.Item) -> bool:
    same_image = (a.image is None and b.image is None) or (
        a.image is not None and b.image is not None and np.array_equal(a.image, b.image)
    )
    return (a.name, a.error, a.note) == (b.name, b.error, b.note) and same_image


def test_decode_processes_answer_exactly_as_one_process_in_order(tmp_path: Path, data, monkeypatch) -> None:
    folder = _folder(tmp_path, data, 1200)
    pools = []
    real = inputs._DecodePool
    monkeypatch.setattr(inputs, "_DecodePool", lambda *a: pools.append(1) or real(*a))
    alone = list(iter_items([folder], workers=1))
    assert not pools
    parallel = list(iter_items([folder], workers=2))
    assert pools == [1]  # 1 200 files: the processes ran
    assert len(alone) == len(parallel) == 1200 + 2 + 3
    assert all(_same(a, b) for a, b in zip(alone, parallel, strict=True))
    by_name = {Path(item.name).name: item for item in parallel}
    assert "not an image Pillow can read" in by_name["img_0003.5.png"].error
    assert by_name["bright.png"].note == inputs.DARK_ON_LIGHT_NOTE
    assert [Path(i.name).name for i in parallel[:3]] == ["batch.npy[0]", "batch.npy[1]", "batch.npy[2]"]
    assert list(inputs.walk([folder])) == sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_file_that_kills_its_decoder_costs_only_its_own_answer(tmp_path: Path, data, monkeypatch) -> None:
    import os

    folder = _folder(tmp_path, data, 600)
    real_read = inputs.read_image

    def crashing(path, *, invert=False):  # a decoder that dies (as a segfault would) on one file
        if str(path).endswith("img_0100.png"):
            os._exit(139)
        return real_read(path, invert=invert)

    monkeypatch.setattr(inputs, "read_image", crashing)  # the forked processes inherit it
    items = list(iter_items([folder], workers=2))
    failed = {Path(i.name).name: i.error for i in items if i.error is not None}
    assert failed.keys() == {"img_0003.5.png", "img_0100.png"}
    assert "the image decoder crashed on this file" in failed["img_0100.png"]
    assert sum(i.image is not None for i in items) == 600 - 1 + 1 + 3


def test_predict_files_matches_predict_on_the_same_pixels(tmp_path: Path, data) -> None:
    from fmnist_deploy.runtime import load
    from tests.conftest import ARTIFACTS

    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(700):
        Image.fromarray(data.test_images[i].numpy(), mode="L").save(folder / f"{i:04d}.png")
    predictor = load(ARTIFACTS / "fmnist_mlp.onnx")
    answer = predictor.predict_files([folder])
    direct = predictor.predict(data.test_images[:700].numpy())
    assert answer.prediction is not None and not answer.errors
    assert np.array_equal(answer.prediction.logits, direct.logits)


def test_files_benchmark_small(tmp_path: Path, data) -> None:
    result = CliRunner().invoke(
        bench_cli, ["files", "--rounds", "1", "--sizes", "100,300", "--output", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["same_answers_as_plain"] is True
    assert set(report["ways"]) == {"plain", "sequential", "predict_files", "fmnist-predict"}
    assert report["ways"]["plain"]["cost_vs_plain"] == 1.0
    assert (tmp_path / "files.md").is_file()
    bad = CliRunner().invoke(bench_cli, ["files", "--sizes", "300,100", "--output", str(tmp_path)])
    assert bad.exit_code == 2 and "two increasing sizes" in bad.output


def test_a_slice_of_a_batch_file_reads_only_those_images_and_counts_without_reading(tmp_path: Path, data) -> None:
    import gzip

    pixels = data.test_images[:3000].numpy()
    header = b"\x00\x00\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in (3000, 28, 28))
    (tmp_path / "x-idx3-ubyte").write_bytes(header + pixels.tobytes())
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(header + pixels.tobytes()))
    np.save(tmp_path / "x.npy", pixels)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz", "x.npy"):
        path = tmp_path / name
        assert images.batch_count(path) == 3000, name
        assert np.array_equal(images.read_batch(path, 1024, 2048), pixels[1024:2048]), name
        assert images.read_batch(path, 2990, 9999).shape == (10, 28, 28), name
    truncated = tmp_path / "t-idx3-ubyte"
    truncated.write_bytes(header + pixels.tobytes()[:-1])
    for reader in (images.batch_count, lambda p: images.read_batch(p, 0, 10)):
        with pytest.raises(images.InputError, match="declares 2352000 payload bytes, the file holds 2351999"):
            reader(truncated)


def test_a_npy_header_numpy_cannot_tokenize_is_an_input_error(tmp_path: Path) -> None:
    # Found by the fuzzer: numpy parses the header with Python's tokenizer, which raises TokenError.
    header = b"{'descr': ('|u1',\n"
    path = tmp_path / "broken.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 64)
    with pytest.raises(images.InputError, match="not a readable .npy file"):
        images.read_batch(path)
    items = list(iter_items([path]))
    assert len(items) == 1 and "not a readable .npy file" in items[0].error


def test_ctrl_c_to_the_whole_process_group_is_one_line_and_leaves_no_decoder(tmp_path: Path, data) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(1100):
        Image.fromarray(data.test_images[i].numpy(), mode="L").save(folder / f"{i:04d}.png")
    command = [sys.executable, "-m", "fmnist_deploy.runtime.cli", *[str(folder)] * 300]  # 330 000 images
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    first = process.stdout.readline()  # started: the first chunk of answers is out
    assert first

    def group() -> list[int]:
        """The processes of the command's process group (the command and its decoding workers)."""
        members = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == process.pid and fields[0] != "Z":  # pgrp, not a zombie
                    members.append(int(entry.name))
        return members

    deadline = time.monotonic() + 60
    while len(group()) < 2 and time.monotonic() < deadline:  # decoding workers started
        time.sleep(0.05)
    assert len(group()) >= 2, "no decoding worker started"
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the parent and its decoders
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted after "), err
    reported = int(lines[0].split()[2])
    # answers are counted once their chunk is written: a chunk cut off mid-write is not claimed
    written = 1 + len(out.splitlines())
    assert reported <= written < reported + 1024
    deadline = time.monotonic() + 30
    while group() and time.monotonic() < deadline:  # the workers end with the command, within a bound
        time.sleep(0.05)
    assert group() == [], "a decoding worker outlived the command"


def test_an_image_over_pillows_warning_size_gets_only_our_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "big.png"
    Image.new("1", (12000, 12000)).save(path)  # 144 Mpx: Pillow warns (over 89 Mpx) before our limit refuses it
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {path}: 12000x12000 image is over the 8000-pixel limit on its longest side "
        "(padded to a square it would be 144 Mpx)",
        "1 input(s) failed",
    ]
