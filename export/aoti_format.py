"""AOTInductor (.aoti.pt2): the torch.export program compiled ahead of time into a shared library.

PyTorch's successor to TorchScript for running without Python: the package loads from
Python (`torch._inductor.aoti_load_package`) and from C++ (`torch::inductor::
AOTIModelPackageLoader`). What it is, and what follows from it:

- Native code compiled by this machine's C++ compiler for this machine's CPU (the package
  records the instruction sets it uses, AOTI_CPU_ISA). It is not portable across CPU
  families, so it is not part of `--format all` and no package is shipped: build it
  where it runs, with `fmnist-export --format aoti`.
- Loading it runs that code. The gate loads a package right after this process compiled
  it; `--verify` of a package needs `--trust-code`. The runtime has no backend
  for it: measured slower than ONNX Runtime at every batch size (`fmnist-bench latency`).
- Metadata: the contract's JSON under one key of AOTInductor's own metadata, which the
  package also keeps as JSON, so it is read without loading any code.
- Reproducible where the compiler allows: AOTInductor writes a random serialization id,
  the generated C++ sources with their compile commands (absolute paths of the exporting
  machine) and debug information holding the same paths. The package keeps none of them
  (the sources are not needed to load it; the id is derived from the library; debug
  information is stripped): exporting the same weights twice gives the same bytes. What
  stays is what the compiler put in the library itself: the paths that torch's headers
  name in their assertion messages (the virtual environment's, the compile folder's), so
  another checkout path, torch, compiler or CPU gives other bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from fmnist_deploy.atomic import write_bytes_atomic
from fmnist_deploy.contract import STEM
from fmnist_deploy.errors import quiet_logger
from fmnist_deploy.export.checks import Check, Runner
from fmnist_deploy.export.metadata import completed
from fmnist_deploy.export.pt2_format import exported_program
from fmnist_deploy.export.wrapper import numpy_runner
from fmnist_deploy.kinds import KIND

NAME = "aoti"
SUFFIX = KIND[NAME].suffix
METADATA_KEY = "fmnist_deploy"
MAX_METADATA_BYTES = 1 << 20
# AOTI_CPU_ISA words -> the /proc/cpuinfo flag each needs
ISA_FLAGS = {
    "AVX2": "avx2",
    "AVX512": "avx512f",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_TILE": "amx_tile",
    "AVX512_FP16": "avx512_fp16",
}


def export(module: torch.nn.Module, path: Path, meta: dict[str, Any], *, opset: int | None = None) -> dict[str, Any]:
    """Compile `module` (a Deployable) with a dynamic batch into an AOTInductor package with `meta` inside."""
    meta = completed(meta, NAME, exporter=("torch",), folded=False)
    program = exported_program(module)
    with tempfile.TemporaryDirectory() as scratch, _quiet_cpp_extension():
        package = Path(scratch) / f"{STEM}.pt2"  # the archive's root folder is named after the package's stem
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(package),
            inductor_configs={"aot_inductor.metadata": {METADATA_KEY: json.dumps(meta, sort_keys=True)}},
        )
        write_bytes_atomic(path, _reproducible(package, Path(scratch)))
    return meta


def _reproducible(package: Path, scratch: Path) -> bytes:
    """The package without its C++ sources, random id and debug information (see the module's notes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(out, "w") as target:
        libraries = [i for i in source.infolist() if i.filename.endswith(".so")]
        stripped = {i.filename: _strip_debug(source.read(i), scratch) for i in libraries}
        digest = hashlib.sha256(b"".join(stripped[name] for name in sorted(stripped))).hexdigest()
        for info in source.infolist():
            if info.filename.endswith(".cpp"):
                continue
            data = stripped.get(info.filename)
            if data is None:
                data = source.read(info)
            if info.filename.endswith(".data/serialization_id"):
                data = str(int(digest, 16))[: len(data)].encode()
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            entry.compress_type = info.compress_type
            entry.external_attr = info.external_attr
            target.writestr(entry, data)
    return out.getvalue()


def _strip_debug(library: bytes, scratch: Path) -> bytes:
    """The shared library without debug sections (binutils' strip); unchanged where strip is absent."""
    tool = shutil.which("strip")
    if tool is None:
        return library
    path = scratch / "strip.so"
    path.write_bytes(library)
    subprocess.run([tool, "--strip-debug", str(path)], check=True, capture_output=True)
    return path.read_bytes()


def _quiet_cpp_extension() -> contextlib.AbstractContextManager[None]:
    """torch's C++ toolchain logs "No CUDA runtime is found" as a warning on every CPU-only compile and load."""
    return quiet_logger("torch.utils.cpp_extension", drop=lambda record: record.levelno < logging.ERROR)


def aoti_metadata(path: Path) -> dict[str, str]:
    """AOTInductor's metadata of a package (its own keys and ours), read from the archive without loading code."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("wrapper_metadata.json") and "/aotinductor/" in n]
        if len(names) != 1:
            raise ValueError(f"expected one AOTInductor model in the package, found {len(names)}")
        info = archive.getinfo(names[0])
        if info.file_size > MAX_METADATA_BYTES:
            raise ValueError(f"{names[0]} is {info.file_size} bytes, over the {MAX_METADATA_BYTES} byte limit")
        found = json.loads(archive.read(info))
    if not isinstance(found, dict):
        raise ValueError(f"{names[0]} is not a JSON object")
    return found


def read_metadata(path: Path) -> dict[str, Any]:
    """The contract's metadata stored in the package."""
    text = aoti_metadata(path).get(METADATA_KEY)
    return json.loads(text) if isinstance(text, str) else {}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def structure_checks(path: Path, expected_opset: int | None) -> list[Check]:
    """A CPU package for this machine's architecture, using only instruction sets this CPU has."""
    aoti = aoti_metadata(path)
    device, machine = aoti.get("AOTI_DEVICE_KEY"), aoti.get("AOTI_MACHINE")
    checks = [
        Check(
            "native_code_target",
            device == "cpu" and machine == platform.machine(),
            f"compiled for {device} on {machine}; this machine is {platform.machine()}",
        )
    ]
    isa = str(aoti.get("AOTI_CPU_ISA", "")).split()
    flags = _cpu_flags()
    missing = [word for word in isa if word in ISA_FLAGS and flags and ISA_FLAGS[word] not in flags]
    checks.append(
        Check(
            "cpu_instruction_sets",
            not missing,
            f"uses {' '.join(isa) or 'baseline x86-64'}"
            + (f"; this CPU lacks {' '.join(missing)}: rebuild the package here" if missing else "; all present here"),
        )
    )
    return checks


def runners(path: Path) -> dict[str, Runner]:
    """The package loaded with torch._inductor.aoti_load_package (this runs its native code)."""
    with _quiet_cpp_extension():
        return {NAME: numpy_runner(torch._inductor.aoti_load_package(str(path)))}
