"""fmnist-serve: an HTTP inference server speaking Triton's / KServe's Open Inference Protocol (v2)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from fmnist_deploy import launch, options
from fmnist_deploy.models import default_model
from fmnist_deploy.runtime import BACKENDS
from fmnist_deploy.trust import Trust, trust_options

ACCEPTED_GRACE_S = 0.5  # at shutdown, how long a connection already accepted has to send its request


def _server_class():
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose graceful shutdown on SIGTERM / SIGINT ends with exit status 0.

        uvicorn re-raises the signal once it has drained the requests in flight, so the
        process would end as killed by SIGTERM; a clean, completed shutdown is a success.
        """

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

        async def shutdown(self, sockets=None) -> None:
            # uvicorn closes at once every connection with no request parsed yet, including one accepted a
            # moment ago whose request is already on its way: the client sees the connection close without an
            # answer (measured: 1 run in 7 of the SIGTERM test). Stop accepting first, let the requests of the
            # connections already accepted arrive, then shut the connections down.
            for server in self.servers:
                server.close()
            await asyncio.sleep(ACCEPTED_GRACE_S)
            await super().shutdown(sockets)

    return Server


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server announces itself: a port in use or a host that does
    not resolve is one line, and `--port 0` announces the port the system chose."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)  # the worker processes serve the same socket
    return sock


@options.command("fmnist-serve")
@options.old_argument("old_model", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@options.model(
    "The model file to serve [default: the packaged file for --backend; fmnist_mlp.onnx for auto].", exists=True
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="A Triton model repository written by `fmnist-export --format triton` (the same folder Triton serves).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@options.backend(BACKENDS)
@options.device()
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per model execution when requests are batched together.",
)
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long the first request of a batch waits for others (0: no dynamic batching).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Requests waiting at most; one more is answered 503 at once.",
)
@click.option(
    "--max-request-images",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Images in one request at most; more is answered 413.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes, each with its own model and batcher.",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve Triton's gRPC service (inference.GRPCInferenceService) on this port, at HOST [default: off].",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Open connections per worker at most; one more is answered 503 and closed.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a client has to send a request's headers (from its first byte, or the connection's opening).",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a client has to send a request's body; slower is answered 408.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds a kept-alive connection may sit idle between requests before it is closed.",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="One line per request on standard output (uvicorn's access log).",
)
@click.option(
    "--access-log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="The access log as uvicorn's text lines or as JSON lines (time, client, method, path, status).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="The server's log level (--access-log lines are shown whatever this says).",
)
@trust_options
def main(
    old_model: Path | None,
    model: Path | None,
    model_repository: Path | None,
    host: str,
    port: int,
    backend: str,
    device: str,
    max_batch: int,
    max_delay_ms: float,
    max_queue: int,
    max_request_images: int,
    workers: int,
    grpc_port: int | None,
    max_connections: int,
    header_timeout: float,
    body_timeout: float,
    idle_timeout: float,
    access_log: bool,
    access_log_format: str,
    log_level: str,
    trust: Trust,
) -> None:
    """Serve --model (default: the packaged fmnist_mlp.onnx) at http://HOST:PORT/v2/models/fmnist_mlp/infer,
    or every model of a Triton model repository (each under its folder's name, the latest version by default).

    A TorchScript / .pt2 file (served alone or from the repository) loads only when trusted:
    --trusted-key, --pin-sha256 or --trust-code, as for fmnist-predict; otherwise one line, exit 1.

    SIGTERM or Ctrl-C stops accepting, answers every request already accepted, then exits.
    """
    from fmnist_deploy.serving.app import ServeConfig, config_to_environment, create_app
    from fmnist_deploy.serving.limits import LimitedConfig, Limits
    from fmnist_deploy.serving.repository import RepositoryError, scan
    from fmnist_deploy.serving.stats import MULTIPROCESS_ENV

    if old_model is not None:
        if model is not None:
            raise click.UsageError(f"give the model once: --model {model} or {old_model}, not both")
        model = old_model
    if model is not None and model_repository is not None:
        raise click.UsageError("give --model or --model-repository, not both")
    if grpc_port == 0 and workers > 1:
        raise click.BadParameter("each worker would get its own port; give a port number", param_hint="--grpc-port")
    if model_repository is not None:
        models = scan(model_repository)
        problems = [f"{name}: {entry}" for name, entry in models.items() if isinstance(entry, RepositoryError)]
        if len(problems) == len(models):
            detail = "; ".join(problems) or "it has no model folder"
            raise click.BadParameter(
                f"{model_repository}: nothing to serve ({detail}); write one with fmnist-export --format triton",
                param_hint="--model-repository",
            )
        for problem in problems:
            click.echo(f"warning: not served: {problem}", err=True)
    config = ServeConfig(
        model=None
        if model_repository
        else str(model or default_model("onnxruntime" if backend == "auto" else backend)),
        model_repository=str(model_repository) if model_repository else None,
        backend=backend,
        device=device,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        max_request_images=max_request_images,
        body_timeout_s=body_timeout,
        workers=workers,
        grpc_host=host,
        grpc_port=grpc_port,
        trust=trust,
    )
    app = create_app(config)  # load (and check) every model before listening; its errors exit as their kind
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    where = f"[{bound_host}]" if sock.family == socket.AF_INET6 else bound_host
    names = sorted(app.state.store.models)
    click.echo(
        f"serving {config.model or config.model_repository} at http://{where}:{bound_port}/v2/models/{names[0]} "
        "(Ctrl-C or SIGTERM stops)",
        err=True,
    )
    for note in app.state.store.notes:  # after the address line too (a missing sidecar, TorchScript's deprecation)
        options.say(f"note: {note}")
    options.detail(f"configuration: {config}")  # after the address line, which scripts read first
    limits = Limits(
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        idle_timeout_s=idle_timeout,
    )
    settings = {
        "log_level": log_level,
        "access_log": access_log,
        "access_log_format": access_log_format,
        "timeout_graceful_shutdown": 30,
        "limits": limits,
    }
    if workers == 1:
        server = _server_class()(LimitedConfig(app, **settings))
        server.run(sockets=[sock])
        if not server.started:
            raise click.ClickException("the server did not start; see the error above")
        options.say("stopped: every accepted request was answered")
    else:
        import tempfile

        from uvicorn.supervisors import Multiprocess

        with tempfile.TemporaryDirectory(prefix="fmnist-serve-metrics-") as shared:
            # every worker writes its counters here, and any worker's /metrics and /stats sum them all
            os.environ[MULTIPROCESS_ENV] = shared
            os.environ.update(config_to_environment(config))
            target = "fmnist_deploy.serving.app:from_environment"
            Multiprocess(LimitedConfig(target, factory=True, workers=workers, **settings), sockets=[sock]).run()


if __name__ == "__main__":
    launch.run(main)
