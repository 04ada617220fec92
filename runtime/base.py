"""The one interface every backend implements (`Backend`), and what the torch backends share (`TorchBackend`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fmnist_deploy.contract import N_CLASSES
from fmnist_deploy.integrity import IntegrityError
from fmnist_deploy.kinds import READER, wrong_kind_hint
from fmnist_deploy.runtime.arrays import describe
from fmnist_deploy.runtime.errors import ModelError, OptionError, first_line
from fmnist_deploy.runtime.metadata import check_metadata
from fmnist_deploy.trust import Trust, require_trusted


class Backend:
    """A loaded model file. Subclasses set `name` (their line in fmnist_deploy.kinds.READERS) and implement `_run`.

    `_run` receives checked, contiguous uint8 (N, 28, 28) and returns float32
    logits and probabilities (N, 10); `metadata` is the file's own description.
    """

    name: ClassVar[str]
    platform: ClassVar[str]  # the model's platform as Triton's model metadata names it
    options: ClassVar[tuple[str, ...]] = ()  # keyword options the constructor takes beyond path and device
    metadata: dict[str, Any]
    device: str

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        """Why this backend cannot run on `device` here for want of a package ('not installed: pip install
        ...'), or None. Checked without loading a model, so a benchmark can list the cell instead of stopping.
        A missing GPU is not reported here: that is a DeviceError of its own."""
        return None

    def execution(self) -> tuple[str, str, int | None]:
        """(provider, precision, threads) that actually run the file: e.g. ("CPUExecutionProvider", "fp32", 2);
        threads None when the engine picks them itself."""
        raise NotImplementedError

    # Large batches run in slices of this many images: a slice's activations stay in the CPU
    # caches (1024 x 784 float32 = 3 MB), where one 10 000-image call would stream 31 MB.
    chunk_rows: ClassVar[int] = 1024

    def _checked(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self._run(images)
        n = images.shape[0]
        if (
            logits.shape != (n, N_CLASSES)
            or probs.shape != (n, N_CLASSES)
            or logits.dtype != np.float32
            or probs.dtype != np.float32
        ):
            raise ModelError(
                f"{self.name}: model returned {describe(logits)} and {describe(probs)}, expected float32 [{n},10] twice"
            )
        return logits, probs

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checked uint8 (N, 28, 28) -> float32 logits and probabilities (N, 10), in cache-sized slices."""
        n = images.shape[0]
        if n <= self.chunk_rows:
            return self._checked(images)
        logits = np.empty((n, N_CLASSES), dtype=np.float32)
        probs = np.empty((n, N_CLASSES), dtype=np.float32)
        for start in range(0, n, self.chunk_rows):
            stop = min(start + self.chunk_rows, n)
            logits[start:stop], probs[start:stop] = self._checked(images[start:stop])
        return logits, probs


class TorchBackend(Backend):
    """What the torch backends share: device resolution, error wrapping, metadata, numpy at the edges.

    A subclass implements `_load(path, data, device) -> (module, metadata)` from the file's bytes,
    read once (bounded), checked for trust when the format carries code (`fmnist_deploy.trust`) and,
    for a zip archive, for its expanded sizes (`fmnist_deploy.bounds`); the module maps a
    uint8 (N, 28, 28) tensor to logits and probabilities. torch is imported only when one
    of these backends is constructed, so the ONNX path stays torch-free.
    """

    reader: ClassVar[str]  # the torch function that reads the file, named in errors
    # threads: torch's intra-op threads. torch keeps one such setting per process, so a value given here
    # applies to every torch model of the process; None leaves it as it is.
    # On CUDA (runtime.torch_cuda): graphs per batch size, how many are kept, the largest captured, chunk size.
    options: ClassVar[tuple[str, ...]] = ("threads", "cuda_graphs", "graph_cache", "max_graph_batch", "chunk_rows")
    module: Any
    torch_device: Any  # torch.device
    runner: Any = None  # a torch_cuda.CudaRunner on CUDA
    threads: int  # torch's intra-op threads once loaded

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        threads: int | None = None,
        *,
        trust: Trust | None = None,
        **cuda_options: Any,
    ) -> None:
        import pickle
        import zipfile

        import torch

        from fmnist_deploy.bounds import MAX_MODEL_BYTES, check_zip
        from fmnist_deploy.exportset import read_current
        from fmnist_deploy.runtime.torch_common import torch_device

        if device != "cuda" and cuda_options:
            raise OptionError(f"{', '.join(cuda_options)}: CUDA options, for device cuda (device is {device})")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise OptionError(f"threads {threads!r}: expected a whole number >= 1")
        self.torch_device = torch_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        try:
            # Read once, bounded; every check below and the loader itself see these same bytes.
            data = read_current(path, MAX_MODEL_BYTES, "model file")
            if data[:4] != b"PK\x03\x04":  # every torch format is a zip archive: nothing to trust or load
                raise ValueError("not a zip archive")
            kind = READER[self.name].default_kind.name  # the kind this backend reads (fmnist_deploy.kinds)
            self.trusted = require_trusted(path, data, kind, trust or Trust())
            check_zip(data, path)  # torch would expand every record in memory
            self.module, meta = self._load(path, data, self.torch_device)
        except IntegrityError as exc:
            raise ModelError(str(exc)) from None
        # torch reports a damaged or foreign file through many types (a text file: KeyError; a .pt2 graph
        # whose sizes contradict their hints: AssertionError).
        except (
            AssertionError,
            RuntimeError,
            ValueError,
            OSError,
            KeyError,
            EOFError,
            zipfile.BadZipFile,
            pickle.UnpicklingError,
        ) as exc:
            hint = wrong_kind_hint(path, self.name)
            raise ModelError(f"{path}: {self.reader} cannot read it ({first_line(exc, 160)}){hint}") from None
        self.device = device
        self.metadata = check_metadata(meta, str(path))
        if device == "cuda":
            from fmnist_deploy.runtime.torch_cuda import CudaOptions, CudaRunner

            self.runner = CudaRunner(self.module, self.torch_device, CudaOptions(**cuda_options))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """On CUDA the runner takes the batch whole (it streams large ones itself); on the CPU, cache-sized slices."""
        if self.runner is not None:
            return self._checked(images)
        return super().run(images)

    def _load(self, path: Path, data: bytes, device: Any) -> tuple[Any, dict[str, Any]]:
        """(module, metadata) from the file's bytes, already read and checked."""
        raise NotImplementedError

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.runner is not None:
            return self.runner.run(images)
        from fmnist_deploy.runtime.torch_common import run_torch

        return run_torch(self.module, images, self.torch_device)

    def execution(self) -> tuple[str, str, int | None]:
        """torch on its device; precision from the file, threads torch's intra-op pool."""
        import torch

        return f"torch:{self.device}", str(self.metadata.get("precision", "fp32")), torch.get_num_threads()
