"""The documentation stays true: its examples run and print what they show, its command reference is
generated from the commands themselves, its troubleshooting tables from the code's errors."""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path

import click
import pytest

from tests import docs_examples as dx

ROOT = dx.ROOT
sys.path.insert(0, str(ROOT / "docs"))
import gen_api  # noqa: E402
import gen_errors  # noqa: E402

# The six commands: (console script, module whose `main` is the click command, its page).
COMMANDS = [
    ("fmnist-train", "fmnist_deploy.training.cli", "commands/fmnist-train.md"),
    ("fmnist-export", "fmnist_deploy.export.cli", "commands/fmnist-export.md"),
    ("fmnist-predict", "fmnist_deploy.runtime.cli", "commands/fmnist-predict.md"),
    ("fmnist-bench", "fmnist_deploy.benchmarks.cli", "commands/fmnist-bench.md"),
    ("fmnist-batch", "fmnist_deploy.scaleout.cli", "commands/fmnist-batch.md"),
    ("fmnist-serve", "fmnist_deploy.serving.cli", "commands/fmnist-serve.md"),
]

# --- every example of the README and the site, run ----------------------------------------------

_NAMESPACES: dict[Path, dict] = {}


_SANDBOXES: dict[Path, Path] = {}


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    return dx.make_sandbox(tmp_path_factory.mktemp("docs-examples"))


@pytest.fixture
def page_sandbox(request, tmp_path_factory):
    """One sandbox per page: its examples build on each other (a file written, then read), in page order;
    two pages never see each other's files."""
    path = request.node.callspec.params["block"].path
    if path not in _SANDBOXES:
        _SANDBOXES[path] = dx.make_sandbox(tmp_path_factory.mktemp("docs-page"))
    return _SANDBOXES[path]


@pytest.mark.parametrize("block", dx.runnable(), ids=lambda block: block.name)
def test_example(block: dx.Block, page_sandbox: Path):
    if block.skip:
        pytest.skip(f"{block.name}: {block.skip}")
    if lacking := dx.missing(block):
        pytest.skip(f"{block.name}: needs {', '.join(lacking)} (make embed-deps installs the examples' packages)")
    if block.language == "python":
        namespace = _NAMESPACES.setdefault(block.path, {"__name__": "__docs__"})
        dx.run_python(block, namespace, page_sandbox)
    else:
        dx.check_transcript(block, page_sandbox)


def test_examples_are_found():
    """The runner sees the README's examples and those of every command page (a parser that found
    nothing would pass every test above)."""
    found = dx.runnable()
    readme = [b for b in found if b.path.name == "README.md"]
    assert any(b.language == "python" for b in readme) and any(b.language == "console" for b in readme)
    for _, _, page in COMMANDS:
        assert any(b.path == ROOT / "docs" / page and b.language == "console" for b in found), page


# --- the runner itself can fail -----------------------------------------------------------------


def test_matches_ellipsis_and_ignore():
    assert dx.matches(["a ... c"], ["a bbb c"])
    assert not dx.matches(["a ... c"], ["a bbb d"])
    assert dx.matches(["first", "...", "last"], ["first", "x", "y", "last"])
    assert dx.matches(["first", "...", "last"], ["first", "last"])
    assert not dx.matches(["first", "last"], ["first", "extra", "last"])
    assert not dx.matches(["only"], [])
    assert dx.matches(["took 0.17s"], ["took 3.20s"], ignore=[r"\d+\.\d+s"])
    assert not dx.matches(["took 0.17s"], ["took 3.20s"])
    # standard output and standard error fit in any interleaving, each in its own order
    assert dx.matches(["out 1", "err 1", "out 2"], ["out 1", "out 2"], stderr=["err 1"])
    assert not dx.matches(["out 2", "out 1", "err 1"], ["out 1", "out 2"], stderr=["err 1"])
    assert not dx.matches(["out 1"], ["out 1"], stderr=["err 1"])


def test_directives_attach_to_the_next_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- check: skip needs a GPU -->\n```console\n$ nvidia-smi\n```\n\n"
        "text\n\n<!-- check: ignore \\d+ -->\n<!-- check: setup touch x -->\n```console\n$ echo 1\n1\n```\n"
        "```python\nx = 1\n```\n"
    )
    first, second, third = dx.blocks(page)
    assert first.skip == "needs a GPU" and not first.ignore
    assert second.skip is None and second.ignore == [r"\d+"] and second.setup == ["touch x"]
    assert third.language == "python" and not third.ignore and third.skip is None
    page.write_text("<!-- check: needs node examples/none -->\n```console\n$ node -v\n```\n")
    (block,) = dx.blocks(page)
    assert block.needs == ["node", "examples/none"]
    assert "examples/none" in dx.missing(block)


def _readme_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text((ROOT / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    return root


def test_a_broken_readme_transcript_fails(tmp_path, sandbox):
    """Changing one shown output line of the README's first checked transcript makes its check fail."""
    root = _readme_copy(tmp_path)
    readme = root / "README.md"
    original = next(b for b in dx.blocks(readme) if b.language == "console" and not b.skip and not b.needs)
    dx.check_transcript(original, sandbox)  # as written, it passes
    step = next(s for s in dx.parse_transcript(original.source) if s.expected)
    line = next(x for x in step.expected if x.strip() and x.strip() != "...")
    text = readme.read_text(encoding="utf-8")
    start = text.index(original.source)
    broken_source = original.source.replace(line, line + " (edited)", 1)
    readme.write_text(text[:start] + broken_source + text[start + len(original.source) :], encoding="utf-8")
    broken = next(b for b in dx.blocks(readme) if b.line == original.line)
    with pytest.raises(AssertionError, match="printed something else"):
        dx.check_transcript(broken, sandbox)


def test_a_broken_readme_python_example_fails(tmp_path, sandbox):
    """A name misspelt in the README's first Python example makes it raise."""
    root = _readme_copy(tmp_path)
    readme = root / "README.md"
    original = next(b for b in dx.blocks(readme) if b.language == "python" and not b.skip)
    dx.run_python(original, {"__name__": "__docs__"}, sandbox)  # as written, it runs
    broken = dx.Block(readme, original.line, "python", original.source.replace("load", "lood"))
    with pytest.raises((NameError, ImportError, AttributeError)):
        dx.run_python(broken, {"__name__": "__docs__"}, sandbox)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; the rest belongs in docs/"


# --- the command reference is generated from the commands ---------------------------------------


def _reference(prog: str, command: click.Command) -> str:
    from mkdocs_click._docs import make_command_docs

    return "\n".join(make_command_docs(prog, command, style="table", depth=1, list_subcommands=True))


def _options(command: click.Command) -> list[str]:
    names = []
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            names.extend(opt for opt in param.opts if opt.startswith("--"))
    return names


@pytest.mark.parametrize(("prog", "module", "page"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_reference_is_generated_from_the_command(prog, module, page):
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert f":module: {module}" in text and ":command: main" in text, f"{page} does not generate its reference"
    command = importlib.import_module(module).main
    reference = _reference(prog, command)
    commands = [command]
    if isinstance(command, click.Group):
        commands += list(command.commands.values())
    for each in commands:
        for option in _options(each):
            assert f"`{option}`" in reference, f"{prog}: {option} missing from the generated reference"


def test_deleting_an_option_changes_the_reference():
    """The reference of fmnist-predict without one of its options no longer lists it."""
    command = importlib.import_module("fmnist_deploy.runtime.cli").main
    option = next(p for p in command.params if isinstance(p, click.Option) and len(_options_of(p)) == 1)
    name = _options_of(option)[0]
    before = _reference("fmnist-predict", command)
    trimmed = copy.copy(command)
    trimmed.params = [p for p in command.params if p is not option]
    after = _reference("fmnist-predict", trimmed)
    assert f"`{name}`" in before and f"`{name}`" not in after
    assert before != after


def _options_of(param: click.Parameter) -> list[str]:
    return [opt for opt in param.opts if opt.startswith("--")]


def test_api_reference_covers_every_public_name():
    import fmnist_deploy

    reference = gen_api.markdown()
    for name in fmnist_deploy.__all__:
        if not name.startswith("_"):
            assert f"heading: fmnist_deploy.{name}\n" in reference, name
    assert gen_api.MARKER in (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


# --- the troubleshooting tables come from the code ----------------------------------------------


def test_troubleshooting_lists_the_errors_the_code_raises():
    rows = gen_errors.collect()
    assert len(rows) > 50
    commands = {row.command for row in rows}
    assert {"fmnist-train", "fmnist-export", "fmnist-serve"} <= commands
    page = gen_errors.markdown(rows)
    # one message known from the training command, as it reads in the code
    assert "holds an earlier run: pass --resume to continue it or --overwrite to start over" in page
    for row in rows:
        assert gen_errors.ADVICE.get(row.cls) or gen_errors.ADVICE.get(row.kind), f"no advice for {row.cls}"
        assert row.exit_code in (1, 2), row


def test_troubleshooting_sees_a_new_error(tmp_path, monkeypatch):
    """A message added to a stage's source appears in the next table."""
    root = tmp_path / "repo"
    for folder in gen_errors.STAGES:
        (root / folder).mkdir(parents=True)
    source = (ROOT / "training" / "cli.py").read_text(encoding="utf-8")
    (root / "training" / "cli.py").write_text(
        source + '\n\ndef _new():\n    raise click.UsageError("a brand-new message for the docs test")\n',
        encoding="utf-8",
    )
    monkeypatch.setattr(gen_errors, "STAGES", {"training": gen_errors.STAGES["training"]})
    rows = gen_errors.collect(root)
    assert any(row.message == "a brand-new message for the docs test" and row.exit_code == 2 for row in rows)
