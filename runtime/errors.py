"""Errors of the runtime: each message names what was given and what is accepted.

The kinds are the toolkit's own (`fmnist_deploy.errors`); `RuntimeFailure` is the name the
runtime has always given their root, `FmnistError`.
"""

from __future__ import annotations

from fmnist_deploy.errors import DeviceError, FmnistError, InputError, ModelError, UsageError, first_line

__all__ = ["DeviceError", "InputError", "ModelError", "OptionError", "RuntimeFailure", "first_line"]

RuntimeFailure = FmnistError  # the runtime's name for the root: `except RuntimeFailure` catches every kind


class OptionError(UsageError, ValueError):
    """A backend option that the chosen backend does not take, or a value it does not accept."""
