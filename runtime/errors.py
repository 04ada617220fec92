"""Errors of the runtime: each message names what was given and what is accepted."""

from __future__ import annotations

from fmnist_deploy.errors import first_line

__all__ = ["DeviceError", "InputError", "ModelError", "OptionError", "RuntimeFailure", "first_line"]


class RuntimeFailure(Exception):
    """Base of every error the runtime raises on purpose."""


class ModelError(RuntimeFailure):
    """The model file is missing, damaged, or does not follow the deployment contract."""


class InputError(RuntimeFailure):
    """An input (array, image file, batch file) is not what the model accepts."""


class DeviceError(RuntimeFailure):
    """The requested device cannot be used (no silent fallback to the CPU)."""


class OptionError(RuntimeFailure, ValueError):
    """A backend option that the chosen backend does not take, or a value it does not accept."""
