"""How a command's process starts and ends: the console-script entry points and `python -m`.

Every error the toolkit raises derives from `fmnist_deploy.errors.FmnistError`; the commands are
`Command` / `Group`, which turn one into a single `Error: ...` line and its kind's exit status (1,
or 2 for a usage error), in this one place, whether the command runs as a process or under click's
test runner.

`run(command)` puts three things in place before the command runs:
- Ctrl-C raises `Interrupted` (see `catch_ctrl_c`) from the first moment: importing torch
  takes seconds, and a Ctrl-C during those imports would otherwise print a traceback before
  the command's own handling is in place.
- Standard output that cannot be written (a full disk, a device error) ends the command with
  one line, `Error: cannot write to standard output: ...`, and exit 1, instead of a traceback
  or an error blamed on the command's own files. A closed pipe (`| head`) ends the command
  quietly with status 0: the reader had what it wanted.
- ONNX Runtime's usage telemetry is off (`ORT_DISABLE_TELEMETRY=1`) unless the user set that
  variable: since 1.29 ONNX Runtime on Linux keeps a device id and an event store under
  ~/.cache/Microsoft and uploads events, which a deployment tool should not do on its
  users' behalf. It must be set before ONNX Runtime loads: the console scripts set it before
  importing the command's module, and no command module imports ONNX Runtime at import time
  (so `python -m` is in time too; tested). Worker processes (decoding, serving, a local Ray
  instance) inherit it.
"""

from __future__ import annotations

import importlib
import io
import os
import signal
import sys
import threading
from collections.abc import Callable

import click

from fmnist_deploy.errors import FmnistError, OutputError, first_line

ORT_TELEMETRY_VARIABLE = "ORT_DISABLE_TELEMETRY"  # ONNX Runtime's own opt-out (see the module's docstring)


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
    the chosen status and still reaches every `except KeyboardInterrupt`."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is (
        signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _interrupt)


def as_click(exc: FmnistError) -> click.ClickException:
    """The one mapping from the toolkit's errors to a command's output: one line, the kind's exit status."""
    failure = click.ClickException(first_line(exc, limit=100_000))
    failure.exit_code = exc.exit_code
    return failure


class _ReportsErrors:
    """Mixed into a click command or group: an FmnistError of its work becomes `as_click`'s line and status."""

    def invoke(self, ctx: click.Context) -> object:
        """Run the command (for a group, the chosen subcommand), mapping FmnistError once."""
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except FmnistError as exc:
            raise as_click(exc) from None


class Command(_ReportsErrors, click.Command):
    """A click command whose FmnistError ends it in one line with its kind's exit status (see `as_click`)."""


class Group(_ReportsErrors, click.Group):
    """A click group whose subcommands' FmnistError ends them as `Command` does."""


class StandardOutputError(OutputError):
    """Standard output could not be written. Not an OSError, so that no command's handler for its own
    files' errors takes it for one of them."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot write to standard output: {reason}")


class _GuardedOutput(io.BufferedIOBase):
    """Standard output's byte stream, with every write error but a closed pipe turned into StandardOutputError.
    `inner` None stands for a standard output the process was started without (`>&-`)."""

    def __init__(self, inner: io.BufferedIOBase | None) -> None:
        super().__init__()
        self._inner = inner

    def _guard(self, call: Callable[[], int | None]) -> int | None:
        try:
            return call()
        except BrokenPipeError:
            # The reader is gone (`fmnist-predict ... | head -1`): that is how a pipeline ends, not a failure of
            # this command, so it stops quietly with status 0 (a `set -o pipefail` script goes on). Later writes,
            # the interpreter's own flush at exit included, go to /dev/null.
            _discard_standard_output(self._inner)
            raise click.exceptions.Exit(0) from None
        except OSError as exc:
            raise StandardOutputError(exc.strerror or str(exc)) from None

    def write(self, data) -> int:  # type: ignore[override]
        if self._inner is None:
            raise StandardOutputError("it is closed")
        inner = self._inner
        return self._guard(lambda: inner.write(data)) or 0

    def flush(self) -> None:
        if self._inner is not None:
            self._guard(self._inner.flush)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        if self._inner is None:
            raise io.UnsupportedOperation("standard output is closed")
        return self._inner.fileno()

    def isatty(self) -> bool:
        return self._inner is not None and self._inner.isatty()


def _discard_standard_output(stream: io.BufferedIOBase | None) -> None:
    if stream is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def guard_standard_output() -> None:
    """Route sys.stdout through `_GuardedOutput`, keeping its encoding and buffering."""
    stdout = sys.stdout
    if stdout is None:  # started with standard output closed: say so when something is written
        sys.stdout = io.TextIOWrapper(_GuardedOutput(None), encoding="utf-8", errors="backslashreplace")
        return
    if not isinstance(stdout, io.TextIOWrapper) or isinstance(stdout.buffer, _GuardedOutput):
        return  # already guarded, or replaced by someone else (a test runner's capture)
    sys.stdout = io.TextIOWrapper(
        _GuardedOutput(stdout.buffer),
        encoding=stdout.encoding,
        errors=stdout.errors,
        line_buffering=stdout.line_buffering,
        write_through=stdout.write_through,
    )


def run(command: Callable[[], None]) -> None:
    """Run a click command as a process's whole work (see the module's docstring)."""
    _prepare_process()
    guard_standard_output()
    try:
        try:
            command()
        finally:  # what is still buffered goes out now, while a failure can still be one line
            sys.stdout.flush()
    except FmnistError as exc:  # raised outside a command's invoke (click's own --help, the flush at exit)
        failure = as_click(exc)
        failure.show()
        sys.exit(failure.exit_code)
    except click.exceptions.Exit as exc:  # the reader closed the pipe at the flush (see _GuardedOutput._guard)
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # standard output not guarded (replaced by someone else): the same rule
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(0)


def _prepare_process() -> None:
    os.environ.setdefault(ORT_TELEMETRY_VARIABLE, "1")
    catch_ctrl_c()


MODULES = {
    "train": "fmnist_deploy.training.cli",
    "export": "fmnist_deploy.export.cli",
    "predict": "fmnist_deploy.runtime.cli",
    "bench": "fmnist_deploy.benchmarks.cli",
    "batch": "fmnist_deploy.scaleout.cli",
    "serve": "fmnist_deploy.serving.cli",
}


def command(name: str) -> click.Command:
    """The click command `fmnist-<name>`, imported after the process is prepared (see the module's docstring)."""
    _prepare_process()
    try:
        return importlib.import_module(MODULES[name]).main
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was done", file=sys.stderr)
        sys.exit(130)


def _entry(name: str) -> Callable[[], None]:
    def entry() -> None:
        run(command(name))

    return entry


train = _entry("train")
export = _entry("export")
predict = _entry("predict")
bench = _entry("bench")
batch = _entry("batch")
serve = _entry("serve")
