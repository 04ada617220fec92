"""One record shape for answers, and one writer of records by file suffix.

Every answer the toolkit gives about an input (fmnist-predict, `Predictor.predict_files`,
fmnist-batch, the server's classification output) is one record of these fields:

    input        what was given: a file, or `file[i]` for an image of a batch file or table
    path         the file the image came from
    index        its index in that file (-1 for a file that is one image)
    class        the most probable class name (None when there is no answer)
    probability  its probability, rounded to 6 decimals (None when there is no answer)
    top_k        [{"class", "probability"}, ...], most probable first ([] when there is no answer)
    error        why there is no answer (None when there is one)

`write_records` / `record_writer` write them to `.jsonl`, `.csv` or `.parquet` by the output's
suffix, streamed into a temporary file that replaces the output only when every record is in.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmnist_deploy.atomic import atomic_path

if TYPE_CHECKING:  # annotations only: no import at run time
    from fmnist_deploy.runtime.inputs import Item
    from fmnist_deploy.runtime.predictor import Prediction, Predictor

FIELDS = ("input", "path", "index", "class", "probability", "top_k", "error")
OUTPUT_SUFFIXES = (".jsonl", ".csv", ".parquet")
DECIMALS = 6  # probabilities in records are rounded once, here

Record = dict[str, Any]
Writer = Callable[[list[Record]], None]


def top_k_entries(prediction: Prediction, k: int) -> list[list[dict[str, Any]]]:
    """Each image's k most probable classes as [{"class", "probability"}], most probable first (rounded):
    the classification output of every surface (records, the server)."""
    return [[{"class": name, "probability": round(p, DECIMALS)} for name, p in top] for top in prediction.top_k(k)]


def answer(input_: str, path: str, index: int, top: list[dict[str, Any]]) -> Record:
    """The record of an answered input."""
    first = top[0]
    return {
        "input": input_,
        "path": path,
        "index": index,
        "class": first["class"],
        "probability": first["probability"],
        "top_k": top,
        "error": None,
    }


def failure(input_: str, path: str, index: int, error: str) -> Record:
    """The record of an input that got no answer, with the reason."""
    return {
        "input": input_,
        "path": path,
        "index": index,
        "class": None,
        "probability": None,
        "top_k": [],
        "error": error,
    }


def item_records(items: list[Item], prediction: Prediction | None, k: int) -> list[Record]:
    """One record per item, in order; `prediction` answers the items without an error, in order."""
    answers = iter(top_k_entries(prediction, k) if prediction is not None else [])
    return [
        failure(item.name, item.path, item.index, item.error)
        if item.error is not None
        else answer(item.name, item.path, item.index, next(answers))
        for item in items
    ]


def classify(items: list[Item], predictor: Predictor, k: int) -> list[Record]:
    """One record per item, in order: the readable ones answered by the model in one call."""
    good = [item.image for item in items if item.error is None]
    return item_records(items, predictor.predict(np.stack(good)) if good else None, k)


def fields(with_id: bool = False) -> tuple[str, ...]:
    """The records' columns in order; `id` (fmnist-batch's --id-column) after index when asked."""
    return (*FIELDS[:3], "id", *FIELDS[3:]) if with_id else FIELDS


def csv_row(record: Record, with_id: bool = False) -> dict[str, Any]:
    """A record as one CSV row: top_k as `class:probability;...`, absent values empty."""
    row = {key: "" if record.get(key) is None else record[key] for key in fields(with_id)}
    row["top_k"] = ";".join(f"{t['class']}:{t['probability']}" for t in record.get("top_k") or [])
    return row


def arrow_schema(id_type: Any = None) -> Any:
    """The records' Arrow schema (Parquet output), with an `id` column of `id_type` after index when given."""
    import pyarrow as pa  # an optional package (fmnist-deploy[scale]), needed only for Parquet

    top_k = pa.list_(pa.struct([("class", pa.string()), ("probability", pa.float64())]))
    fields = [("input", pa.string()), ("path", pa.string()), ("index", pa.int64())]
    fields += [("id", id_type)] if id_type is not None else []
    fields += [("class", pa.string()), ("probability", pa.float64()), ("top_k", top_k), ("error", pa.string())]
    return pa.schema(fields)


@contextmanager
def record_writer(path: Path, id_type: Any = None) -> Iterator[Writer]:
    """A writer of records into `path` (.jsonl, .csv or .parquet, by its suffix), streamed into a temporary
    file that replaces `path` only when the block ends without an error: memory holds one chunk of records,
    and a failed or interrupted run leaves no half file. `id_type` (an Arrow type) adds the `id` column."""
    if path.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path}: expected a {', '.join(OUTPUT_SUFFIXES)} file")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = arrow_schema(id_type)
            with pq.ParquetWriter(tmp, schema) as parquet:
                yield lambda records: parquet.write_table(pa.Table.from_pylist(records, schema=schema))
            return
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if path.suffix == ".jsonl":
                yield lambda records: f.write("".join(json.dumps(r) + "\n" for r in records))
            else:
                with_id = id_type is not None
                table = csv.DictWriter(f, fieldnames=fields(with_id), lineterminator="\n")
                table.writeheader()
                yield lambda records: table.writerows(csv_row(r, with_id) for r in records)


def write_records(path: Path, records: Iterable[Record]) -> None:
    """All records into `path` (.jsonl, .csv or .parquet), atomically."""
    with record_writer(path) as write:
        write(list(records))


__all__ = [
    "FIELDS",
    "OUTPUT_SUFFIXES",
    "answer",
    "arrow_schema",
    "classify",
    "csv_row",
    "fields",
    "failure",
    "item_records",
    "record_writer",
    "top_k_entries",
    "write_records",
]
