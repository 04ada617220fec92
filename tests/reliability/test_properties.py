"""Property-based tests: whatever bytes, image or array comes in, the outcome is a valid prediction
or the documented error (InputError), never another exception, a hang or a huge allocation."""

from __future__ import annotations

import atexit
import io
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from fmnist_deploy.runtime import InputError, load
from fmnist_deploy.runtime.images import MAX_SIDE, read_batch, read_image
from tests.conftest import ARTIFACTS

EXAMPLES = settings()  # the profile (tests/reliability/conftest.py) sets the number of examples
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F")
SCRATCH = Path(tempfile.mkdtemp(prefix="fmnist-properties-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def _outcome_of_file(blob: bytes, suffix: str, invert: bool = False) -> np.ndarray | None:
    path = SCRATCH / f"input{suffix}"
    path.write_bytes(blob)
    try:
        image = read_image(path, invert=invert)
    except InputError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return None
    assert image.dtype == np.uint8 and image.shape == (28, 28)
    return image


def _encoded(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes | None:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    try:
        image = base.convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return None  # Pillow cannot write this mode in this format: nothing to read back
    return buffer.getvalue()


@EXAMPLES
@given(st.binary(max_size=2048), st.sampled_from([".png", ".jpg", ".gif", ".tiff", ".bin"]))
def test_random_bytes(blob: bytes, suffix: str) -> None:
    _outcome_of_file(blob, suffix)


@EXAMPLES
@given(
    st.sampled_from(MODES),
    st.tuples(st.integers(1, 64), st.integers(1, 64)),
    st.sampled_from(FORMATS),
    st.integers(0, 2**16),
    st.booleans(),
)
def test_every_mode_and_format(mode: str, size: tuple[int, int], fmt: str, seed: int, invert: bool) -> None:
    blob = _encoded(mode, size, fmt, seed)
    if blob is not None:
        _outcome_of_file(blob, "." + fmt.lower(), invert)


@EXAMPLES
@given(st.sampled_from(("PNG", "JPEG", "GIF")), st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 2**16))
def test_truncated_encodings(fmt: str, keep: float, seed: int) -> None:
    blob = _encoded("RGB" if fmt != "GIF" else "P", (48, 40), fmt, seed)
    _outcome_of_file(blob[: int(len(blob) * keep)], "." + fmt.lower())


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a tiny (short) image data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@EXAMPLES
@given(
    st.sampled_from([1, 27, 28, 4000, MAX_SIDE, MAX_SIDE + 1, 64_000, 2**31 - 1]),
    st.sampled_from([1, 28, 1000, MAX_SIDE, MAX_SIDE + 1, 60_000_000]),
)
def test_declared_dimensions_up_to_the_limits_and_beyond(width: int, height: int) -> None:
    image = _outcome_of_file(_png_declaring(width, height), ".png")
    if max(width, height) > MAX_SIDE:
        assert image is None  # refused from the header, before decoding


@pytest.fixture(scope="module")
def predictor():
    return load(ARTIFACTS / "fmnist_mlp.onnx")


DTYPES = st.sampled_from(
    [np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64]
)
SHAPES = st.one_of(
    st.tuples(st.integers(0, 3), st.just(28), st.just(28)),
    st.just((28, 28)),
    st.tuples(st.integers(0, 3), st.just(28), st.just(28), st.integers(1, 3)),
    st.lists(st.integers(0, 30), min_size=0, max_size=4).map(tuple),
)


@EXAMPLES
@given(arrays(DTYPES, SHAPES, elements=None, fill=st.nothing()))
def test_predict_on_any_array(predictor, array: np.ndarray) -> None:
    try:
        prediction = predictor.predict(array)
    except InputError as exc:
        assert "expected uint8 [N,28,28]" in str(exc)
        return
    assert array.dtype == np.uint8
    assert prediction.probabilities.shape == (len(prediction.labels), 10)
    assert np.isfinite(prediction.logits).all()


@EXAMPLES
@given(st.binary(max_size=4096), st.sampled_from([".npy", ".idx", ".gz"]))
def test_batch_files_of_random_bytes(blob: bytes, suffix: str) -> None:
    path = SCRATCH / f"batch{suffix}"
    path.write_bytes(blob)
    try:
        batch = read_batch(path)
    except InputError:
        return
    assert batch.dtype == np.uint8 and batch.shape[1:] == (28, 28)


def test_float_images_with_nan_or_inf_are_refused() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        array = np.zeros((28, 28), np.float32)
        array[3, 4] = bad
        buffer = io.BytesIO()
        Image.fromarray(array, mode="F").save(buffer, format="TIFF")
        assert _outcome_of_file(buffer.getvalue(), ".tiff") is None
