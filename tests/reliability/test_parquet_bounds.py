"""Parquet files whose footer lies about their sizes: the page headers bound memory, not the footer."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from fmnist_deploy.runtime import parquet_pages, tables  # noqa: E402
from fmnist_deploy.runtime.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "artifacts" / "fmnist_mlp.onnx"
CELL = 16 * 1024 * 1024
ROWS = 40  # 640 MB of zero cells in one row group: over the 512 MB row-group cap
RSS_CAP_MB = 400  # the refused file; unchecked, pyarrow's decode of it peaks well over 1 GB


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _padded_varint(n: int, length: int) -> bytes:
    """`n` as a non-canonical varint of exactly `length` bytes (Thrift readers accept it)."""
    out = bytearray(_varint(n))
    assert len(out) <= length
    out[-1] |= 0x80
    out += b"\x80" * (length - len(out) - 1) + b"\x00"
    return bytes(out)


def _lying_parquet(path: Path) -> None:
    """ROWS cells of 16 MB zeros (zstd: a few KB) whose footer says the row group holds 1000 bytes."""
    zeros = np.zeros(ROWS * CELL, dtype=np.uint8)  # untouched pages: no resident memory
    offsets = pa.py_buffer(np.arange(0, ROWS * CELL + 1, CELL, dtype=np.int32))
    cells = pa.Array.from_buffers(pa.binary(), ROWS, [None, offsets, pa.py_buffer(zeros)])
    pq.write_table(
        pa.table({"image": cells}),
        path,
        compression="zstd",
        row_group_size=ROWS,
        use_dictionary=False,
        write_batch_size=1,  # one 16 MB page per cell: each page under the page cap, their sum over the group cap
    )
    data = path.read_bytes()
    meta = pq.ParquetFile(path).metadata.row_group(0)
    assert meta.total_byte_size == meta.column(0).total_uncompressed_size > ROWS * CELL
    true = _varint(meta.total_byte_size << 1)  # zigzag of a positive i64
    footer_at = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    head, footer = data[:footer_at], data[footer_at:]
    assert footer.count(b"\x16" + true) == 2  # RowGroup.total_byte_size, ColumnMetaData.total_uncompressed_size
    footer = footer.replace(b"\x16" + true, b"\x16" + _padded_varint(1000 << 1, len(true)))
    path.write_bytes(head + footer)
    assert pq.ParquetFile(path).metadata.row_group(0).total_byte_size == 1000


def _run_predict(path: Path, checked: bool) -> tuple[int, str, float]:
    """fmnist-predict on `path` in a child; its exit status, output and peak RSS in MB (the child's VmHWM:
    getrusage's ru_maxrss survives exec, so a child forked from this process would report our peak)."""
    script = textwrap.dedent(
        f"""
        import sys
        if not {checked!r}:  # the footer check alone, as before the page headers were read
            from fmnist_deploy.runtime import parquet_pages
            parquet_pages.check_pages = lambda *a, **k: None
            from fmnist_deploy.runtime import tables
            tables.check_pages = parquet_pages.check_pages
        from click.testing import CliRunner
        from fmnist_deploy.runtime.cli import main as predict
        result = CliRunner().invoke(predict, ["--model", {str(MODEL)!r}, {str(path)!r}])
        print(result.output)
        print("RSS_KB", next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        sys.exit(result.exit_code)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    rss = [line for line in done.stdout.splitlines() if line.startswith("RSS_KB")]
    assert rss, done.stdout + done.stderr
    return done.returncode, done.stdout + done.stderr, int(rss[0].split()[1]) / 1024


@pytest.fixture(scope="module")
def lying(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parquet") / "lie.parquet"
    # written in a child: the writer's memory (GBs) stays out of this process, whose size a forked child inherits
    subprocess.run([sys.executable, __file__, str(path)], check=True, timeout=600)
    assert path.stat().st_size < 200_000
    return path


def test_a_footer_that_lies_about_its_size_is_refused_by_the_page_headers(lying: Path) -> None:
    assert tables.table_groups(str(lying), "image") == [ROWS]  # the footer alone passes
    with pytest.raises(InputError) as caught:
        next(tables.read_group(str(lying), 0, "image"))
    message = str(caught.value)
    assert "\n" not in message and "row group 0" in message and "over" in message and "limit" in message


@pytest.mark.skipif(not MODEL.is_file(), reason="needs the exported artifacts/fmnist_mlp.onnx (make export)")
def test_the_lying_file_is_refused_under_the_memory_cap_and_was_not_before(lying: Path) -> None:
    code, output, rss = _run_predict(lying, checked=True)
    assert "uncompressed by its page headers" in output and "Traceback" not in output, output
    assert sum("lie.parquet" in line for line in output.splitlines()) == 1, output
    assert code != 0
    assert rss < RSS_CAP_MB, f"peak RSS {rss:.0f} MB"
    print(f"peak RSS refused {rss:.0f} MB")
    code, output, unchecked = _run_predict(lying, checked=False)
    print(f"peak RSS unchecked {unchecked:.0f} MB")
    assert unchecked > RSS_CAP_MB, f"without the page check peak RSS was only {unchecked:.0f} MB: {output}"


def _honest(path: Path, rows: int = 300) -> list[bytes]:
    from PIL import Image

    cells = []
    for i in range(rows):
        out = io.BytesIO()
        Image.fromarray(np.full((28, 28), i % 256, dtype=np.uint8)).save(out, format="PNG")
        cells.append(out.getvalue())
    pq.write_table(pa.table({"image": cells, "label": list(range(rows))}), path, row_group_size=128)
    return cells


def test_an_honest_table_of_image_bytes_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "honest.parquet"
    cells = _honest(path)
    groups = tables.table_groups(str(path), "image")
    assert groups == [128, 128, 44]
    read = [c for g in range(len(groups)) for part, _ in tables.read_group(str(path), g, "image") for c in part]
    assert read == cells
    dictionary = tmp_path / "dict.parquet"  # dictionary pages walked too
    pq.write_table(pa.table({"image": cells[:4] * 50}), dictionary, compression="snappy", use_dictionary=True)
    assert pq.ParquetFile(dictionary).metadata.row_group(0).column(0).has_dictionary_page
    assert [c for part, _ in tables.read_group(str(dictionary), 0, "image") for c in part] == cells[:4] * 50


def test_a_row_group_over_the_cap_by_its_summed_page_sizes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "honest.parquet"
    _honest(path, rows=100)
    parquet_pages.check_pages(str(path), 0, ["image"], 1_000_000)
    with pytest.raises(
        InputError,
        match=r"row group 0 holds at least \d+ bytes uncompressed by its page headers, over the 1000 byte limit",
    ):
        parquet_pages.check_pages(str(path), 0, ["image"], 1000)
    parquet_pages.check_pages(str(path), 0, ["label"], 1000)  # only the projected columns count
    dotted = tmp_path / "dotted.parquet"  # a dot in a top-level name, and a struct's field, are both counted
    images = pq.read_table(path).column("image").combine_chunks()
    pq.write_table(pa.table({"im.age": images, "hf": pa.StructArray.from_arrays([images], ["bytes"])}), dotted)
    for column in ("im.age", "hf"):
        with pytest.raises(InputError, match="by its page headers"):
            parquet_pages.check_pages(str(dotted), 0, [column], 1000)


def _first_page(path: Path) -> tuple[bytes, int]:
    """The file's bytes and its first page header's length."""
    data = path.read_bytes()
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
        start = chunk.dictionary_page_offset
    reader = parquet_pages._Reader(data[start:])
    reader.struct(0, want={1: 0, 2: 0, 3: 0})
    return data, start


def _refused(path: Path) -> str:
    with pytest.raises(InputError) as caught:
        for _ in tables.read_group(str(path), 0, "image"):
            pass
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",  # field header then nothing: the header runs into the page body / chunk end
        "bad-type",  # field type 13 does not exist
        "deep",  # structs nested past the depth bound
        "huge-size",  # uncompressed_page_size over the page cap
        "negative",  # compressed_page_size negative
        "past-chunk",  # compressed_page_size runs past the chunk
        "not-i32",  # field 2 typed as a binary
    ],
)
def test_malformed_page_headers_are_refused_in_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "honest.parquet"
    _honest(path, rows=20)
    data, start = _first_page(path)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    room = chunk.total_compressed_size
    header = {
        "truncated": b"\x15\x00\x15",
        "bad-type": b"\x1d" + b"\x00" * 8,
        "deep": b"\x1c" * 40,
        "huge-size": b"\x15\x00\x15" + _varint((parquet_pages.MAX_PAGE_BYTES + 1) << 1) + b"\x15\x02\x00",
        "negative": b"\x15\x00\x15\x02\x15\x01\x00",
        "past-chunk": b"\x15\x00\x15\x02\x15" + _varint(room << 1) + b"\x00",
        "not-i32": b"\x15\x00\x18\x01a\x15\x02\x00",
    }[damage]
    if damage == "truncated":
        header = header + b"\xff" * (room - len(header))  # varint bytes to the chunk's end
    data = data[:start] + header + data[start + len(header) :]
    path.write_bytes(data)
    message = _refused(path)
    expected = {"huge-size": "over the", "past-chunk": "runs past"}.get(damage, "malformed page header")
    assert expected in message, message


@pytest.mark.parametrize("codec", ["zstd", "snappy", "gzip", "lz4", "brotli"])
def test_pyarrow_refuses_a_page_that_decompresses_to_another_size_than_its_header(tmp_path: Path, codec: str) -> None:
    """The header's uncompressed size bounds the decode buffer only if a page bigger than it is refused."""
    path = tmp_path / "honest.parquet"
    cells = [bytes([i]) * 5000 for i in range(20)]
    pq.write_table(pa.table({"image": cells}), path, compression=codec, use_dictionary=False)
    data, start = _first_page(path)
    reader = parquet_pages._Reader(data[start:])
    fields = reader.struct(0, want={1: 0, 2: 0, 3: 0})
    true = _varint(fields[2] << 1)
    at = data.index(b"\x15" + true, start) + 1  # field 2 follows field 1 (delta 1, i32)
    assert at < start + reader.pos
    smaller = _padded_varint(1000 << 1, len(true))  # claims 1000 bytes: the page holds ~100 000
    path.write_bytes(data[:at] + smaller + data[at + len(true) :])
    with pytest.raises(InputError, match="unreadable or damaged"):
        for _ in tables.read_group(str(path), 0, "image"):
            pass


if __name__ == "__main__":
    _lying_parquet(Path(sys.argv[1]))
