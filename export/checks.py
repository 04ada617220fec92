"""Results of the export gate: each check named, with its detail; one typed error for failures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fmnist_deploy.errors import ModelError

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 (N,28,28) -> logits, probabilities


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed, and what was measured."""

    name: str
    ok: bool
    detail: str


@dataclass
class GateReport:
    """Every check run on one file, the checks that could not run (with why), and the machine."""

    file: str
    format: str
    checks: list[Check] = field(default_factory=list)
    not_run: list[str] = field(
        default_factory=list
    )  # checks without a reference, each with the option that supplies it
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when at least one check ran and every check passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed, in the order they ran."""
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        """Record one check; returns whether it passed."""
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what `--json` prints and `--report` writes)."""
        return {
            "file": self.file,
            "format": self.format,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "not_run": list(self.not_run),
            "machine": dict(self.machine),
        }

    def summary(self) -> str:
        """One verdict line, then one line per check, then what was not run."""
        lines = [
            f"{self.file} [{self.format}]: {'PASS' if self.passed else 'FAIL'} ({len(self.checks) - len(self.failures)}/{len(self.checks)} checks)"
        ]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        lines += [f"  not run: {reason}" for reason in self.not_run]
        return "\n".join(lines)


class GateError(ModelError):
    """One or more exported files failed the gate; `.reports` lists every check of each."""

    def __init__(self, *reports: GateReport) -> None:
        self.reports = list(reports)
        super().__init__(
            "; ".join(
                f"{r.file} failed the export gate: " + ", ".join(f"{c.name} ({c.detail})" for c in r.failures)
                for r in reports
            )
        )


class ExportError(ModelError):
    """An export could not be produced as asked (bad weights, unreachable opset, …)."""
