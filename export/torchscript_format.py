"""TorchScript: a scripted eval-mode module, metadata as an extra file, no source paths inside.

TorchScript is deprecated upstream in favour of torch.export; it is still shipped
because users ask for it. Its deprecation warnings are left visible on purpose.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fmnist_deploy.atomic import atomic_path
from fmnist_deploy.contract import ARCHIVE_METADATA, INPUT_NAME
from fmnist_deploy.export.checks import Check, Runner
from fmnist_deploy.export.metadata import completed
from fmnist_deploy.export.wrapper import eval_copy, numpy_runner
from fmnist_deploy.kinds import KIND

NAME = "torchscript"
SUFFIX = KIND[NAME].suffix
DEBUG_SUFFIX = ".debug_pkl"  # pickled source ranges: absolute paths of the exporting machine


class _PlainLinear(nn.Module):
    """nn.Linear without its `__constants__`: TorchScript writes a class's constants in set order,
    which follows the per-process string hash, so nn.Linear would make the archive bytes vary."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _scriptable(module: nn.Module) -> nn.Module:
    """Eval-mode rewrites that keep the arithmetic and the state_dict names (fc1.weight, …):
    Dropout is the identity in eval mode, so the scripted graph carries no dropout op."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.Linear):
            setattr(module, name, _PlainLinear(child))
        else:
            _scriptable(child)
    return module.eval()


def _strip_debug_records(archive: bytes) -> bytes:
    """Rewrite the archive without the *.debug_pkl records (torch's own zip writer, same layout)."""
    reader = torch._C.PyTorchFileReader(io.BytesIO(archive))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for record in reader.get_all_records():
        if record.endswith(DEBUG_SUFFIX) or record == ".data/serialization_id":
            continue  # the writer derives a fresh, content-based serialization id
        data = reader.get_record(record)
        writer.write_record(record, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def export(module: nn.Module, path: Path, meta: dict[str, Any], *, opset: int | None = None) -> dict[str, Any]:
    """Script `module` (a Deployable) in eval mode and write it with `meta` as an extra file; return the metadata."""
    meta = completed(meta, NAME, exporter=("torch",), folded=False)
    scripted = torch.jit.script(_scriptable(eval_copy(module)))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={ARCHIVE_METADATA: json.dumps(meta, indent=2, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(_strip_debug_records(buffer.getvalue()))
    return meta


def load(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The scripted module on the CPU and its metadata (torch.jit.load)."""
    extra = {ARCHIVE_METADATA: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[ARCHIVE_METADATA]) if extra[ARCHIVE_METADATA] else {}


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata stored as the archive's extra file."""
    return load(path)[1]


def structure_checks(path: Path, expected_opset: int | None) -> list[Check]:
    """Every module in eval mode, no dropout op, one forward argument named `image`."""
    module, _ = load(path)
    training = [name or "<root>" for name, m in module.named_modules() if m.training]
    dropout = sorted({n.kind() for n in module.inlined_graph.nodes() if "dropout" in n.kind()})
    bad = training + dropout
    checks = [
        Check(
            "no_training_nodes",
            not bad,
            f"training-mode modules/ops: {bad}" if bad else "all modules in eval mode, no dropout op",
        )
    ]
    args = [a.name for a in module.forward.schema.arguments][1:]  # drop `self`
    checks.append(Check("input_contract", args == [INPUT_NAME], f"forward arguments {args}, expected ['{INPUT_NAME}']"))
    return checks


def runners(path: Path) -> dict[str, Runner]:
    """The scripted module on the CPU."""
    return {NAME: numpy_runner(load(path)[0])}
