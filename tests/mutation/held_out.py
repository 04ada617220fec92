"""A held-out check of the suite: small mutants written by hand (none of them the ones the mutation tool makes
or the ones named when the edge tests were written), each applied alone to the source, the relevant tests run,
the source restored. Prints one line per mutant and the share caught.

    python tests/mutation/held_out.py            # all of them
    python tests/mutation/held_out.py 3 7        # some, by number

It edits the working tree while it runs (and restores each file in a `finally`): run it when nothing else uses
this checkout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMITS = "tests/test_limits.py"
PROTOCOL = "tests/test_protocol.py"
GROUND = "tests/test_ground_floor.py"

# (file, text, replacement, tests): the text must occur exactly once in the file
MUTANTS = [
    ("fmnist_deploy/contract.py", 'version.split(".")[0] != CONTRACT_MAJOR', "version != CONTRACT_VERSION", [LIMITS]),
    ("export/gate.py", 'and stats["max_prob_sum_error"] <= PROB_SUM_TOLERANCE\n', "\n", [LIMITS]),
    (
        "export/gate.py",
        'stats["max_prob_sum_error"] <= INT8_PROB_SUM_TOLERANCE',
        'stats["max_prob_sum_error"] <= PROB_SUM_TOLERANCE',
        [LIMITS],
    ),  # fmt: skip
    ("export/gate.py", "BATCH_SIZES = (1, 2, 7, 100, 10_000)", "BATCH_SIZES = (1, 2, 7, 100)", [LIMITS]),
    ("export/gate.py", "drop_points <= limit,", "drop_points < limit,", [LIMITS]),
    ("runtime/arrays.py", "or images.ndim not in (2, 3)", "or images.ndim not in (2, 3, 4)", [LIMITS]),
    ("runtime/images.py", "if held != declared:", "if held < declared:", [LIMITS]),
    ("runtime/images.py", "        return None  # Pillow's path words the refusal\n", "        pass\n", [LIMITS]),
    ("serving/protocol.py", "if not 0 <= split <= len(body):", "if False:", [PROTOCOL]),
    ("serving/protocol.py", "not 0 <= classification <= N_CLASSES", "not 0 <= classification < N_CLASSES", [PROTOCOL]),
    ("serving/protocol.py", "if not _whole(size) or size != expected", "if size != expected", [PROTOCOL]),
    ("serving/protocol.py", "if request_id is not None and not isinstance(request_id, str):", "if False:", [PROTOCOL]),
    (
        "serving/protocol.py",
        'f"{array[i, j]:f}:{j}:{class_names[j]}"',
        'f"{array[i, j]:f}:{j + 1}:{class_names[j]}"',
        [PROTOCOL],
    ),  # fmt: skip
    ("fmnist_deploy/atomic.py", "        os.chmod(tmp, 0o644)\n", "", [GROUND]),
    ("fmnist_deploy/atomic.py", r"[A-Za-z0-9_]{8}\.tmp", r"[A-Za-z0-9_]{7,8}\.tmp", [GROUND]),
    ("fmnist_deploy/launch.py", "threading.current_thread() is threading.main_thread() and ", "", [GROUND]),
    (
        "fmnist_deploy/launch.py",
        'os.environ.setdefault(ORT_TELEMETRY_VARIABLE, "1")',
        'os.environ[ORT_TELEMETRY_VARIABLE] = "1"',
        [GROUND],
    ),  # fmt: skip
    (
        "fmnist_deploy/integrity.py",
        "for k, v in payload.items() if k != CONTENT_KEY",
        "for k, v in payload.items()",
        [GROUND],
    ),  # fmt: skip
    ("fmnist_deploy/integrity.py", "for key in sorted(value, key=str):", "for key in value:", [GROUND]),
    ("serving/app.py", "* 4 + 64) + (1 << 20)", "* 4 + 64) + (1 << 21)", ["tests/test_serving.py", "-k", "edges"]),
]


def run(numbers: list[int]) -> int:
    caught = 0
    for number in numbers:
        file, text, replacement, tests = MUTANTS[number - 1]
        path = REPO / file
        original = path.read_text()
        assert original.count(text) == 1, f"mutant {number}: {text!r} occurs {original.count(text)} times in {file}"
        started = time.monotonic()
        try:
            path.write_text(original.replace(text, replacement))
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        finally:
            path.write_text(original)
        killed = done.returncode != 0
        caught += killed
        verdict = "caught  " if killed else "SURVIVED"
        seconds = time.monotonic() - started
        print(f"{number:2d} {verdict} {seconds:5.0f} s  {file}: {text.strip()[:60]!r} -> {replacement.strip()[:40]!r}")
        sys.stdout.flush()
    print(f"{caught} of {len(numbers)} caught ({caught / len(numbers):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(run([int(a) for a in sys.argv[1:]] or list(range(1, len(MUTANTS) + 1))))
