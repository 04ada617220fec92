"""The options the six commands share, each name, default, help text and choice list written once.

One vocabulary (the README's "One vocabulary" table says it for people):

- `--model FILE` names the model file everywhere; `--output PATH` names what a command
  writes (a file for fmnist-predict and fmnist-batch, a folder for the others);
  `--data-dir` the data set; `--top-k`, `--invert`, `--json`, `--device`, `--backend`,
  `--threads` mean the same thing, with the same default, wherever they appear;
- benchmarks: `--sizes` (batch or request sizes), `--seconds` (time per cell), `--rounds`
  (interleaved rounds or fresh processes);
- every command: `-h/--help`, `--version`, `-q/--quiet` (results and errors only),
  `-v/--verbose` (also what the command resolved: file, backend, device, threads), and
  settings from environment variables named after the command and the option
  (`FMNIST_PREDICT_TOP_K=3`, `FMNIST_BENCH_LATENCY_SECONDS=0.2`), read by click.

Old spellings (`--out`, `--out-dir`, `--batches`, `--budget`, `--repetitions`,
`--min-repetitions`) keep working for a release as hidden aliases: they parse as the new name,
are left out of `--help`, and say their new name once on stderr.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from fmnist_deploy import launch

PACKAGE = "fmnist-deploy"
TOP_K_DEFAULT = 1  # one answer per image unless more are asked for, in every command
DEVICES = ("cpu", "cuda")
VERBOSITY_KEY = "fmnist_deploy.verbosity"  # in the root context's meta: -1 quiet, 0 normal, 1 verbose

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def envvar_prefix(command_name: str) -> str:
    """`fmnist-predict` -> `FMNIST_PREDICT`: click adds `_<OPTION>` (and `_<SUBCOMMAND>` for fmnist-bench)."""
    return command_name.upper().replace("-", "_")


class Option(click.Option):
    """A click option that may carry hidden aliases: old spellings that parse but are not shown in --help."""

    def __init__(self, param_decls: Sequence[str], *, aliases: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__([*param_decls, *aliases], **kwargs)
        self.aliases = tuple(aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """click's help line, without the hidden aliases."""
        shown = self.opts
        self.opts = [opt for opt in shown if opt not in self.aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


class OldArgument(click.Argument):
    """A positional argument kept for a release as the old spelling of an option: parsed, and left out of the
    usage line (see `old_argument`)."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        """Nothing: the option is the documented spelling."""
        return []


def old_argument(name: str, **kwargs: Any) -> Decorator:
    """A hidden positional argument standing for an option (fmnist-serve's MODEL for --model). It stays silent:
    a server's first line on stderr is its address, which scripts read."""
    return click.argument(name, cls=OldArgument, required=False, **kwargs)


def _alias_notes(command: click.Command, args: Sequence[str]) -> list[str]:
    """One note per hidden alias used on this command line."""
    renamed = {
        alias: next(opt for opt in param.opts if opt not in param.aliases)
        for param in command.params
        if isinstance(param, Option)
        for alias in param.aliases
    }
    notes = []
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in renamed:
            notes.append(f"note: {name} is now {renamed[name]} (the old name still works in this release)")
    return notes


class Command(launch.Command):
    """A toolkit command: its errors end it as `launch.Command` says, and hidden aliases announce their new name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """click's parsing, then a note per hidden alias used."""
        notes = _alias_notes(self, args)
        remaining = super().parse_args(ctx, args)
        for note in notes:
            say(note)
        return remaining


class Group(launch.Group):
    """fmnist-bench: a group whose subcommands are toolkit commands."""

    command_class = Command

    def command(self, *args: Any, **kwargs: Any) -> Any:
        """click's `@group.command(name)`, with --version, -q and -v on the subcommand too."""
        register = super().command(*args, **kwargs)
        return lambda fn: register(common(fn))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """click's parsing, then a note per hidden alias used before the subcommand."""
        notes = _alias_notes(self, args[: next((i for i, a in enumerate(args) if a in self.commands), len(args))])
        remaining = super().parse_args(ctx, args)
        for note in notes:
            say(note)
        return remaining


def _settings(name: str) -> dict[str, Any]:
    return {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": envvar_prefix(name)}


def _set_verbosity(level: int) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            root = ctx.find_root()
            current = root.meta.get(VERBOSITY_KEY, 0)
            if current and current != level:
                raise click.UsageError("-q/--quiet and -v/--verbose contradict each other; give one")
            root.meta[VERBOSITY_KEY] = level

    return callback


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-q/--quiet, -v/--verbose and --version: on every command and every fmnist-bench subcommand,
    listed last in --help (before -h/--help), after the command's own options."""
    own = list(getattr(fn, "__click_params__", []))
    fn.__click_params__ = []  # type: ignore[attr-defined]
    fn = click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbosity(1),
        help="Also say what was resolved: model file, backend, device, threads, outputs.",
    )(fn)
    fn = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbosity(-1),
        help="Print results and errors only (no progress, notes or summaries on stderr).",
    )(fn)
    fn = click.version_option(package_name=PACKAGE, message="%(prog)s %(version)s")(fn)
    fn.__click_params__ += own  # type: ignore[attr-defined]  # click shows them in reverse
    return fn


def command(name: str, **kwargs: Any) -> Decorator:
    """The decorator of a top-level command: `@options.command("fmnist-predict")`."""

    def decorate(fn: Callable[..., Any]) -> click.Command:
        return click.command(name, cls=Command, context_settings=_settings(name), **kwargs)(common(fn))

    return decorate


def group(name: str, **kwargs: Any) -> Decorator:
    """The decorator of fmnist-bench's group."""

    def decorate(fn: Callable[..., Any]) -> click.Group:
        return click.group(name, cls=Group, context_settings=_settings(name), **kwargs)(common(fn))

    return decorate


def verbosity() -> int:
    """-1 with --quiet, 1 with --verbose, else 0 (also 0 outside a command)."""
    ctx = click.get_current_context(silent=True)
    return 0 if ctx is None else ctx.find_root().meta.get(VERBOSITY_KEY, 0)


def say(message: str) -> None:
    """A diagnostic line on stderr (progress, notes, what was written), unless --quiet."""
    if verbosity() >= 0:
        click.echo(message, err=True)


def detail(message: str) -> None:
    """A line on stderr only with --verbose."""
    if verbosity() > 0:
        click.echo(message, err=True)


@contextmanager
def upstream_notes() -> Iterator[None]:
    """Warnings that libraries raise while the block runs (torch's TorchScript deprecation, ...) become one
    `note:` line each on stderr at its end, once, without the file path and source line Python prints."""
    with warnings.catch_warnings(record=True) as caught:
        # What Python shows users by default (DeprecationWarning is for a library's own developers, and Ray
        # raises several for its internal settings), once per place it comes from.
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        yield
    for message in sorted({str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()}):
        say(f"note: {message}")


# --- the shared options ---------------------------------------------------------------------------


def model(help: str, *, exists: bool = False, default: Path | None = None, show_default: bool = False) -> Decorator:
    """`--model FILE`: the model file a command runs."""
    return click.option(
        "--model",
        type=click.Path(path_type=Path, dir_okay=False, exists=exists),
        default=default,
        show_default=show_default,
        help=help,
    )


def backend(backends: Sequence[str]) -> Decorator:
    """`--backend`: auto (from what the file is) or one backend, which then reads the file whatever its suffix."""
    return click.option(
        "--backend",
        type=click.Choice(["auto", *backends]),
        default="auto",
        show_default=True,
        help="auto = from the model file's suffix; a named backend reads the file whatever its suffix.",
    )


def device(*, auto: bool = False, default: str = "cpu") -> Decorator:
    """`--device`: cpu or cuda (and auto = CUDA when available, where a command offers it)."""
    choices = ["auto", *DEVICES] if auto else list(DEVICES)
    return click.option(
        "--device",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="auto = CUDA when available; cuda without a usable GPU is a usage error (exit 2)."
        if auto
        else "cuda without a usable GPU is a usage error (exit 2), never a CPU fallback.",
    )


def devices() -> Decorator:
    """`--device` on the benchmarks: repeatable."""
    return click.option(
        "--device",
        "devices",
        multiple=True,
        type=click.Choice(list(DEVICES)),
        help="Repeatable [default: cpu, plus cuda when present].",
    )


def top_k() -> Decorator:
    """`--top-k`: how many classes each answer lists, most probable first."""
    return click.option(
        "--top-k",
        type=click.IntRange(1, 10),
        default=TOP_K_DEFAULT,
        show_default=True,
        help="Classes per answer, most probable first.",
    )


def invert() -> Decorator:
    """`--invert`: the inputs are dark-on-light."""
    return click.option(
        "--invert", is_flag=True, help="Inputs are dark-on-light (photos, scans); Fashion-MNIST is light-on-dark."
    )


def image_column() -> Decorator:
    """`--image-column`: which column of a Parquet / Arrow input holds the image bytes."""
    return click.option(
        "--image-column",
        default="image",
        show_default=True,
        help="The image-bytes column of Parquet / Arrow inputs (binary, or Hugging Face's {bytes, path} struct).",
    )


def as_json(help: str = "Print the result as JSON instead of text.") -> Decorator:
    """`--json`: results for programs."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def output_file(help: str, *, required: bool = False, folder_ok: bool = False) -> Decorator:
    """`--output FILE` (fmnist-predict, fmnist-batch; batch also takes a folder): where the answers go."""
    return click.option(
        "--output", type=click.Path(path_type=Path, dir_okay=folder_ok), default=None, required=required, help=help
    )


def output_folder(help: str, *, default: Path | None = None, aliases: Sequence[str] = ()) -> Decorator:
    """`--output DIR` (fmnist-train, fmnist-export, fmnist-bench): the folder the command writes into."""
    return click.option(
        "--output",
        cls=Option,
        aliases=aliases,
        type=click.Path(path_type=Path, file_okay=False),
        default=default,
        show_default=default is not None,
        help=help,
    )


def overwrite(help: str) -> Decorator:
    """`--overwrite`: start over where a folder holds a run that could be resumed."""
    return click.option("--overwrite", is_flag=True, help=help)


def resume(help: str) -> Decorator:
    """`--resume`: continue a run that was interrupted."""
    return click.option("--resume", is_flag=True, help=help)


def data_dir(
    help: str = "Folder with the Fashion-MNIST IDX files [default: found as `make data` leaves them].",
) -> Decorator:
    """`--data-dir`: where the data set is."""
    return click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help=help)


def artifacts() -> Decorator:
    """`--artifacts DIR` (benchmarks): a folder of exported model files."""
    return click.option(
        "--artifacts",
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        default=None,
        help="Folder with the exported model files [default: the files installed with the package].",
    )


def threads(
    help: str = "Intra-op threads of the backend [default: the backend's own; 1 for the torch backends].",
) -> Decorator:
    """`--threads`: intra-op threads of the backend."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, help=help)


def seconds(default: float, help: str) -> Decorator:
    """`--seconds` (benchmarks): timed seconds per cell."""
    return click.option(
        "--seconds",
        cls=Option,
        aliases=("--budget",),
        type=click.FloatRange(min=0.0, min_open=True),
        default=default,
        show_default=True,
        help=help,
    )


def sizes(default: str, help: str, *, aliases: Sequence[str] = ()) -> Decorator:
    """`--sizes` (benchmarks): comma-separated batch, request or folder sizes."""
    return click.option("--sizes", cls=Option, aliases=aliases, default=default, show_default=True, help=help)


def rounds(default: int, help: str, *, aliases: Sequence[str] = ()) -> Decorator:
    """`--rounds` (benchmarks): interleaved rounds, or fresh processes per row."""
    return click.option(
        "--rounds",
        cls=Option,
        aliases=aliases,
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help=help,
    )


def int_list(value: str, name: str = "sizes") -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); each >= 1, else a usage error."""
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated whole numbers, got {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{name} must be >= 1, got {value!r}")
    return numbers


__all__ = [
    "DEVICES",
    "TOP_K_DEFAULT",
    "Command",
    "Group",
    "OldArgument",
    "Option",
    "artifacts",
    "as_json",
    "backend",
    "command",
    "common",
    "data_dir",
    "detail",
    "device",
    "devices",
    "envvar_prefix",
    "group",
    "image_column",
    "int_list",
    "invert",
    "model",
    "old_argument",
    "output_file",
    "output_folder",
    "overwrite",
    "resume",
    "rounds",
    "say",
    "seconds",
    "sizes",
    "threads",
    "top_k",
    "upstream_notes",
    "verbosity",
]
