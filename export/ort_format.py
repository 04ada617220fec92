"""The ONNX Runtime format (`.ort`): the gated ONNX file converted by `onnxruntime.tools.convert_onnx_models_to_ort`.

The format ORT Mobile, React Native and minimal (reduced-size) ONNX Runtime builds load. Beside
the file go the operators it needs (`fmnist_mlp.required_operators.config`, the input of a
minimal build's `--include_ops_by_config`) and ONNX Runtime's own verdict on the ONNX graph for
the mobile execution providers (`fmnist_mlp.ort.mobile.json`: NNAPI, CoreML NeuralNetwork and
MLProgram, as is and with a fixed batch, from `check_onnx_model_mobile_usability`).

The conversion keeps every metadata_props key, so the `.ort` file describes itself as the ONNX
file does (its `format` stays "onnx": the graph's). Its bytes are not reproducible: ONNX
Runtime serialises its kernel type tables in an order that depends on memory addresses
(measured: three conversions of one file, three sha256), so it is left out of `--format all`
and not committed; `fmnist-export --format ort` writes it from the ONNX file it exports.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.atomic import atomic_path, write_text_atomic
from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES
from fmnist_deploy.errors import quiet_logger
from fmnist_deploy.export.checks import Check, Runner

NAME = "ort"
OPERATORS_SUFFIX = ".required_operators.config"
MOBILE_SUFFIX = ".mobile.json"
# check_onnx_model_mobile_usability's verdict lines, per execution provider
_VERDICT = re.compile(
    r"Model should perform well with (?P<ep>.+?) (?P<when>as is|if modified to have fixed input shapes): (?P<yes>YES|NO)"
)


def operators_path(path: Path) -> Path:
    """Where the operators a reduced-size build needs are written: fmnist_mlp.required_operators.config."""
    return path.with_name(path.name.removesuffix(".ort") + OPERATORS_SUFFIX)


def mobile_path(path: Path) -> Path:
    """Where ONNX Runtime's mobile usability verdict is written: fmnist_mlp.ort.mobile.json."""
    return path.with_name(path.name + MOBILE_SUFFIX)


def companions(path: Path) -> list[Path]:
    """The files written beside the .ort file."""
    return [operators_path(path), mobile_path(path)]


def derive(source: Path, path: Path) -> dict[str, Any]:
    """Convert the ONNX file `source` to `path` (fixed optimisations, the style for the CPU provider); write
    the operators config and the mobile verdict beside it; return the metadata inside the converted file."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as scratch:
        onnx_copy = Path(scratch) / f"{path.name.removesuffix('.ort')}.onnx"
        shutil.copyfile(source, onnx_copy)
        out = Path(scratch) / "out"
        # The tool prints its progress on stdout and logs INFO lines; neither belongs in a command's output.
        with contextlib.redirect_stdout(io.StringIO()), quiet_logger("ort_format_model.utils"):
            convert_onnx_models_to_ort(onnx_copy, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        with atomic_path(path) as tmp:
            shutil.copyfile(out / f"{onnx_copy.stem}.ort", tmp)
        config = (out / f"{onnx_copy.stem}{OPERATORS_SUFFIX}").read_text(encoding="utf-8")
    # The tool names the scratch file it converted: keep the file's own name, nothing of this machine.
    lines = [f"# - {path.name}" if line.startswith("# - ") else line for line in config.splitlines()]
    write_text_atomic(operators_path(path), "\n".join(lines) + "\n")
    write_text_atomic(mobile_path(path), json.dumps(mobile_usability(source), indent=2, sort_keys=True) + "\n")
    return read_metadata(path)


def mobile_usability(onnx_path: Path) -> dict[str, Any]:
    """ONNX Runtime's verdict for the mobile execution providers: {provider: {"as_is": bool,
    "with_fixed_input_shapes": bool}}, read from `check_onnx_model_mobile_usability`'s analysis."""
    from onnxruntime.tools.mobile_helpers.usability_checker import analyze_model

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("fmnist_deploy.export.ort_format.usability")
    logger.propagate = False  # its INFO report is parsed here, never printed
    logger.setLevel(logging.INFO)
    handler = Collect()
    logger.addHandler(handler)
    try:
        try_providers = analyze_model(Path(onnx_path), skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    verdict: dict[str, Any] = {"tool": "onnxruntime.tools.check_onnx_model_mobile_usability"}
    for line in records:
        found = _VERDICT.search(line)
        if found:
            when = "as_is" if found["when"] == "as is" else "with_fixed_input_shapes"
            verdict.setdefault(found["ep"], {})[when] = found["yes"] == "YES"
    verdict["recommends_trying_nnapi_or_coreml"] = bool(try_providers)
    return verdict


def _session(path: Path, optimised: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata_props the conversion kept, one JSON value per key."""
    return {k: json.loads(v) for k, v in _session(path).get_modelmeta().custom_metadata_map.items()}


def structure_checks(path: Path, expected_opset: int | None) -> list[Check]:
    """The graph's input and outputs as ONNX Runtime reads them from the converted file."""
    session = _session(path)
    inputs = [(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [(o.name, o.type, list(o.shape)) for o in session.get_outputs()]
    in_ok = (
        len(inputs) == 1
        and inputs[0][:2] == (INPUT_NAME, "tensor(uint8)")
        and len(inputs[0][2]) == 3
        and not isinstance(inputs[0][2][0], int)
        and tuple(inputs[0][2][1:]) == IMAGE_SHAPE
    )
    out_ok = [o[0] for o in outputs] == list(OUTPUT_NAMES) and all(
        o[1] == "tensor(float)" and len(o[2]) == 2 and o[2][1] == N_CLASSES for o in outputs
    )
    return [
        Check("input_contract", in_ok, f"inputs {inputs}, expected image tensor(uint8) [N,28,28] with N symbolic"),
        Check("output_contract", out_ok, f"outputs {outputs}, expected logits, probabilities tensor(float) [N,10]"),
    ]


def runners(path: Path) -> dict[str, Runner]:
    """ONNX Runtime on the CPU, as the file was optimised when converted."""
    session = _session(path)

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return logits, probs

    return {"ort_format": run}
