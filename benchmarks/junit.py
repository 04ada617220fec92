"""`python -m fmnist_deploy.benchmarks.junit REPORT.xml`: pass only if tests ran and none failed or was skipped.

The CUDA run (benchmarks/cuda.sh) uses it: on a GPU machine a skipped CUDA test means
something went unchecked (a missing provider, a GPU torch cannot see), which the run must
not report as a pass.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def verdict(path: Path) -> tuple[bool, str]:
    """(passed, one line) for a pytest JUnit XML report."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return False, f"{path}: unreadable JUnit report ({exc})"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    skipped = [
        f"{case.get('classname')}::{case.get('name')} ({(case.find('skipped').get('message') or '').strip()})"
        for case in root.iter("testcase")
        if case.find("skipped") is not None
    ]
    line = (
        f"{counts['tests']} tests: {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped"
    )
    if skipped:
        line += "; skipped: " + "; ".join(skipped[:5])
    ok = counts["tests"] > 0 and counts["failures"] == counts["errors"] == counts["skipped"] == 0
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
