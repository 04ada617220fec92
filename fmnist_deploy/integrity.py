"""Integrity and safety of the files the toolkit reads: nothing it reads may run code, and a damaged
file is refused, never answered from.

- A model file is checked against the `file_sha256` of its JSON sidecar when one is beside it.
- A weights file or checkpoint carries a digest of its own content (`content_sha256`), checked
  on load, so a flipped byte in a tensor is caught even without a sidecar.
- A .pt2 archive is inspected before torch sees it: only the records the contract needs, no
  weight or constant stored as a pickle, and the one pickle torch.export writes
  (`sample_inputs`) must pass the weights-only unpickler. torch.export.load itself would
  unpickle that record without restrictions.

Pure Python plus duck-typed tensors: importing this module never imports torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from fmnist_deploy.contract import sidecar_path
from fmnist_deploy.errors import IntegrityError

CONTENT_KEY = "content_sha256"


class IntegrityWarning(UserWarning):
    """A file could not be checked (no sidecar beside it); it is used, with this warning."""


def sidecar_check(path: Path) -> tuple[dict[str, Any], str | None]:
    """Compare a model file with its sidecar's `file_sha256`; return the sidecar as read, and a note.

    The note is None when they match, a one-line warning when there is no sidecar (then the
    sidecar is {}); raises IntegrityError when the sidecar is unreadable or the file does not
    match it. The one place a file is checked against its sidecar: the runtime raises, the
    export gate reports.
    """
    from fmnist_deploy.bounds import MAX_MODEL_BYTES, MAX_SIDECAR_BYTES
    from fmnist_deploy.exportset import read_current, resolve

    sidecar = sidecar_path(path)
    if not os.path.lexists(resolve(sidecar)):
        return {}, f"{path}: no sidecar {sidecar.name} beside it, so its sha256 cannot be checked"
    try:  # a regular file under a size cap: a FIFO or a link to /dev/zero is refused, never read
        meta = json.loads(read_current(sidecar, MAX_SIDECAR_BYTES, "sidecar").decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, IntegrityError):
            raise

        raise IntegrityError(f"{sidecar}: unreadable sidecar ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("file_sha256"), str):
        raise IntegrityError(f"{sidecar}: not a sidecar written by fmnist-export (no file_sha256)")
    actual = hashlib.sha256(read_current(path, MAX_MODEL_BYTES, "model file")).hexdigest()
    if actual != meta["file_sha256"]:
        raise IntegrityError(
            f"{path}: sha256 {actual[:12]}… does not match {sidecar.name} ({meta['file_sha256'][:12]}…): "
            "the file is damaged or was replaced; restore it with its sidecar or re-export it"
        )
    return meta, None


# A payload's shape is bounded before it is walked: a pickle can share one list between many places
# (2**60 paths through 60 lists, each listing the next twice) or nest lists 200 000 deep, and a walk
# that follows every path would never end or overflow the stack. The toolkit's own checkpoints hold
# ~200 values, 6 levels deep.
MAX_DIGEST_NODES = 100_000
MAX_DIGEST_DEPTH = 32


class _Budget:
    def __init__(self) -> None:
        self.nodes = 0


def _feed(digest: Any, value: Any, where: str, budget: _Budget | None = None, depth: int = 0) -> None:
    """Hash `value` (nested dicts, lists, tensors, primitives) deterministically, keys sorted."""
    budget = budget or _Budget()
    budget.nodes += 1
    if budget.nodes > MAX_DIGEST_NODES:
        raise TypeError(f"more than {MAX_DIGEST_NODES:,} values (shared or repeated references?)")
    if depth > MAX_DIGEST_DEPTH:
        raise TypeError(f"values nested deeper than {MAX_DIGEST_DEPTH} levels")
    if isinstance(value, dict):
        digest.update(f"{where}:dict:{len(value)};".encode())
        for key in sorted(value, key=str):
            _feed(digest, value[key], f"{where}/{key}", budget, depth + 1)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{where}:list:{len(value)};".encode())
        for i, item in enumerate(value):
            _feed(digest, item, f"{where}/{i}", budget, depth + 1)
    elif hasattr(value, "detach") and hasattr(value, "shape"):  # a torch tensor, without importing torch
        tensor = value.detach().cpu().contiguous()
        raw = tensor.reshape(-1).numpy().tobytes()
        digest.update(f"{where}:tensor:{tensor.dtype}:{tuple(tensor.shape)}:{len(raw)};".encode())
        digest.update(raw)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{where}:{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"{where}: cannot digest a {type(value).__name__}")


def content_digest(payload: dict[str, Any]) -> str:
    """sha256 of everything in a weights/checkpoint payload but the digest itself."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != CONTENT_KEY}, "")
    return digest.hexdigest()


def check_content(payload: dict[str, Any], source: str) -> None:
    """Raise IntegrityError unless the payload's recorded digest matches its content."""
    recorded = payload.get(CONTENT_KEY)
    if not isinstance(recorded, str):
        raise IntegrityError(f"{source}: no {CONTENT_KEY}: not written by this version of fmnist-train")
    try:
        actual = content_digest(payload)
    except TypeError as exc:
        raise IntegrityError(f"{source}: unexpected content ({exc})") from None
    if actual != recorded:
        raise IntegrityError(
            f"{source}: content does not match its recorded {CONTENT_KEY} ({actual[:12]}… vs {recorded[:12]}…): "
            "the file is damaged"
        )


# The records a torch.export archive of this contract may hold, below its root folder.
PT2_RECORDS = (
    r"models/model\.json",
    r"data/weights/weight_\d+",
    r"data/weights/model_weights_config\.json",
    r"data/constants/model_constants_config\.json",
    r"data/sample_inputs/model\.pt",
    r"extra/[A-Za-z0-9_.-]+\.json",
    r"archive_format",
    r"archive_version",
    r"byteorder",
    r"\.data/version",
    r"\.data/serialization_id",
)
_PT2_RECORD = re.compile("|".join(f"(?:{r})" for r in PT2_RECORDS))


def inspect_pt2(path: Path, data: bytes | None = None) -> None:
    """Refuse a .pt2 archive with records the contract does not need, pickles that could run code, or a
    graph (models/model.json) holding anything but the contract's plain arithmetic (`pt2_graph`).

    `data` is the archive's bytes when the caller has read them already (the loader reads a file once).
    """
    from fmnist_deploy.bounds import check_record_names
    from fmnist_deploy.pt2_graph import MAX_GRAPH_JSON_BYTES, check_graph_json

    try:
        with zipfile.ZipFile(io.BytesIO(data) if data is not None else path) as archive:
            check_record_names(archive.infolist(), path)
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1 or any("/" not in name for name in names):
                raise IntegrityError(f"{path}: not a torch.export archive (records {sorted(names)[:5]}…)")
            records = {name.split("/", 1)[1]: name for name in names}
            unexpected = sorted(r for r in records if not _PT2_RECORD.fullmatch(r))
            if unexpected:
                raise IntegrityError(f"{path}: records the contract does not need: {', '.join(unexpected[:5])}")
            if "models/model.json" not in records:
                raise IntegrityError(f"{path}: no models/model.json: not a torch.export archive")
            graph = archive.getinfo(records["models/model.json"])
            if graph.file_size > MAX_GRAPH_JSON_BYTES:
                raise IntegrityError(
                    f"{path}: models/model.json is {graph.file_size:,} bytes, over the {MAX_GRAPH_JSON_BYTES:,} byte limit"
                )
            check_graph_json(archive.read(graph), str(path))
            for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
                if config in records:
                    _no_pickled_entries(path, config, archive.read(records[config]))
            if "data/sample_inputs/model.pt" in records:
                _weights_only(path, archive.read(records["data/sample_inputs/model.pt"]))
    except zipfile.BadZipFile as exc:
        raise IntegrityError(f"{path}: damaged zip archive ({exc})") from None


def _no_pickled_entries(path: Path, name: str, blob: bytes) -> None:
    try:
        config = json.loads(blob).get("config", {})
        if not isinstance(config, dict):
            raise ValueError("config is not an object")
    except (ValueError, AttributeError, RecursionError):
        raise IntegrityError(f"{path}: {name} is not the JSON torch.export writes") from None
    pickled = sorted(k for k, v in config.items() if not isinstance(v, dict) or v.get("use_pickle") is not False)
    if pickled:
        raise IntegrityError(f"{path}: {name} stores {', '.join(pickled[:3])} as pickles, which could run code")


def _weights_only(path: Path, blob: bytes) -> None:
    """The pickle must load with torch's weights-only unpickler (tensors and plain containers only)."""
    import pickle

    import torch

    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise IntegrityError(
            f"{path}: its sample_inputs record is refused by the weights-only unpickler "
            f"({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__})"
        ) from None


__all__ = [
    "CONTENT_KEY",
    "IntegrityError",
    "IntegrityWarning",
    "check_content",
    "content_digest",
    "inspect_pt2",
    "sidecar_check",
]
