"""Property test of the server's request path: whatever JSON body, binary header and binary tail a client
sends to the infer endpoint, the answer is 200, 400, 404, 413 or 503 with a JSON error, never a 500. The
real application runs in-process (its routes, parser, batcher and error handlers) on the committed model;
2 000 cases in `make test`, 20 000 under `--soak`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from fmnist_deploy.serving.app import ServeConfig, create_app
from tests.conftest import ARTIFACTS

ALLOWED = {200, 400, 404, 413, 503}
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    config = ServeConfig(model=str(ARTIFACTS / "fmnist_mlp.onnx"), max_request_images=64, max_delay_ms=0)
    with TestClient(create_app(config), raise_server_exceptions=False) as test_client:
        yield test_client


def cases(request: pytest.FixtureRequest) -> settings:
    soak = request.config.getoption("--soak")
    return settings(
        max_examples=20_000 if soak else 2_000,
        derandomize=not soak,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["image", "logits", "probabilities", "x", ""]) | st.text(max_size=5)
shapes = st.lists(st.integers(-2, 70) | st.booleans() | st.text(max_size=2), max_size=4) | json_values
datatypes = st.sampled_from(["UINT8", "FP32", "BYTES", "uint8"]) | json_values
pixels = st.integers(-3, 300) | st.booleans() | st.floats(0, 255) | st.none()
data = (
    st.lists(pixels, max_size=40)
    | st.builds(lambda n, v: [v] * (784 * n), st.integers(0, 2), st.integers(0, 256))
    | st.builds(lambda v: [[[v] * 28] * 28], st.integers(0, 256) | st.booleans())
    | json_values
)
parameters = (
    st.fixed_dictionaries(
        {},
        optional={
            "binary_data_size": st.integers(-1, 3000) | json_values,
            "binary_data": json_values,
            "classification": st.integers(-1, 12) | json_values,
            "binary_data_output": json_values,
        },
    )
    | json_values
)
tensor = st.fixed_dictionaries(
    {},
    optional={"name": names, "datatype": datatypes, "shape": shapes, "data": data, "parameters": parameters},
)
documents = (
    st.fixed_dictionaries(
        {},
        optional={
            "inputs": st.lists(tensor, max_size=2) | json_values,
            "outputs": st.lists(
                st.fixed_dictionaries({}, optional={"name": names, "parameters": parameters}), max_size=3
            )
            | json_values,
            "parameters": parameters,
            "id": json_values,
        },
    )
    | json_values
)


@st.composite
def near_valid(draw) -> dict:
    """A valid request of 1 or 2 images, then a few of its fields replaced by generated values."""
    n = draw(st.integers(1, 2))
    document = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": [n, 28, 28],
                "data": [draw(st.integers(0, 255))] * (784 * n),
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": draw(st.booleans())}}],
    }
    tensor, output = document["inputs"][0], document["outputs"][0]  # mutated in place, whatever replaces them
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from([document, tensor, output]))
        key = draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters", "outputs", "id"]))
        target[key] = draw(json_values | shapes | data | parameters)
    return document


@st.composite
def requests(draw) -> tuple[bytes, dict[str, str]]:
    """A JSON document, optionally followed by a binary tail announced (truly or not) in the header."""
    document = json.dumps(draw(near_valid() | documents)).encode()
    if draw(st.booleans()):
        document = draw(st.sampled_from([document[:-1], document + b"}", b"[" * 2000, b"\xff" + document]))
    headers = {}
    tail = b""
    if draw(st.booleans()):
        tail = draw(st.binary(max_size=64) | st.builds(lambda n: bytes(784 * n), st.integers(1, 2)))
        header = draw(
            st.sampled_from([str(len(document)), str(len(document) + 1), "-1", "abc", "", " 1", "9" * 30])
            | st.integers(-5, len(document) + 70).map(str)
        )
        headers[HEADER] = header
    return document + tail, headers


def test_no_request_body_gets_a_500(client: TestClient, request: pytest.FixtureRequest) -> None:
    statuses: set[int] = set()

    @cases(request)
    @given(requests())
    def check(case: tuple[bytes, dict[str, str]]) -> None:
        body, headers = case
        response = client.post("/v2/models/fmnist_mlp/infer", content=body, headers=headers)
        assert response.status_code in ALLOWED, (response.status_code, response.text[:300], body[:300], headers)
        if response.status_code != 200:
            assert isinstance(response.json()["error"], str)
        statuses.add(response.status_code)

    check()
    assert {200, 400} <= statuses, statuses  # the generator reaches both valid and invalid requests
