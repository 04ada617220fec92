"""The Open Inference Protocol (KServe v2) as Triton speaks it: request parsing and response encoding.

JSON bodies, and Triton's binary tensor data extension: the JSON header comes first, its
length in the `Inference-Header-Content-Length` header, then the raw tensors in input order;
an input says `"parameters": {"binary_data_size": n}` instead of `"data"`, and an output asked
for with `"binary_data": true` comes back the same way. The classification extension
(`"classification": k` on an output) answers the top k as `"score:index:label"` strings.
Pure functions of bytes and arrays: no HTTP here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES
from fmnist_deploy.errors import InputError

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"UINT8": np.uint8, "FP32": np.float32}


class ProtocolError(InputError, ValueError):
    """A request the protocol or the model does not accept; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Requested:
    """One output a request asks for."""

    name: str
    binary: bool
    classification: int = 0  # top k as "score:index:label" strings when > 0


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the images, the outputs wanted, and the request id to echo."""

    images: np.ndarray  # (N, 28, 28) uint8
    outputs: list[Requested] = field(default_factory=list)
    request_id: str | None = None


def _json(blob: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(blob)  # nesting deeper than 1024 is a decode error, not a RecursionError
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError("the request body must be a JSON object")
    return document


def _object(value: Any, what: str) -> dict[str, Any]:
    """An optional JSON object (absent or null: empty); anything else is a 400 naming `what`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_infer(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """An infer request body (JSON, or JSON + binary tensors) -> InferRequest, or a ProtocolError naming the fault."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH}: {header_length!r} is not a number") from None
        if not 0 <= split <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {split} is outside the {len(body)}-byte body")
        document, binary = _json(body[:split]), body[split:]
    else:
        document, binary = _json(body), b""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"expected exactly one input named {INPUT_NAME!r}")
    tensor = inputs[0]
    shape = tensor.get("shape")
    expected = check_input(tensor.get("name"), tensor.get("datatype"), shape, max_images)
    parameters = _object(tensor.get("parameters"), f"input {INPUT_NAME!r}: parameters")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not _whole(size) or size != expected or len(binary) != expected:
            raise ProtocolError(
                f"input {INPUT_NAME!r}: binary_data_size {size} and {len(binary)} bytes sent; "
                f"shape {shape} needs {expected}"
            )
        images = np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    else:
        images = _json_tensor(tensor.get("data"), shape, expected, exact=b"true" in body or b"false" in body)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id must be a string, got {type(request_id).__name__}")
    return InferRequest(images, _requested(document), request_id)


def check_input(name: Any, datatype: Any, shape: Any, max_images: int) -> int:
    """The input tensor's name, datatype and shape checked against the contract (HTTP and gRPC alike);
    returns the number of pixel values the shape needs."""
    if name != INPUT_NAME:
        raise ProtocolError(f"unknown input {name!r}; the model's input is {INPUT_NAME!r}")
    if datatype != "UINT8":
        raise ProtocolError(f"input {INPUT_NAME!r} has datatype {datatype!r}; expected UINT8")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(_whole(d) for d in shape)
        or tuple(shape[1:]) != IMAGE_SHAPE
        or shape[0] < 1
    ):
        raise ProtocolError(f"input {INPUT_NAME!r} has shape {shape}; expected [N,28,28] with N >= 1")
    if shape[0] > max_images:
        raise ProtocolError(f"{shape[0]} images in one request; the limit is {max_images}", status=413)
    return shape[0] * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


def _json_tensor(data: Any, shape: list[int], expected: int, *, exact: bool) -> np.ndarray:
    """The `data` of a UINT8 tensor (flat, or nested as the shape) -> uint8 array, checked in a few vectorised
    passes: numpy infers one integer dtype only when every element is a JSON integer. A JSON `true` is a
    Python bool, which numpy folds into an integer array, so bodies holding a `true`/`false` anywhere are
    also checked element by element (`exact`)."""
    array = None
    if isinstance(data, list):
        try:
            array = np.array(data)
        except (ValueError, TypeError, OverflowError):  # ragged nesting
            array = None
    if array is None or array.size != expected:
        count = "no data" if not isinstance(data, list) else "ragged data" if array is None else f"{array.size} values"
        raise ProtocolError(f"input {INPUT_NAME!r}: {count} for shape {shape}, which needs {expected}")
    if (
        array.dtype.kind not in "iu"
        or (array.size and (int(array.min()) < 0 or int(array.max()) > 255))
        or (exact and bool in set(map(type, _leaves(data, array.ndim))))
    ):
        raise ProtocolError(f"input {INPUT_NAME!r}: UINT8 data must be integers from 0 to 255")
    return array.astype(np.uint8).reshape(shape)


def _leaves(data: list, depth: int) -> Iterable[Any]:
    """The elements of a list nested `depth` deep, in order, without copying them into numpy."""
    for _ in range(depth - 1):
        data = chain.from_iterable(data)
    return data


def _requested(document: dict[str, Any]) -> list[Requested]:
    binary_default = _object(document.get("parameters"), "parameters").get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(f"parameters: binary_data_output {binary_default!r}; expected true or false")
    outputs = document.get("outputs")
    if outputs is None:
        return [Requested(name, binary_default) for name in OUTPUT_NAMES]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ProtocolError("outputs must be a list of objects")
    requested = []
    for output in outputs:
        name = output.get("name")
        parameters = _object(output.get("parameters"), f"output {name!r}: parameters")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {name!r}: binary_data {binary!r}; expected true or false")
        requested.append(requested_output(name, parameters.get("classification", 0), binary))
    return requested


def requested_output(name: Any, classification: Any, binary: bool) -> Requested:
    """One requested output checked against the model's outputs (HTTP and gRPC alike)."""
    if name not in OUTPUT_NAMES:
        raise ProtocolError(f"unknown output {name!r}; the model's outputs are {', '.join(OUTPUT_NAMES)}")
    if not _whole(classification) or not 0 <= classification <= N_CLASSES:
        raise ProtocolError(f"output {name!r}: classification {classification!r}; expected 1 to {N_CLASSES}")
    return Requested(name, binary, classification)


def _bytes_tensor(strings: list[str]) -> bytes:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in strings)


def output_tensor(
    want: Requested, logits: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]
) -> tuple[str, list[int], bytes, list[Any]]:
    """One requested output as (datatype, shape, raw little-endian bytes, values for JSON; empty for a binary
    FP32 output): FP32 scores, or the classification extension's top k as BYTES "score:index:label" strings."""
    array = logits if want.name == OUTPUT_NAMES[0] else probabilities
    if want.classification:
        order = np.argsort(-array, axis=1, kind="stable")[:, : want.classification]
        strings = [f"{array[i, j]:f}:{j}:{class_names[j]}" for i in range(len(array)) for j in order[i]]
        return "BYTES", [len(array), want.classification], _bytes_tensor(strings), strings
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return "FP32", list(array.shape), raw, [] if want.binary else array.reshape(-1).tolist()


def encode_infer(
    model: str,
    version: str,
    request: InferRequest,
    logits: np.ndarray,
    probabilities: np.ndarray,
    class_names: tuple[str, ...],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (for the HTTP header)."""
    outputs, blobs = [], []
    for want in request.outputs:
        datatype, shape, raw, data = output_tensor(want, logits, probabilities, class_names)
        entry: dict[str, Any] = {"name": want.name, "datatype": datatype, "shape": shape}
        if want.binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.request_id is not None:
        document["id"] = request.request_id
    header = orjson.dumps(document)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
