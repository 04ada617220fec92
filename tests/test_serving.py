"""fmnist-serve against the real Triton client (tritonclient.http), and raw protocol requests: every
endpoint, binary and JSON tensors, requested outputs, classification, dynamic batching bit for bit,
bad requests, overload, SIGTERM under load. Servers bind 127.0.0.1 on a free port and are stopped."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from fmnist_deploy import load
from fmnist_deploy.trust import Trust
from tests.conftest import ARTIFACTS

http = pytest.importorskip("tritonclient.http", reason="the serving tests need tritonclient[http]")

MODEL = "fmnist_mlp"


def _announced_grpc(proc: subprocess.Popen, deadline: float = 60) -> str:
    """HOST:PORT from the server's `gRPC at HOST:PORT` line."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, end - time.monotonic()))
        line = proc.stderr.readline() if ready else ""
        if line.startswith("gRPC at "):
            return line.split()[-1]
    pytest.fail("the server did not announce its gRPC port")


def _announced_address(proc: subprocess.Popen, deadline: float) -> str:
    """HOST:PORT from the server's first line, `serving MODEL at http://HOST:PORT/v2/models/... (...)`, after any
    `warning:` lines (a repository's model folders it does not serve)."""
    line = "warning:"
    while line.startswith("warning:"):
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stderr.readline() if ready else ""
    if not line.startswith("serving "):
        proc.kill()
        pytest.fail(f"server did not start: {line}{proc.communicate()[1][-2000:]}")
    return line.split("http://")[1].split("/")[0]


@contextmanager
def serving(*args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real fmnist-serve process on a loopback port the system chose (`--port 0`, read back from the
    line it announces itself with), stopped with SIGTERM afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmnist_deploy.serving.cli", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    url = _announced_address(proc, deadline)
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"server did not start: {proc.communicate()[1][-2000:]}")
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving() as (url, _):
        yield url


@pytest.fixture(scope="module")
def images(data) -> np.ndarray:
    return data.test_images[:64].numpy()


@pytest.fixture(scope="module")
def reference():
    return load(ARTIFACTS / "fmnist_mlp.onnx")


def _one_image_logits(image: np.ndarray) -> dict:
    """The protocol's own JSON form of an infer request for one image, asking for its logits."""
    return {
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": image.reshape(-1).tolist()}],
        "outputs": [{"name": "logits"}],
    }


def _input(x: np.ndarray, binary: bool = True):
    tensor = http.InferInput("image", list(x.shape), "UINT8")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_health_and_metadata(server: str) -> None:
    client = http.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_binary_and_json_equal_predict(server: str, images, reference, binary: bool) -> None:
    client = http.InferenceServerClient(server)
    result = client.infer(
        MODEL,
        [_input(images, binary)],
        outputs=[
            http.InferRequestedOutput("logits", binary_data=binary),
            http.InferRequestedOutput("probabilities", binary_data=binary),
        ],
    )
    expected = reference.predict(images)
    assert np.array_equal(result.as_numpy("logits"), expected.logits)
    assert np.array_equal(result.as_numpy("probabilities"), expected.probabilities)


def test_requested_outputs_and_classification(server: str, images, reference) -> None:
    client = http.InferenceServerClient(server)
    only = client.infer(MODEL, [_input(images[:3])], outputs=[http.InferRequestedOutput("probabilities")])
    assert only.as_numpy("logits") is None and only.as_numpy("probabilities").shape == (3, 10)
    top = client.infer(MODEL, [_input(images[:2])], outputs=[http.InferRequestedOutput("probabilities", class_count=3)])
    rows = [[v.decode() for v in row] for row in top.as_numpy("probabilities")]
    expected = reference.predict(images[:2]).top_k(3)
    assert [[s.split(":", 2)[2] for s in row] for row in rows] == [[c for c, _ in row] for row in expected]
    assert abs(float(rows[0][0].split(":")[0]) - expected[0][0][1]) < 1e-6


def test_200_concurrent_requests_are_batched_and_each_equals_predict_alone(data, reference) -> None:
    # A server of its own: the counters start at zero, so executions can be set against these requests alone
    with serving() as (url, _):
        client = http.InferenceServerClient(url, concurrency=16)
        x = data.test_images[:1000].numpy()
        pending = [(i, client.async_infer(MODEL, [_input(x[5 * i : 5 * i + 5])])) for i in range(200)]
        for i, request in pending:
            got = request.get_result(timeout=120).as_numpy("logits")
            assert np.array_equal(got, reference.predict(x[5 * i : 5 * i + 5]).logits), i
        metrics = _scrape(url)
    labels = '{model="fmnist_mlp",version="1"}'
    requests = metrics[f"nv_inference_request_success{labels}"]
    executions = metrics[f"nv_inference_exec_count{labels}"]
    assert (requests, metrics[f"nv_inference_count{labels}"]) == (200, 1000), metrics
    # 16 requests in flight at once: measured 44-79 executions here; without batching every request is one (200)
    assert 1 <= executions <= 0.75 * requests, f"{executions:.0f} model executions for {requests:.0f} requests"


def test_the_protocols_own_json_form(server: str, images, reference) -> None:
    body = {
        "id": "r1",
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": images[0].reshape(-1).tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    response = httpx.post(f"http://{server}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["id"] == "r1" and document["model_name"] == MODEL
    (output,) = document["outputs"]
    assert output["shape"] == [1, 10] and output["datatype"] == "FP32"
    assert np.array_equal(np.float32(output["data"]), reference.predict(images[:1]).probabilities[0])


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        (f"/v2/models/{MODEL}/infer", b"{not json", 400, "malformed JSON"),
        (
            f"/v2/models/{MODEL}/infer",
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.0] * 784}]},
            400,
            "datatype 'FP32'; expected UINT8",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 32, 32], "data": [0] * 1024}]},
            400,
            "shape [1, 32, 32]",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 28, 28], "data": [0] * 784}]},
            400,
            "784 values for shape [2, 28, 28]",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]},
            400,
            "unknown input 'pixels'",
        ),
        (
            f"/v2/models/{MODEL}/infer",
            {
                "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}],
                "outputs": [{"name": "embeddings"}],
            },
            400,
            "unknown output 'embeddings'",
        ),
        ("/v2/models/resnet50/infer", {"inputs": []}, 404, "unknown model 'resnet50'"),
        (
            f"/v2/models/{MODEL}/infer",
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [5000, 28, 28],
                        "parameters": {"binary_data_size": 3920000},
                    }
                ]
            },
            413,
            "limit is 4096",
        ),
    ],
)
def test_bad_requests_get_their_status_and_a_message(server: str, path: str, body, status: int, needle: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"http://{server}{path}", content=content)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


def test_binary_data_whose_length_does_not_match_the_shape(server: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [2, 28, 28], "parameters": {"binary_data_size": 784}}
            ]
        }
    ).encode()
    response = httpx.post(
        f"http://{server}/v2/models/{MODEL}/infer",
        content=header + bytes(784),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400 and "needs 1568" in response.json()["error"]


def test_a_full_queue_answers_503_and_every_accepted_request_is_answered(images, reference) -> None:
    # One request per model call and room for one waiting: the queue is full whenever two requests are parsed
    # between two turns of the batcher, which 64 clients released at once, 4 requests each, make happen often.
    with serving("--max-queue", "1", "--max-delay-ms", "0", "--max-batch", "1") as (url, _):
        outcomes: list[int] = []
        start = threading.Barrier(64)

        def client(c: int) -> None:
            start.wait()
            for i in range(c, c + 4):
                body = _one_image_logits(images[i % 64])
                response = httpx.post(f"http://{url}/v2/models/{MODEL}/infer", json=body, timeout=60)
                if response.status_code == 200:
                    got = np.float32(response.json()["outputs"][0]["data"])
                    assert np.array_equal(got, reference.predict(images[i % 64]).logits[0])
                else:
                    assert "overloaded" in response.json()["error"]
                outcomes.append(response.status_code)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(outcomes) == 256 and set(outcomes) == {200, 503}, sorted(set(outcomes))


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the chain of exceptions that led to `exc` (httpx wraps httpcore's, which wraps the OS's)."""
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def test_sigterm_during_load_loses_no_accepted_request(images, reference) -> None:
    """Every request a client sends ends one of two ways: a correct answer, or a connection the server refused
    because it had stopped accepting. Anything else (a reset, a half answer, a wrong one) is a lost request,
    and every client thread's exception is kept and reported, never left to die as a warning."""
    with serving("--max-delay-ms", "20") as (url, proc):
        sent = [0] * 8
        outcomes: list[list[str]] = [[] for _ in range(8)]
        errors: list[str] = []
        answered = threading.Semaphore(0)

        def client_loop(c: int) -> None:
            try:
                for i in range(400):
                    body = _one_image_logits(images[i % 64])
                    sent[c] += 1
                    try:
                        response = httpx.post(f"http://{url}/v2/models/{MODEL}/infer", json=body, timeout=30)
                    except httpx.ConnectError:
                        outcomes[c].append("refused")  # after shutdown began: never accepted
                        return
                    except httpx.ReadError as exc:
                        # a reset: the server closed the socket with the request unread in it (the kernel resets
                        # such a connection; one whose request was read and then dropped ends with a plain close,
                        # httpx's RemoteProtocolError, which counts as lost)
                        if not _caused_by(exc, ConnectionResetError):
                            raise
                        outcomes[c].append("refused")
                        return
                    expected = reference.predict(images[i % 64]).logits[0]
                    ok = response.status_code == 200 and np.array_equal(
                        np.float32(response.json()["outputs"][0]["data"]), expected
                    )
                    outcomes[c].append("ok" if ok else f"bad {response.status_code}: {response.text[:200]}")
                    answered.release()
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
                errors.append(f"client {c}, request {sent[c]}: {type(exc).__name__}: {exc}")

        # Two slow uploaders: half a body sent before SIGTERM, the rest only once the server has stopped accepting
        # new connections, spread over two seconds: a server that does not wait for the requests it accepted
        # drops these two, however quick its model is.
        half_sent = [threading.Event(), threading.Event()]
        stopped_accepting = threading.Event()
        slow: list[str] = []

        def slow_body(k: int) -> Iterator[bytes]:
            body = json.dumps(_one_image_logits(images[k])).encode()
            yield body[: len(body) // 2]
            half_sent[k].set()
            if not stopped_accepting.wait(timeout=60):
                return  # the test has failed already; end the upload so that the thread ends
            rest = body[len(body) // 2 :]
            for start in range(0, len(rest), len(rest) // 10 + 1):
                time.sleep(0.2)  # pacing the upload, not waiting for anything
                yield rest[start : start + len(rest) // 10 + 1]

        def slow_client(k: int) -> None:
            try:
                response = httpx.post(
                    f"http://{url}/v2/models/{MODEL}/infer",
                    content=slow_body(k),
                    headers={"content-type": "application/json"},
                    timeout=60,
                )
                ok = response.status_code == 200 and np.array_equal(
                    np.float32(response.json()["outputs"][0]["data"]), reference.predict(images[k]).logits[0]
                )
                slow.append("ok" if ok else f"bad {response.status_code}: {response.text[:200]}")
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
                errors.append(f"slow client {k}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(8)]
        uploaders = [threading.Thread(target=slow_client, args=(k,)) for k in range(2)]
        for t in threads + uploaders:
            t.start()
        for event in half_sent:
            assert event.wait(timeout=60), "a slow client could not start its upload"
        for _ in range(40):  # the server is busy with all eight clients before it is told to stop, and it
            # answered requests sent after the slow clients connected: it has accepted their connections
            assert answered.acquire(timeout=60), "the server answered too few requests before SIGTERM"
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not stopped_accepting.is_set() and time.monotonic() < deadline:
            try:
                socket.create_connection(tuple(url.rsplit(":", 1)), timeout=5).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: it was in the backlog when it closed
                stopped_accepting.set()
        assert stopped_accepting.is_set(), "the server still accepts connections 30 s after SIGTERM"
        for t in threads + uploaders:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads + uploaders), "a client still waits for an answer"
        assert proc.wait(timeout=30) == 0
    assert errors == []
    assert slow == ["ok", "ok"]
    for c in range(8):
        assert len(outcomes[c]) == sent[c], f"client {c}: {sent[c]} requests sent, {len(outcomes[c])} outcomes"
        assert outcomes[c][-1] == "refused", f"client {c} sent all its requests before SIGTERM"
        assert set(outcomes[c][:-1]) == {"ok"}, outcomes[c]
    assert sum(len(o) for o in outcomes) - 8 >= 40


def test_triton_repository_serves_and_its_manifest_parses(tmp_path: Path, data, images, reference) -> None:
    from click.testing import CliRunner

    from fmnist_deploy.export.cli import main as export_cli

    repository = tmp_path / "model_repository"
    result = CliRunner().invoke(
        export_cli, ["--format", "triton", "--output", str(repository), "--data-dir", str(data.root)]
    )
    assert result.exit_code == 0, result.output
    assert "ok   triton_config: config.pbtxt parses as tritonclient's ModelConfig" in result.stdout
    model = repository / "fmnist_mlp" / "1" / "model.onnx"
    assert model.read_bytes() == (ARTIFACTS / "fmnist_mlp.onnx").read_bytes()
    manifest = yaml.safe_load((repository / "inferenceservice.yaml").read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    predictor = manifest["spec"]["predictor"]["model"]
    assert predictor["modelFormat"]["name"] == "onnx" and predictor["protocolVersion"] == "v2"
    with serving("--model-repository", str(repository)) as (url, _):
        out = http.InferenceServerClient(url).infer(MODEL, [_input(images[:4])])
        assert np.array_equal(out.as_numpy("logits"), reference.predict(images[:4]).logits)


def test_two_worker_processes_share_one_port_and_stop_cleanly(images, reference) -> None:
    with serving("--workers", "2") as (url, proc):
        for i in range(16):  # new connections: the kernel spreads them over both processes
            response = httpx.post(f"http://{url}/v2/models/{MODEL}/infer", json=_one_image_logits(images[i]))
            assert response.status_code == 200, response.text
            got = np.float32(response.json()["outputs"][0]["data"])
            assert np.array_equal(got, reference.predict(images[i]).logits[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.communicate()[1][-2000:]


def test_a_port_in_use_or_an_unknown_host_is_one_line() -> None:
    from click.testing import CliRunner

    from fmnist_deploy.serving.cli import main as serve_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(serve_cli, ["--port", str(port)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    unknown = CliRunner().invoke(serve_cli, ["--host", "no-such-host.invalid", "--port", "0"])
    assert unknown.exit_code == 1
    lines = unknown.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot listen on no-such-host.invalid:0: "), lines


def test_quick_model_calls_run_on_the_event_loop_and_slow_ones_in_a_thread(images, reference, monkeypatch) -> None:
    """A thread hand-off costs more than a small ONNX Runtime call, so quick calls run inline; a model slower
    than INLINE_S per call moves to a thread after its first call has measured it. Answers are the same."""
    import asyncio

    from fmnist_deploy.serving import batcher as batcher_module
    from fmnist_deploy.serving.batcher import INLINE_S, Batcher

    on_loop: list[bool] = []

    def scenario(delay: float) -> list[np.ndarray]:
        def model(x: np.ndarray):
            on_loop.append(threading.current_thread() is threading.main_thread())
            time.sleep(delay)
            return reference.backend.run(x)

        async def requests() -> list[np.ndarray]:
            batcher = Batcher(model, max_delay_s=0)
            batcher.start()
            answers = [(await batcher.infer(images[i : i + 1])).logits for i in range(4)]
            await batcher.stop()
            return answers

        return asyncio.run(requests())

    # "quick" against a threshold no call on a loaded machine reaches; "slow" sleeps past the real one
    for delay, threshold, expected in ((0.0, 10.0, [True] * 4), (2 * INLINE_S, INLINE_S, [True, False, False, False])):
        on_loop.clear()
        monkeypatch.setattr(batcher_module, "INLINE_S", threshold)
        answers = scenario(delay)
        assert on_loop == expected, (delay, threshold)
        for i, logits in enumerate(answers):
            assert np.array_equal(logits, reference.predict(images[i]).logits)


# ---- malformed requests, limits and slow clients -------------------------------------------------

ONE = {"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [{**ONE, "parameters": ["binary_data_size"]}]},
        {"inputs": [{**ONE, "parameters": "binary_data_size"}]},
        {"inputs": [ONE], "parameters": ["binary_data_output"]},
        {"inputs": [ONE], "outputs": [{"name": "logits", "parameters": ["classification"]}]},
        {"inputs": [{**ONE, "shape": [True, 28, 28]}]},
        {"inputs": [{**ONE, "data": [[0] * 28] * 27 + [[0] * 27]}]},
        {"inputs": [{**ONE, "data": [0] * 783 + [True]}]},
        {"inputs": [ONE], "id": 7},
        b"[" * 100_000,
    ],
)
def test_malformed_json_shapes_answer_400_not_500(server: str, body) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"http://{server}/v2/models/{MODEL}/infer", content=content)
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_huge_chunked_body_is_refused_while_it_streams_and_memory_stays_bounded() -> None:
    # limit: 8 images -> 8 * 3200 + 1 MiB; the client offers 400 MiB in 1 MiB chunks, without a length
    with serving("--max-request-images", "8") as (url, proc):
        before = _rss_kb(proc.pid)
        sent = 0

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            block = b"[" + b"0," * (1 << 19)
            for _ in range(400):
                sent += len(block)
                yield block

        try:
            response = httpx.post(f"http://{url}/v2/models/{MODEL}/infer", content=chunks(), timeout=60)
            status, text = response.status_code, response.text
        except (httpx.RemoteProtocolError, httpx.WriteError):  # the server closed while the client still sent
            status, text = 413, ""
        grown_mb = (_rss_kb(proc.pid) - before) / 1024
        assert status == 413, text
        assert sent < 100 << 20, f"the server read {sent >> 20} MiB before refusing"
        assert grown_mb < 100, f"server RSS grew {grown_mb:.0f} MB"


def test_idle_and_slow_clients_are_cut_off_and_real_requests_still_answered(images, reference) -> None:
    """Slow-loris: 3x the connection limit of idle sockets plus some sending headers a byte at a time. The
    server refuses those over the limit at once and closes the others at the header timeout; a real request
    made meanwhile is answered (within the client's bound), and so is one after."""
    with serving("--max-connections", "40", "--header-timeout", "1", "--idle-timeout", "1") as (url, _):
        host, port = url.rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(120)]
        slow = [socket.create_connection((host, int(port))) for _ in range(5)]
        try:
            for s in slow:
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
            body = _one_image_logits(images[0])
            answered = None
            for _ in range(40):  # a real client retries a connection refused with 503
                try:
                    answered = httpx.post(f"http://{url}/v2/models/{MODEL}/infer", json=body, timeout=20)
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                    answered = None
                if answered is not None and answered.status_code != 503:
                    break
                time.sleep(0.25)
            assert answered is not None and answered.status_code == 200, answered
            assert np.array_equal(
                np.float32(answered.json()["outputs"][0]["data"]), reference.predict(images[0]).logits[0]
            )
            for s in idle + slow:  # every idle or slow socket is closed by the server: recv sees the end
                s.settimeout(30)
                while True:
                    try:
                        chunk = s.recv(4096)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
        finally:
            for s in idle + slow:
                s.close()
        assert httpx.get(f"http://{url}/v2/health/ready", timeout=20).status_code == 200


def test_a_slow_body_gets_408_and_unknown_routes_and_methods_answer_json(server: str) -> None:
    host, port = server.rsplit(":", 1)
    with serving("--body-timeout", "1") as (url, _):
        h, p = url.rsplit(":", 1)
        with socket.create_connection((h, int(p))) as s:
            s.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
            s.settimeout(30)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error"' in answer
    for method, path, status in (
        ("GET", "/v2/nothing/here", 404),
        ("GET", f"/v2/models/{MODEL}/infer", 405),
        ("DELETE", f"/v2/models/{MODEL}", 405),
        ("GET", "/v2/models/nope/config", 404),
    ):
        response = httpx.request(method, f"http://{server}{path}")
        assert response.status_code == status, (method, path, response.text)
        assert response.headers["content-type"] == "application/json" and response.json()["error"]
    message = httpx.get(f"http://{server}/v2/models/nope").json()["error"]
    assert "'nope'" in message and "version" not in message  # no version nobody asked for


# ---- Triton's HTTP surface, as tritonclient calls it ----------------------------------------------


def _repository(tmp_path: Path, name: str = "garments") -> Path:
    """A Triton repository with a folder under another name, versions 1 (fp32) and 2 (int8), and the
    config.pbtxt that `fmnist-export --format triton` writes (its name line dropped: the folder names it)."""
    from fmnist_deploy.export.triton_repository import CONFIG

    repository = tmp_path / "repository"
    folder = repository / name
    for version, stem in (("1", "fmnist_mlp.onnx"), ("2", "fmnist_mlp.int8.onnx")):
        (folder / version).mkdir(parents=True)
        (folder / version / "model.onnx").write_bytes((ARTIFACTS / stem).read_bytes())
        sidecar = (ARTIFACTS / f"{stem}.json").read_text().replace(f'"file": "{stem}"', '"file": "model.onnx"')
        (folder / version / "model.onnx.json").write_text(sidecar)
    (folder / "config.pbtxt").write_text(
        "\n".join(line for line in CONFIG.splitlines() if not line.startswith("name:"))
    )
    (folder / "labels.txt").write_text("".join(f"{c}\n" for c in reference_names()))
    return repository


CONTRADICTIONS = {
    "another input name": (
        'input [{ name: "zz" data_type: TYPE_UINT8 dims: [28, 28] }]',
        "input 'zz' is not the model's",
    ),
    "a float input": (
        'input [{ name: "image" data_type: TYPE_FP32 dims: [28, 28] }]',
        "input 'image' is TYPE_FP32 [28, 28]; the model's is TYPE_UINT8 [28, 28]",
    ),
    "other dims": (
        'input [{ name: "image" data_type: TYPE_UINT8 dims: [-1, 99999999999] }]',
        "input 'image' is TYPE_UINT8 [-1, 99999999999]; the model's is TYPE_UINT8 [28, 28]",
    ),
    "an input twice": (
        'input [{ name: "image" data_type: TYPE_UINT8 dims: [28, 28] }, { name: "image" data_type: TYPE_UINT8 '
        "dims: [28, 28] }]",
        "names an input twice",
    ),
    "an unknown output": ('output [{ name: "scores" data_type: TYPE_FP32 dims: [10] }]', "output 'scores' is not"),
    "an output of 11 classes": (
        'output [{ name: "probabilities" data_type: TYPE_FP32 dims: [11] }]',
        "output 'probabilities' is TYPE_FP32 [11]; the model's is TYPE_FP32 [10]",
    ),
    "no batching, other dims": (
        'max_batch_size: 0 input [{ name: "image" data_type: TYPE_UINT8 dims: [-1, 784] }]',
        "input 'image' is TYPE_UINT8 [-1, 784]; the model's is TYPE_UINT8 [-1, 28, 28]",
    ),
}


@pytest.mark.parametrize("case", CONTRADICTIONS)
def test_a_configuration_that_contradicts_the_model_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    from fmnist_deploy.serving.repository import RepositoryError, read_model

    tensors, message = CONTRADICTIONS[case]
    folder = _repository(tmp_path) / "garments"
    batching = "" if "max_batch_size" in tensors else "max_batch_size: 64\n"
    (folder / "config.pbtxt").write_text(f'platform: "onnxruntime_onnx"\n{batching}{tensors}\n')
    with pytest.raises(RepositoryError, match="config.pbtxt ") as refused:
        read_model(folder)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_exported_configuration_and_partial_ones_are_served_with_the_models_tensors(tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from fmnist_deploy.serving.app import ModelStore, ServeConfig
    from fmnist_deploy.serving.repository import read_model
    from fmnist_deploy.serving.stats import Metrics

    repository = _repository(tmp_path)
    folder = repository / "garments"
    assert [t.name for t in read_model(folder).config.input] == ["image"]  # what fmnist-export writes
    unbatched = 'input [{ name: "image" data_type: TYPE_UINT8 dims: [-1, 28, 28] }]\n'
    for text, inputs, outputs in (
        ('max_batch_size: 8 output [{ name: "logits" data_type: TYPE_FP32 dims: [10] }]\n', ["image"], ["logits"]),
        ('input [{ name: "image" data_type: TYPE_UINT8 dims: [28, 28] }]\n', ["image"], ["logits", "probabilities"]),
        (unbatched, ["image"], ["logits", "probabilities"]),
    ):
        (folder / "config.pbtxt").write_text(f'platform: "onnxruntime_onnx"\n{text}')
        store = ModelStore(ServeConfig(model_repository=str(repository)), Metrics())
        store.load_all()
        config = store.models["garments"]["2"].config
        assert ([t.name for t in config.input], [t.name for t in config.output]) == (inputs, outputs), text
        assert all(t.data_type == mc.TYPE_FP32 for t in config.output)


def reference_names() -> tuple[str, ...]:
    from fmnist_deploy.contract import CLASS_NAMES

    return tuple(CLASS_NAMES)


def test_tritonclient_config_stats_repository_load_unload_and_latest_version(tmp_path: Path, images) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    repository = _repository(tmp_path)
    int8 = load(repository / "garments" / "2" / "model.onnx")
    with serving("--model-repository", str(repository)) as (url, _):
        client = http.InferenceServerClient(url)
        assert client.is_model_ready("garments") and not client.is_model_ready("garments", "1")
        meta = client.get_model_metadata("garments")
        assert meta["versions"] == ["2"] and meta["platform"] == "onnxruntime_onnx"
        result = client.infer("garments", [_input(images[:3])])
        assert result.get_response()["model_version"] == "2"  # Triton's default policy: the latest version
        assert np.array_equal(result.as_numpy("logits"), int8.predict(images[:3]).logits)

        config = client.get_model_config("garments")
        written = text_format.Parse((repository / "garments" / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config["name"] == "garments" and config["platform"] == written.platform
        assert config["max_batch_size"] == written.max_batch_size
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("image", "TYPE_UINT8", [28, 28])]
        assert [o["name"] for o in config["output"]] == ["logits", "probabilities"]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
        assert config["version_policy"] == {"latest": {"num_versions": 1}}

        stats = client.get_inference_statistics("garments")["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [("garments", "2")]
        (stat,) = stats
        assert stat["inference_count"] == 3 and stat["execution_count"] == 1
        assert stat["inference_stats"]["success"]["count"] == 1 and stat["inference_stats"]["success"]["ns"] > 0
        assert stat["batch_stats"][0]["batch_size"] == 3 and stat["batch_stats"][0]["compute_infer"]["count"] == 1
        assert client.get_inference_statistics()["model_stats"] == stats

        index = client.get_model_repository_index()
        assert {(r["name"], r["version"], r["state"]) for r in index} == {
            ("garments", "1", "UNAVAILABLE"),
            ("garments", "2", "READY"),
        }
        client.unload_model("garments")
        assert not client.is_model_ready("garments")
        with pytest.raises(http.InferenceServerException, match="not loaded"):
            client.infer("garments", [_input(images[:1])])
        client.load_model("garments")
        assert client.is_model_ready("garments")
        with pytest.raises(http.InferenceServerException, match="no such folder"):
            client.load_model("nope")


def test_model_metadata_platform_follows_the_loaded_backend() -> None:
    with serving(str(ARTIFACTS / "fmnist_mlp.pt")) as (url, _):
        client = http.InferenceServerClient(url)
        assert client.get_model_metadata(MODEL)["platform"] == "pytorch"
        assert client.get_model_config(MODEL)["platform"] == "pytorch"


def _scrape(url: str) -> dict[str, float]:
    values = {}
    for line in httpx.get(f"http://{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("nv_inference_") and 'model="fmnist_mlp"' in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_two_workers_one_view_monotone_counters_equal_to_requests_sent(images) -> None:
    with serving("--workers", "2") as (url, _):
        sent = 0
        seen: list[float] = []
        success = 'nv_inference_request_success{model="fmnist_mlp",version="1"}'
        for round_ in range(6):
            for i in range(10):  # a new connection each: the kernel spreads them over both workers
                response = httpx.post(f"http://{url}/v2/models/{MODEL}/infer", json=_one_image_logits(images[i]))
                assert response.status_code == 200
                sent += 1
            for _ in range(3):  # several scrapes, answered by either worker
                seen.append(_scrape(url).get(success, 0.0))
            assert seen[-1] == sent, (round_, seen)
        assert seen == sorted(seen), seen
        final = _scrape(url)
        assert final['nv_inference_count{model="fmnist_mlp",version="1"}'] == sent
        assert final['nv_inference_request_duration_us{model="fmnist_mlp",version="1"}'] > 0
        stats = http.InferenceServerClient(url).get_inference_statistics(MODEL)["model_stats"][0]
        assert stats["inference_count"] == sent


def test_request_limits_at_their_edges(images, reference) -> None:
    """Each limit from both sides: the image count (8 here) and one more, N = 0, pixel values 0/255 and -1/256,
    and a body one byte over the byte limit, with and without a Content-Length, against one exactly at it."""
    with serving("--max-request-images", "8") as (url, _):
        infer = f"http://{url}/v2/models/{MODEL}/infer"

        def binary(n: int) -> httpx.Response:
            header = json.dumps(
                {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [n, 28, 28],
                             "parameters": {"binary_data_size": n * 784}}], "outputs": [{"name": "logits"}]}
            ).encode()  # fmt: skip
            x = np.resize(images, (n, 28, 28))
            return httpx.post(
                infer,
                content=header + x.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
                timeout=60,
            )

        at = binary(8)
        assert at.status_code == 200, at.text
        assert np.array_equal(
            np.float32(at.json()["outputs"][0]["data"]).reshape(8, 10), reference.predict(images[:8]).logits
        )
        over = binary(9)
        assert over.status_code == 413 and "9 images in one request; the limit is 8" in over.json()["error"], over.text
        none = binary(0)
        assert none.status_code == 400 and "N >= 1" in none.json()["error"], none.text

        for value, status in ((0, 200), (255, 200), (-1, 400), (256, 400)):
            body = _one_image_logits(images[0])
            body["inputs"][0]["data"][100] = value
            response = httpx.post(infer, json=body, timeout=60)
            assert response.status_code == status, (value, response.text)
            if status == 400:
                assert "integers from 0 to 255" in response.json()["error"], response.text
            else:
                x = images[:1].copy()
                x.reshape(-1)[100] = value
                assert np.array_equal(np.float32(response.json()["outputs"][0]["data"]), reference.predict(x).logits[0])

        # the byte limit for 8 images: 8 x (784 values of up to 4 JSON bytes each + 64) + 1 MiB of slack
        limit = 8 * (784 * 4 + 64) + 2**20
        assert limit == 1_074_176

        def chunks(size: int) -> Iterator[bytes]:
            for start in range(0, size, 65536):
                yield b" " * min(65536, size - start)

        for size, status in ((limit, 400), (limit + 1, 413)):
            with_length = httpx.post(infer, content=b" " * size, timeout=60)
            assert with_length.request.headers["content-length"] == str(size)
            streamed = httpx.post(infer, content=chunks(size), timeout=60)
            assert "content-length" not in streamed.request.headers
            for response in (with_length, streamed):
                assert response.status_code == status, (size, response.text[:200])
                if status == 413:
                    assert f"over the {limit}-byte limit" in response.json()["error"], response.text


# ---- gRPC -------------------------------------------------------------------------------------------


def test_grpc_answers_bit_for_bit_what_http_answers(images, reference) -> None:
    grpc = pytest.importorskip("tritonclient.grpc", reason="the gRPC test needs tritonclient[grpc]")
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    with serving("--grpc-port", "0") as (url, proc):
        g = grpc.InferenceServerClient(_announced_grpc(proc))
        h = http.InferenceServerClient(url)
        assert g.is_server_live() and g.is_server_ready() and g.is_model_ready(MODEL) and not g.is_model_ready("nope")
        meta = g.get_model_metadata(MODEL)
        assert (meta.name, list(meta.versions), meta.platform) == (MODEL, ["1"], "onnxruntime_onnx")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "UINT8", [-1, 28, 28])]
        assert g.get_model_config(MODEL).config == json_format.ParseDict(h.get_model_config(MODEL), mc.ModelConfig())
        x = images[:7]
        tensor = grpc.InferInput("image", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x)
        by_grpc = g.infer(MODEL, [tensor], request_id="g1")
        by_http = h.infer(MODEL, [_input(x)])
        assert by_grpc.get_response().id == "g1"
        for name in ("logits", "probabilities"):
            assert by_grpc.as_numpy(name).tobytes() == by_http.as_numpy(name).tobytes()
            assert np.array_equal(by_grpc.as_numpy(name), getattr(reference.predict(x), name))
        top = g.infer(MODEL, [tensor], outputs=[grpc.InferRequestedOutput("probabilities", class_count=3)])
        top_http = h.infer(MODEL, [_input(x)], outputs=[http.InferRequestedOutput("probabilities", class_count=3)])
        assert top.as_numpy("probabilities").tolist() == top_http.as_numpy("probabilities").tolist()
        stats = g.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == 3 * 7 + 7  # four calls of 7 images, two by each protocol
        with pytest.raises(grpc.InferenceServerException, match="shape"):
            bad = grpc.InferInput("image", [1, 32, 32], "UINT8")
            bad.set_data_from_numpy(np.zeros((1, 32, 32), np.uint8))
            g.infer(MODEL, [bad])
        with pytest.raises(grpc.InferenceServerException, match="unknown model 'nope'"):
            g.get_model_metadata("nope")


def test_grpc_bytes_that_are_no_message_are_invalid_argument_and_unimplemented_methods_say_so() -> None:
    grpc = pytest.importorskip("grpc", reason="the gRPC test needs tritonclient[grpc]")
    from tritonclient.grpc import service_pb2 as pb

    with serving("--grpc-port", "0") as (url, proc):
        with grpc.insecure_channel(_announced_grpc(proc)) as channel:
            raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as refused:
                raw(b"\xff\xff\xff\xff not a protobuf", timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert refused.value.details().startswith("not a ModelInferRequest message")
            status = channel.unary_unary(
                "/inference.GRPCInferenceService/SystemSharedMemoryStatus",
                request_serializer=pb.SystemSharedMemoryStatusRequest.SerializeToString,
            )
            with pytest.raises(grpc.RpcError) as unimplemented:
                status(pb.SystemSharedMemoryStatusRequest(), timeout=30)
            assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED, unimplemented.value
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString,
            )
            assert live(pb.ServerLiveRequest(), timeout=30).live
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]


def test_access_log_as_json_lines_on_standard_output(images) -> None:
    with serving("--access-log", "--access-log-format", "json") as (url, proc):
        assert httpx.post(f"http://{url}/v2/models/{MODEL}/infer", json=_one_image_logits(images[0])).status_code == 200
        assert httpx.get(f"http://{url}/v2/models/nope").status_code == 404
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    wanted = [(r["method"], r["path"], r["status"]) for r in lines if r["path"] != "/v2/health/ready"]
    assert wanted == [("POST", f"/v2/models/{MODEL}/infer", 200), ("GET", "/v2/models/nope", 404)], lines
    assert all(r["client"].startswith("127.0.0.1:") and r["time"] for r in lines)


def test_a_failing_model_is_one_json_500_counted_as_backend(images) -> None:
    from starlette.testclient import TestClient

    from fmnist_deploy.serving.app import ServeConfig, create_app

    app = create_app(ServeConfig(model=str(ARTIFACTS / "fmnist_mlp.onnx"), max_delay_ms=0))
    with TestClient(app, raise_server_exceptions=False) as client:

        def broken(x: np.ndarray):
            raise RuntimeError("device lost")

        app.state.store.find(MODEL, None).batcher.model = broken
        response = client.post(f"/v2/models/{MODEL}/infer", json=_one_image_logits(images[0]))
        assert response.status_code == 500 and response.json() == {
            "error": "the model failed: RuntimeError: device lost"
        }
        metrics = client.get("/metrics").text
        assert 'nv_inference_request_failure{model="fmnist_mlp",reason="BACKEND",version="1"} 1.0' in metrics


def test_a_fault_of_the_server_itself_is_a_json_500_without_its_text() -> None:
    from starlette.testclient import TestClient

    from fmnist_deploy.serving.app import ServeConfig, create_app

    app = create_app(ServeConfig(model=str(ARTIFACTS / "fmnist_mlp.onnx")))
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.metrics = None  # /metrics now fails inside the handler: an AttributeError
        response = client.get("/metrics")
        assert response.status_code == 500 and response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "internal server error (AttributeError); the server's log has the details"}
        assert client.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v2/models/fmnist_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"X" * 70_000,
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    ],
)
def test_requests_the_http_parser_refuses_answer_json_400(server: str, request_bytes: bytes) -> None:
    host, port = server.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(request_bytes)
        s.settimeout(30)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head, answer[:300]
    assert json.loads(body)["error"].startswith("malformed HTTP request")


def test_nothing_outside_the_model_repository_is_loaded_and_odd_names_are_404(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    for name in ("model.onnx", "model.onnx.json"):
        (outside / "1" / name).write_bytes((repository / "garments" / "1" / name).read_bytes())
    for folder, file_name in (("dotdot", "../../../outside/1/model.onnx"), ("absolute", f"{outside}/1/model.onnx")):
        (repository / folder / "1").mkdir(parents=True)
        (repository / folder / "config.pbtxt").write_text(
            f'platform: "onnxruntime_onnx"\ndefault_model_filename: "{file_name}"\n'
        )
    (repository / "linked").symlink_to(outside)  # the model folder a link out of the repository
    (repository / "version_linked").mkdir()
    (repository / "version_linked" / "1").symlink_to(outside / "1")  # a version folder linked out
    with serving("--model-repository", str(repository)) as (url, proc):
        index = httpx.post(f"http://{url}/v2/repository/index", timeout=30).json()
        state = {row["name"]: row["state"] for row in index}
        assert state == {
            "garments": "READY",
            "dotdot": "UNAVAILABLE",
            "absolute": "UNAVAILABLE",
            "linked": "UNAVAILABLE",
            "version_linked": "UNAVAILABLE",
        }, index
        for name in ("dotdot", "absolute", "linked", "version_linked"):
            answer = httpx.post(f"http://{url}/v2/repository/models/{name}/load", timeout=30)
            assert answer.status_code == 400 and "error" in answer.json(), (name, answer.text)
            assert httpx.get(f"http://{url}/v2/models/{name}/ready", timeout=30).status_code != 200
        for name in ("a" * 300, "a%00b", "%2E%2E", "..%2Foutside"):  # too long for the file system, a NUL, traversal
            answer = httpx.post(f"http://{url}/v2/repository/models/{name}/load", timeout=30)
            assert answer.status_code == 404 and "error" in answer.json(), (name, answer.text)
        assert httpx.get(f"http://{url}/v2/health/ready", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]


def _own_torchscript(tmp_path: Path) -> Path:
    """A real TorchScript file of the user's own: the packaged one with other bytes (a trailing byte, which zip
    readers ignore), so it is not trusted by content."""
    from fmnist_deploy.contract import sha256_file
    from fmnist_deploy.trust import packaged_digests

    model = tmp_path / "mine.torchscript"
    model.write_bytes((ARTIFACTS / "fmnist_mlp.torchscript").read_bytes() + b"\0")
    assert sha256_file(model) not in packaged_digests()
    return model


def test_help_lists_the_three_ways_to_trust_a_code_file() -> None:
    from click.testing import CliRunner

    from fmnist_deploy.serving.cli import main as serve_cli

    result = CliRunner().invoke(serve_cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert all(option in result.output for option in ("--trusted-key", "--pin-sha256", "--trust-code"))


def test_an_untrusted_torchscript_is_refused_at_start_and_served_with_trust_code(tmp_path: Path, images) -> None:
    model = _own_torchscript(tmp_path)
    refused = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.serving.cli", str(model), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {model}: "), lines
    assert "not trusted" in lines[0] and all(
        way in lines[0] for way in ("--trusted-key", "--pin-sha256", "--trust-code")
    )
    expected = load(model, trust=Trust(code=True)).predict(images[:4]).logits
    with serving(str(model), "--trust-code") as (url, _):
        client = http.InferenceServerClient(url)
        assert client.get_model_metadata(MODEL)["platform"] == "pytorch_libtorch"
        out = client.infer(MODEL, [_input(images[:4])])
        assert np.allclose(out.as_numpy("logits"), expected, atol=1e-5)


def test_each_worker_process_gets_the_same_trust(tmp_path: Path, monkeypatch) -> None:
    """--workers N hands the configuration to each worker through the environment: the trust goes with it,
    so a worker loads the pinned file the parent loaded (and refuses it without the pin)."""
    from fmnist_deploy.contract import sha256_file
    from fmnist_deploy.runtime import ModelError
    from fmnist_deploy.serving.app import ServeConfig, config_to_environment, from_environment

    model = _own_torchscript(tmp_path)
    trust = Trust(keys=(tmp_path / "key.pub",), pinned=frozenset({sha256_file(model)}))
    config = ServeConfig(model=str(model), workers=2, trust=trust)
    monkeypatch.setenv(*next(iter(config_to_environment(config).items())))
    app = from_environment()
    assert app.state.serve == config and app.state.serve.trust == trust
    assert app.state.store.models[MODEL]["1"].predictor.backend.trusted == "pinned sha256"
    untrusted = ServeConfig(model=str(model), workers=2)
    monkeypatch.setenv(*next(iter(config_to_environment(untrusted).items())))
    with pytest.raises(ModelError, match="not trusted"):
        from_environment()


def test_a_damaged_model_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    """The runtime's error reaches the command's one mapping (launch.Command): one line, exit 1, no traceback."""
    model = tmp_path / "damaged.onnx"
    model.write_bytes(b"not a protobuf at all")
    refused = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.serving.cli", "--model", str(model), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"Error: {model}: not an ONNX model (protobuf: Error parsing message with type 'onnx.ModelProto')"
    ], refused.stderr
    assert refused.stdout == ""
