"""The one root of every error the toolkit raises on purpose, its kinds, and message helpers.

    FmnistError                  exit 1 unless a kind says otherwise
    ├── UsageError               exit 2: asked for something the toolkit does not do (before any work)
    ├── InputError               an image, batch file, data set or request is not what is accepted
    ├── ModelError               a model, weights or checkpoint file is missing, damaged or off the contract
    ├── DeviceError              the requested device cannot be used (no silent CPU fallback)
    ├── IntegrityError           a file does not match its recorded digest, or holds something that runs code
    └── OutputError              a result cannot be written (a file, standard output)

Each stage's own classes (`GateError`, `CheckpointError`, `DataError`, ...) derive from one of
these kinds, so a command maps any of them to one line and the README's exit status in one place
(`fmnist_deploy.launch`), and a library user can catch them all with `except FmnistError`.
Torch-free and numpy-free: every stage imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class FmnistError(Exception):
    """Base of every error the toolkit raises on purpose; `exit_code` is a command's status for it."""

    exit_code = 1


class UsageError(FmnistError):
    """Asked for something the toolkit does not do: an option, value or combination it does not accept."""

    exit_code = 2


class InputError(FmnistError):
    """An input (array, image file, batch file, the data set) is not what the toolkit accepts."""


class ModelError(FmnistError):
    """A model, weights or checkpoint file is missing, damaged, or does not follow the deployment contract."""


class DeviceError(FmnistError):
    """The requested device cannot be used (no silent fallback to the CPU). A usage error (exit 2): it is
    known before any work is done, and the same command with another --device runs."""

    exit_code = 2


class IntegrityError(FmnistError, ValueError):
    """A file is damaged, was replaced, or holds something that could run code."""


class OutputError(FmnistError):
    """A result cannot be written: an output file, its folder, or standard output."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


@contextmanager
def quiet_logger(name: str | None, drop: Callable[[logging.LogRecord], bool] = lambda record: True) -> Iterator[None]:
    """While the block runs, drop the records logged on logger `name` (None: the root logger) that `drop`
    selects (default: all): a library's log lines that would stand beside the toolkit's own one-line output."""
    logger = logging.getLogger(name)

    def keep(record: logging.LogRecord) -> bool:
        return not drop(record)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


__all__ = [
    "DeviceError",
    "FmnistError",
    "InputError",
    "IntegrityError",
    "ModelError",
    "OutputError",
    "UsageError",
    "first_line",
    "quiet_logger",
]
