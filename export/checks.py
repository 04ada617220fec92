"""Results of the export gate: each check named, with its detail; one typed error for failures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 (N,28,28) -> logits, probabilities


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class GateReport:
    file: str
    format: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    def summary(self) -> str:
        lines = [f"{self.file} [{self.format}]: {'PASS' if self.passed else 'FAIL'} ({len(self.checks) - len(self.failures)}/{len(self.checks)} checks)"]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


class GateError(Exception):
    """One or more exported files failed the gate; `.reports` lists every check of each."""

    def __init__(self, *reports: GateReport) -> None:
        self.reports = list(reports)
        super().__init__("; ".join(
            f"{r.file} failed the export gate: " + ", ".join(f"{c.name} ({c.detail})" for c in r.failures)
            for r in reports
        ))


class ExportError(Exception):
    """An export could not be produced as asked (bad weights, unreachable opset, …)."""
