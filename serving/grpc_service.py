"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`, Triton's), served from the
same models, batchers and counters as HTTP, on the same event loop: ServerLive / ServerReady /
ServerMetadata, ModelReady, ModelMetadata, ModelConfig, ModelStatistics, ModelInfer (tensors as
`raw_input_contents` or typed `contents`; outputs as `raw_output_contents`, as Triton answers) and the
repository extension. The message classes and the service registration are the stubs `tritonclient`
ships (`tritonclient.grpc.service_pb2[_grpc]`), so the wire format is Triton's own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from fmnist_deploy.contract import IMAGE_SHAPE, INPUT_NAME, N_CLASSES, OUTPUT_NAMES
from fmnist_deploy.serving.batcher import QueueFull
from fmnist_deploy.serving.protocol import (
    InferRequest,
    ProtocolError,
    Requested,
    check_input,
    output_tensor,
    requested_output,
)

MAX_MESSAGE_BYTES = 64 << 20  # gRPC's own default is 4 MiB; the largest request at the default 4 096 images is 3.2 MB


def _parameter(value: Any) -> Any:
    """An InferParameter's value, whichever of its oneof fields is set."""
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def parse_grpc(request: Any, max_images: int) -> InferRequest:
    """A ModelInferRequest -> InferRequest, with the same checks and messages as the HTTP path."""
    if len(request.inputs) != 1:
        raise ProtocolError(f"expected exactly one input named {INPUT_NAME!r}")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    expected = check_input(tensor.name, tensor.datatype, shape, max_images)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or len(request.raw_input_contents[0]) != expected:
            sizes = [len(raw) for raw in request.raw_input_contents]
            raise ProtocolError(f"input {INPUT_NAME!r}: raw contents of {sizes} bytes; shape {shape} needs {expected}")
        images = np.frombuffer(request.raw_input_contents[0], dtype=np.uint8).reshape(shape)
    else:
        values = np.asarray(tensor.contents.uint_contents, dtype=np.int64)
        if values.size != expected or (values.size and int(values.max()) > 255):
            raise ProtocolError(
                f"input {INPUT_NAME!r}: {values.size} uint_contents values (0 to 255) for shape {shape}, "
                f"which needs {expected}"
            )
        images = values.astype(np.uint8).reshape(shape)
    if request.outputs:
        outputs = [
            requested_output(
                o.name, _parameter(o.parameters["classification"]) if "classification" in o.parameters else 0, True
            )
            for o in request.outputs
        ]
    else:
        outputs = [Requested(name, True) for name in OUTPUT_NAMES]
    return InferRequest(images, outputs, request.id or None)


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's gRPC service over the application's ModelStore and Metrics."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def store(self) -> Any:
        """The application's ModelStore (replaced models are seen at once)."""
        return self.app.state.store

    async def _served(self, name: str, version: str, context: Any) -> Any:
        from fmnist_deploy.serving.app import NotFound

        try:
            return self.store.find(name, version or None)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the protocol's method names
        """Always live while it answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Ready between start-up and shutdown."""
        return pb.ServerReadyResponse(ready=bool(self.app.state.ready))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Name, version and extensions, as GET /v2 answers them."""
        from importlib import metadata

        from fmnist_deploy.serving.app import EXTENSIONS

        return pb.ServerMetadataResponse(
            name="fmnist-deploy", version=metadata.version("fmnist-deploy"), extensions=EXTENSIONS
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Whether the model (version) takes requests; an unknown one is not ready."""
        from fmnist_deploy.serving.app import NotFound

        try:
            served = self.store.find(request.name, request.version or None)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=served.ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        """The same metadata as HTTP: versions, the loaded backend's platform, inputs and outputs."""
        served = await self._served(request.name, request.version, context)
        versions = sorted(self.store.models[served.name], key=int)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=versions,
            platform=served.description.platform,
            inputs=[tensor(name=INPUT_NAME, datatype="UINT8", shape=[-1, *IMAGE_SHAPE])],
            outputs=[tensor(name=name, datatype="FP32", shape=[-1, N_CLASSES]) for name in OUTPUT_NAMES],
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        """The model configuration, the same message the HTTP /config endpoint renders as JSON."""
        served = await self._served(request.name, request.version, context)
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(served.config)
        return response

    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        """The statistics extension, from the same counters as HTTP /stats and /metrics."""
        store = self.store
        if not request.name:
            wanted = [(s.name, s.version) for s in store.all_served()]
        elif request.version:
            served = await self._served(request.name, request.version, context)
            wanted = [(served.name, served.version)]
        else:
            await self._served(request.name, "", context)
            wanted = [(request.name, v) for v in sorted(store.models[request.name], key=int)]
        document = self.app.state.metrics.statistics(wanted)
        return json_format.ParseDict(document, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Every model version of the repository and its state."""
        rows = [r for r in self.store.index() if r["state"] == "READY" or not request.ready]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Load or reload a model of the repository."""
        await self._control(self.store.load, request.model_name, context)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Unload a model."""
        await self._control(self.store.unload, request.model_name, context)
        return pb.RepositoryModelUnloadResponse()

    async def _control(self, action: Any, name: str, context: Any) -> None:
        from fmnist_deploy.serving.app import NotFound

        try:
            await action(name)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Parse, queue for a batch with the HTTP requests, answer raw little-endian outputs."""
        arrived = time.perf_counter()
        served = await self._served(request.model_name, request.model_version, context)
        metrics = self.app.state.metrics
        if not served.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {served.name!r} is not ready")
        try:
            parsed = parse_grpc(request, self.app.state.serve.max_request_images)
        except ProtocolError as exc:
            metrics.failed(served.name, served.version, "OTHER", time.perf_counter() - arrived)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        parsed_at = time.perf_counter()
        try:
            answer = await served.batcher.infer(parsed.images)
        except QueueFull as exc:
            metrics.failed(served.name, served.version, "REJECTED", time.perf_counter() - arrived)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"server overloaded: {exc}; retry later")
        except Exception as exc:  # noqa: BLE001 - a failing model: INTERNAL, counted, one line
            metrics.failed(served.name, served.version, "BACKEND", time.perf_counter() - arrived)
            await context.abort(grpc.StatusCode.INTERNAL, f"the model failed: {type(exc).__name__}: {exc}")
        encode_started = time.perf_counter()
        response = pb.ModelInferResponse(model_name=served.name, model_version=served.version, id=request.id)
        for want in parsed.outputs:
            datatype, shape, raw, _ = output_tensor(
                want, answer.logits, answer.probabilities, served.predictor.class_names
            )
            response.outputs.add(name=want.name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
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
        return response


def handlers(service: InferenceService) -> Any:
    """The service's unary methods, registered as the stubs would but each parsing its own request: bytes that
    are not the method's message answer INVALID_ARGUMENT (grpc's own deserialiser answers UNKNOWN). A method the
    service does not implement (shared memory, tracing, the streaming ModelStreamInfer) answers UNIMPLEMENTED."""
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {}
    for method in descriptor.methods:
        if method.client_streaming or method.server_streaming or method.name not in vars(InferenceService):
            continue
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        methods[method.name] = grpc.unary_unary_rpc_method_handler(
            partial(_parsed, getattr(service, method.name), request),
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, methods)


async def _parsed(method: Callable[[Any, Any], Awaitable[Any]], message: Any, data: bytes, context: Any) -> Any:
    try:
        request = message.FromString(data)
    except DecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {message.DESCRIPTOR.name} message: {exc}")
    return await method(request, context)


async def start(app: Any, host: str, port: int) -> tuple[Any, int]:
    """A grpc.aio server for the application on the running event loop; returns it and the bound port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    server.add_generic_rpc_handlers((handlers(InferenceService(app)),))
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound
