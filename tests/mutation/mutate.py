"""`make mutate`: mutation testing of the critical modules with mutmut 3, each against the tests that guard it.

mutmut maps a file's path to its module name (`export/gate.py` -> `export.gate`), while this repository
installs its stage folders under one namespace through setuptools' package-dir (`fmnist_deploy.export.gate`).
So the run happens in a mirror of the tracked files laid out as the installed package
(`.mutation/tree/fmnist_deploy/export/gate.py`), where paths and module names agree; mutmut copies that tree into
`mutants/` and puts it first on sys.path, ahead of the editable install's finder. Subprocesses the tests start
(the installed commands, `python -m ...`) find the mutated package through PYTHONPATH.

Resumable: the mirror and mutmut's results stay in `.mutation/` (ignored by git); running again continues where a
run stopped (`--fresh` starts over). The report goes to `artifacts/mutation/report.md` (`--report-only` rewrites it
from the results so far). Opt-in, never part of `make test`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".mutation"
TREE = WORK / "tree"
STAGES = ("training", "export", "runtime", "benchmarks", "scaleout", "serving")

# The critical modules (as installed), the functions in scope (mutant-name globs: mutmut names a mutant of a
# function f in module m `m.x_f__mutmut_N`), and the tests that guard them. For each mutant mutmut runs only the
# tests of this selection that call the mutated function; a mutant no selected test calls counts as not killed.
TARGETS = {
    "fmnist_deploy/contract.py": ["contract_problems"],
    "fmnist_deploy/export/gate.py": ["compare", "_parity"],
    "fmnist_deploy/runtime/arrays.py": ["check_images", "describe"],
    "fmnist_deploy/runtime/__init__.py": ["_check_sidecar_metadata"],
    "fmnist_deploy/runtime/images.py": ["_check_file_size", "_payload_mismatch", "_idx_payload_bytes"],
    "fmnist_deploy/serving/protocol.py": ["*"],
    "fmnist_deploy/integrity.py": ["sidecar_check", "content_digest", "check_content"],
    "fmnist_deploy/atomic.py": ["*"],
    "fmnist_deploy/launch.py": ["*"],
}
TESTS = ["tests/test_limits.py", "tests/test_protocol.py", "tests/test_ground_floor.py"]
REPORT = REPO / "artifacts" / "mutation" / "report.md"

# Survivors judged equivalent (no test can tell them apart from the original), with the reason; see the report.
_SORT = "numpy sorts rows under 16 elements by insertion sort, which keeps ties in order: for 10 classes any kind gives the stable order"  # noqa: E501
_LE = "the model's outputs are float32, and on little-endian machines (x86-64, arm64) their native bytes are '<f4'"
_IDX_LIMIT = "no image count puts 16 + 784 n at 2^29 or one byte from it (2^29 - 16 is no multiple of 784): >/>= and 16/17 decide alike"  # noqa: E501
EQUIVALENT: dict[str, str] = {
    "fmnist_deploy.serving.protocol.x__bytes_tensor__mutmut_9": "'<i' and '<I' pack the same bytes for lengths below 2^31",
    "fmnist_deploy.serving.protocol.x_output_tensor__mutmut_11": "argsort's default axis (-1) is axis 1 of (N, 10)",
    "fmnist_deploy.serving.protocol.x_output_tensor__mutmut_9": _SORT,
    "fmnist_deploy.serving.protocol.x_output_tensor__mutmut_12": _SORT,
    "fmnist_deploy.serving.protocol.x_output_tensor__mutmut_16": "numpy reads `kind` case-insensitively: 'STABLE' is 'stable'",
    "fmnist_deploy.serving.protocol.x_output_tensor__mutmut_24": _LE,
    "fmnist_deploy.serving.protocol.x_output_tensor__mutmut_26": _LE,
    "fmnist_deploy.serving.protocol.x_output_tensor__mutmut_36": "reshape(-2) infers the size as reshape(-1) does",
    "fmnist_deploy.serving.protocol.x_check_input__mutmut_35": "IMAGE_SHAPE is square: [1] * [1] equals [0] * [1]",
    "fmnist_deploy.serving.protocol.x__json_tensor__mutmut_23": "'XXiuXX' holds 'i' and 'u'; no numpy dtype kind is 'X'",
    "fmnist_deploy.atomic.x_write_text_atomic__mutmut_7": "codec names are case-insensitive: 'UTF-8' is 'utf-8'",
    "fmnist_deploy.runtime.images.x__idx_payload_bytes__mutmut_17": "int.from_bytes is big-endian by default since Python 3.11",
    "fmnist_deploy.runtime.images.x__idx_payload_bytes__mutmut_33": _IDX_LIMIT,
    "fmnist_deploy.runtime.images.x__idx_payload_bytes__mutmut_36": _IDX_LIMIT,
    "fmnist_deploy.runtime.images.x__payload_mismatch__mutmut_6": "called only on a mismatch: held == declared never gets here",
    "fmnist_deploy.integrity.x_sidecar_check__mutmut_18": "codec names are case-insensitive: 'UTF-8' is 'utf-8'",
    "fmnist_deploy.export.gate.x_compare__mutmut_6": "astype(None) is astype(float64): numpy's default dtype",
    "fmnist_deploy.export.gate.x_compare__mutmut_13": "astype(None) is astype(float64): numpy's default dtype",
}
# check_images' first test is a fast path for the common case; every input it stops taking goes through the full
# check below it, which accepts and refuses exactly the same inputs (a slower path, same answers)
for _n in (6, 9, 10, 11):
    EQUIVALENT[f"fmnist_deploy.runtime.arrays.x_check_images__mutmut_{_n}"] = (
        "a fast path's condition: the full check decides the same"  # noqa: E501
    )
# Not equivalent, but out of reach of in-process tests: mutmut switches a mutant on when its function is called, and
# _entry runs once, at import, to build the console-script functions. tests/test_processes.py runs those functions as
# real processes (`run(None)` or `command(None)` would fail every command there).
OUT_OF_REACH = {
    f"fmnist_deploy.launch.x__entry__mutmut_{n}": "runs at import, before mutmut can switch it on; the console scripts run as processes in tests/test_processes.py"  # noqa: E501
    for n in (1, 2)
} | {
    f"fmnist_deploy.integrity.x_sidecar_check__mutmut_{n}": "not killed: the word read_current puts in its refusal of an oversized or irregular sidecar/model file; no selected test sends one (the size caps are tests/reliability's)"  # noqa: E501
    for n in (11, 14, 15, 16, 29, 32, 33, 34)
}


HISTORY = """\
- Full run over the 860 mutants of the functions in scope (2 mutants at a time, `nice -n 10`, about 13 minutes
  on this machine under load): 701 killed (one by timeout), 155 survived, 4 called by no selected test: 83.0 % of
  the 845 non-equivalent ones (15 equivalent at that point).
- Each survivor was read: the equivalent ones have their line below; for the others tests were added (exact
  messages, boundaries at the limit itself, a real weights file's digest, a closed stdout, nested JSON booleans, ...)
  and the survivors were run again against them, twice (mutmut re-collects which tests call which function).
- Held out: 20 mutants written by hand, none of them mutmut's nor the ones the edge tests were written for, applied
  one at a time with the relevant test file (`python tests/mutation/held_out.py`): 20 of 20 caught.\
"""


def _this_machine() -> str:
    """The CPU and its cores, as the benchmark reports name a machine (never its host name)."""
    from fmnist_deploy.machine import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def patterns() -> list[str]:
    """mutmut's mutant-name globs for the functions in scope."""
    globs = []
    for file, functions in TARGETS.items():
        module = file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        if functions == ["*"]:
            globs += [f"{module}.x_*__mutmut_*", f"{module}.xǁ*__mutmut_*"]  # functions, and methods (xǁClassǁname)
        else:
            globs += [f"{module}.x_{f}__mutmut_*" for f in functions]
    return globs


def _tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def build_mirror() -> None:
    """The tracked files, stage folders moved under fmnist_deploy/ as pyproject's package-dir maps them."""
    if TREE.exists():
        shutil.rmtree(TREE)
    for name in _tracked():
        top = name.split("/", 1)[0]
        if top in STAGES:
            target = TREE / "fmnist_deploy" / name
        elif top in ("fmnist_deploy", "tests", "pyproject.toml"):
            target = TREE / name
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    # mutmut runs pytest with its own sys.path: as a package, tests/ puts its parent (the mutated tree) on the path
    # for `from tests.conftest import ...` (the reliability folder, with a conftest of its own, is not selected)
    (TREE / "tests" / "__init__.py").write_text("")
    (TREE / "artifacts").symlink_to(REPO / "artifacts")  # read only: the committed files the tests compare with
    (TREE / "fmnist_deploy" / "artifacts").symlink_to(REPO / "artifacts")
    selection = TESTS
    config = "\n".join(
        [
            "",
            "[tool.mutmut]",
            f"source_paths = {json.dumps(['fmnist_deploy'])}",
            f"only_mutate = {json.dumps(list(TARGETS))}",
            f"pytest_add_cli_args_test_selection = {json.dumps(selection)}",
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]',
            'also_copy = ["tests", "artifacts", "pyproject.toml"]',
            "timeout_multiplier = 5.0",
            "timeout_constant = 10.0",
            "",
        ]
    )
    text = (TREE / "pyproject.toml").read_text()
    # the tests import their helpers as `tests.conftest`: the mirror's root (mutmut's mutants/) is their parent
    text = text.replace("[tool.pytest.ini_options]\n", '[tool.pytest.ini_options]\npythonpath = ["."]\n', 1)
    (TREE / "pyproject.toml").write_text(text + config)


def results() -> dict[str, int | None]:
    """Exit code of every mutant in scope that mutmut made (None: not run yet)."""
    codes: dict[str, int | None] = {}
    for meta in (TREE / "mutants").rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return {name: code for name, code in codes.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns())}


_DIFFS = """
import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in json.loads(sys.stdin.read())}))
"""


def _diffs(names: list[str]) -> dict[str, str]:
    """Each mutant's diff, from mutmut in one process (`mutmut show` takes a process per mutant)."""
    done = subprocess.run(
        [sys.executable, "-c", _DIFFS], input=json.dumps(names), cwd=TREE, capture_output=True, text=True, check=False
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


def write_report(machine: str, seconds: float | None) -> str:
    """The report: counts per module, the score, and every survivor with its diff and its verdict."""
    from mutmut.stats import status_by_exit_code

    codes = results()
    status = {name: status_by_exit_code[code] for name, code in codes.items()}
    modules = sorted({name.split(".x")[0] for name in codes})
    rows = []
    for module in modules:
        mine = [s for n, s in status.items() if n.split(".x")[0] == module]
        counts = [mine.count(k) for k in ("killed", "survived", "no tests", "timeout")]
        cells = " | ".join(str(c) for c in [len(mine), *counts, len(mine) - sum(counts)])
        rows.append(f"| `{module}` | {cells} |")
    killed = sum(1 for s in status.values() if s in ("killed", "timeout"))
    not_run = sum(1 for s in status.values() if s == "not checked")
    equivalent = [n for n, s in status.items() if s in ("survived", "no tests") and n in EQUIVALENT]
    alive = sorted(n for n, s in status.items() if s in ("survived", "no tests", "suspicious", "segfault"))
    scored = len(codes) - not_run - len(equivalent)
    score = killed / scored if scored else 0.0
    lines = [
        "# Mutation score of the critical modules",
        "",
        f"Tool: mutmut {metadata.version('mutmut')} (`make mutate`, `tests/mutation/mutate.py`). Machine: {machine}."
        + (f" Wall time of the last run: {seconds / 60:.0f} min." if seconds else ""),
        f"Tests run against the mutants: {', '.join(f'`{t}`' for t in TESTS)}.",
        "Functions in scope: " + "; ".join(f"`{f}`: {', '.join(fs)}" for f, fs in TARGETS.items()) + ".",
        "",
        "| module | mutants | killed | survived | no test calls it | timeout | other |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"**{killed} of {scored} non-equivalent mutants killed ({score:.1%})**; {len(equivalent)} survivors judged "
        f"equivalent (below), {not_run} not run yet. A timeout counts as killed (the mutant hangs the tests).",
        "",
        "## How this was measured",
        "",
        HISTORY,
        "",
        "## Survivors",
        "",
    ]
    diffs = _diffs(alive)
    for name in alive:
        verdict = EQUIVALENT.get(name) or OUT_OF_REACH.get(name) or "not killed"
        changed = [
            ln
            for ln in diffs.get(name, "").splitlines()
            if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))
        ]
        lines += [f"- `{name}` ({status[name]}): {verdict}", "  ```diff", *[f"  {ln}" for ln in changed[:6]], "  ```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="start over: rebuild the mirror, forget results")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the results so far")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--machine", default=_this_machine(), help="named in the report")
    args = parser.parse_args()
    if args.fresh and WORK.exists():
        shutil.rmtree(WORK)
    if not TREE.exists():
        build_mirror()
    env = {**os.environ, "PYTHONPATH": str(TREE / "mutants")}
    seconds = None
    if not args.report_only:
        started = time.monotonic()
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *patterns()]
        for attempt in range(2):
            # measured: on a fresh mirror, mutmut's first collection of test statistics can end in a pytest usage
            # error right after it generated the mutants; the same command run again collects them and goes on
            done = subprocess.run(command, cwd=TREE, env=env, check=False)
            if done.returncode == 0 or attempt or any(code is not None for code in results().values()):
                break
        seconds = time.monotonic() - started
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(write_report(args.machine, seconds))
    print(f"wrote {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
