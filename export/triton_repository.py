"""A Triton model repository (and a KServe InferenceService manifest) for the exported ONNX file.

    model_repository/
      fmnist_mlp/config.pbtxt        platform onnxruntime_onnx, dynamic batching, labels
      fmnist_mlp/labels.txt          class names, referenced by label_filename (classification)
      fmnist_mlp/1/model.onnx        the same bytes as fmnist_mlp.onnx (+ its sidecar)
      inferenceservice.yaml          KServe v1beta1, model format onnx, protocol v2

The same folder serves with Triton (`tritonserver --model-repository`) and with
`fmnist-serve --model-repository`. `check_repository` parses config.pbtxt into Triton's own
ModelConfig protobuf (shipped in tritonclient) and checks every field against the contract.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fmnist_deploy.contract import CLASS_NAMES, IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES, STEM, sidecar_path

MODEL_NAME = STEM
VERSION = "1"
MAX_BATCH_SIZE = 1024
STORAGE_URI = "gs://YOUR-BUCKET/model_repository"  # a placeholder: where the repository is uploaded

CONFIG = f"""name: "{MODEL_NAME}"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: [ {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAMES[0]}"
    data_type: TYPE_FP32
    dims: [ {N_CLASSES} ]
    label_filename: "labels.txt"
  }},
  {{
    name: "{OUTPUT_NAMES[1]}"
    data_type: TYPE_FP32
    dims: [ {N_CLASSES} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""

MANIFEST = f"""# KServe InferenceService for the Triton model repository (storageUri is a placeholder:
# upload the repository folder there first).
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: fmnist-mlp
spec:
  predictor:
    model:
      modelFormat:
        name: onnx
      protocolVersion: v2
      runtime: kserve-tritonserver
      storageUri: {STORAGE_URI}
"""


def write_repository(onnx_file: Path, repository: Path) -> list[Path]:
    """Lay out the repository around a copy of `onnx_file`; returns the files written."""
    from fmnist_deploy.atomic import write_text_atomic

    model_dir = repository / MODEL_NAME
    (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
    written = [
        model_dir / "config.pbtxt",
        model_dir / "labels.txt",
        model_dir / VERSION / "model.onnx",
        sidecar_path(model_dir / VERSION / "model.onnx"),
        repository / "inferenceservice.yaml",
    ]
    write_text_atomic(written[0], CONFIG)
    write_text_atomic(written[1], "".join(f"{name}\n" for name in CLASS_NAMES))
    shutil.copyfile(onnx_file, written[2])
    sidecar = sidecar_path(onnx_file).read_text(encoding="utf-8")
    write_text_atomic(written[3], sidecar.replace(f'"file": "{onnx_file.name}"', '"file": "model.onnx"'))
    write_text_atomic(written[4], MANIFEST)
    return written


def check_repository(repository: Path) -> list[tuple[str, bool, str]]:
    """(check, ok, detail) for config.pbtxt parsed as Triton's ModelConfig, labels and the model file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    checks: list[tuple[str, bool, str]] = []
    model_dir = repository / MODEL_NAME
    try:
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(encoding="utf-8"), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        return [("triton_config", False, f"config.pbtxt does not parse as Triton's ModelConfig: {exc}")]
    checks.append(("triton_config", True, "config.pbtxt parses as tritonclient's ModelConfig"))
    checks.append(
        (
            "triton_name_platform",
            config.name == MODEL_NAME and config.platform == "onnxruntime_onnx",
            f"name {config.name!r}, platform {config.platform!r}",
        )
    )
    checks.append(("triton_max_batch_size", config.max_batch_size >= 1, f"max_batch_size {config.max_batch_size}"))
    inputs = [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input]
    checks.append(("triton_input", inputs == [(INPUT_NAME, "TYPE_UINT8", list(IMAGE_SHAPE))], f"inputs {inputs}"))
    outputs = [(o.name, mc.DataType.Name(o.data_type), list(o.dims), o.label_filename) for o in config.output]
    want = [(name, "TYPE_FP32", [N_CLASSES], "labels.txt") for name in OUTPUT_NAMES]
    checks.append(("triton_outputs", outputs == want, f"outputs {outputs}"))
    checks.append(
        (
            "triton_dynamic_batching",
            config.HasField("dynamic_batching"),
            f"dynamic_batching {'present' if config.HasField('dynamic_batching') else 'missing'}",
        )
    )
    labels = (
        (model_dir / "labels.txt").read_text(encoding="utf-8").splitlines()
        if (model_dir / "labels.txt").is_file()
        else []
    )
    checks.append(("triton_labels", labels == list(CLASS_NAMES), f"{len(labels)} labels"))
    model = model_dir / VERSION / "model.onnx"
    checks.append(("triton_model_file", model.is_file(), f"{model.relative_to(repository)}"))
    return checks
