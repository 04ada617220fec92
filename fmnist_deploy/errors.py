"""Message helpers shared by every stage: errors are reported as one line, never a traceback."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, as the toolkit's commands receive it (see `catch_ctrl_c`)."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted


def catch_ctrl_c() -> None:
    """Make Ctrl-C raise `Interrupted` instead of a plain KeyboardInterrupt in this process.

    CPython 3.11 remembers a KeyboardInterrupt that left any string `exec` (dataclasses build
    every `__init__` that way, so an import in progress is such a place) and, for `python -m`,
    kills the process with SIGINT at exit, even though the command caught the interrupt and
    chose exit status 130. It remembers only an exception of exactly that type; a subclass keeps
    the chosen status and still reaches every `except KeyboardInterrupt`. Every command installs
    it, however it was started, so that all of them behave alike."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is (
        signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _interrupt)
