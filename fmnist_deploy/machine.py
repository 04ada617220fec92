"""The machine a measurement ran on (CPU, cores, versions), recorded beside every per-machine number."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
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


def onnxruntime_build(distributions: Iterable[Any] | None = None) -> dict[str, Any] | None:
    """The ONNX Runtime that `import onnxruntime` really gives: distribution, version, providers; None if absent.

    The version comes from the imported module, and the distribution is the one whose files
    hold that module (onnxruntime and onnxruntime-gpu install the same `onnxruntime` package,
    and both can be visible, e.g. onnxruntime-gpu in a virtual environment over an interpreter
    with onnxruntime): never the version of whichever distribution is named `onnxruntime`.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    here = Path(ort.__file__).resolve()
    owners = []
    for dist in metadata.distributions() if distributions is None else distributions:
        name = dist.metadata["Name"] or ""
        if name.lower().replace("_", "-") in ONNXRUNTIME_DISTRIBUTIONS:
            if Path(dist.locate_file("onnxruntime/__init__.py")).resolve() == here:
                owners.append(name)
    providers = ort.get_available_providers()
    return {
        "distribution": owners[0] if len(owners) == 1 else (owners or "unknown"),
        "version": ort.__version__,
        "module": str(here.parent),
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
