"""Parquet page headers read before pyarrow decodes a row group, so that the file cannot size our memory.

A Parquet footer's sizes (`total_byte_size`, `total_uncompressed_size`) are written by whoever supplies the
file, and pyarrow decompresses a whole page into a buffer sized by that page's header before any value
reaches us. So the headers themselves are read here, with a small bounded reader of the Thrift compact
protocol: every page of every column chunk we are about to read is walked from the chunk's first page to
its end, and each page's `uncompressed_page_size` and their sum per row group are checked against caps.
pyarrow refuses a page that decompresses to any other size than its header says, so the header bounds
the buffer. Headers that are malformed, overlap or run past their chunk are refused.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from fmnist_deploy.runtime.errors import InputError

MAX_PAGE_BYTES = 64 * 1024 * 1024  # one page, uncompressed, as its header declares it
MAX_HEADER_BYTES = 1024 * 1024  # one page header (statistics included)
_MAX_DEPTH = 16  # nested structs / lists in a header
_FIRST_READ = 4096


class _Short(Exception):
    """The header runs past the bytes read so far."""


class _Bad(Exception):
    """The header is not a valid Thrift compact struct."""


class _Reader:
    """A Thrift compact-protocol reader over bytes; skips any field it does not need."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Short
        self.pos += 1
        return self.data[self.pos - 1]

    def skip_bytes(self, n: int) -> None:
        if n < 0:
            raise _Bad("negative length")
        if self.pos + n > len(self.data):
            raise _Short
        self.pos += n

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise _Bad("varint over 10 bytes")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _Bad("nested too deeply")
        if kind in (1, 2):  # bool inside a struct: the value is the type
            return
        if kind == 3:
            self.skip_bytes(1)
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.skip_bytes(8)
        elif kind == 8:
            self.skip_bytes(self.varint())
        elif kind in (9, 10):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            for _ in range(size):
                if elem in (1, 2):  # bool inside a list: one byte each
                    self.skip_bytes(1)
                else:
                    self.skip(elem, depth + 1)
        elif kind == 11:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip(types >> 4, depth + 1)
                    self.skip(types & 0x0F, depth + 1)
        elif kind == 12:
            self.struct(depth + 1)
        else:
            raise _Bad(f"unknown field type {kind}")

    def struct(self, depth: int, want: dict[int, int] | None = None) -> dict[int, int]:
        """Read one struct; return the i32 values of the top-level fields 1-3 when asked (`want`)."""
        found: dict[int, int] = {}
        last = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == 0:
                return found
            delta = head >> 4
            field = last + delta if delta else self.zigzag()
            last = field
            if want is not None and field in want:
                if kind != 5:
                    raise _Bad(f"field {field} is not an i32")
                found[field] = self.zigzag()
            else:
                self.skip(kind, depth)


def _header(f: BinaryIO, pos: int, limit: int) -> tuple[int, int, int, int]:
    """The page header at `pos`, reading no further than `limit`: (type, uncompressed, compressed, header length)."""
    size = min(_FIRST_READ, limit - pos)
    while True:
        f.seek(pos)
        data = f.read(size)
        reader = _Reader(data)
        try:
            fields = reader.struct(0, want={1: 0, 2: 0, 3: 0})
        except _Short:
            if len(data) < size or size >= min(MAX_HEADER_BYTES, limit - pos):
                raise _Bad("header runs past its column chunk (or over the header size limit)") from None
            size = min(size * 8, MAX_HEADER_BYTES, limit - pos)
            continue
        if set(fields) != {1, 2, 3}:
            raise _Bad("header lacks its type or sizes")
        return fields[1], fields[2], fields[3], reader.pos


def check_pages(path: str, group: int, columns: list[str], max_group_bytes: int) -> None:
    """Walk the page headers of row group `group`'s chunks of `columns` (top-level names); refuse in one
    line a page over MAX_PAGE_BYTES uncompressed, a group over `max_group_bytes`, or a malformed header."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    meta = parquet.metadata.row_group(group)
    size = _file_size(path)
    total = 0
    with open(path, "rb") as f:
        for j in range(meta.num_columns):
            chunk = meta.column(j)
            name = chunk.path_in_schema  # "a.b" for a struct's field; a top-level name may hold a dot itself
            if not any(name == c or name.startswith(c + ".") for c in columns):
                continue
            total += _check_chunk(f, chunk, size, f"{path}: row group {group} column {chunk.path_in_schema}")
            if total > max_group_bytes:
                raise InputError(
                    f"{path}: row group {group} holds at least {total} bytes uncompressed by its page headers, over "
                    f"the {max_group_bytes} byte limit; rewrite it with smaller row groups"
                )


def _file_size(path: str) -> int:
    import os

    return os.stat(path).st_size


def _check_chunk(f: BinaryIO, chunk: Any, file_size: int, name: str) -> int:
    """The summed uncompressed page sizes of one column chunk, each page checked."""
    start = chunk.data_page_offset
    dictionary = chunk.dictionary_page_offset if chunk.has_dictionary_page else None
    if dictionary is not None and 0 < dictionary < start:
        start = dictionary
    end = start + chunk.total_compressed_size
    if start < 4 or chunk.total_compressed_size < 0 or end > file_size:
        raise InputError(f"{name}: column chunk lies outside the file (damaged footer)")
    pos, total = start, 0
    while pos < end:
        try:
            _kind, uncompressed, compressed, length = _header(f, pos, end)
        except _Bad as exc:
            raise InputError(f"{name}: malformed page header at byte {pos} ({exc})") from None
        if uncompressed < 0 or compressed < 0:
            raise InputError(f"{name}: malformed page header at byte {pos} (negative size)")
        if pos + length + compressed > end:
            raise InputError(f"{name}: page at byte {pos} runs past its column chunk (damaged file)")
        if uncompressed > MAX_PAGE_BYTES:
            raise InputError(
                f"{name}: page at byte {pos} holds {uncompressed} bytes uncompressed, over the {MAX_PAGE_BYTES} "
                "byte limit; rewrite it with smaller pages"
            )
        total += uncompressed
        pos += length + compressed
    return total
