"""Console-script entry points: import the command, then run it, with Ctrl-C handled from the first moment.

Importing torch takes seconds; a Ctrl-C during those imports would otherwise print a
KeyboardInterrupt traceback before the command's own handling is in place.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from fmnist_deploy.errors import catch_ctrl_c


def _run(module: str) -> Callable[[], None]:
    def entry() -> None:
        catch_ctrl_c()
        try:
            command = importlib.import_module(module).main
        except KeyboardInterrupt:
            print("interrupted while starting; nothing was done", file=sys.stderr)
            sys.exit(130)
        command()

    return entry


train = _run("fmnist_deploy.training.cli")
export = _run("fmnist_deploy.export.cli")
predict = _run("fmnist_deploy.runtime.cli")
bench = _run("fmnist_deploy.benchmarks.cli")
batch = _run("fmnist_deploy.scaleout.cli")
serve = _run("fmnist_deploy.serving.cli")
