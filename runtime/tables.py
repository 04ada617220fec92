"""Tables of image bytes: Parquet files (and Arrow IPC files) with one encoded image per row.

The layout big image sets come in: a column of image bytes, named `image` by default, either
plain binary or the `{bytes, path}` struct Hugging Face `datasets` writes for its Image
feature, beside any other columns (labels, ids) that are never read unless asked for. The
unit of reading is the row group (an IPC file's record batch): its size is declared in the
footer and checked before any data is read, and checked again by its pages' own headers
(`parquet_pages`: the footer's sizes are the supplier's word) before pyarrow decodes a page, or, in
an IPC file, by the length each compressed buffer declares (`arrow_bounds`) before pyarrow inflates
it; its images are decoded `batch` rows at a time, each exactly as `images.read_image` decodes a
file holding those bytes.

fmnist-predict reads these files for small runs; fmnist-batch plans one unit of work per row
group. pyarrow is the optional `scale` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.contract import IMAGE_SHAPE
from fmnist_deploy.runtime import images
from fmnist_deploy.runtime.arrow_bounds import check_ipc_batches
from fmnist_deploy.runtime.errors import InputError
from fmnist_deploy.runtime.parquet_pages import check_pages

MAX_CELL_BYTES = 16 * 1024 * 1024  # one image's bytes (the image files' fast-path limit too)
MAX_GROUP_BYTES = 512 * 1024 * 1024  # one row group, uncompressed, by its footer and by its page headers


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule the readers use
    except ImportError:
        raise InputError("reading Parquet / Arrow tables needs pyarrow: pip install 'fmnist-deploy[scale]'") from None
    return pyarrow


def decode_image(data: bytes | None, name: str, *, invert: bool = False) -> np.ndarray:
    """One image's encoded bytes -> uint8 (28, 28), as `images.read_image` decodes a file of those bytes."""
    if data is None:
        raise InputError(f"{name}: no image bytes (null)")
    if len(data) > MAX_CELL_BYTES:
        raise InputError(f"{name}: {len(data)} image bytes, over the {MAX_CELL_BYTES} byte limit")
    return images.decode_image(data, invert=invert, name=name)


def table_groups(path: str, image_column: str) -> list[int]:
    """Rows per row group of a Parquet file (per record batch of an Arrow IPC file), from its footer; the image
    column and each group's declared size checked. Raises InputError naming the file."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    try:
        if path.lower().endswith(".parquet"):
            meta = pq.ParquetFile(path).metadata
            schema = meta.schema.to_arrow_schema()
            groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
            for g, group in enumerate(groups):
                if group.total_byte_size > MAX_GROUP_BYTES:
                    raise InputError(
                        f"{path}: row group {g} holds {group.total_byte_size} bytes uncompressed, over the "
                        f"{MAX_GROUP_BYTES} byte limit; rewrite it with smaller row groups"
                    )
            rows = [group.num_rows for group in groups]
        else:
            check_ipc_batches(path, MAX_GROUP_BYTES)  # compressed buffers declare their size: bounded before
            with pa.memory_map(path) as source:  # pyarrow inflates any of them
                reader = pa.ipc.open_file(source)
                schema = reader.schema
                rows = []
                for g in range(reader.num_record_batches):
                    group = reader.get_batch(g)
                    if group.nbytes > MAX_GROUP_BYTES:
                        raise InputError(
                            f"{path}: record batch {g} holds {group.nbytes} bytes, over the {MAX_GROUP_BYTES} byte "
                            "limit; rewrite it with smaller batches"
                        )
                    rows.append(group.num_rows)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable {Path(path).suffix[1:]} file ({exc})") from None
    _check_image_field(schema, path, image_column)
    return rows


def table_schema(path: str) -> Any:
    """A table file's Arrow schema (footer only)."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    try:
        if path.lower().endswith(".parquet"):
            return pq.read_schema(path)
        with pa.memory_map(path) as source:
            return pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable {Path(path).suffix[1:]} file ({exc})") from None


def _check_image_field(schema: Any, path: str, column: str) -> None:
    """Refuse a table whose image column is missing or holds no bytes (plain binary, or {bytes, path})."""
    import pyarrow as pa

    if column not in schema.names:
        raise InputError(
            f"{path}: no column {column!r} (columns: {', '.join(schema.names)}); choose one with --image-column"
        )
    kind = schema.field(column).type
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        kind = kind.field("bytes").type if "bytes" in names else kind
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise InputError(
            f"{path}: column {column!r} is {schema.field(column).type}; expected image bytes (binary, or a "
            "struct with a bytes field as Hugging Face datasets writes)"
        )


def read_group(
    path: str, group: int, image_column: str, *, batch: int = 1024, id_column: str | None = None
) -> Iterator[tuple[list[bytes | None], Any]]:
    """The image bytes of one row group, `batch` rows at a time, reading only the image (and id) columns;
    with each batch its id column (an Arrow array) or None."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    columns = [image_column] + ([id_column] if id_column else [])
    try:
        if path.lower().endswith(".parquet"):
            # the footer's sizes are the supplier's word: bound the pages by their own headers first
            check_pages(path, group, columns, MAX_GROUP_BYTES)
            batches = pq.ParquetFile(path).iter_batches(batch, row_groups=[group], columns=columns)
        else:
            check_ipc_batches(path, MAX_GROUP_BYTES)  # the file may have changed since it was planned
            with pa.memory_map(path) as source:
                whole = pa.ipc.open_file(source).get_batch(group).select(columns)
                whole.validate(full=True)  # offsets and lengths checked before a value is read
            batches = iter([whole.slice(start, batch) for start in range(0, whole.num_rows, batch)])
        for part in batches:
            column = part.column(image_column)
            if pa.types.is_struct(column.type):  # Hugging Face datasets' Image feature: {bytes, path}
                column = column.field("bytes")
            yield column.to_pylist(), part.column(id_column) if id_column else None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: row group {group} is unreadable or damaged ({exc})") from None


def decode_cells(cells: list[bytes | None], names: list[str], invert: bool) -> tuple[np.ndarray, list[str | None]]:
    """Image bytes -> (k, 28, 28) uint8 and each one's error or None (its row then stays zero)."""
    images = np.zeros((len(cells), *IMAGE_SHAPE), dtype=np.uint8)
    errors: list[str | None] = [None] * len(cells)
    for i, data in enumerate(cells):
        try:
            images[i] = decode_image(data, names[i], invert=invert)
        except InputError as exc:
            errors[i] = str(exc)
        except MemoryError:  # one input's failure never costs the others their answers
            errors[i] = f"{names[i]}: too large to decode in the memory available"
    return images, errors
