"""Batch inference over very large image sets on Ray Data, with exactly fmnist-predict's answers.

The pipeline, and why it is shaped so (measured on 2 cores, 60 000 images; the figures are in
artifacts/bench/batch.md):

- The driver plans **units of work** and nothing else: a unit is up to `batch_size` image
  files, a slice of a .npy / IDX file, or a row group of a Parquet file. The top of a
  folder is listed by the driver; each sub-folder is listed by a Ray task of its own, so a
  tree of millions of files is never walked (nor statted: directory entries only) by one
  process. Batch-file headers and Parquet footers are read, never their data.
- A pool of actors, each holding one ONNX Runtime session, takes one unit at a time: it
  decodes the unit's images with fmnist-predict's own functions (`runtime.images`,
  `runtime.inputs.decode_files`), classifies them in one call, and writes the answers as
  one Parquet file, `part-<unit>.parquet`, atomically. Only a short summary per unit (rows,
  failures, node, seconds per stage) goes back through the object store: no image, no
  answer and no per-row Python on the driver, whose cycles would be taken from the actors
  on a small machine.
- Every part file is named by its unit, so a retried unit (a killed actor, a lost node)
  rewrites the same file, a killed job resumes with `--resume` by skipping the units whose
  part exists, and the folder reads back in input order (`pyarrow.parquet.read_table`,
  `ray.data.read_parquet`). A single-file output (.parquet, .jsonl or .csv) is those parts joined
  once at the end, atomically.

Workers import only the torch-free runtime (onnxruntime, numpy, Pillow, pyarrow). The model
travels to them as bytes through the object store, so on a cluster no node needs the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.contract import IMAGE_SHAPE
from fmnist_deploy.errors import FmnistError
from fmnist_deploy.runtime.input_kinds import IMAGE, InputKind, by_name, input_kind
from fmnist_deploy.runtime.records import OUTPUT_SUFFIXES, arrow_schema, record_writer

LIST_SUFFIXES = (".txt", ".lst")  # a text file listing input paths, one per line
PART_PREFIX = "part-"
MANIFEST = "_job.json"  # leading underscore: Arrow and Ray's Parquet readers skip it
STAGES = ("decode", "model", "answers", "write")  # what an actor reports the seconds of, per unit


class BatchError(FmnistError):
    """The job cannot start or finish: bad output name, missing model, unreachable cluster, lost work."""


@dataclass(frozen=True)
class JobConfig:
    """What a batch job reads, how it runs, where it writes."""

    model: Path
    output: Path  # .parquet / .jsonl / .csv: one file; anything else: a folder of part files
    address: str | None = None  # None: a local Ray instance sized to this machine
    actors: int = 2
    batch_size: int = 1024  # images per unit of work, per model call and per part file
    top_k: int = 3
    invert: bool = False
    resume: bool = False
    image_column: str = "image"  # the image-bytes column of Parquet / Arrow inputs
    id_column: str | None = None  # a column of Parquet / Arrow inputs carried into every answer
    cpus_per_actor: float = 1.0

    @property
    def partitioned(self) -> bool:
        """Whether the output is a folder of part files (any name without .parquet / .jsonl / .csv)."""
        return self.output.suffix not in OUTPUT_SUFFIXES or self.output.is_dir()


def parts_folder(config: JobConfig) -> Path:
    """Where the part files go: the output folder itself, or a hidden folder beside a single output file."""
    if config.partitioned:
        return config.output
    return config.output.with_name(f".{config.output.name}.parts")


# ---------------------------------------------------------------------------------------------- planning


def _unit(
    kind: str,
    *,
    paths: list[str] | None = None,
    path: str = "",
    group: int = -1,
    start: int = -1,
    stop: int = -1,
    error: str = "",
    input_kind: str = "",
) -> dict[str, Any]:
    """One unit of work (a row of the job's input dataset; every unit has every field).

    kind: files (image files decoded together), batch (a slice of a batch file), table (a row
    group), read (a whole file, through its input kind's reader), error (nothing to read).
    """
    return {
        "kind": kind,
        "paths": paths or [],
        "path": path,
        "group": group,
        "start": start,
        "stop": stop,
        "error": error,
        "input": input_kind,
    }


class _Planner:
    """Turns paths into units in input order; image files are gathered `size` to a unit."""

    def __init__(self, size: int, image_column: str) -> None:
        self.size = size
        self.image_column = image_column
        self.units: list[dict[str, Any]] = []
        self.images: list[str] = []

    def image(self, path: str) -> None:
        self.images.append(path)
        if len(self.images) == self.size:
            self.flush()

    def flush(self) -> None:
        if self.images:
            self.units.append(_unit("files", paths=self.images))
            self.images = []

    def add(self, unit: dict[str, Any]) -> None:
        self.flush()
        self.units.append(unit)

    def file(self, path: str, kind: InputKind | None) -> None:
        """A file by its input kind; one whose name no kind claims is an image, for the decoder to judge. A kind
        this planner cannot slice (no method named for it) is one unit, read whole by its kind's reader."""
        kind = kind or IMAGE
        split = getattr(self, f"split_{kind.name}", None)
        if split is not None:
            split(path)
        else:
            self.add(_unit("read", path=path, input_kind=kind.name))

    def split_image(self, path: str) -> None:
        self.image(path)

    def split_batch(self, path: str) -> None:
        """Slices of a .npy / IDX file, from its header; a file whose header is unreadable is one unit that
        the actor reads whole, to the same error row fmnist-predict gives."""
        from fmnist_deploy.runtime.errors import InputError
        from fmnist_deploy.runtime.images import batch_count

        try:
            n = batch_count(Path(path))
        except InputError:
            n = 0
        if not n:
            self.add(_unit("read", path=path, input_kind="batch"))
            return
        for start in range(0, n, self.size):
            self.add(_unit("batch", path=path, start=start, stop=min(start + self.size, n)))

    def split_table(self, path: str) -> None:
        """A unit per row group of a Parquet file (an Arrow IPC file: per record batch), from its footer."""
        from fmnist_deploy.runtime.errors import InputError
        from fmnist_deploy.runtime.tables import table_groups

        try:
            groups = table_groups(path, self.image_column)
        except InputError as exc:
            self.add(_unit("error", path=path, error=str(exc)))
            return
        first = 0
        for group, rows in enumerate(groups):
            self.add(_unit("table", path=path, group=group, start=first, stop=first + rows))
            first += rows
        if not groups:
            self.add(_unit("error", path=path, error=f"{path}: holds no rows"))


def _list_tree(folder: str, size: int, image_column: str) -> list[dict[str, Any]]:
    """The units under one folder, walked in sorted order (run as a Ray task: one per top-level sub-folder)."""
    planner = _Planner(size, image_column)
    _walk_into(planner, folder)
    planner.flush()
    return planner.units


def _walk_into(planner: _Planner, folder: str, *, tasks: list[Any] | None = None, remote: Any = None) -> None:
    """Sorted directory entries, no stat each (as runtime.inputs.walk_kinds: symlinked folders not followed,
    unreadable folders skipped). With `remote`, each sub-folder becomes a task whose units come later."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir() and not entry.is_symlink():
                if remote is None:
                    _walk_into(planner, entry.path)
                else:
                    planner.flush()
                    assert tasks is not None
                    tasks.append((len(planner.units), remote.remote(entry.path, planner.size, planner.image_column)))
            else:
                kind = input_kind(entry.name)
                if kind is IMAGE and entry.is_file():  # the bulk of a tree: kept short
                    planner.images.append(entry.path)
                    if len(planner.images) == planner.size:
                        planner.flush()
                elif kind is not None and entry.is_file():
                    planner.file(entry.path, kind)
        except OSError:
            continue


def plan(inputs: list[Path], size: int, image_column: str = "image", *, remote: bool = True) -> list[dict[str, Any]]:
    """The units of work, in input order: what fmnist-predict would read, in the order it would answer.

    A text file (.txt/.lst) stands for the paths it lists. Folders are walked in sorted
    order; with `remote` (Ray initialised) their sub-folders are listed by Ray tasks.
    """
    import ray

    lister = ray.remote(num_cpus=0.25)(_list_tree) if remote else None
    given: list[str] = []
    for path in inputs:
        if path.suffix in LIST_SUFFIXES and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            given += [line.strip() for line in lines if line.strip()]
        else:
            given.append(os.fspath(path))
    units: list[dict[str, Any]] = []
    for path in given:
        try:
            mode = os.stat(path).st_mode  # one stat per path named, as fmnist-predict does
        except (OSError, ValueError):  # ValueError: a NUL byte in the name
            units.append(_unit("error", path=path, error=f"{path}: no such file or folder"))
            continue
        planner = _Planner(size, image_column)
        if not stat.S_ISDIR(mode):
            planner.file(path, input_kind(os.path.basename(path)))
            planner.flush()
            units += planner.units
            continue
        tasks: list[tuple[int, Any]] = []
        _walk_into(planner, path, tasks=tasks, remote=lister)
        planner.flush()
        found = list(planner.units)
        for at, task in reversed(tasks):  # each sub-folder's units where its name sorts among the entries
            found[at:at] = ray.get(task)
        units += found or [_unit("error", path=path, error=f"{path}: no images found under this folder")]
    return units


# ------------------------------------------------------------------------------------------------ actors


@dataclass
class _Rows:
    """The images of a unit (or of one batch of a row group) and what identifies each."""

    names: list[str]
    paths: list[str]
    indices: list[int]
    images: np.ndarray  # (n, 28, 28) uint8; a failed row's image stays zero
    errors: list[str | None]
    ids: Any = None  # an Arrow array, for table rows when an id column is carried


class Classifier:
    """Ray actor: one ONNX Runtime session; turns units into part files and returns a summary per unit."""

    def __init__(
        self,
        model: bytes,
        sidecar: bytes | None,
        model_name: str,
        folder: str,
        config: dict[str, Any],
        id_type: Any = None,
        pid_folder: str | None = None,
    ) -> None:
        started = time.time()  # the process already runs and this module is imported: the rest is loading
        from fmnist_deploy.runtime import load

        # The model arrives as bytes: a cluster's nodes need not see the driver's file. load() checks them as
        # it checks any file (its sidecar digest included), from a private copy, removed once the session holds
        # the model (the backend reads file and sidecar at load only).
        with tempfile.TemporaryDirectory(prefix="fmnist-batch-model-") as home:
            Path(home, model_name).write_bytes(model)
            if sidecar is not None:
                Path(home, f"{model_name}.json").write_bytes(sidecar)
            self.predictor = load(Path(home, model_name), backend="onnxruntime", threads=1)
        self.folder = Path(folder)
        self.top_k = int(config["top_k"])
        self.invert = bool(config["invert"])
        self.batch_size = int(config["batch_size"])
        self.image_column = config["image_column"]
        self.id_column = config["id_column"]
        self.schema = arrow_schema(id_type)
        self.isolate = False  # set per unit by _write_part
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        if pid_folder:  # lets a test find and kill this actor's process, or its node
            Path(pid_folder, f"{os.getpid()}.pid").write_text(f"{os.getpid()} {self.node}")
        self.ready = time.time()  # wall clock: compared with the driver's, to report the pool's start-up apart
        self.init_seconds = self.ready - started

    def __call__(self, units: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Units -> their part files; returns per unit its number, rows, failed rows and seconds per stage."""
        summary: dict[str, list[Any]] = {
            key: [] for key in ("unit", "rows", "failed", "ready", "init", "node", *STAGES)
        }
        for i in range(len(units["unit"])):
            self.seconds = dict.fromkeys(STAGES, 0.0)
            n, bad = self._write_part({key: units[key][i] for key in units})
            done = (
                ("unit", int(units["unit"][i])),
                ("rows", n),
                ("failed", bad),
                ("ready", self.ready),
                ("init", self.init_seconds),
                ("node", self.node),
            )
            for key, value in (*done, *self.seconds.items()):
                summary[key].append(value)
        return {key: np.array(values) for key, values in summary.items()}

    def _write_part(self, unit: dict[str, Any]) -> tuple[int, int]:
        import pyarrow.parquet as pq

        from fmnist_deploy.atomic import atomic_path

        n = bad = 0
        # A unit whose earlier attempt left its marker killed that actor (a decoder crash on a hostile file, or a
        # kill): this attempt decodes each image in a process of its own, so the unit ends instead of being
        # retried for ever, and only the image that kills its process loses its answer.
        marker = self.folder / f".attempt-{int(unit['unit']):08d}"
        self.isolate = marker.exists()
        marker.touch()
        rows = self._rows(unit)
        with atomic_path(self.folder / part_name(int(unit["unit"]))) as tmp:
            with pq.ParquetWriter(tmp, self.schema) as writer:
                while True:
                    started = time.perf_counter()
                    batch = next(rows, None)
                    self.seconds["decode"] += time.perf_counter() - started
                    if batch is None:
                        break
                    table = self._answers(batch)
                    started = time.perf_counter()
                    writer.write_table(table)
                    n += table.num_rows
                    bad += table.num_rows - table.column("error").null_count
                    self.seconds["write"] += time.perf_counter() - started
            started = time.perf_counter()
        self.seconds["write"] += time.perf_counter() - started  # closing, fsync and rename
        marker.unlink(missing_ok=True)
        return n, bad

    def _rows(self, unit: dict[str, Any]) -> Iterator[_Rows]:
        from fmnist_deploy.runtime.inputs import decode_files

        kind, path = unit["kind"], str(unit["path"])
        if kind == "files":
            paths = [str(p) for p in unit["paths"]]
            if self.isolate:
                images, errors = _decode_isolated(partial(_read_file, invert=self.invert), paths, paths)
            else:
                images, errors = decode_files(paths, self.invert)
            yield _Rows(paths, paths, [-1] * len(paths), images, errors)
        elif kind == "batch":
            yield self._batch_slice(path, int(unit["start"]), int(unit["stop"]))
        elif kind == "read":
            yield from self._read(path, by_name(str(unit["input"])))
        elif kind == "table":
            yield from self._table(path, int(unit["group"]), int(unit["start"]), int(unit["stop"]))
        else:
            yield _Rows([path], [path], [-1], np.zeros((1, 28, 28), np.uint8), [str(unit["error"])])

    def _read(self, path: str, kind: InputKind) -> Iterator[_Rows]:
        """A whole file through its input kind's reader, exactly as fmnist-predict reads it, `batch_size` images
        at a time (a batch file whose header could not be read gives fmnist-predict's error row)."""
        from fmnist_deploy.runtime.inputs import chunks

        for items in chunks(kind.items(path, invert=self.invert, image_column=self.image_column), self.batch_size):
            images = np.zeros((len(items), *IMAGE_SHAPE), np.uint8)
            for i, item in enumerate(items):
                if item.image is not None:
                    images[i] = item.image
            yield _Rows(
                [item.name for item in items],
                [item.path or path for item in items],
                [item.index for item in items],
                images,
                [item.error for item in items],
            )

    def _batch_slice(self, path: str, start: int, stop: int) -> _Rows:
        from fmnist_deploy.runtime.errors import InputError
        from fmnist_deploy.runtime.images import read_batch

        names = [f"{path}[{i}]" for i in range(start, stop)]
        try:
            images = np.asarray(read_batch(Path(path), start, stop))  # of an IDX file, only this slice is read
        except InputError as exc:  # changed since it was planned
            return _Rows(
                names,
                [path] * len(names),
                list(range(start, stop)),
                np.zeros((len(names), 28, 28), np.uint8),
                [str(exc)] * len(names),
            )
        if len(images) != len(names):
            error = f"{path}: holds {start + len(images)} images, fewer than when the job was planned"
            return _Rows(
                names,
                [path] * len(names),
                list(range(start, stop)),
                np.zeros((len(names), 28, 28), np.uint8),
                [error] * len(names),
            )
        return _Rows(
            names,
            [path] * len(names),
            list(range(start, stop)),
            255 - images if self.invert else images,
            [None] * len(names),
        )

    def _table(self, path: str, group: int, first: int, stop: int) -> Iterator[_Rows]:
        """A row group's images, `batch_size` rows at a time, reading only the image and id columns."""
        from fmnist_deploy.runtime import tables
        from fmnist_deploy.runtime.errors import InputError

        row = first
        try:
            for cells, ids in tables.read_group(
                path, group, self.image_column, batch=self.batch_size, id_column=self.id_column
            ):
                names = [f"{path}[{row + i}]" for i in range(len(cells))]
                if self.isolate:
                    decode = partial(_read_cell, invert=self.invert)
                    images, errors = _decode_isolated(decode, list(zip(cells, names, strict=True)), names, star=True)
                else:
                    images, errors = tables.decode_cells(cells, names, self.invert)
                if ids is not None and ids.type != self.schema.field("id").type:  # files of one dataset disagree
                    ids = _cast_ids(ids, self.schema.field("id").type, path, errors)
                yield _Rows(names, [path] * len(cells), list(range(row, row + len(cells))), images, errors, ids)
                row += len(cells)
        except InputError as exc:  # damaged since it was planned: the rows not yet answered get the error
            names = [f"{path}[{i}]" for i in range(row, stop)]
            yield _Rows(
                names,
                [path] * len(names),
                list(range(row, stop)),
                np.zeros((len(names), 28, 28), np.uint8),
                [str(exc)] * len(names),
            )

    def _answers(self, rows: _Rows) -> Any:
        """The rows' answers as an Arrow table: one model call, top k by the same numpy steps as Prediction.top_k."""
        import pyarrow as pa

        started = time.perf_counter()
        model_seconds = 0.0
        n, k = len(rows.names), self.top_k
        good = np.array([e is None for e in rows.errors], dtype=bool)
        classes: list[str | None] = [None] * n
        probability: list[float | None] = [None] * n
        flat_names: list[str] = []
        flat_probs: list[float] = []
        if good.any():
            called = time.perf_counter()
            prediction = self.predictor.predict(rows.images[good])
            model_seconds = time.perf_counter() - called
            names = prediction.class_names
            order = np.argsort(-prediction.probabilities, axis=1, kind="stable")[:, :k]
            chosen = np.take_along_axis(prediction.probabilities, order, axis=1).tolist()  # exact floats
            flat_probs = [round(p, 6) for top in chosen for p in top]  # fmnist-predict rounds so
            flat_names = [names[j] for j in order.ravel().tolist()]
            for row, j in enumerate(np.flatnonzero(good).tolist()):
                classes[j] = flat_names[row * k]
                probability[j] = flat_probs[row * k]
        offsets = np.zeros(n + 1, np.int32)
        offsets[1:] = np.cumsum(np.where(good, k, 0))
        top = pa.StructArray.from_arrays(
            [pa.array(flat_names, pa.string()), pa.array(flat_probs, pa.float64())], names=["class", "probability"]
        )
        columns: dict[str, Any] = {
            "input": pa.array(rows.names, pa.string()),
            "path": pa.array(rows.paths, pa.string()),
            "index": pa.array(rows.indices, pa.int64()),
        }
        if "id" in self.schema.names:
            columns["id"] = rows.ids if rows.ids is not None else pa.nulls(n, self.schema.field("id").type)
        columns |= {
            "class": pa.array(classes, pa.string()),
            "probability": pa.array(probability, pa.float64()),
            "top_k": pa.ListArray.from_arrays(pa.array(offsets), top),
            "error": pa.array(rows.errors, pa.string()),
        }
        table = pa.table(columns, schema=self.schema)
        self.seconds["model"] += model_seconds
        self.seconds["answers"] += time.perf_counter() - started - model_seconds
        return table


def _read_file(path: str, invert: bool) -> np.ndarray:
    from fmnist_deploy.runtime import images

    return images.read_image(path, invert=invert)  # looked up when called, in the decoding process


def _read_cell(data: bytes | None, name: str, invert: bool) -> np.ndarray:
    from fmnist_deploy.runtime import tables

    return tables.decode_image(data, name, invert=invert)


def _decode_isolated(
    decode: Callable[..., np.ndarray], inputs: list[Any], names: list[str], *, star: bool = False
) -> tuple[np.ndarray, list[str | None]]:
    """Each input decoded in a forked process (a pool of one, restarted after a crash): an input that kills
    the decoder costs only its own row. The slow path, for a unit whose first attempt killed its actor."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from fmnist_deploy.runtime.errors import InputError

    images = np.zeros((len(inputs), 28, 28), np.uint8)
    errors: list[str | None] = [None] * len(inputs)
    pool: ProcessPoolExecutor | None = None
    try:
        for i, item in enumerate(inputs):
            if pool is None:
                pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
            try:
                images[i] = pool.submit(decode, *item).result() if star else pool.submit(decode, item).result()
            except InputError as exc:
                errors[i] = str(exc)
            except MemoryError:
                errors[i] = f"{names[i]}: too large to decode in the memory available"
            except BrokenProcessPool:
                errors[i] = f"{names[i]}: the image decoder crashed on this input"
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return images, errors


def _cast_ids(ids: Any, kind: Any, path: str, errors: list[str | None]) -> Any:
    """A file's ids as the type the job's first table gave the id column; the rows' error when they do not cast."""
    import pyarrow as pa

    try:
        return ids.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        errors[:] = [f"{path}: its id column is {ids.type}, the job's is {kind}"] * len(errors)
        return pa.nulls(len(ids), kind)


def part_name(unit: int) -> str:
    """A unit's part file: names sort in input order."""
    return f"{PART_PREFIX}{unit:08d}.parquet"


# ------------------------------------------------------------------------------------------------ driver


def _signature(config: JobConfig, inputs: list[Path]) -> dict[str, Any]:
    """What must match for --resume to continue a job (unit numbers depend on the inputs and the batch size)."""
    options = asdict(config)
    return {
        "inputs": [os.path.abspath(p) for p in inputs],
        "model_sha256": hashlib.sha256(config.model.read_bytes()).hexdigest(),
        **{key: options[key] for key in ("batch_size", "top_k", "invert", "image_column", "id_column")},
    }


def check_job(config: JobConfig) -> None:
    """Everything that can be checked before Ray starts: fail fast, before any work is scheduled."""
    from fmnist_deploy.runtime import RuntimeFailure, load

    if config.model.suffix != ".onnx":
        raise BatchError(
            f"{config.model}: the Ray path runs ONNX files (torch-free workers); export one with "
            "fmnist-export --format onnx"
        )
    if config.output.suffix and config.output.suffix not in OUTPUT_SUFFIXES and not config.output.is_dir():
        raise BatchError(
            f"{config.output}: expected a {', '.join(OUTPUT_SUFFIXES)} output file, or a folder name (no suffix) "
            "for one Parquet file per unit of work"
        )
    if config.output.exists() and not config.output.is_dir() and config.partitioned:
        raise BatchError(f"{config.output}: exists and is not a folder")
    try:
        load(config.model, backend="onnxruntime")
    except RuntimeFailure as exc:
        raise BatchError(str(exc)) from None
    folder = parts_folder(config)
    started = folder.is_dir() and any(folder.iterdir())
    if started and not config.resume:
        what = "the output folder" if config.partitioned else "a partial run of this job"
        raise BatchError(f"{folder}: {what} exists; pass --resume to continue it, or delete it to start over")


def _id_type(units: list[dict[str, Any]], column: str | None) -> Any:
    """The id column's Arrow type, from the first table input (None: no id column carried)."""
    from fmnist_deploy.runtime.errors import InputError
    from fmnist_deploy.runtime.tables import table_schema

    if column is None:
        return None
    for unit in units:
        if unit["kind"] == "table":
            try:
                schema = table_schema(unit["path"])
            except InputError as exc:
                raise BatchError(str(exc)) from None
            if column not in schema.names:
                raise BatchError(f"{unit['path']}: no id column {column!r} (columns: {', '.join(schema.names)})")
            return schema.field(column).type
    raise BatchError(f"--id-column {column}: no Parquet or Arrow input to take it from")


def _count_part(path: Path) -> tuple[int, int]:
    """Rows and failed rows of a finished part file (its error column only)."""
    import pyarrow.parquet as pq

    errors = pq.read_table(path, columns=["error"]).column("error")
    return len(errors), len(errors) - errors.null_count


def run_job(
    config: JobConfig,
    inputs: list[Path],
    *,
    progress: Callable[[int], None] | None = None,
    pid_folder: Path | None = None,
) -> dict[str, int]:
    """Classify every image of `inputs` on Ray and write `config.output`; returns counts.

    Ray must be initialised by the caller (`start_ray`), so that start-up is measured apart.
    """
    import ray

    from fmnist_deploy.atomic import remove_stale_temporaries, write_text_atomic

    check_job(config)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if config.actors * config.cpus_per_actor > cpus:  # Ray Data would wait for ever for the actors that do not fit
        fit = int(cpus // config.cpus_per_actor)
        raise BatchError(
            f"--actors {config.actors} needs {config.actors * config.cpus_per_actor:g} CPUs (one per actor); the "
            f"Ray cluster has {cpus:g}: ask for at most {fit}"
        )
    began = time.perf_counter()
    timing: dict[str, float] = {}
    folder = parts_folder(config)
    signature = _signature(config, inputs)
    manifest = folder / MANIFEST
    if config.resume and manifest.is_file():
        before = json.loads(manifest.read_text(encoding="utf-8")).get("job")
        if before != signature:
            changed = sorted(k for k in signature if not before or before.get(k) != signature[k])
            raise BatchError(f"{folder}: was started with other {', '.join(changed)}; delete it to start over")
    units = plan(inputs, config.batch_size, config.image_column)
    timing["plan_s"] = time.perf_counter() - began
    id_type = _id_type(units, config.id_column)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # what a killed writer left; never a finished part
    write_text_atomic(manifest, json.dumps({"job": signature, "units": len(units), "complete": False}, indent=1))
    for number, unit in enumerate(units):
        unit["unit"] = number
    done = {number for number in range(len(units)) if (folder / part_name(number)).is_file()}
    counts = [_count_part(folder / part_name(number)) for number in sorted(done)]
    resumed = sum(rows for rows, _ in counts)
    failed = sum(bad for _, bad in counts)
    rows_written = 0
    nodes: dict[str, int] = {}  # units answered per node
    todo = [unit for unit in units if unit["unit"] not in done]
    if todo:
        model = config.model.resolve()
        sidecar = model.with_name(model.name + ".json")
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = False  # every unit writes its own file: order is in the names
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo))  # a block per unit: a task per unit
        dataset = dataset.map_batches(
            Classifier,
            fn_constructor_kwargs={
                "model": model.read_bytes(),
                "sidecar": sidecar.read_bytes() if sidecar.is_file() else None,
                "model_name": model.name,
                "folder": str(folder.resolve()),
                "config": asdict(config) | {"model": str(model), "output": str(config.output)},
                "id_type": id_type,
                "pid_folder": str(pid_folder) if pid_folder else None,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(config.actors, len(todo))),  # no actor without a unit
            num_cpus=config.cpus_per_actor,
            # Ray Data's own defaults for actor pools: a killed actor is restarted and its units retried,
            # without limit (max_restarts / max_task_retries -1; tests/test_scaleout.py kills one).
        )
        finished: dict[int, tuple[int, int]] = {}
        stages = dict.fromkeys(STAGES, 0.0)
        executing, executing_wall, first_ready, init = time.perf_counter(), time.time(), float("inf"), 0.0
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            first_ready = min(first_ready, float(batch["ready"].min()))
            init = max(init, float(batch["init"].max()))
            for i, number in enumerate(batch["unit"]):
                finished[int(number)] = (int(batch["rows"][i]), int(batch["failed"][i]))
                nodes[str(batch["node"][i])] = nodes.get(str(batch["node"][i]), 0) + 1
                for stage in STAGES:
                    stages[stage] += float(batch[stage][i])
                if progress is not None:
                    progress(int(batch["rows"][i]))
        timing["execute_s"] = time.perf_counter() - executing
        timing["prepare_s"] = executing - began - timing["plan_s"]  # manifest, resume check, the dataset's plan
        # Start-up apart: until the first actor held its model; then answering, until the last part was written.
        timing["pool_start_s"] = max(0.0, first_ready - executing_wall)
        timing["actor_init_s"] = init  # of it, an actor loading its session (the rest: Ray starting the process)
        timing["answer_s"] = timing["execute_s"] - timing["pool_start_s"]
        timing |= {f"actor_{stage}_s": seconds for stage, seconds in stages.items()}
        missing = [unit["unit"] for unit in todo if not (folder / part_name(unit["unit"])).is_file()]
        if missing:
            raise BatchError(f"{folder}: {len(missing)} unit(s) have no part file; run again with --resume")
        rows_written = sum(rows for rows, _ in finished.values())
        failed += sum(bad for _, bad in finished.values())
    total = resumed + rows_written
    write_text_atomic(
        manifest,
        json.dumps(
            {"job": signature, "units": len(units), "complete": True, "rows": total, "failed": failed}, indent=1
        ),
    )
    if not config.partitioned:
        joining = time.perf_counter()
        _join_parts(folder, len(units), config.output, id_type)
        shutil.rmtree(folder)
        timing["join_s"] = time.perf_counter() - joining
    timing["total_s"] = time.perf_counter() - began
    return {
        "rows": total,
        "failed": failed,
        "resumed": resumed,
        "units": len(units),
        "nodes": nodes,  # node id -> units it answered (this run)
        "timing": {key: round(value, 4) for key, value in timing.items()},
    }


def _join_parts(folder: Path, units: int, output: Path, id_type: Any) -> None:
    """The part files, in unit order, as one .parquet, .jsonl or .csv file (fmnist-predict's writer), atomically."""
    import pyarrow.parquet as pq

    with record_writer(output, id_type) as write:
        for number in range(units):
            write(pq.read_table(folder / part_name(number)).to_pylist())


def read_answers(output: Path) -> Any:
    """A job's answers (a .parquet / .jsonl / .csv file, or a folder of part files) as one Arrow table, in input
    order (a CSV's top_k stays its `class:probability;...` text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if output.suffix == ".csv" and output.is_file():
        import pyarrow.csv as pcsv

        return pcsv.read_csv(output)
    if output.suffix == ".jsonl" and output.is_file():
        return pa.Table.from_pylist([json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()])
    if output.is_dir():
        parts = sorted(output.glob(f"{PART_PREFIX}*.parquet"))
        return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pq.read_table(output)
    return pq.read_table(output)


CONNECT_TIMEOUT_S = 5.0  # how long a cluster's address may take to accept a TCP connection


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ConnectionError unless `address` (`ray://host:port` or `host:port`) accepts a TCP connection within
    `timeout` seconds. Other forms (`auto`, `local`, no port) are left to Ray."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local"):
        return
    try:
        parts = urlsplit(address if "://" in address else f"//{address}")
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number or out of range
        raise ConnectionError("not an address (ray://host:port, host:port, auto)") from None
    if not host or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        raise ConnectionError(f"no connection within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectionError(str(exc.strerror or exc).lower()) from None


def _quiet_default_auth(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (`auto`, `ray://host:port`), or start a local instance sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    if address:
        check_reachable(address)  # before Ray's own connect, which waits ~30 s for nothing
        from fmnist_deploy.launch import ORT_TELEMETRY_VARIABLE

        # A cluster's workers do not inherit this process's environment: pass on ONNX Runtime's telemetry choice.
        choice = os.environ.get(ORT_TELEMETRY_VARIABLE)
        runtime_env = {"env_vars": {ORT_TELEMETRY_VARIABLE: choice}} if choice is not None else None
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    else:
        # A new local instance keeps Ray's default, token authentication, without Ray's line announcing that default
        # (a warning that authentication is off still prints).
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_quiet_default_auth)
        ray.init(
            num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False
        )
