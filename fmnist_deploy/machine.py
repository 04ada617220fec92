"""The machine a measurement ran on (CPU, cores, versions), recorded beside every per-machine number."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# The distributions that install the `onnxruntime` module: a machine has one of them (they clash),
# and which one it is decides the execution providers.
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def onnxruntime_build(distributions: dict[str, list[str]] | None = None) -> dict[str, Any] | None:
    """The ONNX Runtime that `import onnxruntime` really gives: distribution, version, providers; None if absent.

    The version comes from the imported module, and the distribution from the files that
    installed it (`importlib.metadata.packages_distributions`), never from the distribution
    named `onnxruntime`: with onnxruntime-gpu installed beside or over it, that one can name
    another build than the one that ran.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if distributions is None:
        distributions = metadata.packages_distributions()
    owners = [d for d in distributions.get("onnxruntime", []) if d.lower() in ONNXRUNTIME_DISTRIBUTIONS]
    providers = ort.get_available_providers()
    return {
        "distribution": owners[0] if len(owners) == 1 else (owners or "unknown"),
        "version": ort.__version__,
        "providers": providers,
        "cuda": "CUDAExecutionProvider" in providers,
    }


def environment(**extra: Any) -> dict[str, Any]:
    """CPU, cores, Python and package versions (ONNX Runtime's as imported); extra keys are added as given."""
    ort = onnxruntime_build()
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in ("torch", "torchvision", "numpy", "onnx", "onnxscript")},
        "onnxruntime": ort,
    }
    # the version of the module that runs, whichever distribution installed it
    env["packages"]["onnxruntime"] = ort["version"] if ort else None
    env.update(extra)
    return env
