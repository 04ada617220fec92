"""From paths to model input: folders walked in sorted order, image files decoded in parallel, in order.

`iter_items` is what `fmnist-predict`, `Predictor.predict_files` and the scale-out
decode tasks read. Image files go to a pool of worker processes (one per core) a few
tasks ahead of the consumer: answers stream in input order and memory stays bounded
however many files there are. A worker that dies on a file (a decoder crash on a hostile
input) costs that file its answer, never the run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fmnist_deploy.contract import IMAGE_SHAPE
from fmnist_deploy.runtime.errors import InputError
from fmnist_deploy.runtime.images import read_batch, read_image
from fmnist_deploy.runtime.input_kinds import IMAGE, by_name, input_kind

# Image files one decode task reads. A process pool's hand-off costs a fraction of a millisecond per
# task: measured on 2 cores (6 000 PNG files), 32 files per task gave ~29 µs per image, 512 ~14 µs.
FILES_PER_TASK = 512
DARK_ON_LIGHT_NOTE = (
    "looks dark-on-light (bright border); Fashion-MNIST is light-on-dark: pass --invert for photos and scans"
)


class Item(NamedTuple):
    """One image ready for the model, or the reason it is not (a tuple: made thousands of times a second)."""

    name: str  # what the answer is about: the file, or `file[i]` for an image of a batch file or table
    image: np.ndarray | None  # (28, 28) uint8
    error: str | None = None
    note: str | None = None  # a hint about a good input (e.g. it may want --invert)
    path: str = ""  # the file it came from
    index: int = -1  # its index in that file; -1 for a file that is one image


def walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and the files under folders named, each folder walked in sorted order.

    A folder with no image or batch file under it is yielded itself, so that the caller
    reports it rather than answering nothing.
    """
    for path, _ in walk_kinds(paths):
        yield Path(path)


def walk_kinds(paths: Iterable[str | Path]) -> Iterator[tuple[str, str]]:
    """walk(), each path (a str) with what it is: an input kind's name (runtime.input_kinds; a file named on
    its own that no kind claims is an image, for the decoder to judge), empty (a folder with nothing to read)
    or missing.

    One stat per path named; the files under a folder come from its directory entries,
    without a stat or a Path object each, in the order `sorted(folder.rglob("*"))` gives.
    """
    for given in paths:
        path = os.fspath(given)
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except (OSError, ValueError):  # ValueError: a NUL byte in the name
            yield path, "missing"
            continue
        if not is_dir:
            yield path, (input_kind(os.path.basename(path)) or IMAGE).name
            continue
        found = sorted(_files_under(path, ()))
        if not found:
            yield path, "empty"
        for parts, full in found:
            yield full, (input_kind(parts[-1]) or IMAGE).name


def _files_under(folder: str, parts: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path parts below the walk's root, path) of each file under a folder that an input kind claims; symlinked
    folders are not followed (as Path.rglob), unreadable folders are skipped (as Path.rglob)."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir() and not entry.is_symlink():
                yield from _files_under(entry.path, (*parts, entry.name))
            elif entry.is_file() and input_kind(entry.name) is not None:
                yield (*parts, entry.name), entry.path
        except OSError:
            continue


def looks_dark_on_light(images: np.ndarray) -> np.ndarray:
    """For (N, 28, 28) model inputs, whether each has a bright border: probably a photo or scan that wants --invert."""
    border = (
        images[:, 0, :].sum(axis=1, dtype=np.int64)
        + images[:, -1, :].sum(axis=1, dtype=np.int64)
        + images[:, :, 0].sum(axis=1, dtype=np.int64)
        + images[:, :, -1].sum(axis=1, dtype=np.int64)
    )
    return border / (4 * IMAGE_SHAPE[0]) > 127.5


Decoded = tuple[np.ndarray, list[str | None]]  # what decode_files returns


def decode_files(paths: list[str], invert: bool) -> Decoded:
    """Image files -> (k, 28, 28) uint8 and each file's error or None (its row then stays zero).

    What a decode worker runs: compact to send back, and one bad file costs only its row.
    """
    images = np.zeros((len(paths), *IMAGE_SHAPE), dtype=np.uint8)
    errors: list[str | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            images[i] = read_image(path, invert=invert)
        except InputError as exc:
            errors[i] = str(exc)
        except MemoryError:  # one input's failure never costs the others their answers
            errors[i] = f"{path}: too large to decode in the memory available"
    return images, errors


def _items(names: list[str], decoded: Decoded, invert: bool, file: str | None = None, first: int = 0) -> list[Item]:
    """Items of decoded images: each name a file of its own, or with `file` the rows first, first + 1, ... of it."""
    images, errors = decoded
    dark = np.zeros(len(names), dtype=bool) if invert else looks_dark_on_light(images)
    return [
        Item(
            name,
            None if error is not None else images[i],
            error,
            DARK_ON_LIGHT_NOTE if error is None and dark[i] else None,
            name if file is None else file,
            -1 if file is None else first + i,
        )
        for i, (name, error) in enumerate(zip(names, errors, strict=True))
    ]


def batch_items(path: str, *, invert: bool = False, image_column: str = "image") -> Iterator[Item]:
    """The images of a .npy / IDX batch file, `path[i]` naming each (`image_column` is the table readers')."""
    try:
        batch = read_batch(Path(path))
        if batch.shape[0] == 0:
            raise InputError(f"{path}: holds no images (shape {list(batch.shape)})")
    except InputError as exc:
        yield Item(path, None, str(exc), path=path)
        return
    except MemoryError:
        yield Item(path, None, f"{path}: too large to decode in the memory available", path=path)
        return
    for i in range(batch.shape[0]):
        image = np.asarray(batch[i])
        yield Item(f"{path}[{i}]", 255 - image if invert else image, path=path, index=i)


def table_items(path: str, *, invert: bool = False, image_column: str = "image") -> Iterator[Item]:
    """The images of a Parquet / Arrow table of image bytes, a row group at a time; `path[row]` names each."""
    from fmnist_deploy.runtime.tables import decode_cells, read_group, table_groups

    try:
        groups = table_groups(path, image_column)
        if not any(groups):
            raise InputError(f"{path}: holds no rows")
    except InputError as exc:
        yield Item(path, None, str(exc), path=path)
        return
    row = 0
    for group in range(len(groups)):
        try:
            for cells, _ in read_group(path, group, image_column):
                names = [f"{path}[{row + i}]" for i in range(len(cells))]
                yield from _items(names, decode_cells(cells, names, invert), invert, path, row)
                row += len(cells)
        except InputError as exc:
            yield Item(path, None, str(exc), path=path)
            return


def _tasks(paths: Iterable[str | Path], invert: bool, image_column: str) -> Iterator[list[str] | Iterator[Item]]:
    """The inputs in order: lists of image files to decode together, or iterators of items ready as they are."""
    images: list[str] = []
    for path, kind in walk_kinds(paths):
        if kind == IMAGE.name:
            images.append(path)
            if len(images) == FILES_PER_TASK:
                yield images
                images = []
            continue
        if images:
            yield images
            images = []
        if kind == "empty":
            yield iter([Item(path, None, f"{path}: no images found under this folder", path=path)])
        elif kind == "missing":
            yield iter([Item(path, None, f"{path}: no such file or folder", path=path)])
        else:
            yield by_name(kind).items(path, invert=invert, image_column=image_column)
    if images:
        yield images


# What iter_items holds in order: a submitted task (its files and future), decoded items, or items to come.
_Pending = tuple[list[str], Future[Decoded]] | list[Item] | Iterator[Item]


def decode_workers() -> int:
    """Decode processes for a large run: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _worker_start() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to report, once


class _DecodePool:
    """Worker processes decoding tasks of image files; a task whose worker died is retried file by file."""

    def __init__(self, workers: int, invert: bool) -> None:
        self.workers = workers
        self.invert = invert
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # fork: a worker starts in milliseconds with the decoders already imported; it runs only
        # read_image (Python, numpy, Pillow, imagecodecs), never the model runtime's threads.
        return ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_start
        )

    def submit(self, paths: list[str]) -> Future[Decoded]:
        return self.pool.submit(decode_files, paths, self.invert)

    def result(self, paths: list[str], future: Future[Decoded]) -> list[Item]:
        try:
            return _items(paths, future.result(), self.invert)
        except BrokenProcessPool:
            return [self._alone(path) for path in paths]

    def _alone(self, path: str) -> Item:
        """One file in a task of its own: the file that kills its worker is the one reported."""
        for _ in range(2):  # a pool broken by an earlier task is restarted, then the file is tried again
            try:
                return _items([path], self.submit([path]).result(), self.invert)[0]
            except (BrokenProcessPool, RuntimeError):  # RuntimeError: submit to a pool that broke meanwhile
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._start()
        return Item(path, None, f"{path}: the image decoder crashed on this file", path=path)

    def close(self) -> None:
        # Waits for the tasks already running (at most `workers` of FILES_PER_TASK files); the queued
        # ones are cancelled. Not waiting leaves the executor's exit hook a closed pipe (Python 3.11).
        self.pool.shutdown(wait=True, cancel_futures=True)


def iter_items(
    paths: Iterable[str | Path], *, invert: bool = False, workers: int | None = None, image_column: str = "image"
) -> Iterator[Item]:
    """Every image of every input, in input order; a bad input becomes an Item with its error.

    Parquet / Arrow tables give one image per row, from their `image_column` of image bytes
    (decoded in this process: the tables are for small runs; fmnist-batch spreads big ones).

    With more than one worker (default: one per core, on Linux), image files are decoded by
    worker processes once the run holds a full task of them (FILES_PER_TASK files); fewer
    files never pay for a pool. At most 2 x workers tasks are in flight.
    """
    if workers is None:  # fork is safe for these workers on Linux; macOS's system libraries are not fork-safe
        workers = decode_workers() if sys.platform.startswith("linux") else 1
    pool: _DecodePool | None = None
    ahead: deque[_Pending] = deque()
    try:
        for task in _tasks(paths, invert, image_column):
            if isinstance(task, list):
                if pool is None and workers > 1 and len(task) == FILES_PER_TASK:
                    pool = _DecodePool(workers, invert)
                if pool is None:
                    ahead.append(_items(task, decode_files(task, invert), invert))
                else:
                    ahead.append((task, pool.submit(task)))
            else:
                ahead.append(task)
            while len(ahead) > 2 * workers:
                yield from _ready(ahead.popleft(), pool)
        while ahead:
            yield from _ready(ahead.popleft(), pool)
    finally:  # a consumer that stops early (Ctrl-C, an error) leaves no decoding behind
        if pool is not None:
            pool.close()


def _ready(task: _Pending, pool: _DecodePool | None) -> Iterable[Item]:
    if isinstance(task, tuple):
        assert pool is not None
        return pool.result(*task)
    return task


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of at most `size` items: bounded memory for any number of files."""
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
