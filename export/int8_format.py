"""int8: the fp32 ONNX file dynamically quantised by ONNX Runtime (`export/quantize.py`); an ONNX file itself.

Made from the gated fp32 file (its kind's `source`), described as that file plus its quantisation,
and checked and run as any ONNX file is; the gate holds it to accuracy instead of 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmnist_deploy.export import onnx_format
from fmnist_deploy.export.quantize import SETTINGS, quantize

NAME = "int8"
read_metadata = onnx_format.read_metadata
structure_checks = onnx_format.structure_checks
runners = onnx_format.runners


def derive(source: Path, path: Path) -> dict[str, Any]:
    """Quantise the fp32 ONNX file `source` into `path`; return the metadata written inside it."""
    meta = {**onnx_format.read_metadata(source), "precision": "int8", "quantization": SETTINGS}
    quantize(source, path, meta)
    return meta
