"""Memory stays bounded on hostile inputs, and one input's failure never costs another its answer.

Peak RSS of a real `fmnist-predict` process is read from the kernel (os.wait4's ru_maxrss, what
`/usr/bin/time -v` reports as "Maximum resident set size")."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ARTIFACTS
from tests.reliability.damage import damaged_copies

LIMIT_MB = 1024
SAMPLE = ARTIFACTS / "samples" / "0000_ankle_boot.png"


def _gzip_of_zeros(path: Path, header: bytes, zero_bytes: int) -> None:
    """A small .gz that inflates to `zero_bytes` zeros after an IDX header."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        block = bytes(1 << 20)
        for _ in range(zero_bytes >> 20):
            f.write(block)


# A small launcher measures the command: forked from this test process (which holds torch), the child's
# peak RSS would count the parent's pages copied at fork time, before exec.
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(f'peak-rss-kb {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def test_hostile_images_and_batches_stay_under_a_gigabyte(tmp_path: Path) -> None:
    Image.new("L", (64_000, 1_000)).save(tmp_path / "wide.png")  # 64 Mpx that would pad to 4 Gpx
    Image.new("L", (1, 60_000_000)).save(tmp_path / "tall.png")
    Image.new("1", (9_000, 9_000)).save(tmp_path / "bomb.png")
    header = b"\x00\x00\x08\x03" + (4_000_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    _gzip_of_zeros(tmp_path / "declares-3gb-idx3.gz", header, 16 << 20)
    small = b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    _gzip_of_zeros(tmp_path / "trailing-idx3.gz", small, 64 << 20)  # 10 images declared, 64 MB follow
    inputs = [
        str(SAMPLE),
        *(str(tmp_path / n) for n in ("wide.png", "tall.png", "bomb.png", "declares-3gb-idx3.gz", "trailing-idx3.gz")),
        str(SAMPLE),
    ]
    command = [sys.executable, "-c", MEASURE, sys.executable, "-m", "fmnist_deploy.runtime.cli", *inputs]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    stdout, stderr = result.stdout, result.stderr
    peak_mb = int(stderr.rsplit("peak-rss-kb ", 1)[1]) / 1024
    stderr = stderr.rsplit("peak-rss-kb ", 1)[0]
    assert result.returncode == 1, stderr
    assert stdout.splitlines() == [f"{SAMPLE}: Ankle boot (0.673)"] * 2, "the good inputs around the bad ones"
    assert stderr.count("error: ") == 5 and "Traceback" not in stderr
    assert peak_mb <= LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    print(f"\nfmnist-predict on 5 hostile inputs between 2 good ones: peak RSS {peak_mb:.0f} MB (limit {LIMIT_MB})")


def test_a_damaged_gz_batch_file_is_an_input_error(tmp_path: Path) -> None:
    """The streamed .gz reader turns each kind of damage into one InputError naming the file: a corrupted
    deflate stream, a wrong CRC in the trailer, a stream cut short; the intact file reads back exactly."""
    from fmnist_deploy.runtime import InputError
    from fmnist_deploy.runtime.images import read_batch

    images = np.arange(3 * 784, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    blob = gzip.compress(b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
    good = tmp_path / "good.idx.gz"
    good.write_bytes(blob)
    assert np.array_equal(read_batch(good), images)
    crc = bytearray(blob)
    crc[-8] ^= 0xFF  # the CRC-32 of the trailer
    stream = bytearray(blob)
    stream[len(blob) // 2] ^= 0xFF
    for name, damaged in (("crc", bytes(crc)), ("stream", bytes(stream)), ("cut", blob[: len(blob) - 20])):
        path = tmp_path / f"{name}.idx.gz"
        path.write_bytes(damaged)
        with pytest.raises(InputError, match=f"{path}: "):
            read_batch(path)


def test_a_compressed_arrow_batch_is_bounded_by_what_it_declares_before_it_is_inflated(tmp_path: Path) -> None:
    """An Arrow IPC file of ~100 KB whose one record batch inflates to 1 GB of image bytes (Zstandard): refused
    from the lengths its buffers declare, before pyarrow allocates them, with the good input still answered."""
    pa = pytest.importorskip("pyarrow", reason="tables need the optional pyarrow package: pip install '.[scale]'")
    bomb = tmp_path / "bomb.arrow"
    column = pa.array([bytes(1 << 20)] * 1024, pa.binary())  # 1 GB of zeros, once, in this process
    table = pa.table({"image": column})
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.OSFile(str(bomb), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    del table, column
    assert bomb.stat().st_size < 1 << 20
    command = [sys.executable, "-c", MEASURE, sys.executable, "-m", "fmnist_deploy.runtime.cli", str(bomb), str(SAMPLE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    peak_mb = int(result.stderr.rsplit("peak-rss-kb ", 1)[1]) / 1024
    stderr = result.stderr.rsplit("peak-rss-kb ", 1)[0]
    assert result.returncode == 1, stderr
    assert result.stdout.splitlines() == [f"{SAMPLE}: Ankle boot (0.673)"]
    assert "record batch 0 holds 1073" in stderr and "bytes once decompressed, over the" in stderr, stderr
    assert peak_mb <= 512, f"peak RSS {peak_mb:.0f} MB: the batch was inflated"
    print(f"\nfmnist-predict on a 1 GB Arrow bomb: peak RSS {peak_mb:.0f} MB")


def test_damaged_arrow_metadata_is_a_one_line_input_error(tmp_path: Path) -> None:
    """The batch bound reads the footer and messages itself: damage anywhere gives InputError or a pass (a
    change it cannot see, for pyarrow's own checks), never another exception; seeded, so a failure repeats."""

    pa = pytest.importorskip("pyarrow", reason="tables need the optional pyarrow package: pip install '.[scale]'")
    from fmnist_deploy.runtime.arrow_bounds import check_ipc_batches
    from fmnist_deploy.runtime.errors import InputError

    table = pa.table({"image": [SAMPLE.read_bytes()] * 30, "label": pa.array(["a", "b", "c"] * 10).dictionary_encode()})
    good = tmp_path / "good.arrow"
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.OSFile(str(good), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=10)
    data = good.read_bytes()
    check_ipc_batches(str(good), 1 << 20)
    damaged = tmp_path / "damaged.arrow"
    # flipped bytes, truncations, and an absurd offset, length or count where the metadata lies (the footer)
    for case, variant in enumerate(damaged_copies(data, 300, 20261205, lies_from=max(0, len(data) - 600))):
        damaged.write_bytes(variant)
        try:
            check_ipc_batches(str(damaged), 1 << 20)
        except InputError as exc:
            assert "\n" not in str(exc) and str(damaged) in str(exc), (case, str(exc))
        except Exception as exc:  # noqa: BLE001 - the point: nothing else escapes
            raise AssertionError(f"case {case}: {type(exc).__name__}: {exc}") from None


def test_a_footer_listing_one_batch_twice_is_refused(tmp_path: Path) -> None:
    """pyarrow reads a batch (and applies a dictionary delta) once per listing: a 65 KB file listing one 500 MB
    batch 2 000 times passed a bound taken per listing. Blocks must each hold their own bytes."""
    pa = pytest.importorskip("pyarrow", reason="tables need the optional pyarrow package: pip install '.[scale]'")
    from fmnist_deploy.runtime import arrow_bounds
    from fmnist_deploy.runtime.errors import InputError

    path = tmp_path / "twice.arrow"
    table = pa.table({"image": [SAMPLE.read_bytes()] * 4})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    arrow_bounds.check_ipc_batches(str(path), 1 << 20)
    data = bytearray(path.read_bytes())
    footer_start = len(data) - 10 - int.from_bytes(data[-10:-6], "little")
    start, count = arrow_bounds._vector(data, arrow_bounds._table(data, footer_start), 3, 24, 100)
    assert count == 2
    data[start + 24 : start + 48] = data[start : start + 24]  # record batch 0 listed again in place of 1
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="record batch 1 overlaps another batch"):
        arrow_bounds.check_ipc_batches(str(path), 1 << 20)


def test_dictionary_deltas_are_bounded_together(tmp_path: Path) -> None:
    """Every record batch is read with all the dictionary deltas before it: their sum is bounded, not each."""
    pa = pytest.importorskip("pyarrow", reason="tables need the optional pyarrow package: pip install '.[scale]'")
    from fmnist_deploy.runtime.arrow_bounds import check_ipc_batches
    from fmnist_deploy.runtime.errors import InputError

    path = tmp_path / "deltas.arrow"
    labels = pa.dictionary(pa.int32(), pa.binary())
    schema = pa.schema([("image", pa.binary()), ("label", labels)])
    options = pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)
    values: list[bytes] = []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
        for i in range(4):  # each batch adds a 1 000-byte label to the dictionary: a delta of ~1 KB
            values.append(bytes([65 + i]) * 1000)
            label = pa.DictionaryArray.from_arrays(pa.array([i], pa.int32()), pa.array(values, pa.binary()))
            writer.write_batch(pa.record_batch([pa.array([b"x"], pa.binary()), label], schema=schema))
    check_ipc_batches(str(path), 8000)  # 4 deltas of ~1 KB: ~4 KB together
    with pytest.raises(InputError, match=r"its dictionary batches hold \d+ bytes together, over the 3000 byte"):
        check_ipc_batches(str(path), 3000)  # each delta alone is under 3 000 bytes
