"""What a model file says about itself: the metadata inside it, and the JSON sidecar beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fmnist_deploy.bounds import MAX_SIDECAR_BYTES
from fmnist_deploy.contract import ARCHIVE_METADATA, contract_problems, sidecar_path
from fmnist_deploy.errors import IntegrityError, ModelError, first_line
from fmnist_deploy.exportset import read_current, resolve


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """The contract a file claims must be one this runtime speaks (`fmnist_deploy.contract`)."""
    problems = contract_problems(meta)
    if problems:
        raise ModelError(f"{source}: {'; '.join(problems)}")
    return meta


def archive_metadata(extra: dict[str, Any], source: str) -> dict[str, Any]:
    """The metadata of a TorchScript / .pt2 archive, parsed from its extra files as the loader filled them."""
    text = extra.get(ARCHIVE_METADATA, "")
    try:
        return json.loads(text) if text else {}
    except ValueError as exc:
        raise ModelError(f"{source}: its {ARCHIVE_METADATA} is not JSON ({exc})") from None


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar beside a model file, or {} when there is none."""
    sidecar = sidecar_path(path)
    if not os.path.lexists(resolve(sidecar)):
        return {}
    try:  # a regular file under a size cap: a FIFO or a link to /dev/zero is refused, never read
        return json.loads(read_current(sidecar, MAX_SIDECAR_BYTES, "sidecar").decode("utf-8"))
    except IntegrityError as exc:
        raise ModelError(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{sidecar}: unreadable sidecar ({first_line(exc)})") from None
