"""Errors of the runtime: each message names what was given and what is accepted."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class RuntimeFailure(Exception):
    """Base of every error the runtime raises on purpose."""


class ModelError(RuntimeFailure):
    """The model file is missing, damaged, or does not follow the deployment contract."""


class InputError(RuntimeFailure):
    """An input (array, image file, batch file) is not what the model accepts."""


class DeviceError(RuntimeFailure):
    """The requested device cannot be used (no silent fallback to the CPU)."""
