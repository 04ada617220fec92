"""The Open Inference Protocol's parsing and encoding (serving/protocol.py) in process: each rule at its edge, with
the status each refusal answers. The HTTP server around it is tests/test_serving.py's."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from fmnist_deploy.contract import CLASS_NAMES
from fmnist_deploy.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    Requested,
    encode_infer,
    parse_infer,
)

IMAGE = np.arange(784, dtype=np.uint32).astype(np.uint8).reshape(1, 28, 28)


def _json_body(**changes) -> dict:
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": IMAGE.ravel().tolist()}
    body = {"inputs": [tensor]}
    for key, value in changes.items():
        if key.startswith("input_"):
            tensor[key[6:]] = value
        else:
            body[key] = value
    return body


def _parse(body: dict | bytes, header: str | None = None, limit: int = 4) -> InferRequest:
    return parse_infer(body if isinstance(body, bytes) else json.dumps(body).encode(), header, limit)


def _refused(body, status: int = 400, header: str | None = None, limit: int = 4) -> str:
    with pytest.raises(ProtocolError) as info:
        _parse(body, header, limit)
    assert info.value.status == status, str(info.value)
    return str(info.value)


def test_a_json_request_is_read_exactly() -> None:
    request = _parse(_json_body(id="r-7"))
    assert request.images.dtype == np.uint8 and np.array_equal(request.images, IMAGE)
    assert request.request_id == "r-7"
    assert request.outputs == [Requested("logits", False, 0), Requested("probabilities", False, 0)]
    nested = _parse(_json_body(input_data=IMAGE.tolist()))  # data nested as the shape
    assert np.array_equal(nested.images, IMAGE)


def test_binary_data_and_the_header_length_at_their_edges() -> None:
    header = json.dumps(_json_body(input_data=None, input_parameters={"binary_data_size": 784})).encode()
    body = header + IMAGE.tobytes()
    request = _parse(body, str(len(header)))
    assert np.array_equal(request.images, IMAGE)
    assert "is outside the" in _refused(body, header=str(len(body) + 1))
    assert "is outside the" in _refused(body, header="-1")
    assert "is not a number" in _refused(body, header="12a")
    assert "malformed JSON" in _refused(body, header=str(len(header) - 1))
    short = header + IMAGE.tobytes()[:-1]
    assert "binary_data_size 784 and 783 bytes sent; shape [1, 28, 28] needs 784" in _refused(
        short, header=str(len(header))
    )
    long = header + IMAGE.tobytes() + b"\x00"
    assert "785 bytes sent" in _refused(long, header=str(len(header)))
    wrong_size = json.dumps(_json_body(input_data=None, input_parameters={"binary_data_size": 783})).encode()
    assert "needs 784" in _refused(wrong_size + IMAGE.tobytes(), header=str(len(wrong_size)))
    as_float = json.dumps(_json_body(input_data=None, input_parameters={"binary_data_size": 784.0})).encode()
    assert "needs 784" in _refused(as_float + IMAGE.tobytes(), header=str(len(as_float)))


@pytest.mark.parametrize(("n", "accepted"), [(1, True), (4, True), (5, False)])
def test_the_image_count_limit_and_one_more(n: int, accepted: bool) -> None:
    body = _json_body(input_shape=[n, 28, 28], input_data=[0] * (784 * n))
    if accepted:
        assert _parse(body, limit=4).images.shape == (n, 28, 28)
    else:
        assert f"{n} images in one request; the limit is 4" in _refused(body, status=413, limit=4)


@pytest.mark.parametrize(
    "shape", [[0, 28, 28], [-1, 28, 28], [1, 28], [1, 28, 28, 1], [1, 28, 27], [1, 27, 28], [1.0, 28, 28], [True, 28, 28], "1,28,28", None]
)  # fmt: skip
def test_every_refused_shape(shape) -> None:
    assert "expected [N,28,28] with N >= 1" in _refused(_json_body(input_shape=shape))


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(0, True), (255, True), (-1, False), (256, False), (1.0, False), (True, False), ("1", False), (None, False)],
)
def test_pixel_values_at_their_edges(value, accepted: bool) -> None:
    data = IMAGE.ravel().tolist()
    data[100] = value
    body = _json_body(input_data=data)
    if accepted:
        assert _parse(body).images.reshape(-1)[100] == value
    else:
        assert "UINT8 data must be integers from 0 to 255" in _refused(body)


@pytest.mark.parametrize(
    ("changes", "needle", "status"),
    [
        ({"inputs": []}, "expected exactly one input named 'image'", 400),
        ({"inputs": [1]}, "expected exactly one input named 'image'", 400),
        ({"input_name": "pixels"}, "unknown input 'pixels'", 400),
        ({"input_datatype": "FP32"}, "datatype 'FP32'; expected UINT8", 400),
        ({"input_data": [0] * 783}, "783 values for shape [1, 28, 28], which needs 784", 400),
        ({"input_data": [0] * 785}, "785 values", 400),
        ({"input_data": None}, "no data", 400),
        ({"input_data": [[0] * 28] * 27 + [[0] * 27]}, "ragged data", 400),
        ({"id": 7}, "id must be a string, got int", 400),
        ({"outputs": {"name": "logits"}}, "outputs must be a list of objects", 400),
        ({"outputs": [{"name": "embeddings"}]}, "unknown output 'embeddings'", 400),
        ({"outputs": [{"name": "logits", "parameters": {"classification": 11}}]}, "classification 11; expected 1 to 10", 400),
        ({"outputs": [{"name": "logits", "parameters": {"classification": -1}}]}, "classification -1", 400),
        ({"outputs": [{"name": "logits", "parameters": {"classification": 2.0}}]}, "classification 2.0", 400),
        ({"outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]}, "binary_data 1; expected true or false", 400),
        ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output 'yes'", 400),
        ({"parameters": []}, "parameters must be a JSON object, got list", 400),
        ({"input_parameters": "x"}, "parameters must be a JSON object, got str", 400),
    ],
)  # fmt: skip
def test_each_malformed_request_names_its_fault(changes: dict, needle: str, status: int) -> None:
    assert needle in _refused(_json_body(**changes), status=status)


def test_malformed_json_and_a_document_that_is_not_an_object() -> None:
    assert "malformed JSON" in _refused(b"{not json")
    assert "malformed JSON" in _refused(b"\xff\xfe")
    assert "must be a JSON object" in _refused(b"[1, 2]")


def test_requested_outputs_classification_and_binary_flags() -> None:
    outputs = [
        {"name": "probabilities", "parameters": {"classification": 10, "binary_data": True}},
        {"name": "logits", "parameters": {"classification": 0}},
    ]
    request = _parse(_json_body(outputs=outputs, parameters={"binary_data_output": True}))
    assert request.outputs == [Requested("probabilities", True, 10), Requested("logits", True, 0)]
    default_binary = _parse(_json_body(parameters={"binary_data_output": True}))
    assert [o.binary for o in default_binary.outputs] == [True, True]


def test_encoding_json_binary_and_classification() -> None:
    logits = np.float32([[0.5, 2.0, -1.0, 0, 0, 0, 0, 0, 0, 3.25], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    probs = np.float32(np.full((2, 10), 0.1))
    request = InferRequest(
        np.zeros((2, 28, 28), np.uint8),
        [Requested("logits", False, 0), Requested("probabilities", True, 0), Requested("logits", False, 2)],
        "abc",
    )
    body, header_length = encode_infer("fmnist_mlp", "1", request, logits, probs, CLASS_NAMES)
    document = json.loads(body[:header_length])
    assert (document["model_name"], document["model_version"], document["id"]) == ("fmnist_mlp", "1", "abc")
    first, second, third = document["outputs"]
    assert first == {"name": "logits", "datatype": "FP32", "shape": [2, 10], "data": logits.ravel().tolist()}
    assert second == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 10],
        "parameters": {"binary_data_size": 80},
    }
    assert np.array_equal(np.frombuffer(body[header_length:], "<f4").reshape(2, 10), probs)
    assert third["datatype"] == "BYTES" and third["shape"] == [2, 2]
    assert third["data"] == [
        "3.250000:9:Ankle boot",
        "2.000000:1:Trouser",
        "1.000000:0:T-shirt/top",
        "0.000000:1:Trouser",
    ]
    one_class = InferRequest(request.images, [Requested("logits", False, 1)])
    only_json, none = encode_infer("m", "1", one_class, logits, probs, CLASS_NAMES)
    assert none is None and "id" not in json.loads(only_json)
    binary_class = InferRequest(request.images, [Requested("logits", True, 1)])
    binary_classes, length = encode_infer("m", "1", binary_class, logits, probs, CLASS_NAMES)
    raw = binary_classes[length:]
    expected = [b"3.250000:9:Ankle boot", b"1.000000:0:T-shirt/top"]
    assert raw == b"".join(struct.pack("<I", len(s)) + s for s in expected)
    assert json.loads(binary_classes[:length])["outputs"][0]["parameters"] == {"binary_data_size": len(raw)}


def test_the_header_name_is_tritons() -> None:
    assert HEADER_LENGTH == "Inference-Header-Content-Length"


def test_two_binary_outputs_follow_the_header_back_to_back() -> None:
    logits = np.float32(np.arange(20).reshape(2, 10))
    probs = np.float32(np.full((2, 10), 0.1))
    request = InferRequest(np.zeros((2, 28, 28), np.uint8), [Requested("logits", True, 0), Requested("probabilities", True, 0)])  # fmt: skip
    body, length = encode_infer("m", "1", request, logits, probs, CLASS_NAMES)
    assert len(body) == length + 80 + 80
    assert body[length:] == logits.astype("<f4").tobytes() + probs.astype("<f4").tobytes()


def test_a_json_true_nested_anywhere_in_the_data_is_refused() -> None:
    nested = IMAGE.tolist()  # [1][28][28]
    nested[0][27][27] = True
    body = json.dumps(_json_body(input_data=nested)).encode()
    assert b"true" in body
    assert "UINT8 data must be integers from 0 to 255" in _refused(body)
    # a `true` elsewhere in the body makes the element check run, and integer data still passes it
    fine = json.dumps(_json_body(input_data=IMAGE.tolist(), parameters={"binary_data_output": True})).encode()
    assert np.array_equal(_parse(fine).images, IMAGE)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input_data": None}, "input 'image': no data for shape [1, 28, 28], which needs 784"),
        ({"input_data": [[0] * 28] * 27 + [[0] * 27]}, "input 'image': ragged data for shape [1, 28, 28], which needs 784"),
        ({"outputs": [1]}, "outputs must be a list of objects"),
        ({"outputs": {"name": "logits"}}, "outputs must be a list of objects"),
        ({"outputs": [{"name": "logits", "parameters": [1]}]}, "output 'logits': parameters must be a JSON object, got list"),
        ({"outputs": [{"name": "embeddings"}]}, "unknown output 'embeddings'; the model's outputs are logits, probabilities"),
    ],
)  # fmt: skip
def test_exact_messages(changes: dict, message: str) -> None:
    assert _refused(_json_body(**changes)) == message


def test_exact_message_for_a_document_that_is_not_an_object() -> None:
    assert _refused(b"[1, 2]") == "the request body must be a JSON object"


def test_an_output_named_without_parameters_is_its_plain_tensor() -> None:
    request = _parse(_json_body(outputs=[{"name": "logits"}, {"name": "probabilities", "parameters": {}}]))
    assert request.outputs == [Requested("logits", False, 0), Requested("probabilities", False, 0)]


def test_a_header_length_of_zero_is_inside_the_body() -> None:
    """0 is a length inside the body (an empty JSON header, then malformed), not outside it."""
    body = json.dumps(_json_body()).encode()
    assert "malformed JSON" in _refused(body, header="0")


def test_binary_data_size_without_a_header_length_has_no_binary_part() -> None:
    body = _json_body(input_data=None, input_parameters={"binary_data_size": 784})
    assert "binary_data_size 784 and 0 bytes sent" in _refused(body)


def test_a_header_length_equal_to_the_body_leaves_no_binary_part() -> None:
    body = json.dumps(_json_body()).encode()
    assert np.array_equal(_parse(body, header=str(len(body))).images, IMAGE)


def test_a_json_false_in_the_data_is_refused() -> None:
    data = IMAGE.ravel().tolist()
    data[5] = False
    body = json.dumps(_json_body(input_data=data)).encode()
    assert b"false" in body and b"true" not in body
    assert "UINT8 data must be integers from 0 to 255" in _refused(body)


def test_a_binary_fp32_output_carries_no_json_values_and_a_json_one_every_value() -> None:
    from fmnist_deploy.serving.protocol import output_tensor

    logits = np.arange(20, dtype=np.float32).reshape(2, 10) / 8  # exact in float32 and in JSON
    probabilities = np.full((2, 10), 0.1, np.float32)
    names = tuple(f"c{i}" for i in range(10))
    datatype, shape, raw, values = output_tensor(Requested("logits", True, 0), logits, probabilities, names)
    assert (datatype, shape, values) == ("FP32", [2, 10], [])  # the bytes alone: no list of 20 floats built
    assert np.frombuffer(raw, "<f4").tolist() == [i / 8 for i in range(20)]
    datatype, shape, raw, values = output_tensor(Requested("probabilities", False, 0), logits, probabilities, names)
    assert (datatype, shape) == ("FP32", [2, 10]) and values == [np.float32(0.1).item()] * 20
