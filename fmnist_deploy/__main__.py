"""`python -m fmnist_deploy COMMAND [ARGS]`: the six commands without their console scripts.

COMMAND is train, export, predict, bench, batch or serve (or the script name, fmnist-predict, ...).
"""

from __future__ import annotations

import sys
from functools import partial

from fmnist_deploy import launch

COMMANDS = tuple(launch.MODULES)
USAGE = f"usage: python -m fmnist_deploy {{{','.join(COMMANDS)}}} [ARGS]...  (each command has --help)"


def main(argv: list[str]) -> None:
    """Run one command as its console script would."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        sys.exit(2 if not argv else 0)
    name = argv[0].removeprefix("fmnist-")
    if name not in COMMANDS:
        print(f"{USAGE}\nError: no command {argv[0]!r}", file=sys.stderr)
        sys.exit(2)
    launch.run(partial(launch.command(name), args=argv[1:], prog_name=f"fmnist-{name}"))


if __name__ == "__main__":
    main(sys.argv[1:])
