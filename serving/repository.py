"""A Triton model repository as fmnist-serve reads it: one folder per model (its name is the folder's),
`config.pbtxt` parsed as Triton's own ModelConfig (the protobuf tritonclient ships), numbered version
folders each holding the model file, and Triton's version policy (`latest` 1 unless the config says
otherwise). Also the model configuration of a single served file, and both as the JSON Triton's
`/config` endpoint answers. Reading only: loading the files is the server's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2 as mc

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES
from fmnist_deploy.errors import ModelError

CONFIG_NAME = "config.pbtxt"
CONFIG_LIMIT = 1 << 20  # bytes of config.pbtxt read at most: a model configuration is a few hundred
# Triton's default model file name per platform or backend; the runtime reads ONNX files only from a repository
DEFAULT_FILES = {"onnxruntime_onnx": "model.onnx", "onnxruntime": "model.onnx"}
BACKEND_OF_PLATFORM = {"onnxruntime_onnx": "onnxruntime", "openvino": "openvino", "pytorch_libtorch": "pytorch"}


class RepositoryError(ModelError, ValueError):
    """A model folder the server cannot serve: the message says why."""


@dataclass
class ModelFolder:
    """One model of a repository: its configuration and the versions its version policy selects."""

    name: str
    folder: Path
    config: Any  # model_config_pb2.ModelConfig
    versions: dict[str, Path] = field(default_factory=dict)  # every version folder with a model file
    selected: list[str] = field(default_factory=list)  # the versions the policy serves, oldest first


def scan(repository: Path) -> dict[str, ModelFolder | RepositoryError]:
    """Every model folder of the repository, by name: read, or the reason it cannot be."""
    models: dict[str, ModelFolder | RepositoryError] = {}
    for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            models[folder.name] = read_model(folder)
        except RepositoryError as exc:
            models[folder.name] = exc
    return models


def read_model(folder: Path) -> ModelFolder:
    """A model folder -> its configuration, versions and the versions the policy selects."""
    config = _read_config(folder)
    if config.name and config.name != folder.name:
        raise RepositoryError(f"{folder}: config.pbtxt names the model {config.name!r}; the folder is {folder.name!r}")
    config.name = folder.name
    kind = config.platform or config.backend
    if kind not in DEFAULT_FILES:
        raise RepositoryError(f"{folder}: platform/backend {kind!r} is not served here; expected onnxruntime_onnx")
    if not config.backend:
        config.backend = BACKEND_OF_PLATFORM[config.platform]
    _check_tensors(folder, config)
    file_name = config.default_model_filename or DEFAULT_FILES[kind]
    if file_name in (".", "..") or Path(file_name).name != file_name:
        raise RepositoryError(f"{folder}: default_model_filename {file_name!r} is not a file name")
    versions = {
        p.name: p / file_name
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and p.name.isascii() and (p / file_name).is_file()
    }
    repository = folder.parent.resolve()
    for path in versions.values():  # a symbolic link (of the folder, a version or the file) may not lead out
        if not path.resolve().is_relative_to(repository):
            raise RepositoryError(f"{path}: leads outside the model repository ({path.resolve()})")
    model = ModelFolder(folder.name, folder, config, versions, select_versions(config, versions))
    if not model.selected:
        raise RepositoryError(f"{folder}: no version folder with {file_name} matches the version policy")
    return model


def _check_tensors(folder: Path, config: Any) -> None:
    """The inputs and outputs a configuration declares must be the contract's: Triton refuses, at load, a
    configuration that contradicts its model, rather than answering /config with tensors the model has not."""
    # With max_batch_size 0 the dims carry the batch dimension, or Triton's auto-completion gives the model's batching
    batches = ([],) if config.max_batch_size > 0 else ([-1], [])
    images = [[*batch, *IMAGE_SHAPE] for batch in batches]
    _check_section(folder, "input", config.input, {INPUT_NAME: (mc.TYPE_UINT8, images)})
    scores = [[*batch, N_CLASSES] for batch in batches]
    _check_section(folder, "output", config.output, dict.fromkeys(OUTPUT_NAMES, (mc.TYPE_FP32, scores)))


def _check_section(folder: Path, section: str, tensors: Any, expected: dict[str, tuple[int, list[list[int]]]]) -> None:
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise RepositoryError(f"{folder}: config.pbtxt names an {section} twice: {', '.join(names)}")
    for tensor in tensors:
        if tensor.name not in expected:
            known = ", ".join(repr(name) for name in expected)
            raise RepositoryError(
                f"{folder}: config.pbtxt {section} {tensor.name!r} is not the model's; expected {known}"
            )
        data_type, shapes = expected[tensor.name]
        if tensor.data_type != data_type or list(tensor.dims) not in shapes:
            raise RepositoryError(
                f"{folder}: config.pbtxt {section} {tensor.name!r} is {_tensor_text(tensor.data_type, tensor.dims)};"
                f" the model's is {_tensor_text(data_type, shapes[0])}"
            )


def _tensor_text(data_type: int, dims: Any) -> str:
    return f"{mc.DataType.Name(data_type)} {list(dims)}"


def _read_config(folder: Path) -> Any:
    path = folder / CONFIG_NAME
    config = mc.ModelConfig()
    if not path.exists():
        config.platform = "onnxruntime_onnx"  # Triton completes a configuration-less ONNX model the same way
        return config
    if not path.is_file() or path.stat().st_size > CONFIG_LIMIT:
        raise RepositoryError(f"{path}: not a regular file under {CONFIG_LIMIT} bytes")
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: not a Triton ModelConfig ({exc})") from None
    return config


def select_versions(config: Any, versions: dict[str, Path]) -> list[str]:
    """Triton's version policy: `latest` (num_versions, default 1: the highest number), `all`, or `specific`."""
    numbers = sorted(versions, key=int)
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        return numbers
    if policy == "specific":
        wanted = {str(v) for v in config.version_policy.specific.versions}
        return [v for v in numbers if v in wanted]
    count = config.version_policy.latest.num_versions if policy == "latest" else 1
    return numbers[-max(1, count) :]


def single_file_config(name: str, platform: str, max_batch: int, max_delay_ms: float) -> Any:
    """The configuration of one served file, as `fmnist-export --format triton` writes it for Triton."""
    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch)
    config.backend = BACKEND_OF_PLATFORM.get(platform, "")
    config.input.add(name=INPUT_NAME, data_type=mc.TYPE_UINT8, dims=list(IMAGE_SHAPE))
    for output in OUTPUT_NAMES:
        config.output.add(name=output, data_type=mc.TYPE_FP32, dims=[N_CLASSES])
    if max_delay_ms > 0:
        config.dynamic_batching.max_queue_delay_microseconds = round(max_delay_ms * 1000)
    config.version_policy.latest.num_versions = 1
    return config


def config_json(config: Any) -> dict[str, Any]:
    """The configuration as Triton's `/config` answers it: protobuf field names, 64-bit integers as JSON numbers
    (protobuf's own JSON mapping writes them as strings)."""
    document = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return _numbers(config.DESCRIPTOR, document)


def _numbers(descriptor: Any, document: dict[str, Any]) -> dict[str, Any]:
    wide = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64)
    for key, value in document.items():
        fd = descriptor.fields_by_name.get(key)
        if fd is None:
            continue
        if fd.type in wide:
            document[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict):
                    _numbers(fd.message_type, item)
    return document
