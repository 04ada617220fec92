"""fmnist-serve's HTTP application: the Open Inference Protocol (KServe v2) as Triton serves it, on
Starlette, with dynamic batching, Triton's statistics / model configuration / model repository
extensions and Prometheus metrics. Run it with uvicorn (`fmnist_deploy.serving.cli`).

The server holds `ServedModel`s (a Predictor, its description and its batcher), one per model version;
each endpoint is a small function of the request and that store. Every answer that is not a success is
`{"error": "..."}` with Triton's status codes: 400 a request the model cannot take, 404 an unknown model,
route or output, 405 a method a route does not take, 408 / 413 a body too slow / too large, 503 overload.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES, STEM
from fmnist_deploy.errors import InputError
from fmnist_deploy.serving.batcher import Batcher, QueueFull
from fmnist_deploy.serving.limits import BodyError, read_body
from fmnist_deploy.serving.protocol import HEADER_LENGTH, ProtocolError, encode_infer, parse_infer
from fmnist_deploy.serving.repository import (
    ModelFolder,
    RepositoryError,
    config_json,
    read_model,
    scan,
    single_file_config,
)
from fmnist_deploy.serving.stats import CONTENT_TYPE, Metrics
from fmnist_deploy.trust import Trust

MODEL_NAME = STEM  # the name a single served file gets on the wire, as in the Triton model repository
MODEL_VERSION = "1"
CONFIG_ENV = "FMNIST_SERVE_CONFIG"  # how `--workers N` hands the configuration to each worker process
OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are parsed in a thread, so the event loop keeps answering
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"]


@dataclass(frozen=True)
class ServeConfig:
    """What the server runs and how it batches."""

    model: str | None = None  # one model file, served as fmnist_mlp version 1
    model_repository: str | None = None  # or a Triton model repository: every model, versions by policy
    backend: str = "auto"
    device: str = "cpu"
    max_batch: int = 256
    max_delay_ms: float = 2.0
    max_queue: int = 1024
    max_request_images: int = 4096
    body_timeout_s: float = 30.0
    workers: int = 1
    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = None  # Triton's gRPC service on this port too (0: the system picks one)
    trust: Trust = Trust()  # which code-carrying files (TorchScript, .pt2) load: every load, every worker

    @cached_property
    def body_limit(self) -> int:
        """Bytes of a request body at most: the largest request in JSON, digits at their widest, plus slack."""
        return self.max_request_images * (IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * 4 + 64) + (1 << 20)


class NotFound(InputError):
    """An unknown model or version: 404. The message names only what was asked for."""


class ServedModel:
    """One version of one model: its Predictor, what describes it, its configuration and its batcher."""

    def __init__(self, name: str, version: str, predictor: Any, config: Any, serve: ServeConfig, metrics: Metrics):
        self.name, self.version, self.predictor = name, version, predictor
        self.description = predictor.describe()
        self.config = config
        self.arriving = 0  # requests accepted but not queued yet (read or parsed): the batcher may wait for them
        self.batcher = Batcher(
            predictor.run,
            max_batch=serve.max_batch,
            max_delay_s=serve.max_delay_ms / 1000,
            max_queue=serve.max_queue,
            on_batch=lambda stats: metrics.batch(name, version, stats),
            arriving=lambda: self.arriving,
        )
        self.ready = False

    def start(self) -> None:
        """Start the batcher on the running event loop and take requests."""
        self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        """Stop taking requests, answer the ones already queued."""
        self.ready = False
        await self.batcher.stop()

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        """The model metadata endpoint's answer; the platform is that of the backend actually loaded."""
        return {
            "name": self.name,
            "versions": versions,
            "platform": self.description.platform,
            "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}],
            "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, N_CLASSES]} for name in OUTPUT_NAMES],
        }


class ModelStore:
    """The models this server serves, by name then version; loads and unloads from the repository."""

    def __init__(self, serve: ServeConfig, metrics: Metrics) -> None:
        self.serve, self.metrics = serve, metrics
        self.repository = Path(serve.model_repository) if serve.model_repository else None
        self.models: dict[str, dict[str, ServedModel]] = {}
        self.unloaded: set[str] = set()
        self.lock = asyncio.Lock()
        self.notes: list[str] = []  # the warnings loading raised, one line each (the CLI prints them once)

    def load_all(self) -> None:
        """At start-up, before listening: the single file, or every readable model of the repository."""
        if self.repository is None:
            served = self._open_file(Path(self.serve.model), MODEL_NAME, MODEL_VERSION, None)
            self.models[MODEL_NAME] = {MODEL_VERSION: served}
            return
        for name, entry in scan(self.repository).items():
            if isinstance(entry, ModelFolder):
                self.models[name] = self._open(entry)

    def _open(self, entry: ModelFolder) -> dict[str, ServedModel]:
        return {v: self._open_file(entry.versions[v], entry.name, v, entry.config) for v in entry.selected}

    def _open_file(self, path: Path, name: str, version: str, config: Any) -> ServedModel:
        from fmnist_deploy.runtime import load

        with warnings.catch_warnings(record=True) as caught:  # one line each, as fmnist-predict's notes
            warnings.simplefilter("always")
            predictor = load(path, backend=self.serve.backend, device=self.serve.device, trust=self.serve.trust)
        for note in (str(w.message).splitlines()[0] for w in caught):
            if note not in self.notes:
                self.notes.append(note)
        if config is None or not config.input or not config.output:  # a single file, or a configuration without
            # its tensors: Triton's auto-completed configuration, from what the loaded file is (the repository has
            # checked that the tensors a configuration declares are the model's)
            platform = predictor.describe().platform
            completed = single_file_config(name, platform, self.serve.max_request_images, self.serve.max_delay_ms)
            if config is not None:
                for section in ("input", "output"):
                    if getattr(config, section):
                        completed.ClearField(section)
                completed.MergeFrom(config)
            config = completed
        return ServedModel(name, version, predictor, config, self.serve, self.metrics)

    def all_served(self) -> list[ServedModel]:
        """Every served model version."""
        return [served for versions in self.models.values() for served in versions.values()]

    def find(self, name: str, version: str | None) -> ServedModel:
        """The version asked for, or the highest served version of the model."""
        versions = self.models.get(name)
        if not versions:
            known = ", ".join(repr(n) for n in sorted(self.models)) or "none"
            state = "is not loaded" if name in self.unloaded else "is not found"
            raise NotFound(f"unknown model {name!r}: it {state}; models ready: {known}")
        if version is None:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise NotFound(
                f"unknown version {version!r} of model {name!r}; served versions: {', '.join(sorted(versions, key=int))}"
            )
        return versions[version]

    def index(self) -> list[dict[str, str]]:
        """The repository extension's index: every model version in the repository and its state."""
        if self.repository is None:
            return [{"name": s.name, "version": s.version, "state": "READY", "reason": ""} for s in self.all_served()]
        rows = []
        for name, entry in scan(self.repository).items():
            served = self.models.get(name, {})
            if isinstance(entry, RepositoryError):
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": str(entry)})
                continue
            for version in sorted(entry.versions, key=int):
                if version in served:
                    rows.append({"name": name, "version": version, "state": "READY", "reason": ""})
                else:
                    reason = "unloaded" if name in self.unloaded else "not selected by the version policy"
                    rows.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
        return rows

    async def load(self, name: str) -> None:
        """(Re)load a model from the repository: the new versions are ready before the old ones stop."""
        from fmnist_deploy.runtime import RuntimeFailure

        self._can_control()

        folder = self.repository / name
        try:
            is_folder = folder.is_dir()
        except (OSError, ValueError):  # a name too long for the file system, or one it cannot hold
            is_folder = False
        if not is_folder or name.startswith(".") or folder.parent != self.repository:
            raise NotFound(f"unknown model {name!r}: no such folder in the model repository")
        loop = asyncio.get_running_loop()
        async with self.lock:
            try:
                fresh = await loop.run_in_executor(None, lambda: self._open(read_model(folder)))
            except (RepositoryError, RuntimeFailure, OSError) as exc:
                raise ProtocolError(f"failed to load {name!r}: {exc}") from None
            for served in fresh.values():
                served.start()
            old = self.models.get(name, {})
            self.models[name] = fresh
            self.unloaded.discard(name)
            for served in old.values():
                await served.stop()

    async def unload(self, name: str) -> None:
        """Stop serving a model: requests already queued are answered, new ones get 404."""
        self._can_control()
        async with self.lock:
            if name not in self.models:
                raise NotFound(f"unknown model {name!r}: it is not loaded")
            old = self.models.pop(name)
            self.unloaded.add(name)
            for served in old.values():
                await served.stop()

    def _can_control(self) -> None:
        if self.repository is None:
            raise ProtocolError("this server serves one model file; start it with --model-repository to load models")
        if self.serve.workers > 1:
            raise ProtocolError("loading and unloading need --workers 1: each worker process holds its own models")


# ---- answers -------------------------------------------------------------------------------------


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json", headers=headers)


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


def _store(request: Request) -> ModelStore:
    return request.app.state.store


def _served(request: Request) -> ServedModel:
    return _store(request).find(request.path_params["model"], request.path_params.get("version"))


# ---- endpoints -----------------------------------------------------------------------------------


async def live(request: Request) -> Response:
    """GET /v2/health/live."""
    return _json({"live": True})


async def ready(request: Request) -> Response:
    """GET /v2/health/ready: 503 while starting or stopping."""
    is_ready = request.app.state.ready
    return _json({"ready": is_ready}, 200 if is_ready else 503)


async def server_metadata(request: Request) -> Response:
    """GET /v2: name, version and the protocol extensions served."""
    return _json({"name": "fmnist-deploy", "version": metadata.version("fmnist-deploy"), "extensions": EXTENSIONS})


async def model_metadata(request: Request) -> Response:
    """GET /v2/models/{m}[/versions/{v}]."""
    served = _served(request)
    versions = sorted(_store(request).models[served.name], key=int)
    return _json(served.metadata(versions))


async def model_ready(request: Request) -> Response:
    """GET .../ready: 200 when the version takes requests, 400 otherwise (as Triton)."""
    served = _served(request)
    if not served.ready:
        return _error(f"model {served.name!r} version {served.version!r} is not ready", 400)
    return _json({"name": served.name, "version": served.version, "ready": True})


async def model_config(request: Request) -> Response:
    """GET .../config: the model configuration as Triton's JSON."""
    return _json(config_json(_served(request).config))


async def model_stats(request: Request) -> Response:
    """GET /v2/models[/{m}[/versions/{v}]]/stats: the statistics extension."""
    store, name = _store(request), request.path_params.get("model")
    if name is None:
        wanted = [(s.name, s.version) for s in store.all_served()]
    elif "version" in request.path_params:
        served = store.find(name, request.path_params["version"])
        wanted = [(served.name, served.version)]
    else:
        store.find(name, None)
        wanted = [(name, version) for version in sorted(store.models[name], key=int)]
    return _json(request.app.state.metrics.statistics(wanted))


async def repository_index(request: Request) -> Response:
    """POST /v2/repository/index: every model version of the repository and its state."""
    body = await read_body(request, 1 << 16, request.app.state.serve.body_timeout_s)
    options = _parse_object(body)
    only_ready = options.get("ready", False)
    if not isinstance(only_ready, bool):
        raise ProtocolError(f"ready {only_ready!r}: expected true or false")
    rows = _store(request).index()
    return _json([r for r in rows if r["state"] == "READY"] if only_ready else rows)


async def repository_load(request: Request) -> Response:
    """POST /v2/repository/models/{m}/load: load or reload a model."""
    _parse_object(await read_body(request, 1 << 16, request.app.state.serve.body_timeout_s))
    await _store(request).load(request.path_params["model"])
    return Response(status_code=200)


async def repository_unload(request: Request) -> Response:
    """POST /v2/repository/models/{m}/unload."""
    _parse_object(await read_body(request, 1 << 16, request.app.state.serve.body_timeout_s))
    await _store(request).unload(request.path_params["model"])
    return Response(status_code=200)


def _parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError("the request body must be a JSON object")
    return document


async def prometheus(request: Request) -> Response:
    """GET /metrics: Triton's metric names, summed over the worker processes."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)


async def infer(request: Request) -> Response:
    """Read and parse (off the event loop when large), queue for a batch, encode; every step is timed."""
    arrived = time.perf_counter()
    served = _served(request)
    state, metrics = request.app.state, request.app.state.metrics
    if not served.ready:
        return _error(f"model {served.name!r} version {served.version!r} is not ready", 400)

    def failed(reason: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
        metrics.failed(served.name, served.version, reason, time.perf_counter() - arrived)
        return _error(message, status, headers)

    pending = metrics.bound(served.name, served.version).pending
    pending.inc()
    served.arriving += 1  # until it is queued: the batcher may wait for it
    try:
        try:
            body = await read_body(request, state.serve.body_limit, state.serve.body_timeout_s)
            header = request.headers.get(HEADER_LENGTH)
            limit = state.serve.max_request_images
            if len(body) > OFF_LOOP_BYTES:
                parsed = await asyncio.get_running_loop().run_in_executor(
                    state.parsers, parse_infer, body, header, limit
                )
            else:
                parsed = parse_infer(body, header, limit)
        except BodyError as exc:  # the rest of the body is not read: the connection closes after the answer
            return failed("OTHER", str(exc), exc.status, {"connection": "close"})
        except ProtocolError as exc:
            return failed("OTHER", str(exc), exc.status)
        finally:
            served.arriving -= 1
        parsed_at = time.perf_counter()
        try:
            answer = await served.batcher.infer(parsed.images)
        except QueueFull as exc:
            return failed("REJECTED", f"server overloaded: {exc}; retry later", 503)
        except Exception as exc:  # noqa: BLE001 - a failing model is the server's fault: 500, counted, one line
            return failed("BACKEND", f"the model failed: {type(exc).__name__}: {exc}", 500)
        encode_started = time.perf_counter()
        payload, split = encode_infer(
            served.name, served.version, parsed, answer.logits, answer.probabilities, served.predictor.class_names
        )
        done = time.perf_counter()
        metrics.succeeded(
            served.name,
            served.version,
            len(parsed.images),
            {
                "request": done - arrived,
                "queue": answer.queue_seconds,
                "compute_input": parsed_at - arrived,
                "compute_infer": answer.compute_seconds,
                "compute_output": done - encode_started,
            },
        )
    finally:
        pending.dec()
    if split is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(split)})


# ---- errors --------------------------------------------------------------------------------------


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(str(exc), 404)


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(str(exc), getattr(exc, "status", 400))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # A fault of the server itself: JSON as every answer, without the exception's text (its traceback is logged)
    return _error(f"internal server error ({type(exc).__name__}); the server's log has the details", 500)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: f"no route {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    return _error(messages.get(exc.status_code, exc.detail), exc.status_code, exc.headers)


MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"
ROUTES = [  # the infer routes first: every route before them is a regex tried on every request
    Route(f"{MODEL}/infer", infer, methods=["POST"]),
    Route(f"{VERSION}/infer", infer, methods=["POST"]),
    Route("/v2/health/live", live),
    Route("/v2/health/ready", ready),
    Route("/v2", server_metadata),
    Route("/v2/models/stats", model_stats),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
    Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
    *(
        route
        for base in (MODEL, VERSION)
        for route in (
            Route(base, model_metadata),
            Route(f"{base}/ready", model_ready),
            Route(f"{base}/config", model_config),
            Route(f"{base}/stats", model_stats),
        )
    ),
    Route("/metrics", prometheus),
]


def create_app(config: ServeConfig) -> Starlette:
    """The application; every model loads (and is checked) before the first request is accepted."""
    metrics = Metrics()
    store = ModelStore(config, metrics)
    store.load_all()

    @asynccontextmanager
    async def lifespan(app: Starlette):
        for served in store.all_served():
            served.start()
        grpc_server = None
        if config.grpc_port is not None:
            from fmnist_deploy.serving import grpc_service

            grpc_server, port = await grpc_service.start(app, config.grpc_host, config.grpc_port)
            print(f"gRPC at {config.grpc_host}:{port}", file=sys.stderr, flush=True)  # the port, when 0 was asked
        app.state.ready = True
        yield
        app.state.ready = False  # SIGTERM: uvicorn stops accepting and waits for the requests in flight
        if grpc_server is not None:
            await grpc_server.stop(grace=30)  # answers the calls in flight, refuses new ones
        for served in store.all_served():
            await served.stop()
        app.state.parsers.shutdown(wait=False)

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            NotFound: _not_found,
            ProtocolError: _bad_request,
            BodyError: _bad_request,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.serve = config
    app.state.store = store
    app.state.metrics = metrics
    app.state.ready = False
    app.state.parsers = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="parse")
    return app


def from_environment() -> Starlette:
    """uvicorn factory for `--workers N`: each worker process builds the app from the CLI's configuration."""
    document = json.loads(os.environ[CONFIG_ENV])
    trust = document.pop("trust")
    trust = Trust(tuple(Path(k) for k in trust["keys"]), frozenset(trust["pinned"]), bool(trust["code"]))
    return create_app(ServeConfig(**document, trust=trust))


def config_to_environment(config: ServeConfig) -> dict[str, str]:
    """The environment entry that `from_environment` reads (the trust included: each worker loads its model)."""
    document = asdict(config)
    document["trust"] = {
        "keys": [str(k) for k in config.trust.keys],
        "pinned": sorted(config.trust.pinned),
        "code": config.trust.code,
    }
    return {CONFIG_ENV: json.dumps(document)}
