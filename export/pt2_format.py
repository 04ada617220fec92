"""torch.export (.pt2): an ExportedProgram with a dynamic batch dim, metadata as an extra file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from fmnist_deploy.atomic import atomic_path
from fmnist_deploy.contract import ARCHIVE_METADATA, IMAGE_SHAPE, INPUT_NAME
from fmnist_deploy.export.checks import Check, Runner
from fmnist_deploy.export.metadata import completed
from fmnist_deploy.export.wrapper import eval_copy, numpy_runner
from fmnist_deploy.integrity import inspect_pt2
from fmnist_deploy.kinds import KIND

NAME = "pt2"
SUFFIX = KIND[NAME].suffix
TRAINING_OPS = ("dropout", "native_dropout", "bernoulli")
# stack_trace: absolute source paths of the exporting machine; from_node: ids of Python objects.
PROVENANCE_KEYS = ("stack_trace", "from_node")


def export(module: torch.nn.Module, path: Path, meta: dict[str, Any], *, opset: int | None = None) -> dict[str, Any]:
    """torch.export `module` (a Deployable) with a dynamic batch and write it with `meta`; return the metadata."""
    meta = completed(meta, NAME, exporter=("torch",), folded=False)
    program = exported_program(module)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={ARCHIVE_METADATA: json.dumps(meta, indent=2, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return meta


def exported_program(module: torch.nn.Module) -> torch.export.ExportedProgram:
    """`module` (a Deployable) through torch.export with a dynamic batch, in core ATen ops, without provenance."""
    model = eval_copy(module)
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)  # batch >= 2: a batch of 1 would be specialised
    program = torch.export.export(model, (example,), dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("N", min=1)}})
    # Decomposing to core ATen ops in eval mode turns eval-mode dropout into the identity.
    program = program.run_decompositions()
    for graph_module in program.graph_module.modules():
        if isinstance(graph_module, torch.fx.GraphModule):
            for node in graph_module.graph.nodes:
                for key in PROVENANCE_KEYS:
                    node.meta.pop(key, None)
    return program


def load(path: Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """The ExportedProgram and its metadata (torch.export.load)."""
    inspect_pt2(path)  # before torch sees it: torch.export.load unpickles sample_inputs without restrictions
    extra = {ARCHIVE_METADATA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program, json.loads(extra[ARCHIVE_METADATA]) if extra[ARCHIVE_METADATA] else {}


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata stored as the archive's extra file."""
    return load(path)[1]


def structure_checks(path: Path, expected_opset: int | None) -> list[Check]:
    """No dropout op, one user input named `image`, a dynamic batch dimension of uint8 [N,28,28]."""
    program, _ = load(path)
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    bad = [op for op in ops if any(t in op for t in TRAINING_OPS)]
    checks = [Check("no_training_nodes", not bad, f"training-mode ops: {bad}" if bad else "no dropout op in the graph")]
    user_inputs = list(program.graph_signature.user_inputs)
    checks.append(
        Check("input_contract", user_inputs == [INPUT_NAME], f"user inputs {user_inputs}, expected ['{INPUT_NAME}']")
    )
    placeholder = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME), None)
    val = placeholder.meta.get("val") if placeholder is not None else None
    dynamic = (
        val is not None
        and not isinstance(val.shape[0], int)
        and tuple(val.shape[1:]) == IMAGE_SHAPE
        and val.dtype == torch.uint8
    )
    checks.append(
        Check("dynamic_batch", dynamic, f"input spec {None if val is None else (val.dtype, tuple(val.shape))}")
    )
    return checks


def runners(path: Path) -> dict[str, Runner]:
    """The unlifted ExportedProgram module on the CPU."""
    return {NAME: numpy_runner(load(path)[0].module())}
