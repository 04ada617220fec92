"""torch.export (.pt2): an ExportedProgram with a dynamic batch dim, metadata as an extra file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.checks import Check, Runner
from export.contract import INPUT_NAME, METADATA_FILE
from export.wrapper import eval_copy
from training.atomic import atomic_path

SUFFIX = ".pt2"
TRAINING_OPS = ("dropout", "native_dropout", "bernoulli")
# stack_trace: absolute source paths of the exporting machine; from_node: ids of Python objects.
PROVENANCE_KEYS = ("stack_trace", "from_node")


def export(module: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
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
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(meta, indent=2, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load(path: Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    extra = {METADATA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program, json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}


def read_metadata(path: Path) -> dict[str, Any]:
    return load(path)[1]


def structure_checks(path: Path, expected_opset: int | None) -> list[Check]:
    program, _ = load(path)
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    bad = [op for op in ops if any(t in op for t in TRAINING_OPS)]
    checks = [Check("no_training_nodes", not bad, f"training-mode ops: {bad}" if bad else "no dropout op in the graph")]
    user_inputs = list(program.graph_signature.user_inputs)
    checks.append(Check("input_contract", user_inputs == [INPUT_NAME], f"user inputs {user_inputs}, expected ['{INPUT_NAME}']"))
    placeholder = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME), None)
    val = placeholder.meta.get("val") if placeholder is not None else None
    dynamic = val is not None and not isinstance(val.shape[0], int) and list(val.shape[1:]) == [28, 28] and val.dtype == torch.uint8
    checks.append(Check("dynamic_batch", dynamic, f"input spec {None if val is None else (val.dtype, tuple(val.shape))}"))
    return checks


def runners(path: Path) -> dict[str, Runner]:
    program, _ = load(path)
    module = program.module()

    @torch.no_grad()
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = module(torch.from_numpy(images))
        return logits.numpy(), probs.numpy()

    return {"pt2": run}
