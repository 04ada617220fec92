"""What a model file *kind* is and which backend reads it, declared once: every other table derives from here.

A kind is one `FileKind` line in `KINDS`: its suffix, how its bytes are recognised, what it is
called in messages, the module that exports it (an `ExportFormat`, `fmnist_deploy.export.formats`),
the kind it is made from (int8, the ONNX Runtime format and the Triton repository are made from
the gated ONNX file), whether loading it runs code, where it runs, and the optional extra it needs.
A backend is one `Reader` line in `READERS`: its module and class, the kinds it reads, its devices
and extra. The runtime's BACKENDS, the exporter's FORMATS and `--format` choices, the packaged
default files, the benchmark targets and the wrong-kind hints are all computed from these two
tables (and `tests/test_kinds.py` fails when one drifts).

Adding a kind is one exporter module plus one line here; a backend, one module plus one line.
Pure Python, no numpy, no torch: every stage imports it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fmnist_deploy.contract import STEM
from fmnist_deploy.errors import ModelError, UsageError

DEVICES = ("cpu", "cuda")

# What sniffing sees of a file: its first bytes, and the names inside it when it is a zip archive
# (the top folder of each name dropped: torch archives put everything under one folder of any name).
Sniff = Callable[[bytes, frozenset[str]], bool]
HEAD_BYTES = 8


def _onnx(head: bytes, parts: frozenset[str]) -> bool:
    return head[:1] == b"\x08"  # protobuf field 1 (ir_version), varint: how every ONNX ModelProto starts


def _ort(head: bytes, parts: frozenset[str]) -> bool:
    return head[4:8] == b"ORTM"  # the flatbuffer file identifier of ONNX Runtime's format


def _aoti(head: bytes, parts: frozenset[str]) -> bool:
    return any(p.startswith("data/aotinductor/") for p in parts)


def _torchscript(head: bytes, parts: frozenset[str]) -> bool:
    return not _aoti(head, parts) and any(p.startswith("code/") for p in parts)


def _pt2(head: bytes, parts: frozenset[str]) -> bool:
    return not _aoti(head, parts) and ("models/model.json" in parts or "archive_format" in parts)


def _pt(head: bytes, parts: frozenset[str]) -> bool:
    return "data.pkl" in parts and not _torchscript(head, parts) and not _pt2(head, parts)


@dataclass(frozen=True)
class FileKind:
    """One kind of model file (or folder), as every stage sees it."""

    name: str
    suffix: str  # the file name ends with it; the longest matching suffix names a file's kind ("" for a folder)
    description: str  # "an ONNX file": completes "this is ..." in messages
    sniff: Sniff | None  # recognises its bytes; None: its bytes are another kind's (int8 is an ONNX file)
    exporter: str | None  # the module implementing its ExportFormat; None: not written by fmnist-export
    source: str | None = None  # the kind it is made from (its gated file), None: made from the weights
    code: bool = False  # loading it runs code from the file: loaded only when trusted (fmnist_deploy.trust)
    native_code: bool = False  # that code is compiled machine code (no backend loads it)
    portable: bool = True  # runs on any machine (False: compiled for this one); portable formats make --format all
    devices: tuple[str, ...] = DEVICES
    extra: str | None = None  # the optional dependency group (pip install 'fmnist-deploy[extra]') it needs
    packaged: bool = True  # a file of this kind ships in the package (fmnist_deploy.artifacts)
    reproducible: bool = True  # re-exporting the same weights gives the same bytes (so the file can be committed)
    sidecar: bool = True  # written with a JSON sidecar (a weights file carries a digest of its own content instead)

    @property
    def file_name(self) -> str:
        """The name fmnist-export writes it under (and, when packaged, the packaged file)."""
        return STEM + self.suffix

    @property
    def folder(self) -> bool:
        """A folder of files (the Triton repository), not one file: `fmnist-export` writes it on its own."""
        return not self.suffix

    @property
    def bytes_kind(self) -> FileKind:
        """The kind its bytes are (int8 is an ONNX file): itself, or the kind it is made from."""
        return self if self.sniff is not None or self.source is None else KIND[self.source]

    @property
    def readers(self) -> tuple[str, ...]:
        """The backends that read it, the one `auto` picks first."""
        return tuple(r.name for r in sorted(READERS, key=lambda r: not r.auto) if self.name in r.reads)


@dataclass(frozen=True)
class Reader:
    """One runtime backend: the class that runs files, the kinds it reads."""

    name: str
    target: str  # "module:Class" of its Backend subclass
    reads: tuple[str, ...]  # kinds, in the order its messages list them
    devices: tuple[str, ...] = DEVICES
    extra: str | None = None  # the optional dependency group it needs, None when always installed
    package: str | None = None  # the import name that tells whether the extra is installed
    auto: bool = True  # chosen by --backend auto for its kinds (False: only when asked for by name)

    @property
    def suffixes(self) -> tuple[str, ...]:
        """The file suffixes it reads."""
        return tuple(KIND[name].suffix for name in self.reads)

    @property
    def default_kind(self) -> FileKind:
        """The kind of the packaged file it runs when no model is named."""
        return KIND[self.reads[0]]


KINDS: tuple[FileKind, ...] = (
    FileKind("onnx", ".onnx", "an ONNX file", _onnx, "fmnist_deploy.export.onnx_format"),
    FileKind("int8", ".int8.onnx", "an int8 ONNX file", None, "fmnist_deploy.export.int8_format", "onnx"),
    FileKind(
        "torchscript",
        ".torchscript",
        "a TorchScript archive",
        _torchscript,
        "fmnist_deploy.export.torchscript_format",
        code=True,
    ),
    FileKind("pt2", ".pt2", "a torch.export (.pt2) archive", _pt2, "fmnist_deploy.export.pt2_format", code=True),
    FileKind(
        "aoti",
        ".aoti.pt2",
        "an AOTInductor package (compiled native code)",
        _aoti,
        "fmnist_deploy.export.aoti_format",
        code=True,
        native_code=True,
        portable=False,
        devices=("cpu",),
        packaged=False,
    ),
    FileKind(
        "ort",
        ".ort",
        "an ONNX Runtime format file (.ort)",
        _ort,
        "fmnist_deploy.export.ort_format",
        "onnx",
        devices=("cpu",),
        reproducible=False,
        packaged=False,
    ),
    FileKind("pt", ".pt", "a torch.save weights file (.pt)", _pt, None, sidecar=False),
    # a folder: written into the output folder itself (the repository), around a copy of the gated ONNX file
    FileKind(
        "triton",
        "",
        "a Triton model repository",
        None,
        "fmnist_deploy.export.triton_format",
        "onnx",
        packaged=False,
        sidecar=False,
    ),
)
READERS: tuple[Reader, ...] = (
    Reader("onnxruntime", "fmnist_deploy.runtime.onnxruntime_backend:OnnxRuntimeBackend", ("onnx", "int8", "ort")),
    Reader("torchscript", "fmnist_deploy.runtime.torchscript_backend:TorchScriptBackend", ("torchscript",)),
    Reader("pt2", "fmnist_deploy.runtime.pt2_backend:Pt2Backend", ("pt2",)),
    Reader("eager", "fmnist_deploy.runtime.eager_backend:EagerBackend", ("pt",)),
    # the same .onnx compiled by OpenVINO; never chosen by auto (onnxruntime reads .onnx first)
    Reader(
        "openvino",
        "fmnist_deploy.runtime.openvino_backend:OpenVinoBackend",
        ("onnx", "int8"),
        devices=("cpu",),
        extra="openvino",
        package="openvino",
        auto=False,
    ),
)
KIND: dict[str, FileKind] = {k.name: k for k in KINDS}
READER: dict[str, Reader] = {r.name: r for r in READERS}


def kind_named(path: str | Path) -> FileKind | None:
    """The kind a file's name says it is: the longest matching suffix wins (`.aoti.pt2` over `.pt2`)."""
    name = Path(path).name
    matching = [k for k in KINDS if k.suffix and name.endswith(k.suffix)]
    return max(matching, key=lambda k: len(k.suffix)) if matching else None


def sniff(path: Path) -> FileKind | None:
    """The kind a file's bytes say it is, whatever its name; None when no kind recognises them."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        names: list[str] = []
        if head[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    parts = frozenset(name.split("/", 1)[1] if "/" in name else name for name in names)
    return next((k for k in KINDS if k.sniff is not None and k.sniff(head, parts)), None)


def backend_for(path: Path) -> str:
    """The backend `auto` runs a file with, from its name; ModelError when no backend reads that kind."""
    kind = kind_named(path)
    if kind is not None and kind.readers:
        return kind.readers[0]
    if kind is not None:  # loading an AOTInductor package runs its compiled code: no backend does
        raise ModelError(f"{path}: this is {kind.description}, which the runtime does not load")
    known = ", ".join(f"{s} ({r.name})" for r in READERS if r.auto for s in r.suffixes)
    raise ModelError(f"{path}: cannot tell the backend from the suffix {Path(path).suffix!r}; known: {known}")


def check_reads(backend: str, path: Path) -> None:
    """A backend reads a file of a kind it reads by name, or whatever its name once its bytes say it can;
    refuse, naming what the file is and who reads it, when its bytes are a kind the backend does not read."""
    reader = READER[backend]
    named = kind_named(path)
    if named is not None and named.name in reader.reads:
        return
    kind = sniff(path)
    if kind is not None and kind.name not in reader.reads and kind.bytes_kind.name not in reader.reads:
        who = f"use --backend {kind.readers[0]}" if kind.readers else "no backend loads it"
        raise ModelError(f"{path}: this is {kind.description}, which the {backend} backend does not read; {who}")


def wrong_kind_hint(path: Path, backend: str) -> str:
    """'; this is an ONNX file: use --backend onnxruntime or rename it to .onnx' when the bytes say the file is
    a kind `backend` does not read, else ''."""
    kind = sniff(path)
    if kind is None or kind.name in READER[backend].reads:
        return ""
    if not kind.readers:  # loading an AOTInductor package runs its code: no backend does
        return f"; this is {kind.description}, which the runtime does not load"
    return f"; this is {kind.description}: use --backend {kind.readers[0]} or rename it to {kind.suffix}"


def check_backend(name: str) -> Reader:
    """The backend registered under `name`; UsageError naming the known ones otherwise."""
    if name not in READER:
        raise UsageError(f"backend {name!r}: expected auto or one of {', '.join(READER)}")
    return READER[name]


def default_file(backend: str) -> str:
    """The packaged file a backend runs when no model is named."""
    return READER[backend].default_kind.file_name


def exported_kinds() -> tuple[FileKind, ...]:
    """The kinds fmnist-export writes, in registry order."""
    return tuple(k for k in KINDS if k.exporter is not None)


__all__ = [
    "DEVICES",
    "KIND",
    "KINDS",
    "READER",
    "READERS",
    "FileKind",
    "Reader",
    "backend_for",
    "check_backend",
    "check_reads",
    "default_file",
    "exported_kinds",
    "kind_named",
    "sniff",
    "wrong_kind_hint",
]
