"""The deployment contract every exported file follows, and the metadata describing it."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from training.atomic import write_text_atomic
from training.checkpoint import Weights

CONTRACT_VERSION = "1.0"
MODEL_NAME = "fmnist-mlp"
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")
IMAGE_SIZE = 28
N_CLASSES = 10
METADATA_FILE = "fmnist_deploy.json"  # name of the extra file inside TorchScript and .pt2 archives
SIDECAR_SUFFIX = ".json"

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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions(*packages: str) -> dict[str, str]:
    return {p: importlib_metadata.version(p) for p in packages}


def build_metadata(
    weights: Weights,
    weights_sha256: str,
    fmt: str,
    *,
    precision: str = "fp32",
    opset: int | None = None,
    ir_version: int | None = None,
) -> dict[str, Any]:
    """Everything a consumer needs to use the file, with no timestamp (re-exports are byte-identical)."""
    recipe = weights.recipe
    meta: dict[str, Any] = {
        "contract_version": CONTRACT_VERSION,
        "model_name": MODEL_NAME,
        "format": fmt,
        "precision": precision,
        "inputs": [
            {
                "name": INPUT_NAME,
                "dtype": "uint8",
                "shape": ["N", IMAGE_SIZE, IMAGE_SIZE],
                "description": "raw Fashion-MNIST pixels 0-255, light garment on dark background; N >= 1",
            }
        ],
        "outputs": [
            {"name": OUTPUT_NAMES[0], "dtype": "float32", "shape": ["N", N_CLASSES], "description": "class scores"},
            {"name": OUTPUT_NAMES[1], "dtype": "float32", "shape": ["N", N_CLASSES], "description": "softmax(logits)"},
        ],
        "class_names": list(weights.class_names),
        "normalisation": {
            "formula": "(x / 255 - mean) / std",
            "scale": 255.0,
            "mean": recipe.norm_mean,
            "std": recipe.norm_std,
            "inside_graph": True,
            "folded_into_first_layer": fmt == "onnx",
        },
        "weights_sha256": weights_sha256,
        "test_accuracy": weights.test_accuracy,
        "test_loss": weights.test_loss,
        "recipe": recipe.to_dict(),
        "training_data_sha256": weights.data_sha256,
        "exporter": _versions("torch", "onnx", "onnxscript") if fmt == "onnx" else _versions("torch"),
    }
    if opset is not None:
        meta["opset"] = opset
    if ir_version is not None:
        meta["ir_version"] = ir_version
    return meta


def to_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def write_sidecar(model_path: Path, meta: dict[str, Any]) -> Path:
    """The JSON sidecar: the file's metadata plus its own name and sha256 (for readers without metadata_props)."""
    path = sidecar_path(model_path)
    write_text_atomic(path, to_json({**meta, "file": model_path.name, "file_sha256": sha256_file(model_path)}))
    return path
