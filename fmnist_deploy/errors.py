"""Message helpers shared by every stage: errors are reported as one line, never a traceback."""

from __future__ import annotations

import logging
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
