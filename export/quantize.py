"""Optional int8: ONNX Runtime dynamic quantisation of the fp32 ONNX file.

Settings: signed int8 weights, per output channel, with reduce_range (7-bit
weights) so the u8*s8 products cannot saturate on x86 CPUs without VNNI. On the
committed weights this lost no test accuracy (see the README for the sweep).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from fmnist_deploy.export import onnx_format

SETTINGS: dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": True,
    "op_types": ["Gemm", "MatMul"],
}


# ONNX Runtime logs this on the root logger for every model it quantises; the model here is
# three Gemms whose shapes are all known, which is what its pre-processing would establish.
PREPROCESSING_ADVICE = "Please consider to run pre-processing before quantization"


@contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(PREPROCESSING_ADVICE)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize(fp32_path: Path, int8_path: Path, meta: dict[str, Any]) -> None:
    """Write the int8 model with `meta` (precision int8) as its metadata_props."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "int8.onnx"
        with _without_preprocessing_advice():
            quantize_dynamic(
                fp32_path,
                raw,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                op_types_to_quantize=SETTINGS["op_types"],
            )
        model = onnx.load(raw)
    onnx_format.save(model, int8_path, meta)
