"""Arrow IPC record batches bounded by their own buffer headers before pyarrow decompresses one.

An Arrow IPC file (`.arrow`, `.feather` v2) may compress each buffer of a record batch (LZ4 frame or
Zstandard); each compressed buffer starts with its uncompressed length, and pyarrow allocates that
much and inflates into it when the batch is read. A file of a few kilobytes can so declare gigabytes.
Here the file's footer and each record (and dictionary) batch's message are read with a generic
flatbuffer table reader, and the uncompressed size of every buffer summed per batch, so a batch that
would inflate past the limit is refused before pyarrow reads it. Uncompressed buffers are the file's
own bytes (memory-mapped), bounded by its size.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from fmnist_deploy.runtime.errors import InputError

MAGIC = b"ARROW1"
CONTINUATION = 0xFFFFFFFF
RECORD_BATCH, DICTIONARY_BATCH = 3, 2  # Arrow's MessageHeader union
BLOCK_BYTES, BUFFER_BYTES = 24, 16  # the Block and Buffer structs
MAX_BUFFERS = 1 << 16  # buffers of one batch: 3 per column of a few thousand columns


def check_ipc_batches(path: str, limit: int) -> None:
    """Raise InputError if a record or dictionary batch of the Arrow IPC file `path` would take more than
    `limit` bytes once its buffers are decompressed (or its metadata is not a valid Arrow file's)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            dictionaries = 0
            for kind, index, size, compressed in _batches(data):
                if size > limit:
                    raise InputError(
                        f"{path}: {kind} {index} holds {size} bytes{' once decompressed' if compressed else ''}, "
                        f"over the {limit} byte limit; rewrite it with smaller batches"
                    )
                dictionaries += size if kind == "dictionary batch" else 0
                if dictionaries > limit:  # deltas add up: every record batch is read with all of them
                    raise InputError(
                        f"{path}: its dictionary batches hold {dictionaries} bytes together, over the {limit} byte "
                        "limit"
                    )
    except (ValueError, OSError) as exc:  # ValueError: mmap of an empty file
        raise InputError(f"{path}: not a readable {Path(path).suffix[1:]} file ({exc})") from None
    except (struct.error, IndexError, _Malformed) as exc:
        raise InputError(f"{path}: not a readable Arrow IPC file (metadata: {exc or 'out of range'})") from None


class _Malformed(Exception):
    """The file's metadata is not what the Arrow IPC format writes."""


def _table(buf: bytes | mmap.mmap, start: int) -> tuple[int, int]:
    """(position of a table, position of its vtable) in `buf`, from the offset to it stored at `start` (a
    flatbuffer's root, or a table field)."""
    pos = start + struct.unpack_from("<I", buf, start)[0]
    return pos, pos - struct.unpack_from("<i", buf, pos)[0]


def _field(buf: bytes | mmap.mmap, table: tuple[int, int], index: int) -> int:
    """The absolute position of field `index` of a table, or 0 when the field is absent."""
    pos, vtable = table
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vtable_size:
        return 0
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return pos + offset if offset else 0


def _child(buf: bytes | mmap.mmap, table: tuple[int, int], index: int) -> tuple[int, int] | None:
    """The table field `index` points to, or None."""
    at = _field(buf, table, index)
    return _table(buf, at) if at else None


def _vector(buf: bytes | mmap.mmap, table: tuple[int, int], index: int, item: int, limit: int) -> tuple[int, int]:
    """(start, length) of a vector of structs of `item` bytes; an absent vector is empty."""
    at = _field(buf, table, index)
    if not at:
        return 0, 0
    start = at + struct.unpack_from("<I", buf, at)[0]
    length = struct.unpack_from("<I", buf, start)[0]
    if length > limit or start + 4 + length * item > len(buf):
        raise _Malformed(f"a vector of {length} entries")
    return start + 4, length


def _batches(data: mmap.mmap):
    """(kind, index, bytes once decompressed, whether compressed) of every batch the footer lists."""
    size = len(data)
    if size < 18 or data[:6] != MAGIC or data[-6:] != MAGIC:
        raise _Malformed("no ARROW1 magic at both ends")
    footer_length = struct.unpack_from("<i", data, size - 10)[0]
    footer_start = size - 10 - footer_length
    if footer_length <= 0 or footer_start < 8:
        raise _Malformed(f"a footer of {footer_length} bytes")
    footer = _table(data, footer_start)
    blocks = []  # (offset, metadata length, body length, kind, index)
    for field, kind in ((2, "dictionary batch"), (3, "record batch")):
        start, count = _vector(data, footer, field, BLOCK_BYTES, size // BLOCK_BYTES)
        for i in range(count):
            offset, meta_length, body_length = struct.unpack_from("<qi4xq", data, start + i * BLOCK_BYTES)
            blocks.append((offset, meta_length, body_length, kind, i))
    _disjoint(blocks, footer_start)
    for offset, meta_length, body_length, kind, i in blocks:
        yield kind, i, *_batch_bytes(data, offset, meta_length, body_length)


def _disjoint(blocks: list[tuple[int, int, int, str, int]], end: int) -> None:
    """Each block its own bytes between the magic and the footer: a footer listing one batch many times would
    have pyarrow read it (and apply a dictionary delta) again for every listing."""
    previous_end = 8
    for offset, meta_length, body_length, kind, index in sorted(blocks):
        if offset < previous_end or meta_length < 0 or body_length < 0 or offset + meta_length + body_length > end:
            raise _Malformed(f"{kind} {index} overlaps another batch or the footer")
        previous_end = offset + meta_length + body_length


def _batch_bytes(data: mmap.mmap, offset: int, meta_length: int, body_length: int) -> tuple[int, bool]:
    """The bytes a batch's buffers take once read (compressed ones by the length each declares), and whether
    they are compressed."""
    if offset < 8 or meta_length < 8 or body_length < 0 or offset + meta_length + body_length > len(data):
        raise _Malformed(f"a block at {offset} of {meta_length} + {body_length} bytes")
    message_start = offset + 8 if struct.unpack_from("<I", data, offset)[0] == CONTINUATION else offset + 4
    message = _table(data, message_start)
    header_type_at = _field(data, message, 1)
    header_type = data[header_type_at] if header_type_at else 0
    header = _child(data, message, 2)
    if header is None or header_type not in (RECORD_BATCH, DICTIONARY_BATCH):
        raise _Malformed(f"a message of type {header_type} where a batch belongs")
    batch = header if header_type == RECORD_BATCH else _child(data, header, 1)
    if batch is None:
        return 0, False
    start, count = _vector(data, batch, 2, BUFFER_BYTES, MAX_BUFFERS)
    compressed = _child(data, batch, 3) is not None
    body = offset + meta_length
    total = 0
    for i in range(count):
        buffer_offset, length = struct.unpack_from("<qq", data, start + i * BUFFER_BYTES)
        if buffer_offset < 0 or length < 0 or buffer_offset + length > body_length:
            raise _Malformed(f"a buffer at {buffer_offset} of {length} bytes in a body of {body_length}")
        if compressed and length >= 8:
            declared = struct.unpack_from("<q", data, body + buffer_offset)[0]
            total += length - 8 if declared == -1 else max(declared, 0)  # -1: stored uncompressed
        else:
            total += length
    return total, compressed


__all__ = ["check_ipc_batches"]
