"""An export replaces its set of files whole: model files, sidecars, signatures, golden vectors, gate
reports and the manifest are either all of the old export or all of the new one, whatever moment
the exporting process is killed at and however full the disk gets.

How: the new set is written and gated in a staging folder beside the output (`.export-staging-*`),
fsynced, then a journal naming it is written atomically (`.export-journal.json`): that rename is
the commit point. The files are then renamed into place one by one and the journal removed.

- Killed (or out of space) before the journal exists: the old set is untouched; the staging folder
  is removed by the next export.
- Killed after: the journal says which names are new. Readers resolve each name through it
  (`resolve`): a name not yet renamed is read from the staging folder, so every reader sees the
  complete new set; the next export (or `recover`) finishes the renames first.

A failed export (gate failure, error, full disk) never commits, so it never replaces a good file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from fmnist_deploy.bounds import MAX_SIDECAR_BYTES, read_regular
from fmnist_deploy.errors import IntegrityError

JOURNAL_NAME = ".export-journal.json"
STAGING_PREFIX = ".export-staging-"


def new_staging(out_dir: Path) -> Path:
    """A fresh, empty staging folder inside `out_dir` (same file system: the renames are atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out_dir, prefix=STAGING_PREFIX))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _journal(out_dir: Path) -> tuple[Path, list[str]] | None:
    """(staging folder, names) of an export committed but not finished in `out_dir`, else None."""
    journal = out_dir / JOURNAL_NAME
    if not os.path.lexists(journal):
        return None
    try:
        record = json.loads(read_regular(journal, MAX_SIDECAR_BYTES, "export journal"))
        staging, names = record["staging"], record["files"]
    except (IntegrityError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{journal}: damaged export journal ({exc}); re-export to replace the set") from None
    if not (isinstance(staging, str) and staging.startswith(STAGING_PREFIX) and "/" not in staging):
        raise IntegrityError(f"{journal}: names {staging!r}, not a staging folder of this folder")
    if not all(isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in names):
        raise IntegrityError(f"{journal}: names files outside its folder")
    return out_dir / staging, list(names)


def commit(staging: Path, out_dir: Path, names: Iterable[str], *, step: Callable[[str], None] | None = None) -> None:
    """Replace `names` in `out_dir` with the staged files, as one change (see the module docstring).

    `step(name)` is called after each rename: the points at which a crash leaves a set half-renamed,
    which the tests stop at one by one.
    """
    names = list(names)
    for name in names:
        _fsync(staging / name)
    _fsync(staging)
    tmp = out_dir / f".{JOURNAL_NAME}.tmp"
    tmp.write_text(json.dumps({"staging": staging.name, "files": names}, sort_keys=True) + "\n")
    _fsync(tmp)
    os.replace(tmp, out_dir / JOURNAL_NAME)  # the commit point
    _fsync(out_dir)
    if step is not None:
        step(JOURNAL_NAME)
    _finish(out_dir, staging, names, step)


def _finish(out_dir: Path, staging: Path, names: list[str], step: Callable[[str], None] | None) -> None:
    for name in names:
        if (staging / name).exists():
            os.replace(staging / name, out_dir / name)
            if step is not None:
                step(name)
    _fsync(out_dir)
    (out_dir / JOURNAL_NAME).unlink()
    _fsync(out_dir)
    shutil.rmtree(staging, ignore_errors=True)


def recover(out_dir: Path) -> None:
    """Finish an export that was committed but killed, and remove what uncommitted ones left (writers only)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    pending = _journal(out_dir)
    if pending is not None:
        _finish(out_dir, pending[0], pending[1], None)
    for leftover in out_dir.glob(f"{STAGING_PREFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
    (out_dir / f".{JOURNAL_NAME}.tmp").unlink(missing_ok=True)


def resolve(path: Path) -> Path:
    """Where the current version of `path` is: in the staging folder of a committed, unfinished export
    of its folder, or `path` itself. Readers open what this returns (and `path` if it vanished meanwhile)."""
    path = Path(path)
    pending = _journal(path.parent)
    if pending is None or path.name not in pending[1]:
        return path
    staged = pending[0] / path.name
    return staged if staged.exists() else path


def read_current(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of the current version of `path` (see `resolve`), a regular file of at most `limit` bytes."""
    where = resolve(path)
    try:
        return read_regular(where, limit, what)
    except IntegrityError:
        if where == path or os.path.lexists(where):
            raise
        return read_regular(path, limit, what)  # renamed into place between the two looks


__all__ = ["JOURNAL_NAME", "STAGING_PREFIX", "commit", "new_staging", "read_current", "recover", "resolve"]
