"""The deployment contract: the one specification that export, the gate and the runtime all follow.

Names, dtypes, shapes, class names, file names, the contract version and every
tolerance are written here once. The module is pure Python (no torch, no numpy), so
the ONNX runtime path and programs embedding the model can import it; like Optimum's
`OnnxConfig`, it drives both the exporter (`describe`) and the validators
(`contract_problems`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CONTRACT_VERSION = "1.0"
CONTRACT_MAJOR = CONTRACT_VERSION.split(".")[0]
MODEL_NAME = "fmnist-mlp"

INPUT_NAME = "image"
INPUT_DTYPE = "uint8"
IMAGE_SIZE = 28
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE)
OUTPUT_NAMES = ("logits", "probabilities")
OUTPUT_DTYPE = "float32"
N_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# File names: every stage finds the others' files by these names.
STEM = "fmnist_mlp"
WEIGHTS_NAME = f"{STEM}.pt"
GOLDEN_NAME = "golden.npz"
GOLDEN_JSON_NAME = "golden.json"  # the same vectors for languages without an .npz reader
SAMPLES_DIR = "samples"
ARCHIVE_METADATA = "fmnist_deploy.json"  # the extra file holding the metadata in .torchscript / .pt2 archives
SIDECAR_SUFFIX = ".json"

# Tolerances. Float32 results of two machines' kernels differ in the last bits (measured:
# 2.86e-6 between an Intel Xeon and an AMD EPYC), so every comparison against a reference
# is a tolerance, never equality.
LOGIT_TOLERANCE = 1e-5  # max |logit - reference| of an fp32 file, on any machine
# TF32 (10-bit mantissa matmuls) on a GPU is an explicit opt-in, held to its own tolerance: measured
# on an H200, ONNX Runtime's CUDA provider with TF32 on is 2.76e-3 from the CPU's logits (1.9e-6 off).
TF32_LOGIT_TOLERANCE = 1e-2
PROB_SUM_TOLERANCE = 1e-6  # max |sum(probabilities) - 1| of an fp32 file
INT8_PROB_SUM_TOLERANCE = 1e-5  # the same for the int8 file
INT8_MAX_ACCURACY_DROP_POINTS = 0.5  # test-set accuracy an int8 file may lose, in percentage points
# Logits that differ by up to LOGIT_TOLERANCE can flip the argmax of an image whose top two
# logits are closer than that: re-scoring the test set on another machine may differ by this
# many images from the accuracy recorded where the weights were trained.
ACCURACY_SLACK_IMAGES = 1

REQUIRED_KEYS = (
    "contract_version",
    "model_name",
    "format",
    "precision",
    "inputs",
    "outputs",
    "class_names",
    "normalisation",
    "weights_sha256",
    "test_accuracy",
    "recipe",
    "exporter",
)


def input_spec() -> list[dict[str, Any]]:
    """The model's one input, as every file's metadata states it."""
    return [
        {
            "name": INPUT_NAME,
            "dtype": INPUT_DTYPE,
            "shape": ["N", *IMAGE_SHAPE],
            "description": "raw Fashion-MNIST pixels 0-255, light garment on dark background; N >= 1",
        }
    ]


def output_spec() -> list[dict[str, Any]]:
    """The model's two outputs, as every file's metadata states them."""
    descriptions = ("class scores", "softmax(logits)")
    return [
        {"name": name, "dtype": OUTPUT_DTYPE, "shape": ["N", N_CLASSES], "description": text}
        for name, text in zip(OUTPUT_NAMES, descriptions, strict=True)
    ]


def normalisation(mean: float, std: float, *, inside_graph: bool) -> dict[str, Any]:
    """How raw pixels become the network's input: `(x / 255 - mean) / std`."""
    return {
        "formula": "(x / 255 - mean) / std",
        "scale": 255.0,
        "mean": mean,
        "std": std,
        "inside_graph": inside_graph,
    }


def describe(
    *,
    fmt: str,
    precision: str,
    class_names: list[str] | tuple[str, ...],
    norm_mean: float,
    norm_std: float,
    inside_graph: bool = True,
    **facts: Any,
) -> dict[str, Any]:
    """A file's self-description: the contract's fixed part plus the given facts (no timestamps)."""
    return {
        "contract_version": CONTRACT_VERSION,
        "model_name": MODEL_NAME,
        "format": fmt,
        "precision": precision,
        "inputs": input_spec(),
        "outputs": output_spec(),
        "class_names": list(class_names),
        "normalisation": normalisation(norm_mean, norm_std, inside_graph=inside_graph),
        **facts,
    }


def contract_problems(meta: Any) -> list[str]:
    """What makes `meta` not a description this contract's readers accept (empty when it is one)."""
    if not isinstance(meta, dict):
        return [f"metadata is a JSON {type(meta).__name__}, expected an object"]
    if not meta:
        return ["no fmnist-deploy metadata; export the model with fmnist-export"]
    version = str(meta.get("contract_version", ""))
    if version.split(".")[0] != CONTRACT_MAJOR:
        return [f"contract version {version or 'missing'}, this tool reads {CONTRACT_MAJOR}.x"]
    problems = []
    inputs = [(i.get("name"), i.get("dtype"), i.get("shape")) for i in _dicts(meta.get("inputs"))]
    if inputs != [(INPUT_NAME, INPUT_DTYPE, ["N", *IMAGE_SHAPE])]:
        problems.append(f"declares inputs {inputs}, expected image uint8 [N,28,28]")
    outputs = [(o.get("name"), o.get("dtype")) for o in _dicts(meta.get("outputs"))]
    if outputs != [(name, OUTPUT_DTYPE) for name in OUTPUT_NAMES]:
        problems.append(f"declares outputs {outputs}, expected logits, probabilities float32 [N,10]")
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != N_CLASSES or not all(isinstance(n, str) for n in names):
        problems.append(f"class_names {names!r}: expected {N_CLASSES} strings")
    return problems


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def sidecar_path(model_path: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`: the JSON description beside a model file."""
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
