"""Bounded reads of untrusted files: regular files only, sizes capped before memory is spent, zip archives
checked member by member before any library reads them.

Every limit here is far above what the toolkit itself writes (a model file is ~0.5 MB, a sidecar
~2 KB) and far below what would hurt the machine: a hostile file is refused in one line, with the
limit it broke, before it can hang a reader (a FIFO), stream forever (/dev/zero) or expand in memory
(a zip bomb).

Pure Python: importing this module never imports torch.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

from fmnist_deploy.errors import IntegrityError

MAX_MODEL_BYTES = 64 * 1024 * 1024  # a model file read into memory (the committed ones: 0.1-0.5 MB)
MAX_SIDECAR_BYTES = 1024 * 1024  # a JSON sidecar, signature or manifest (the committed ones: ~2 KB)
MAX_ARCHIVE_MEMBERS = 4096  # records of a .pt / .torchscript / .pt2 archive (the committed ones: <= 40)
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024  # all records of an archive, uncompressed, as declared and as read
MAX_MEMBER_RATIO = 100  # uncompressed / compressed size of one record above RATIO_FLOOR bytes
RATIO_FLOOR = 1024 * 1024


class NotRegularFile(IntegrityError):
    """A path names a FIFO, a device, a socket or a folder where a file's bytes were expected."""


class TooLarge(IntegrityError):
    """A file, or what an archive declares or expands to, is over this toolkit's limit."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of `path` when it is a regular file of at most `limit` bytes; else NotRegularFile / TooLarge.

    Opened non-blocking and checked with fstat on the open descriptor (no window between the check
    and the read): a FIFO never blocks the open, a link to /dev/zero is refused before one byte is read,
    and a file growing while read is cut at limit + 1 bytes and refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot open the {what} ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{path}: the {what} is {_kind(info.st_mode)}, not a regular file; refused")
        if info.st_size > limit:
            raise TooLarge(f"{path}: the {what} is {info.st_size:,} bytes, over the {limit:,} byte limit")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise TooLarge(f"{path}: the {what} grew over the {limit:,} byte limit while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_record_names(infos: list[zipfile.ZipInfo], source: str | Path) -> None:
    """Refuse records whose names Python's zipfile and torch's reader would see differently.

    zipfile cuts a name at its first NUL byte and keeps the last of duplicate names, while torch
    looks names up byte for byte: a checked record could then shadow the one torch loads.
    """
    seen: set[str] = set()
    for info in infos:
        if info.orig_filename != info.filename or info.filename in seen:
            raise IntegrityError(
                f"{source}: record names repeat or hold a NUL byte ({info.filename!r}); refused, since the record "
                "checked need not be the record loaded"
            )
        seen.add(info.filename)


def check_zip(data: bytes, source: str | Path) -> None:
    """Refuse a zip archive whose records are too many, declare too much, or expand too much.

    Every record's declared size is checked against the limits and its compression ratio
    against MAX_MEMBER_RATIO before anything is decompressed; then every compressed record is
    read (at most its declared size, which zipfile enforces with the CRC) so that what it
    really expands to is counted too. Stored records, torch's own, cost nothing to check.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ARCHIVE_MEMBERS:
                raise TooLarge(f"{source}: {len(infos):,} archive records, over the {MAX_ARCHIVE_MEMBERS} limit")
            check_record_names(infos, source)
            declared = 0
            for info in infos:
                declared += info.file_size
                if declared > MAX_ARCHIVE_BYTES:
                    raise TooLarge(
                        f"{source}: its records declare over {MAX_ARCHIVE_BYTES:,} bytes uncompressed "
                        f"(at {info.filename}); refused as a zip bomb"
                    )
                if info.file_size > RATIO_FLOOR and info.file_size > MAX_MEMBER_RATIO * max(info.compress_size, 1):
                    raise TooLarge(
                        f"{source}: record {info.filename} expands {info.compress_size:,} -> {info.file_size:,} bytes, "
                        f"over the {MAX_MEMBER_RATIO}x limit; refused as a zip bomb"
                    )
            for info in infos:
                if info.compress_type == zipfile.ZIP_STORED:
                    continue
                read = 0
                with archive.open(info) as member:
                    while chunk := member.read(1 << 20):
                        read += len(chunk)
                if read != info.file_size:
                    raise IntegrityError(f"{source}: record {info.filename} expands to {read} bytes, not as declared")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, ValueError) as exc:
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"{source}: damaged zip archive ({exc})") from None


__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_SIDECAR_BYTES",
    "NotRegularFile",
    "TooLarge",
    "check_record_names",
    "check_zip",
    "read_regular",
]
