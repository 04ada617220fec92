"""What the server counts, as Triton names it: Prometheus metrics (`nv_inference_*`, with `model` and
`version` labels, counters without a `_total` suffix) and the statistics extension's JSON, both read from
the same counters.

With `--workers N` every worker process writes its counters into one folder (prometheus_client's
multiprocess mode, chosen by `PROMETHEUS_MULTIPROC_DIR` before the workers start) and any worker's
`/metrics` or `/stats` sums them all, so a scrape sees one server whichever process answers it.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from fmnist_deploy.serving.batcher import BatchStats

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to multiprocess mode
LABELS = ("model", "version")
DURATIONS = ("request", "queue", "compute_input", "compute_infer", "compute_output")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The server's counters; `record_*` are called by the request path and the batcher."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.success = Counter(
            "nv_inference_request_success", "Number of successful inference requests", LABELS, registry=r
        )
        self.failure = Counter(
            "nv_inference_request_failure",
            "Number of failed inference requests (reason: REJECTED queue full, BACKEND model error, OTHER bad request)",
            (*LABELS, "reason"),
            registry=r,
        )
        self.count = Counter("nv_inference_count", "Number of inferences performed (images)", LABELS, registry=r)
        self.exec_count = Counter("nv_inference_exec_count", "Number of model executions (batches)", LABELS, registry=r)
        self.durations = {
            part: Counter(
                f"nv_inference_{part}_duration_us",
                f"Cumulative inference {part.replace('_', ' ')} duration in microseconds",
                LABELS,
                registry=r,
            )
            for part in DURATIONS
        }
        self.fail_us = Counter(
            "fmnist_inference_failure_duration_us",
            "Cumulative duration of failed requests in microseconds",
            LABELS,
            registry=r,
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count",
            "Requests accepted and not answered yet",
            LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.last_ms = Gauge(
            "fmnist_last_inference_ms",
            "Time of the last inference, ms since the epoch",
            LABELS,
            registry=r,
            multiprocess_mode="max",
        )
        batch_labels = (*LABELS, "batch_size")
        self.batch_exec = Counter(
            "fmnist_batch_execution_count", "Model executions per batch size", batch_labels, registry=r
        )
        self.batch_us = {
            part: Counter(
                f"fmnist_batch_{part}_duration_us",
                f"Cumulative {part.replace('_', ' ')} duration per batch size in microseconds",
                batch_labels,
                registry=r,
            )
            for part in ("compute_input", "compute_infer", "compute_output")
        }
        self._bound: dict[tuple[str, str], ModelCounters] = {}

    def batch(self, model: str, version: str, stats: BatchStats) -> None:
        """Record one model execution."""
        self.bound(model, version).batch(stats)

    def succeeded(self, model: str, version: str, images: int, seconds: dict[str, float]) -> None:
        """One answered request: its images and its durations (keys of DURATIONS, in seconds)."""
        self.bound(model, version).succeeded(images, seconds)

    def failed(self, model: str, version: str, reason: str, seconds: float) -> None:
        """One request of a known model refused or failed: reason REJECTED, BACKEND or OTHER."""
        self.failure.labels(model, version, reason).inc()
        self.fail_us.labels(model, version).inc(seconds * 1e6)

    def bound(self, model: str, version: str) -> ModelCounters:
        """The counters of one model version, their labels resolved once (a labels() lookup costs more than the
        increment it serves)."""
        counters = self._bound.get((model, version))
        if counters is None:
            counters = self._bound[(model, version)] = ModelCounters(self, model, version)
        return counters

    def collect(self) -> list[Any]:
        """Every metric family: this process's, or with `--workers N` the sum over all worker processes."""
        if os.environ.get(MULTIPROCESS_ENV):
            return list(MultiProcessCollector(CollectorRegistry()).collect())
        return list(self.registry.collect())

    def exposition(self) -> bytes:
        """The Prometheus text format, with counters named as Triton names them (no `_total`, no `_created`)."""
        lines = []
        for family in sorted(self.collect(), key=lambda f: f.name):
            name = family.name.removesuffix("_total") if family.type == "counter" else family.name
            lines += [f"# HELP {name} {family.documentation}", f"# TYPE {name} {family.type}"]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                sample_name = name if family.type == "counter" else sample.name
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
                where = f"{{{labels}}}" if labels else ""
                lines.append(f"{sample_name}{where} {floatToGoString(sample.value)}")
        return ("\n".join(lines) + "\n").encode()

    def statistics(self, wanted: list[tuple[str, str]]) -> dict[str, Any]:
        """The statistics extension's `{"model_stats": [...]}` for the given (model, version) pairs."""
        values: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        batches: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(float))
        )
        for family in self.collect():
            for sample in family.samples:
                if "model" not in sample.labels or sample.name.endswith("_created"):
                    continue
                key = (sample.labels["model"], sample.labels["version"])
                name = sample.name.removesuffix("_total")
                if "batch_size" in sample.labels:
                    batches[key][int(sample.labels["batch_size"])][name] += sample.value
                elif name == "fmnist_last_inference_ms":
                    values[key][name] = max(values[key][name], sample.value)
                else:
                    values[key][name] += sample.value
        return {
            "model_stats": [
                _model_stat(name, version, values[(name, version)], batches[(name, version)])
                for name, version in wanted
            ]
        }


class ModelCounters:
    """One model version's counters with their labels bound."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        labels = (model, version)
        self.labels = labels
        self.metrics = metrics
        self.success = metrics.success.labels(*labels)
        self.count = metrics.count.labels(*labels)
        self.exec_count = metrics.exec_count.labels(*labels)
        self.durations = [(part, metrics.durations[part].labels(*labels)) for part in DURATIONS]
        self.pending = metrics.pending.labels(*labels)
        self.last_ms = metrics.last_ms.labels(*labels)
        self.per_batch_size: dict[int, list[Any]] = {}

    def succeeded(self, images: int, seconds: dict[str, float]) -> None:
        """One answered request."""
        self.success.inc()
        self.count.inc(images)
        for part, counter in self.durations:
            counter.inc(seconds[part] * 1e6)
        self.last_ms.set(time.time() * 1000)

    def batch(self, stats: BatchStats) -> None:
        """One model execution, counted under its batch size."""
        self.exec_count.inc()
        bound = self.per_batch_size.get(stats.images)
        if bound is None:
            labels = (*self.labels, str(stats.images))
            bound = [self.metrics.batch_exec.labels(*labels)] + [
                self.metrics.batch_us[part].labels(*labels)
                for part in ("compute_input", "compute_infer", "compute_output")
            ]
            self.per_batch_size[stats.images] = bound
        executions, inputs, infers, outputs = bound
        executions.inc()
        inputs.inc(stats.input_seconds * 1e6)
        infers.inc(stats.compute_seconds * 1e6)
        outputs.inc(stats.output_seconds * 1e6)


def _duration(count: float, microseconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(round(microseconds * 1000))}


def _model_stat(name: str, version: str, v: dict[str, float], batches: dict[int, dict[str, float]]) -> dict[str, Any]:
    success = v["nv_inference_request_success"]
    failures = v["nv_inference_request_failure"]

    def per_request(part: str) -> dict[str, int]:
        return _duration(success, v[f"nv_inference_{part}_duration_us"])

    return {
        "name": name,
        "version": version,
        "last_inference": int(v["fmnist_last_inference_ms"]),
        "inference_count": int(v["nv_inference_count"]),
        "execution_count": int(v["nv_inference_exec_count"]),
        "inference_stats": {
            "success": per_request("request"),
            "fail": _duration(failures, v["fmnist_inference_failure_duration_us"]),
            "queue": per_request("queue"),
            "compute_input": per_request("compute_input"),
            "compute_infer": per_request("compute_infer"),
            "compute_output": per_request("compute_output"),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                **{
                    part: _duration(b["fmnist_batch_execution_count"], b[f"fmnist_batch_{part}_duration_us"])
                    for part in ("compute_input", "compute_infer", "compute_output")
                },
            }
            for size, b in sorted(batches.items())
        ],
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
