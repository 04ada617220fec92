"""The troubleshooting page's table: every error message the toolkit raises, read from the code.

Each `raise SomeError("...")` (and `click.BadParameter` / `click.UsageError` / `ctx.fail`) in the
package's source is one row: its message with the run-time parts shown as ‹names›, the command that
prints it (from the stage folder it lives in), the kind of error it is and the exit status that
kind gives. What a kind means comes from its class docstring; what to do about it is the message
itself (the toolkit's messages name the option or file that fixes them) plus one paragraph per kind
below. Nothing here is written by hand per message, so a new or reworded error shows up on the next
`make docs`.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# stage folder -> (import prefix, the command(s) that print its errors)
STAGES = {
    "fmnist_deploy": ("fmnist_deploy", "every command"),
    "training": ("fmnist_deploy.training", "fmnist-train"),
    "export": ("fmnist_deploy.export", "fmnist-export"),
    "runtime": ("fmnist_deploy.runtime", "fmnist-predict (and every command that loads a model)"),
    "benchmarks": ("fmnist_deploy.benchmarks", "fmnist-bench"),
    "scaleout": ("fmnist_deploy.scaleout", "fmnist-batch"),
    "serving": ("fmnist_deploy.serving", "fmnist-serve"),
}

# What to do, per kind of error (the class a message's class descends from). A kind without an
# entry falls back to its docstring alone; `test_docs.py` checks every kind found has one.
ADVICE = {
    "UsageError": "Nothing was done and no file was written. Read the message: it names the option and "
    "what it accepts; `COMMAND --help` lists every option.",
    "BadParameter": "Nothing was done and no file was written. The message names the option and the value "
    "it was given; `COMMAND --help` lists what each option accepts.",
    "ClickException": "The command stopped with this one line. The message says what failed; the files "
    "written so far are complete (every artifact is written under a temporary name and renamed).",
    "InputError": "The input named in the message was not used; with several inputs the others were still "
    "answered. Check the file is what it claims to be (an image, an `.npy` uint8 [N,28,28] batch, an IDX "
    "file), or convert it.",
    "ModelError": "The model file was refused before anything was answered from it. Re-export it "
    "(`make export`, or `fmnist-export --format ...`), or pass the right file with `--model`.",
    "DeviceError": "Nothing ran on a device you did not ask for. Use `--device cpu`, or install the CUDA "
    "build (`onnxruntime-gpu`, a CUDA torch) on a machine with an NVIDIA GPU.",
    "IntegrityError": "The file does not match its recorded digest, or holds something that could run code: "
    "it was refused unread. Take the file again from its source, or re-export it.",
    "OutputError": "A result could not be written (a full disk, a read-only folder, a closed standard "
    "output). What was printed before is complete; nothing half-written is left.",
    "RuntimeFailure": "The runtime refused the model, the input, the device or an option, as the message says.",
    "OptionError": "A backend option the chosen backend does not take, or a value it does not accept: the "
    "message lists what it takes.",
    "GateError": "A check of the export gate failed: the report above the line says which and by how much. "
    "The files were written (to be inspected) but must not be shipped; `--verify FILE` runs the gate alone.",
    "ExportError": "The export itself could not be done (an exporter failure or an unusable option); "
    "no file was written under its final name.",
    "DataError": "The Fashion-MNIST files are missing, truncated or altered. `make data` fetches and "
    "verifies them (Debian: `apt-get install dataset-fashion-mnist`), or pass `--data-dir`.",
    "CheckpointError": "The checkpoint or weights file is damaged or from another run: the message says "
    "which. `--overwrite` starts over, `--resume` continues a run that matches.",
    "TrainingError": "Training stopped, as the message says; the last checkpoint is intact and "
    "`fmnist-train --resume` continues from it.",
    "GoldenError": "The golden vectors file is damaged or not from these weights: re-export it with "
    "`fmnist-export`, or pass the right one with `--golden`.",
    "BatchError": "The batch job could not start or finish: the message says why. A killed job continues "
    "with the same command and `--resume`.",
    "ProtocolError": "The request is not valid Open Inference Protocol: the server answered 400/404 with "
    "this message, and the client should fix the request.",
    "QueueFull": "The server's queue was full: it answered 503 at once. Retry later, or raise `--max-queue`.",
    "BodyError": "The server could not read a request body (too large, too slow, or the client went away) "
    "and answered with the status the message names (413, 408, ...); the server itself goes on.",
    "BundleError": "Building or installing the offline GPU bundle stopped at this step; the message names the "
    "file or package. `benchmarks/cuda.sh --dry-run` lists the steps.",
    "RepositoryError": "The Triton model repository is not one `fmnist-serve --model-repository` serves: the "
    "message names the file and field. `fmnist-export --format triton` writes a valid one.",
    "StandardOutputError": "Standard output could not be written (a full disk, `> /dev/full`, a closed "
    "output): the command stops in one line; a reader that goes away (`| head`) ends it quietly instead.",
    "ColdStartError": "A cold-start process failed: the message carries its error line.",
    "ValueError": "A value is not what is accepted, as the message says.",
    "OSError": "The operating system refused a file operation, as the message says.",
}

CLICK_KINDS = {"BadParameter": 2, "UsageError": 2, "ClickException": 1}
CLICK_DOCS = {  # click's own docstrings describe the class for programmers
    "BadParameter": "A usage error about one option or argument, reported before any work is done.",
    "UsageError": "The command was asked for something it does not do, reported before any work is done.",
    "ClickException": "A failure the command reports in one line (`Error: ...`) before it stops.",
}


@dataclass(frozen=True)
class Raised:
    """One error message found in the source."""

    message: str  # with ‹expression› for what is filled in at run time
    cls: str  # the class as the source names it
    kind: str  # the kind it is reported as (see `kind_of`)
    exit_code: int
    command: str
    where: str  # folder/module.py:line
    doc: str  # the first line of the class's docstring: what the error means


def _render(node: ast.expr) -> str | None:
    """The message of a string or f-string expression, run-time parts as ‹...›; None when not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(f"‹{ast.unparse(value.value)}›")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "a" + f"b"
        left, right = _render(node.left), _render(node.right)
        return None if left is None or right is None else left + right
    return None


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_error_name(name: str) -> bool:
    return name.endswith(("Error", "Failure", "Exception", "BadParameter", "Full", "Missing"))


def kind_of(cls: type) -> tuple[str, int]:
    """The kind an error class is reported as, and its exit status.

    With the toolkit's error root (`fmnist_deploy.errors.FmnistError`) the kind is the root's direct
    subclass the class descends from and the status its `exit_code`; click's exceptions are their own
    kinds; anything else is named by the class just below `Exception` in its ancestry."""
    import click

    for name, code in CLICK_KINDS.items():
        if issubclass(cls, getattr(click, name)):
            return name, int(getattr(cls, "exit_code", code))
    errors = importlib.import_module("fmnist_deploy.errors")
    root = getattr(errors, "FmnistError", None)
    mro = cls.__mro__
    if root is not None and issubclass(cls, root):
        for ancestor in mro:
            if root in ancestor.__bases__:
                return ancestor.__name__, int(getattr(cls, "exit_code", 1))
        return cls.__name__, int(getattr(cls, "exit_code", 1))
    for ancestor in reversed(mro):  # the first toolkit class below the builtins
        if ancestor.__module__.startswith("fmnist_deploy"):
            return ancestor.__name__, int(getattr(cls, "exit_code", 1))
    return cls.__name__, int(getattr(cls, "exit_code", 1))


def _reported(cls: type) -> bool:
    """A class the commands report as one line: the toolkit's own errors and click's. A builtin
    (`ValueError`, `TypeError`, ...) raised by the library is a programming guard, not a message."""
    import click

    return cls.__module__.startswith("fmnist_deploy") or issubclass(cls, click.ClickException)


def _resolve(module, name: str) -> type | None:
    """The exception class `name` as `module` sees it (None for a module that could not be imported:
    then the toolkit's modules imported so far, and click, are searched for that name)."""
    import builtins
    import sys

    import click

    scopes = (
        [module] if module is not None else [m for n, m in sorted(sys.modules.items()) if n.startswith("fmnist_deploy")]
    )
    for scope in [*scopes, click, builtins]:
        value = getattr(scope, name, None)
        if isinstance(value, type) and issubclass(value, BaseException):
            return value
    return None


def collect(root: Path = ROOT) -> list[Raised]:
    """Every literal error message raised by the package's source under `root`, in source order."""
    rows: list[Raised] = []
    for folder, (prefix, command) in STAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root / folder).with_suffix("")
            parts = [] if relative.name == "__init__" else list(relative.parts)
            try:
                module = importlib.import_module(".".join([prefix, *parts]))
            except ImportError:  # a module that does not import here (an optional package): resolve by name
                module = None
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                call = None
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                    call = node.exc
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fail":
                    call = node  # ctx.fail("...") is click's UsageError
                if call is None or not call.args:
                    continue
                name = _called_name(call)
                if name is None or (name != "fail" and not _is_error_name(name)):
                    continue
                message = _render(call.args[0])
                if message is None or not message.strip():
                    continue
                cls = _resolve(module, "UsageError" if name == "fail" else name)
                if cls is None or not _reported(cls):
                    continue
                kind, code = kind_of(cls)
                where = f"{folder}/{path.relative_to(root / folder).as_posix()}:{node.lineno}"
                doc = CLICK_DOCS.get(cls.__name__) or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
                rows.append(Raised(message.strip(), cls.__name__, kind, code, command, where, doc))
    rows.sort(
        key=lambda r: (list(STAGES).index(r.where.split("/")[0]), r.where.split(":")[0], int(r.where.split(":")[1]))
    )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def markdown(rows: list[Raised] | None = None) -> str:
    """The troubleshooting tables: one section per command, then what each error means and what to do."""
    rows = collect() if rows is None else rows
    out: list[str] = []
    by_command: dict[str, list[Raised]] = {}
    for row in rows:
        by_command.setdefault(row.command, []).append(row)
    out.append(f"{len(rows)} messages, read from the source by `docs/gen_errors.py` each time the site is built.\n")
    for command, group in by_command.items():
        out.append(f"### {command}\n")
        out.append("| message (‹…› is filled in at run time) | error | exit | raised in |")
        out.append("|---|---|---:|---|")
        for row in group:
            out.append(
                f"| `{_cell(row.message)}` | [{row.cls}](#{row.cls.lower()}) | {row.exit_code} | `{row.where}` |"
            )
        out.append("")
    out.append("## What each error means and what to do\n")
    seen: dict[str, Raised] = {}
    for row in rows:
        seen.setdefault(row.cls, row)
    for name in sorted(seen):
        row = seen[name]
        out.append(f"### {name}\n")
        kind = f"a kind of `{row.kind}`, " if row.kind != name else ""
        out.append(
            f"{row.doc} ({kind}exit status {row.exit_code})\n" if row.doc else f"({kind}exit status {row.exit_code})\n"
        )
        advice = ADVICE.get(name) or ADVICE.get(row.kind)
        if advice:
            out.append(advice + "\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
