"""Run the examples of the README and the documentation site, and check what they print.

Every fenced block of a Markdown file is an example:

- ```` ```python ```` blocks are executed, in the order of their page, in one namespace per page
  (a later block may use what an earlier one defined), with the sandbox as working directory.
- ```` ```console ```` blocks are transcripts: each line starting with `$ ` is a command, run by bash
  in the sandbox (one shell per block, so `cd` and variables carry over), and the lines after it,
  up to the next `$ `, are what it must print: its standard output and standard error together, each
  in its own order, interleaved as the page shows them (a terminal's interleaving depends on
  buffering, so any interleaving of the two streams fits). A `$ ` line ending in a backslash continues on the next line.
- Other blocks (`sh` without prompts, `text`, tables, JSON) are shown, not run.

In expected output, `...` stands for any text within a line, and a line that is only `...` for any
number of lines, so machine-dependent parts (timings, absolute paths) are written as `...` where a
reader would elide them anyway. An HTML comment right before a block (invisible on GitHub and on the
site) can say more:

    <!-- check: ignore REGEX -->   parts of lines matching REGEX are machine-dependent: they are
                                   replaced by one placeholder in both the expected and the actual
                                   output before comparing (may be given several times)
    <!-- check: skip REASON -->    not run here, and why (a container runtime, a GPU, a long run)
    <!-- check: setup COMMAND -->  a shell command run in the sandbox before the block, not shown
    <!-- check: needs WORD ... --> run only where each WORD is a command on PATH or a path of the
                                   checkout (`node examples/node/node_modules`); skipped, saying
                                   which is missing, elsewhere

The sandbox is a temporary folder holding a copy of the repository's `artifacts/` (model files,
sidecars, gate reports, golden vectors, samples; the benchmark reports and the checkpoint are left
out) and of `examples/` (their installed `node_modules` linked, not copied), so an example can write
where it likes without touching the checkout. The installed commands come first
on PATH (the `fmnist-*` scripts and `python` of the environment running the tests).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_LANGUAGES = ("python", "console")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*check:\s*(?P<verb>ignore|skip|setup|needs)\b\s*(?P<arg>.*?)\s*-->\s*$")
_PLACEHOLDER = "\x00machine-dependent\x00"


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    ignore: list[str] = field(default_factory=list)
    skip: str | None = None
    setup: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown.as_posix()}:{self.line}"


def _no_directives() -> dict[str, list[str]]:
    return {"ignore": [], "skip": [], "setup": [], "needs": []}


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the check directives written right before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    pending = _no_directives()
    i = 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        if directive:
            pending[directive["verb"]].append(directive["arg"])
            i += 1
            continue
        opening = _FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():  # a directive applies to the next block only
                pending = _no_directives()
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0].strip("{}.").lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        found.append(
            Block(
                path=path,
                line=i + 1,
                language=language,
                source="\n".join(body) + "\n",
                ignore=pending["ignore"],
                skip="; ".join(pending["skip"]) or None,
                setup=pending["setup"],
                needs=[word for arg in pending["needs"] for word in arg.split()],
            )
        )
        pending = _no_directives()
        i = j + 1
    return found


def missing(block: Block, root: Path = ROOT) -> list[str]:
    """What of the block's `needs` this machine lacks (a command not on PATH, a path not in the checkout)."""
    path = environment()["PATH"]
    return [word for word in block.needs if shutil.which(word, path=path) is None and not (root / word).exists()]


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose examples are checked: the README and every page of the site."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def runnable(root: Path = ROOT) -> list[Block]:
    """Every block that is run: Python blocks and console transcripts."""
    return [block for path in documents(root) for block in blocks(path) if block.language in RUN_LANGUAGES]


# --- transcripts -------------------------------------------------------------------------------


@dataclass
class Step:
    """One `$ command` of a transcript and the output it must print."""

    command: str
    expected: list[str]


def parse_transcript(source: str) -> list[Step]:
    """The commands of a console block and the lines each must print."""
    steps: list[Step] = []
    lines = source.rstrip("\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + "\n" + lines[i]
            steps.append(Step(command, []))
        elif steps:
            steps[-1].expected.append(line)
        elif line.strip():
            raise ValueError(f"output before the first '$ ' command: {line!r}")
        i += 1
    return steps


def _normalise(lines: list[str], ignore: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern in ignore:
            line = re.sub(pattern, _PLACEHOLDER, line)
        out.append(line.rstrip())
    while out and not out[-1]:
        out.pop()
    return out


def _line_pattern(expected: str) -> re.Pattern[str]:
    pieces = [re.escape(piece) for piece in expected.split("...")]
    return re.compile(".*".join(pieces) + r"\Z", re.DOTALL)


def matches(expected: list[str], actual: list[str], ignore: list[str] = (), stderr: list[str] = ()) -> bool:  # type: ignore[assignment]
    """Whether the lines `actual` (standard output) and `stderr`, interleaved in some order, fit `expected`:
    `...` within a line is any text, a line that is only `...` any number of lines."""
    want = _normalise(expected, list(ignore))
    out, err = _normalise(actual, list(ignore)), _normalise(list(stderr), list(ignore))
    patterns = [_line_pattern(line) for line in want]
    seen: dict[tuple[int, int, int], bool] = {}

    def fit(i: int, a: int, b: int) -> bool:
        key = (i, a, b)
        if key in seen:
            return seen[key]
        if i == len(want):
            result = a == len(out) and b == len(err)
        elif want[i].strip() == "...":
            result = fit(i + 1, a, b) or (a < len(out) and fit(i, a + 1, b)) or (b < len(err) and fit(i, a, b + 1))
        else:
            result = (a < len(out) and bool(patterns[i].match(out[a])) and fit(i + 1, a + 1, b)) or (
                b < len(err) and bool(patterns[i].match(err[b])) and fit(i + 1, a, b + 1)
            )
        seen[key] = result
        return result

    return fit(0, 0, 0)


def environment() -> dict[str, str]:
    """The examples' environment: this interpreter's scripts first on PATH, no colour, a wide terminal."""
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = scripts + os.pathsep + env.get("PATH", "")
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONWARNINGS": env.get("PYTHONWARNINGS", "")})
    env.pop("FORCE_COLOR", None)
    return env


def run_transcript(block: Block, cwd: Path, timeout: float = 600) -> list[tuple[Step, list[str], list[str]]]:
    """Run a console block's commands in one bash process (so `cd` and variables carry over from one
    command to the next); each step with the lines it wrote to standard output and standard error."""
    steps = parse_transcript(block.source)
    with tempfile.TemporaryDirectory(prefix="transcript-") as streams:
        script = ["set +e", *block.setup]
        for k, step in enumerate(steps):
            script.append(f"{{ {step.command}\n}} >'{streams}/{k}.out' 2>'{streams}/{k}.err'")
        completed = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", "\n".join(script)],
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            text=True,
        )
        if completed.returncode != 0 and not steps:
            raise AssertionError(f"{block.name}: the block did not run: {completed.stderr.strip()}")
        results = []
        for k, step in enumerate(steps):
            out, err = Path(streams, f"{k}.out"), Path(streams, f"{k}.err")
            results.append((step, _lines(out), _lines(err)))
        return results


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return text.rstrip("\n").split("\n") if text.strip() else []


def check_transcript(block: Block, cwd: Path) -> None:
    """Fail with both texts when a command of the block prints other than what is shown."""
    for step, out, err in run_transcript(block, cwd):
        if not matches(step.expected, out, block.ignore, stderr=err):
            raise AssertionError(
                f"{block.name}: `$ {step.command}` printed something else.\n"
                f"--- expected (... = any text)\n{textwrap.indent(chr(10).join(step.expected), '  ')}\n"
                f"--- actual standard output\n{textwrap.indent(chr(10).join(out), '  ')}\n"
                f"--- actual standard error\n{textwrap.indent(chr(10).join(err), '  ')}"
            )


def run_python(block: Block, namespace: dict, cwd: Path) -> None:
    """Execute a Python block in the page's namespace, with the sandbox as working directory."""
    previous = Path.cwd()
    env = environment()
    for command in block.setup:
        subprocess.run(["bash", "-c", command], cwd=cwd, env=env, check=True)
    os.chdir(cwd)
    try:
        exec(compile(block.source, block.name, "exec"), namespace)  # noqa: S102  (the documentation's own code)
    finally:
        os.chdir(previous)


def make_sandbox(where: Path, root: Path = ROOT) -> Path:
    """A folder holding a copy of the artifacts the examples read (the checkout itself is never written)."""
    shutil.copytree(
        root / "artifacts",
        where / "artifacts",
        ignore=shutil.ignore_patterns("bench", "checkpoint.pt", "__pycache__", "__init__.py"),
    )
    shutil.copytree(root / "examples", where / "examples", ignore=shutil.ignore_patterns("node_modules"))
    for modules in sorted((root / "examples").glob("*/node_modules")):
        (where / modules.relative_to(root)).symlink_to(modules, target_is_directory=True)
    return where
