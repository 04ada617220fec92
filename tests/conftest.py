from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"

# The Ctrl-C tests send SIGINT to the commands they start. A shell without job control starts a background
# job with SIGINT ignored, and an ignored signal stays ignored across fork and exec, so every command would
# shrug it off: the suite restores Python's own handler (its children then start with the default), so it
# behaves the same in a terminal, under CI, or as `make test &` from a script.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def console_script(name: str) -> str:
    """The installed command `name` (fmnist-predict, ...) beside this interpreter, as a user starts it."""
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path is not None, f"{name} is not installed beside {sys.executable}"
    return path


@pytest.fixture(scope="session")
def data():
    """The real, verified data set (`make data` provides it, in the per-user cache)."""
    from fmnist_deploy.training.data import load

    return load(download=False)


# Packages a machine may lack (the GPU machine's image has none of them): a test module that cannot import
# one is skipped with the package named, never a collection error, so `pytest -m cuda` runs there as it is.
# Import name -> what to install.
OPTIONAL_PACKAGES = {
    "imagecodecs": "imagecodecs",
    "starlette": "starlette",
    "uvicorn": "'uvicorn[standard]'",
    "fastapi": "fastapi",
    "httpx": "httpx",
    "tritonclient": "'tritonclient[http,grpc]'",
    "ray": "'fmnist-deploy[scale]'",
    "pyarrow": "pyarrow",
    "openvino": "'fmnist-deploy[openvino]'",
    "yaml": "pyyaml",
    "atheris": "atheris",
}
REQUIRE_ORT_GPU_HELP = "fail, instead of skipping, the CUDA tests of ONNX Runtime when onnxruntime-gpu is absent"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-ort-gpu", action="store_true", default=False, help=REQUIRE_ORT_GPU_HELP)


def missing_optional(exc: BaseException | None) -> str | None:
    """'needs X: pip install Y' when `exc` is the import of an optional package that is not installed."""
    if not isinstance(exc, ModuleNotFoundError) or exc.name is None:
        return None
    top = exc.name.split(".")[0]
    return f"needs {top}: pip install {OPTIONAL_PACKAGES[top]}" if top in OPTIONAL_PACKAGES else None


class OptionalModule(pytest.Module):
    """A test module whose import fails for want of an optional package is skipped, saying which."""

    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as exc:
            reason = missing_optional(exc.__cause__)
            if reason is None:
                raise
            raise pytest.skip.Exception(reason, allow_module_level=True) from None


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if module_path.name == "__init__.py":
        return None  # pytest's own Package handling
    return OptionalModule.from_parent(parent, path=module_path)


def require_ort_cuda(config: pytest.Config) -> None:
    """Skip (or fail, under --require-ort-gpu) when this onnxruntime has no CUDA execution provider."""
    from fmnist_deploy.runtime.onnxruntime_backend import OnnxRuntimeBackend

    reason = OnnxRuntimeBackend.unavailable("cuda")
    if reason is None:
        return
    if config.getoption("--require-ort-gpu"):
        pytest.fail(f"--require-ort-gpu: {reason}")
    pytest.skip(reason)


def require_backend(backend: str, device: str = "cpu") -> None:
    """Skip, saying what to install, when a runtime backend's optional package is absent (OpenVINO)."""
    from fmnist_deploy.runtime import BACKENDS

    reason = BACKENDS[backend].unavailable(device)
    if reason is not None:
        pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test parametrised over `backend` skips, saying what to install, for a backend whose package is absent."""
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("backend") if callspec is not None else None
    if isinstance(backend, str):
        from fmnist_deploy.runtime import BACKENDS

        if backend in BACKENDS:
            require_backend(backend)
