"""`python -m fmnist_deploy.benchmarks.junit REPORT.xml`: pass only if tests ran and none failed or was skipped.

The CUDA run (benchmarks/cuda.sh) uses it: on a GPU machine a skipped CUDA test means
something went unchecked (a GPU torch cannot see, a module that could not be imported),
which the run must not report as a pass. The one exception is a test skipped because an
optional package is not installed ("not installed: pip install onnxruntime-gpu"): it is
listed, not failed (pytest's --require-ort-gpu turns that one into a failure).
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

NOT_INSTALLED = re.compile(r"(^|: )not installed: pip install ")  # pytest prefixes the skip location


def verdict(path: Path) -> tuple[bool, str]:
    """(passed, one line) for a pytest JUnit XML report."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return False, f"{path}: unreadable JUnit report ({exc})"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    skipped, absent = [], []
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            why = (case.find("skipped").get("message") or "").strip()
            (absent if NOT_INSTALLED.search(why) else skipped).append(
                f"{case.get('classname')}::{case.get('name')} ({why})"
            )
    line = f"{counts['tests']} tests: {counts['failures']} failed, {counts['errors']} errors, {len(skipped)} skipped"
    if absent:
        line += f", {len(absent)} not installed"
    if skipped:
        line += "; skipped: " + "; ".join(skipped[:5])
    if absent:
        line += "; not installed: " + "; ".join(absent[:5])
    ok = counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0 and not skipped
    return ok, line


def main(argv: list[str] | None = None) -> int:
    """Print the verdict; exit status 0 only for a clean run."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fmnist_deploy.benchmarks.junit REPORT.xml", file=sys.stderr)
        return 2
    ok, line = verdict(Path(args[0]))
    print(("PASS: " if ok else "FAIL: ") + line, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
