"""Optional int8: ONNX Runtime dynamic quantisation of the fp32 ONNX file.

Settings: signed int8 weights, per output channel, with reduce_range (7-bit
weights) so the u8*s8 products cannot saturate on x86 CPUs without VNNI. On the
committed weights this lost no test accuracy (see the README for the sweep).

The alternative, static QDQ quantisation calibrated on training images
(`quantize_static_qdq`), is measured beside it by `fmnist-bench int8`. Dynamic stays
the shipped method: it depends on the weights alone, so any machine re-exports the
same bytes, while static calibration runs the float32 model on this machine's kernels
to find activation ranges (another CPU can round them differently) and needs the
data set at export time; the measured differences in accuracy and speed are within a
few test images and the machine's noise (README, "int8").
"""

from __future__ import annotations

import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fmnist_deploy.errors import quiet_logger
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
# ONNX Runtime's advice, worded two ways ("Please consider to run pre-processing before quantization" from
# quantize_dynamic, "Please consider pre-processing before quantization" from quantize_static).
PREPROCESSING_ADVICE = "pre-processing before quantization"


def _without_preprocessing_advice() -> AbstractContextManager[None]:
    return quiet_logger(None, drop=lambda record: PREPROCESSING_ADVICE in str(record.msg))


def quantize_dynamic_int8(fp32_path: Path, int8_path: Path) -> None:
    """ONNX Runtime's dynamic quantisation of the fp32 file with SETTINGS (weights only: no data, any machine)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _without_preprocessing_advice():
        quantize_dynamic(
            fp32_path,
            int8_path,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            op_types_to_quantize=SETTINGS["op_types"],
        )


def quantize(fp32_path: Path, int8_path: Path, meta: dict[str, Any]) -> None:
    """Write the int8 model (dynamic quantisation) with `meta` (precision int8) as its metadata_props."""
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "int8.onnx"
        quantize_dynamic_int8(fp32_path, raw)
        model = onnx.load(raw)
    onnx_format.save(model, int8_path, meta)


STATIC_SETTINGS: dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "weight_type": "QInt8",
    "activation_type": "QUInt8",
    "per_channel": True,
    "calibration": "MinMax over the calibration images, 100 per batch",
    "op_types": ["Gemm", "MatMul"],
}


def calibration_images(train_images: np.ndarray, count: int = 1000) -> np.ndarray:
    """`count` training images spread evenly over the training set (every len/count-th): no RNG, any machine."""
    step = max(1, len(train_images) // count)
    return np.ascontiguousarray(train_images[::step][:count])


def quantize_static_qdq(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    """A static QDQ int8 model of the fp32 file, activation ranges calibrated on `calibration` (uint8 [N,28,28])."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibration[i : i + 100]} for i in range(0, len(calibration), 100)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with _without_preprocessing_advice():
        quantize_static(
            fp32_path,
            int8_path,
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=STATIC_SETTINGS["op_types"],
            calibrate_method=CalibrationMethod.MinMax,
        )
