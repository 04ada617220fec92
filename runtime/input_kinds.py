"""What an input file is, declared once: the input kinds fmnist-predict, predict_files and fmnist-batch read.

An input kind is one `InputKind` line in `INPUT_KINDS`: the suffixes that claim a file name
(in any case), a marker that claims a name whatever its suffix, what the help texts call it,
and the reader that turns one such file into items (`runtime.inputs.Item`, one per image,
or one carrying the file's error). Image files have no reader of their own: many go to a
decode worker in one task (`runtime.inputs`). The walks of fmnist-predict and fmnist-batch,
the kind a named file is read as, both commands' help texts and fmnist-batch's planner all
derive from this table; fmnist-batch splits batch and table files into slices where it knows
how (`scaleout.ray_job`'s splitters), and reads a file of any other kind whole, in one unit,
through its reader.

Adding an input format is one reader module plus one line here (and its tests and README row).
Pure Python, no numpy: the command lines import it for their help texts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fmnist_deploy.runtime.inputs import Item

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class InputKind:
    """One kind of input file, as fmnist-predict, predict_files and fmnist-batch see it."""

    name: str
    suffixes: tuple[str, ...]  # lower-case; a file name whose suffix is one of them (any case) is this kind
    description: str  # in help texts: "Parquet / Arrow tables of image bytes"
    # "module:function" called as function(path, *, invert, image_column) -> Iterator[Item]; None: image files,
    # decoded many to a worker task by runtime.inputs
    reader: str | None
    marker: str | None = None  # a part of a name that claims it whatever its suffix (IDX's "idx3")

    def claims(self, name: str) -> bool:
        """Whether a file name (no folder) is this kind's, by its suffix or its marker."""
        return suffix(name).lower() in self.suffixes or (self.marker is not None and self.marker in name)

    def items(self, path: str, *, invert: bool = False, image_column: str = "image") -> Iterator[Item]:
        """Every image of one file of this kind, in order (a file that cannot be read: one item with its error)."""
        if self.reader is None:
            raise TypeError(f"{self.name} files are decoded by runtime.inputs' workers, not read one by one")
        module, _, function = self.reader.partition(":")
        read = getattr(importlib.import_module(module), function)
        return read(path, invert=invert, image_column=image_column)


# In the order a name is tried: a table or batch suffix wins over an image suffix ("x-idx3.png" is IDX).
INPUT_KINDS: tuple[InputKind, ...] = (
    InputKind(
        "table",
        (".parquet", ".arrow", ".feather"),
        "Parquet / Arrow tables of image bytes",
        "fmnist_deploy.runtime.inputs:table_items",
    ),
    InputKind(
        "batch",
        (".npy", ".idx", ".ubyte", ".gz"),
        ".npy batches (uint8 [N,28,28]) and IDX files (.idx, .ubyte, optionally .gz)",
        "fmnist_deploy.runtime.inputs:batch_items",
        marker="idx3",
    ),
    InputKind(
        "image",
        (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"),
        "image files (PNG, JPEG, BMP, GIF, TIFF, WebP, PNM)",
        None,
    ),
)
IMAGE = next(kind for kind in INPUT_KINDS if kind.reader is None)


def suffix(name: str) -> str:
    """A file name's last suffix, as Path.suffix gives it: a leading dot is a hidden file's name, not a suffix."""
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def input_kind(name: str) -> InputKind | None:
    """The kind a file name (no folder) claims, or None: a walk skips the file; a file named on its own is
    read as an image, for the decoder to judge (`input_kind(name) or IMAGE`)."""
    return next((kind for kind in INPUT_KINDS if kind.claims(name)), None)


def by_name(name: str) -> InputKind:
    """The input kind called `name` (as a unit of fmnist-batch's plan names it)."""
    return next(kind for kind in INPUT_KINDS if kind.name == name)


def inputs_help() -> str:
    """What the commands read, for their help texts: "image files (...), ..., Parquet / Arrow tables of ..."."""
    return ", ".join(kind.description for kind in reversed(INPUT_KINDS))


def documented(fn: F) -> F:
    """A command whose docstring says `{inputs}` where the input kinds are listed (before click reads it)."""
    fn.__doc__ = (fn.__doc__ or "").replace("{inputs}", inputs_help())
    return fn
