"""Coverage-guided fuzzing (atheris / libFuzzer) of image decoding, preprocessing and prediction.

    python tests/reliability/fuzz_images.py -runs=5000 -max_len=8192

Any exception other than the documented InputError is a crash: libFuzzer stops and saves the
input. A PNG answered by the fast path (libspng) must be answered identically by Pillow: a
difference, or Pillow refusing what the fast path answered, is a crash too. Run by
tests/reliability/test_fuzz.py with a bounded number of runs, from seed PNGs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from fmnist_deploy.runtime import InputError, images
    from fmnist_deploy.runtime.images import read_batch, read_image

SCRATCH = Path(tempfile.mkdtemp(prefix="fmnist-fuzz-"))
SUFFIXES = (".png", ".jpg", ".gif", ".tiff", ".bmp", ".webp", ".npy", ".idx", ".gz")


def one_input(data: bytes) -> None:
    if not data:
        return
    suffix = SUFFIXES[data[0] % len(SUFFIXES)]
    path = SCRATCH / f"input{suffix}"
    path.write_bytes(data[1:])
    try:
        if suffix in (".npy", ".idx", ".gz"):
            batch = read_batch(path)
            assert batch.dtype.name == "uint8" and batch.shape[1:] == (28, 28)
        else:
            image = read_image(path, invert=bool(data[0] & 0x80))
            assert image.dtype.name == "uint8" and image.shape == (28, 28)
            if images._fast_png(data[1:]) is not None:  # the fast path answered: Pillow must agree
                expected = images._read_with_pillow(path, path, bool(data[0] & 0x80))
                assert (expected == image).all(), "the fast PNG path and Pillow disagree"
    except InputError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
