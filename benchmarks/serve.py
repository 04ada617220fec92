"""Load benchmark of fmnist-serve in the manner of Triton's perf_analyzer: closed-loop clients at several
concurrencies and request sizes, each cell bounded in time and count, loopback only; requests in Triton's
binary tensor extension and in the protocol's plain JSON; the same model behind a minimal FastAPI
endpoint (`session.run` per request, JSON) measured in the same run.

Load comes from wrk (one C thread), so the clients take as little as possible of the cores they
share with the servers; the numbers are ratios of one run.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from fmnist_deploy.machine import environment

MODEL = "fmnist_mlp"
HEADER = "Inference-Header-Content-Length"
PEER = """
import sys, numpy as np, onnxruntime as ort, uvicorn
from fastapi import FastAPI, Request
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
app = FastAPI()

@app.post("/predict")
async def predict(request: Request):
    body = await request.json()
    images = np.asarray(body["image"], dtype=np.uint8)
    logits, probabilities = session.run(None, {"image": images})
    return {"probabilities": probabilities.tolist()}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _process(args: list[str], ready_url: str) -> Iterator[subprocess.Popen]:
    import httpx

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            httpx.get(ready_url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _json_request(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The protocol's own JSON form, as a KServe / MLServer client sends it: a flat list of pixel values."""
    tensor = {"name": "image", "datatype": "UINT8", "shape": list(images.shape), "data": images.reshape(-1).tolist()}
    body = json.dumps({"inputs": [tensor], "outputs": [{"name": "probabilities"}]}).encode()
    return body, {"Content-Type": "application/json"}


def _binary_request(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": list(images.shape),
                    "parameters": {"binary_data_size": images.size},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + images.tobytes(), {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


REQUESTS = {"binary": _binary_request, "json": _json_request}  # encoding -> request builder

WRK_SCRIPT = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE")
local split = os.getenv("HEADER_LENGTH")
if split ~= "" then wrk.headers["Inference-Header-Content-Length"] = split end
"""


def _cell(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, scratch: Path
) -> dict[str, float]:
    """Closed loop with wrk (one client thread, `concurrency` connections): a C load generator, so the
    clients take as little as possible of the cores the servers need."""
    import os

    (scratch / "body.bin").write_bytes(body)
    (scratch / "post.lua").write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "BODY_FILE": str(scratch / "body.bin"),
        "CONTENT_TYPE": headers["Content-Type"],
        "HEADER_LENGTH": headers.get(HEADER, ""),
    }
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(scratch / "post.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
        check=True,
    )
    return _parse_wrk(result.stdout)


GRPC_LOAD = """
import asyncio, json, sys, time
import grpc
import numpy as np

target, body_file, concurrency, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
body = open(body_file, "rb").read()

async def main():
    latencies, failures = [], 0
    async with grpc.aio.insecure_channel(target) as channel:
        # the request pre-serialised: the client spends no time in protobuf per call
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        await call(body)  # connected and warm
        end = time.perf_counter() + seconds

        async def client():
            nonlocal failures
            while time.perf_counter() < end:
                started = time.perf_counter_ns()
                try:
                    await call(body)
                except grpc.aio.AioRpcError:
                    failures += 1
                    continue
                latencies.append(time.perf_counter_ns() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies, dtype=np.float64) / 1e6
    print(json.dumps({
        "requests": len(latencies), "requests_per_s": len(latencies) / elapsed, "failures": failures,
        "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
    }))

asyncio.run(main())
"""


def _grpc_cell(port: int, images: np.ndarray, concurrency: int, seconds: float, scratch: Path) -> dict[str, float]:
    """Closed loop over gRPC with grpc.aio clients in one Python process (no C gRPC load generator here):
    the request is serialised once, as tritonclient.grpc would build it (raw_input_contents)."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(images.tobytes())
    (scratch / "grpc.bin").write_bytes(request.SerializeToString())
    command = [sys.executable, "-c", GRPC_LOAD, f"127.0.0.1:{port}", str(scratch / "grpc.bin"), str(concurrency)]
    result = subprocess.run([*command, str(seconds)], capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(result.stdout)


def _milliseconds(text: str) -> float:
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(f"unexpected wrk latency {text!r}")


def _parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, latency percentiles and failures from wrk's report."""
    stats: dict[str, float] = {"failures": 0.0}
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            stats["requests_per_s"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            stats[f"p{parts[0][:-1]}_ms"] = _milliseconds(parts[1])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            stats["failures"] += float(parts[-1])
        elif "requests in" in line:
            stats["requests"] = float(parts[0])
    if "p90_ms" not in stats and "p99_ms" in stats:
        stats["p90_ms"] = float("nan")
    return stats


def _metric_sums(base: str) -> dict[str, float]:
    """Each counter of /metrics summed over its labels: Triton's nv_inference_* and the per-batch-size ones."""
    import httpx

    sums: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(("nv_inference_", "fmnist_batch_")):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0]
            sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def measure(
    model: Path,
    images: np.ndarray,
    *,
    concurrencies: tuple[int, ...] = (1, 4, 16, 64),
    sizes: tuple[int, ...] = (1, 32),
    seconds: float = 3.0,
) -> dict[str, Any]:
    """Every server x concurrency x request size; observed batch sizes and a time profile from /metrics.

    wrk counts its duration in whole seconds: `seconds` is rounded to them (at least 1), and the report
    records the duration each cell really ran."""
    seconds = max(1, round(seconds))
    if shutil.which("wrk") is None:
        raise FileNotFoundError("the serving benchmark drives load with wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as folder:
        return _measure(model, images, concurrencies, sizes, seconds, Path(folder))


def _measure(
    model: Path,
    images: np.ndarray,
    concurrencies: tuple[int, ...],
    sizes: tuple[int, ...],
    seconds: float,
    scratch: Path,
) -> dict[str, Any]:
    # server -> (its options, the encodings measured on it)
    grpc_port = _free_port()
    servers = {
        "fmnist-serve (dynamic batching)": (
            ["--max-delay-ms", "2", "--max-batch", "256", "--grpc-port", str(grpc_port)],
            ("binary", "json", "grpc"),
        ),
        "fmnist-serve (batching off)": (["--max-delay-ms", "0", "--max-batch", "1"], ("binary",)),
    }
    cells = []
    for label, (options, encodings) in servers.items():
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "fmnist_deploy.serving.cli",
            "--model",
            str(model),
            "--port",
            str(port),
            *options,
        ]
        with _process(command, f"{base}/v2/health/ready"):
            for encoding in encodings:
                for size in sizes:
                    for concurrency in concurrencies:
                        before = _metric_sums(base)
                        if encoding == "grpc":
                            stats = _grpc_cell(grpc_port, images[:size], concurrency, seconds, scratch)
                        else:
                            body, headers = REQUESTS[encoding](images[:size])
                            url = f"{base}/v2/models/{MODEL}/infer"
                            stats = _cell(url, body, headers, concurrency, seconds, scratch)
                        after = _metric_sums(base)
                        cells.append(_summary(label, encoding, size, concurrency, stats, before, after))
    port = _free_port()
    peer = "naive FastAPI peer (session.run per request, JSON)"
    with _process([sys.executable, "-c", PEER, str(model), str(port)], f"http://127.0.0.1:{port}/docs"):
        for size in sizes:
            body = json.dumps({"image": images[:size].tolist()}).encode()
            for concurrency in concurrencies:
                headers = {"Content-Type": "application/json"}
                stats = _cell(f"http://127.0.0.1:{port}/predict", body, headers, concurrency, seconds, scratch)
                cells.append(_summary(peer, "json", size, concurrency, stats, {}, {}))
    return {
        "benchmark": "serve",
        "load_generator": "HTTP: wrk -t1 (closed loop, one connection per client); gRPC: grpc.aio clients in one "
        "Python process (closed loop, one channel), a heavier client than wrk",
        "seconds_per_cell": seconds,
        "cells": cells,
        "summary": _targets(cells),
        "environment": environment(),
    }


def _summary(
    label: str,
    encoding: str,
    size: int,
    concurrency: int,
    stats: dict[str, float],
    before: dict[str, float],
    after: dict[str, float],
) -> dict[str, Any]:
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    per_request = {}
    answered = delta.get("nv_inference_request_success", 0)
    if answered:
        for part, metric in (
            ("read_and_parse", "nv_inference_compute_input_duration_us"),
            ("queue", "nv_inference_queue_duration_us"),
            ("serialise", "nv_inference_compute_output_duration_us"),
        ):
            per_request[part] = delta[metric] / answered
    executions = delta.get("nv_inference_exec_count", 0)
    if executions:
        per_request["model_per_batch"] = delta["fmnist_batch_compute_infer_duration_us"] / executions
    return {
        "server": label,
        "encoding": encoding,
        "images_per_request": size,
        "concurrency": concurrency,
        "requests": stats.get("requests"),
        "failures": stats["failures"],
        "requests_per_s": stats["requests_per_s"],
        "images_per_s": stats["requests_per_s"] * size,
        "p50_ms": stats["p50_ms"],
        "p90_ms": stats.get("p90_ms", float("nan")),
        "p99_ms": stats["p99_ms"],
        "mean_batch_images": delta["nv_inference_count"] / executions if executions else None,
        "server_us": per_request,
    }


def _encoding(cell: dict[str, Any]) -> str:
    """A cell's request encoding; reports from before the encoding column: the naive peer spoke JSON, the
    server binary."""
    return cell.get("encoding") or ("json" if cell["server"].startswith("naive") else "binary")


def _targets(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios the targets are stated in, for the cells this grid has (64 clients with 1 and with 32
    images per request, binary, JSON and gRPC); a smaller grid gets the ratios it can."""

    def cell(server: str, encoding: str, size: int, concurrency: int) -> dict[str, Any] | None:
        return next(
            (
                c
                for c in cells
                if c["server"].startswith(server)
                and _encoding(c) == encoding
                and c["images_per_request"] == size
                and c["concurrency"] == concurrency
            ),
            None,
        )

    on, off, naive = "fmnist-serve (dynamic", "fmnist-serve (batching off", "naive"
    summary: dict[str, Any] = {}
    ours, peer = cell(on, "binary", 1, 64), cell(naive, "json", 1, 64)
    if ours and peer:
        summary |= {
            "server_over_peer_images_per_s_c64_b1": ours["images_per_s"] / peer["images_per_s"],
            "server_p99_ms_c64_b1": ours["p99_ms"],
            "peer_p99_ms_c64_b1": peer["p99_ms"],
        }
    ratios = [
        batched["images_per_s"] / c["images_per_s"]
        for c in cells
        if c["server"].startswith(off)
        and (batched := cell(on, "binary", c["images_per_request"], c["concurrency"])) is not None
    ]
    if ratios:
        summary["batching_over_off_min"] = min(ratios)
    binary_32, off_32 = cell(on, "binary", 32, 64), cell(off, "binary", 32, 64)
    if binary_32 and off_32:
        summary["batching_over_off_c64_b32"] = binary_32["images_per_s"] / off_32["images_per_s"]
    json_32, peer_32, grpc_32 = cell(on, "json", 32, 64), cell(naive, "json", 32, 64), cell(on, "grpc", 32, 64)
    if json_32 and peer_32 and binary_32:
        summary |= {
            "json_images_per_s_c64_b32": json_32["images_per_s"],
            "json_p99_ms_c64_b32": json_32["p99_ms"],
            "json_over_peer_images_per_s_c64_b32": json_32["images_per_s"] / peer_32["images_per_s"],
            "binary_over_json_images_per_s_c64_b32": binary_32["images_per_s"] / json_32["images_per_s"],
        }
    if grpc_32:
        summary |= {"grpc_images_per_s_c64_b32": grpc_32["images_per_s"], "grpc_p99_ms_c64_b32": grpc_32["p99_ms"]}
    return summary


def to_markdown(report: dict[str, Any]) -> str:
    """The load grid and the targets as Markdown."""
    env, s = report["environment"], report["summary"]
    lines = [
        f"Serving load ({env['cpu']}, {env['usable_cores']} cores shared by clients and servers; "
        f"{report['seconds_per_cell']:g} s per cell, closed loop)",
        "",
        "| server | encoding | images/request | concurrency | requests/s | images/s | p50 ms | p90 ms | p99 ms "
        "| mean batch | failures |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cells"]:
        batch = f"{c['mean_batch_images']:.1f}" if c["mean_batch_images"] else "—"
        lines.append(
            f"| {c['server']} | {_encoding(c)} | {c['images_per_request']} | {c['concurrency']} | "
            f"{c['requests_per_s']:,.0f} | "
            f"{c['images_per_s']:,.0f} | {c['p50_ms']:.2f} | {c['p90_ms']:.2f} | {c['p99_ms']:.2f} | {batch} "
            f"| {c['failures']} |"
        )
    lines.append("")
    if "server_over_peer_images_per_s_c64_b1" in s:
        lines.append(
            f"- server / naive peer, images/s at 64 single-image clients: "
            f"**{s['server_over_peer_images_per_s_c64_b1']:.2f}×** "
            f"(p99 {s['server_p99_ms_c64_b1']:.1f} ms vs {s['peer_p99_ms_c64_b1']:.1f} ms)"
        )
    else:
        lines.append(
            "- no comparison with the naive peer at 64 single-image clients: this grid has no such cell "
            "(--concurrency with 64, --sizes with 1)"
        )
    if "batching_over_off_min" in s:
        at_64x32 = (
            f"; **{s['batching_over_off_c64_b32']:.2f}×** at 64 clients x 32 images"
            if "batching_over_off_c64_b32" in s
            else ""
        )
        lines.append(
            f"- dynamic batching / batching off: at least **{s['batching_over_off_min']:.2f}×** over every cell{at_64x32}"
        )
    if "json_images_per_s_c64_b32" in s:
        grpc = (
            f", gRPC {s['grpc_images_per_s_c64_b32']:,.0f} images/s (p99 {s['grpc_p99_ms_c64_b32']:.1f} ms; its load "
            "comes from a Python client, heavier than wrk, on the same cores)"
            if "grpc_images_per_s_c64_b32" in s
            else ""
        )
        lines.append(
            f"- JSON at 64 clients x 32 images: **{s['json_images_per_s_c64_b32']:,.0f} images/s**, p99 "
            f"{s['json_p99_ms_c64_b32']:.1f} ms ({s['json_over_peer_images_per_s_c64_b32']:.2f}× the naive peer's "
            f"JSON); the binary extension carries {s['binary_over_json_images_per_s_c64_b32']:.2f}× the images/s "
            f"of JSON{grpc}"
        )
    profile = next(
        (
            c["server_us"]
            for c in report["cells"]
            if c["server"].startswith("fmnist-serve (dynamic")
            and _encoding(c) == "binary"
            and c["images_per_request"] == 1
            and c["concurrency"] == 64
        ),
        {},
    )
    if profile:
        parts = ", ".join(f"{k} {v:,.0f} µs" for k, v in profile.items())
        lines.append(f"- where a request's server time goes at 64 single-image clients: {parts}")
    return "\n".join(lines) + "\n"


def figure(report: dict[str, Any]) -> Figure:
    """Images/s and p99 against concurrency, one line per server and encoding, for each request size; the x
    ticks are the measured concurrencies, both y axes start at 0, and the title names the machine."""
    from matplotlib.figure import Figure

    sizes = sorted({c["images_per_request"] for c in report["cells"]})
    concurrencies = sorted({c["concurrency"] for c in report["cells"]})
    fig = Figure(figsize=(13, 5))
    axes = fig.subplots(1, 2 * len(sizes))
    for k, size in enumerate(sizes):
        for server, encoding in dict.fromkeys((c["server"], _encoding(c)) for c in report["cells"]):
            cells = sorted(
                (
                    c
                    for c in report["cells"]
                    if c["server"] == server and _encoding(c) == encoding and c["images_per_request"] == size
                ),
                key=lambda c: c["concurrency"],
            )
            x = [c["concurrency"] for c in cells]
            label = f"{server.split(' (session')[0]}, {encoding}"
            style = {"marker": "o", "ms": 3, "label": label, "ls": "--" if encoding == "json" else "-"}
            axes[2 * k].plot(x, [c["images_per_s"] for c in cells], **style)
            axes[2 * k + 1].plot(x, [c["p99_ms"] for c in cells], **style)
        axes[2 * k].set(xlabel="concurrent clients", ylabel="images/s", title=f"{size} image(s)/request")
        axes[2 * k + 1].set(xlabel="concurrent clients", ylabel="p99 ms", title=f"p99, {size} image(s)/request")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    env = report["environment"]
    seconds = report.get("seconds_per_cell")
    fig.suptitle(
        f"fmnist-serve under closed-loop load — {env.get('cpu', '?')}, {env.get('usable_cores', '?')} cores shared "
        "by clients and servers" + (f", {seconds:g} s per point" if seconds else ""),
        fontsize=10,
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.84))
    return fig


def plot(report: dict[str, Any], path: Path) -> None:
    """`figure(report)` as a PNG, written atomically."""
    from fmnist_deploy.atomic import atomic_path

    fig = figure(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
