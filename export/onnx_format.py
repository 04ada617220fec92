"""ONNX: the torch.export-based exporter, one self-contained file, metadata in metadata_props."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, version_converter

from fmnist_deploy.atomic import atomic_path
from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES
from fmnist_deploy.errors import first_line
from fmnist_deploy.export.checks import Check, ExportError, Runner
from fmnist_deploy.export.metadata import completed
from fmnist_deploy.export.wrapper import FoldedDeployable, eval_copy
from fmnist_deploy.kinds import KIND

NAME = "onnx"
SUFFIX = KIND[NAME].suffix
DEFAULT_OPSET = 17
NATIVE_OPSET = 18  # the lowest opset torch.onnx's dynamo exporter emits itself
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest opset the installed onnx package defines
TRAINING_OPS = {"Dropout"}


def ir_version_for(opset: int) -> int:
    """The lowest IR version that carries `opset`: newer IRs would lock out older runtimes."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])


def _strip_provenance(model: onnx.ModelProto) -> None:
    """Drop what records the exporting machine: node stack traces with absolute paths, doc strings."""
    graphs = [model.graph, *(f for f in model.functions)]
    for graph in graphs:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer]:
        del value.metadata_props[:]
        value.doc_string = ""
    del model.graph.metadata_props[:]
    model.graph.doc_string = ""
    model.doc_string = ""


def export(
    module: torch.nn.Module, path: Path, meta: dict[str, Any], *, opset: int | None = None, fold: bool = True
) -> dict[str, Any]:
    """Write `module` (a Deployable) to `path` as a single ONNX file at exactly `opset`; return its metadata.

    With `fold`, the normalisation is folded into fc1's weights: the graph then makes one
    pass over the input (Cast) instead of four (Cast, Div, Sub, Div) before the first Gemm.
    """
    opset = DEFAULT_OPSET if opset is None else opset
    meta = completed(
        meta, NAME, exporter=("torch", "onnx", "onnxscript"), folded=fold, opset=opset, ir_version=ir_version_for(opset)
    )
    model = eval_copy(module)
    if fold:
        model = FoldedDeployable(model).eval()
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)  # batch >= 2 so the batch dim stays symbolic
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("N", min=1)}},
        opset_version=max(opset, NATIVE_OPSET),
        external_data=False,
        optimize=True,
        verbose=False,
        report=False,
    )
    proto = program.model_proto
    if opset < NATIVE_OPSET:
        try:
            proto = version_converter.convert_version(proto, opset)
        except (RuntimeError, onnx.checker.ValidationError) as exc:
            raise ExportError(
                f"cannot convert the ONNX graph to opset {opset}: {first_line(exc)}; "
                f"use --opset {DEFAULT_OPSET} or higher"
            ) from None
    _strip_provenance(proto)
    proto.ir_version = ir_version_for(opset)
    save(proto, path, meta)
    return meta


def save(proto: onnx.ModelProto, path: Path, meta: dict[str, Any]) -> None:
    """Replace the model's metadata_props with `meta` (one JSON value per key) and write it atomically."""
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, sort_keys=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, tmp, save_as_external_data=False)


def read_metadata(path: Path) -> dict[str, Any]:
    """metadata_props, one JSON value per key."""
    model = onnx.load(path, load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


def structure_checks(path: Path, expected_opset: int | None) -> list[Check]:
    """Checker, opset/IR, no training nodes, no external data, names/dtypes/shapes per the contract."""
    checks: list[Check] = []
    model = onnx.load(path, load_external_data=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
        checks.append(Check("onnx_checker", True, "check_model(full_check=True) passed"))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        checks.append(Check("onnx_checker", False, first_line(exc)))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    want = expected_opset if expected_opset is not None else opset
    checks.append(Check("opset", opset == want, f"opset {opset}, expected {want}"))
    want_ir = ir_version_for(want) if want else None
    checks.append(Check("ir_version", model.ir_version == want_ir, f"IR {model.ir_version}, expected {want_ir}"))

    bad = [n.op_type for n in model.graph.node if n.op_type in TRAINING_OPS]
    bad += [
        f"{n.op_type}.training_mode" for n in model.graph.node for a in n.attribute if a.name == "training_mode" and a.i
    ]
    for function in model.functions:
        bad += [f"{function.name}/{n.op_type}" for n in function.node if n.op_type in TRAINING_OPS]
    checks.append(
        Check(
            "no_training_nodes", not bad, f"training-mode nodes: {bad}" if bad else "no Dropout or training-mode node"
        )
    )

    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    sidecars = [p.name for p in path.parent.glob(path.name + ".data")]
    checks.append(
        Check(
            "single_file",
            not external and not sidecars,
            f"external tensors {external}, data files {sidecars}"
            if external or sidecars
            else "all weights inside the file",
        )
    )

    inputs = [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in model.graph.input]
    outputs = [(o.name, o.type.tensor_type.elem_type, _dims(o)) for o in model.graph.output]
    in_ok = (
        len(inputs) == 1
        and inputs[0][0] == INPUT_NAME
        and inputs[0][1] == TensorProto.UINT8
        and len(inputs[0][2]) == 3
        and isinstance(inputs[0][2][0], str)
        and tuple(inputs[0][2][1:]) == IMAGE_SHAPE
    )
    checks.append(
        Check("input_contract", in_ok, f"inputs {_describe(inputs)}, expected image uint8 [N,28,28] with N symbolic")
    )
    out_ok = [o[0] for o in outputs] == list(OUTPUT_NAMES) and all(
        o[1] == TensorProto.FLOAT and len(o[2]) == 2 and isinstance(o[2][0], str) and o[2][1] == N_CLASSES
        for o in outputs
    )
    checks.append(
        Check("output_contract", out_ok, f"outputs {_describe(outputs)}, expected logits, probabilities float32 [N,10]")
    )
    return checks


def _describe(values: list[tuple[str, int, list[int | str]]]) -> str:
    return ", ".join(f"{n} {helper.tensor_dtype_to_np_dtype(t) if t else '?'} {d}" for n, t, d in values)


def runners(path: Path) -> dict[str, Runner]:
    """ONNX Runtime on the CPU with graph optimisations fully on and fully off."""
    import onnxruntime as ort

    result: dict[str, Runner] = {}
    for label, level in (
        ("ort_optimised", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("ort_unoptimised", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(images: np.ndarray, session: ort.InferenceSession = session) -> tuple[np.ndarray, np.ndarray]:
            logits, probs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
            return logits, probs

        result[label] = run
    return result
