"""fmnist-serve's HTTP application: the Open Inference Protocol (KServe v2) on Starlette, with dynamic
batching and Prometheus metrics. Run it with uvicorn (`fmnist_deploy.serving.cli`)."""

from __future__ import annotations

import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES, STEM
from fmnist_deploy.serving.batcher import Batcher, BatchStats, QueueFull
from fmnist_deploy.serving.protocol import HEADER_LENGTH, InferRequest, ProtocolError, encode_infer, parse_infer

disable_created_metrics()  # Triton exports no *_created series either
MODEL_NAME = STEM  # the model's name on the wire, as in the Triton model repository
MODEL_VERSION = "1"
CONFIG_ENV = "FMNIST_SERVE_CONFIG"  # how `--workers N` hands the configuration to each worker process


@dataclass(frozen=True)
class ServeConfig:
    """What the server runs and how it batches."""

    model: str
    backend: str = "auto"
    device: str = "cpu"
    max_batch: int = 256
    max_delay_ms: float = 2.0
    max_queue: int = 1024
    max_request_images: int = 4096


class Metrics:
    """Prometheus metrics, named after Triton's where a counterpart exists."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.success = Counter(
            "nv_inference_request_success", "Successful inference requests", labels, registry=self.registry
        )
        self.failure = Counter(
            "nv_inference_request_failure", "Failed inference requests", (*labels, "reason"), registry=self.registry
        )
        self.images = Counter("nv_inference_count", "Images inferred", labels, registry=self.registry)
        self.executions = Counter(
            "nv_inference_exec_count", "Model executions (batches)", labels, registry=self.registry
        )
        self.queue = Histogram(
            "fmnist_queue_duration_seconds",
            "Time a request waited for its batch",
            registry=self.registry,
            buckets=(1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 1),
        )
        self.compute = Histogram(
            "fmnist_compute_duration_seconds",
            "Model time per batch",
            registry=self.registry,
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1),
        )
        self.parse = Histogram(
            "fmnist_parse_duration_seconds",
            "Time to read and parse a request body",
            registry=self.registry,
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1),
        )
        self.serialise = Histogram(
            "fmnist_serialise_duration_seconds",
            "Time to encode a response",
            registry=self.registry,
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1),
        )
        self.batch_size = Histogram(
            "fmnist_batch_size",
            "Images per model execution",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )

    def batch(self, stats: BatchStats) -> None:
        """Record one model execution."""
        self.executions.labels(MODEL_NAME, MODEL_VERSION).inc()
        self.images.labels(MODEL_NAME, MODEL_VERSION).inc(stats.images)
        self.batch_size.observe(stats.images)
        self.compute.observe(stats.compute_seconds)
        for waited in stats.queue_seconds:
            self.queue.observe(waited)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(config: ServeConfig) -> Starlette:
    """The application for one model file; the model loads before the first request is accepted."""
    from fmnist_deploy.runtime import load

    predictor = load(config.model, backend=config.backend, device=config.device)
    metrics = Metrics()
    batcher = Batcher(
        lambda images: predictor.backend.run(images),
        max_batch=config.max_batch,
        max_delay_s=config.max_delay_ms / 1000,
        max_queue=config.max_queue,
        on_batch=metrics.batch,
        arriving=lambda: state["arriving"],
    )
    state = {"ready": False, "arriving": 0}

    @asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False  # SIGTERM: uvicorn stops accepting and waits for the requests in flight
        await batcher.stop()

    def known(request: Request) -> str | None:
        name = request.path_params["model"]
        version = request.path_params.get("version", MODEL_VERSION)
        if name != MODEL_NAME or version != MODEL_VERSION:
            return f"unknown model {name!r} version {version!r}; this server has {MODEL_NAME!r} version {MODEL_VERSION}"
        return None

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(
            {
                "name": "fmnist-deploy",
                "version": metadata.version("fmnist-deploy"),
                "extensions": ["binary_tensor_data", "classification", "statistics"],
            }
        )

    async def model_metadata(request: Request) -> Response:
        if (problem := known(request)) is not None:
            return _error(problem, 404)
        return JSONResponse(
            {
                "name": MODEL_NAME,
                "versions": [MODEL_VERSION],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}],
                "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, N_CLASSES]} for name in OUTPUT_NAMES],
            }
        )

    async def model_ready(request: Request) -> Response:
        if (problem := known(request)) is not None:
            return _error(problem, 404)
        return JSONResponse({"name": MODEL_NAME, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def infer(request: Request) -> Response:
        def failed(reason: str, message: str, status: int) -> Response:
            metrics.failure.labels(MODEL_NAME, MODEL_VERSION, reason).inc()
            return _error(message, status)

        if (problem := known(request)) is not None:
            return failed("unknown_model", problem, 404)

        async def read_request() -> InferRequest | Response:
            limit = config.max_request_images * (28 * 28 * 4 + 64) + (1 << 20)  # JSON digits at their widest
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return failed("too_large", f"request body of {declared} bytes is over the {limit}-byte limit", 413)
            started = time.perf_counter()
            body = await request.body()
            if len(body) > limit:
                return failed("too_large", f"request body of {len(body)} bytes is over the {limit}-byte limit", 413)
            try:
                parsed = parse_infer(body, request.headers.get(HEADER_LENGTH), config.max_request_images)
            except ProtocolError as exc:
                return failed("bad_request", str(exc), exc.status)
            metrics.parse.observe(time.perf_counter() - started)
            return parsed

        state["arriving"] += 1  # until it is queued: the batcher may wait for it
        try:
            parsed = await read_request()
        finally:
            state["arriving"] -= 1
        if isinstance(parsed, Response):
            return parsed
        try:
            logits, probs = await batcher.infer(parsed.images)
        except QueueFull as exc:
            return failed("overloaded", f"server overloaded: {exc}; retry later", 503)
        started = time.perf_counter()
        payload, header = encode_infer(MODEL_NAME, MODEL_VERSION, parsed, logits, probs, predictor.class_names)
        metrics.serialise.observe(time.perf_counter() - started)
        metrics.success.labels(MODEL_NAME, MODEL_VERSION).inc()
        if header is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header)})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/metrics", prometheus),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return app


def model_from_repository(repository: Path) -> Path:
    """The ONNX file of a Triton model repository written by `fmnist-export --format triton`."""
    return repository / MODEL_NAME / MODEL_VERSION / "model.onnx"  # Triton's layout: name/version/model.onnx


def from_environment() -> Starlette:
    """uvicorn factory for `--workers N`: each worker process builds the app from the CLI's configuration."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def config_to_environment(config: ServeConfig) -> dict[str, str]:
    """The environment entry that `from_environment` reads."""
    return {CONFIG_ENV: json.dumps(asdict(config))}
