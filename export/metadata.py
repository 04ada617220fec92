"""The metadata an exported file carries, built from the weights it came from, and its JSON sidecar."""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from fmnist_deploy.atomic import write_text_atomic
from fmnist_deploy.contract import describe, sha256_file, sidecar_path
from fmnist_deploy.training.checkpoint import Weights


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the exporting packages, recorded in every file."""
    return {p: importlib_metadata.version(p) for p in packages}


def build_metadata(weights: Weights, weights_sha256: str, *, precision: str = "fp32") -> dict[str, Any]:
    """What every format records about the weights; each format adds what it did itself (format, exporter, ...)."""
    recipe = weights.recipe
    return describe(
        fmt="unknown",  # set by the format that writes the file
        precision=precision,
        class_names=weights.class_names,
        norm_mean=recipe.norm_mean,
        norm_std=recipe.norm_std,
        weights_sha256=weights_sha256,
        test_accuracy=weights.test_accuracy,
        test_loss=weights.test_loss,
        recipe=recipe.to_dict(),
        training_data_sha256=weights.data_sha256,
    )


def completed(
    meta: dict[str, Any], fmt: str, *, exporter: tuple[str, ...], folded: bool, **facts: Any
) -> dict[str, Any]:
    """`meta` plus what one exporter did: its format name, its packages' versions, whether it
    folded the normalisation into the first layer, and any format facts (opset, ...)."""
    normalisation = {**meta.get("normalisation", {}), "folded_into_first_layer": folded}
    return {**meta, "format": fmt, "exporter": package_versions(*exporter), "normalisation": normalisation, **facts}


def to_json(meta: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, fixed indent): the same metadata always gives the same bytes."""
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def write_sidecar(model_path: Path, meta: dict[str, Any]) -> Path:
    """The JSON sidecar: the file's metadata plus its own name and sha256 (for readers without metadata_props)."""
    path = sidecar_path(model_path)
    write_text_atomic(path, to_json({**meta, "file": model_path.name, "file_sha256": sha256_file(model_path)}))
    return path
