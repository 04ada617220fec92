"""The offline GPU bundle's plumbing, standard library only (it runs before anything is installed).

    python benchmarks/bundle.py missing --have PACKAGES.txt [--pyproject pyproject.toml]
    python benchmarks/bundle.py split FILE --size 60M --output DIR
    python benchmarks/bundle.py join DIR
    python benchmarks/bundle.py size DIR --max 64M
    python benchmarks/bundle.py venv DIR
    python benchmarks/bundle.py install WHEELS-DIR --python VENV/bin/python

`missing` prints the requirements of a CUDA run (from pyproject.toml's dependencies) that a
target interpreter lacks, given what it has (`pip list` or `pip freeze` output, or one name
a line). torch and torchvision are never among them: the run uses the target's own CUDA
build. `split` cuts a file (a 255 MB onnxruntime-gpu wheel) into parts of at most SIZE
with a sha256 manifest, so it can travel in several transfers; `join` puts every split
file in DIR back together and checks its sha256; `size` fails when DIR is larger than MAX.
`venv` makes a virtual environment that sees the running interpreter's packages (torch with
CUDA) behind its own, and `install` puts every wheel of a folder into one without an index.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

# What a CUDA run imports (runtime, benchmarks, training, the tests marked cuda). The serving stack
# (starlette, uvicorn) and the ONNX exporter (onnxscript) are not needed there; torch and torchvision
# come with the target.
CUDA_RUN = (
    "numpy",
    "pillow",
    "imagecodecs",
    "click",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "protobuf",
    "prometheus-client",
)
MANIFEST = ".parts.sha256"  # FILE.parts.sha256: "<sha256>  <name>  <parts>"
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class BundleError(Exception):
    """A bundle step that cannot go on; the message says why, in one line."""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_size(text: str) -> int:
    """'64M', '60MiB', '500K', '1G' or a number of bytes -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise BundleError(f"size {text!r}: expected a number of bytes, or with K, M or G (e.g. 60M)")
    return int(match.group(1)) * UNITS[match.group(2).upper()]


def read_package_list(text: str) -> set[str]:
    """Canonical names from `pip list` (name version), `pip freeze` (name==version) or one name a line."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "Package", "---")):
            continue
        names.add(canonical(re.split(r"[\s=<>!~;\[@]", line, maxsplit=1)[0]))
    return names


def run_requirements(pyproject: Path) -> list[str]:
    """The project's dependency specifiers that a CUDA run needs, as pyproject.toml states them."""
    try:
        dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise BundleError(f"{pyproject}: cannot read [project] dependencies ({exc})") from None
    wanted = {canonical(n) for n in CUDA_RUN}
    return [d for d in dependencies if canonical(re.split(r"[\s=<>!~;\[@]", d, maxsplit=1)[0]) in wanted]


def missing(have: set[str], pyproject: Path) -> list[str]:
    """The CUDA run's requirements whose distribution is not among `have`."""
    return [
        r for r in run_requirements(pyproject) if canonical(re.split(r"[\s=<>!~;\[@]", r, maxsplit=1)[0]) not in have
    ]


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def split(path: Path, size: int, out: Path) -> list[Path]:
    """`path` as parts NAME.part-000, -001, ... of at most `size` bytes in `out`, with NAME.parts.sha256."""
    if size < 1:
        raise BundleError(f"part size {size}: expected at least one byte")
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(path, "rb") as f:
        while block := f.read(size):
            part = out / f"{path.name}.part-{len(parts):03d}"
            part.write_bytes(block)
            parts.append(part)
    manifest = out / f"{path.name}{MANIFEST}"
    manifest.write_text(f"{_sha256([path])}  {path.name}  {len(parts)}\n", encoding="utf-8")
    return parts


def join(folder: Path) -> list[Path]:
    """Every file split into `folder` put back together beside its parts, its sha256 checked; the joined paths."""
    joined = []
    for manifest in sorted(folder.glob(f"*{MANIFEST}")):
        try:
            digest, name, count = manifest.read_text(encoding="utf-8").split()
            parts = [folder / f"{name}.part-{i:03d}" for i in range(int(count))]
        except ValueError:
            raise BundleError(f"{manifest}: expected '<sha256>  <name>  <parts>'") from None
        absent = [p.name for p in parts if not p.is_file()]
        if absent:
            raise BundleError(f"{name}: parts missing from {folder}: {', '.join(absent)}")
        if _sha256(parts) != digest:
            raise BundleError(f"{name}: its {len(parts)} parts do not join into the file they were cut from (sha256)")
        target = folder / name
        tmp = folder / f".{name}.joining"
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        tmp.replace(target)
        joined.append(target)
    return joined


def tree_size(folder: Path) -> int:
    """Bytes of every regular file under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def make_venv(folder: Path) -> Path:
    """A fresh virtual environment at `folder` over this interpreter's packages; its python.

    A .pth file runs `site.addsitedir` on this interpreter's site-packages, so their own .pth
    files are processed too (a plain path line would skip them), and they come after the
    environment's own: a package installed there (onnxruntime-gpu) is the one imported.
    """
    venv.EnvBuilder(with_pip=False, clear=True, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    bases = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    lines = "".join(f"import site; site.addsitedir({base!r})\n" for base in bases)
    Path(purelib, "gpu-machine-base.pth").write_text(lines, encoding="utf-8")
    return python


def install_wheels(folder: Path, python: Path) -> list[Path]:
    """pip install every wheel in `folder` into `python`'s environment, from the files alone (no index)."""
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        command = [str(python), "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir", *map(str, wheels)]
        if subprocess.run(command).returncode != 0:
            raise BundleError(f"pip could not install the wheels of {folder}")
    return wheels


def main(argv: list[str] | None = None) -> int:
    """The command line above; errors are one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(prog="bundle.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("missing", help="requirements of a CUDA run the target lacks")
    p.add_argument("--have", type=Path, required=True, help="the target's `pip list` / `pip freeze` output")
    p.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parents[1] / "pyproject.toml")
    p = commands.add_parser("split", help="cut a file into parts")
    p.add_argument("file", type=Path)
    p.add_argument("--size", required=True)
    p.add_argument("--output", "--out", dest="out", type=Path, required=True)
    p = commands.add_parser("join", help="join every split file in a folder")
    p.add_argument("folder", type=Path)
    p = commands.add_parser("size", help="fail when a folder is larger than --max")
    p.add_argument("folder", type=Path)
    p.add_argument("--max", required=True)
    p = commands.add_parser("venv", help="a virtual environment over this interpreter's packages")
    p.add_argument("folder", type=Path)
    p = commands.add_parser("install", help="install a folder's wheels without an index")
    p.add_argument("folder", type=Path)
    p.add_argument("--python", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "missing":
            try:
                have = read_package_list(args.have.read_text(encoding="utf-8"))
            except OSError as exc:
                raise BundleError(f"{args.have}: {exc.strerror or exc}") from None
            print("\n".join(missing(have, args.pyproject)))
        elif args.command == "split":
            parts = split(args.file, parse_size(args.size), args.out)
            print(f"{args.file.name}: {len(parts)} parts of at most {args.size} in {args.out}")
        elif args.command == "join":
            if not args.folder.is_dir():
                raise BundleError(f"{args.folder}: no such folder")
            for path in join(args.folder):
                print(f"joined {path}")
        elif args.command == "venv":
            print(make_venv(args.folder))
        elif args.command == "install":
            wheels = install_wheels(args.folder, args.python)
            print(f"installed {len(wheels)} wheel(s) from {args.folder}: {', '.join(w.name for w in wheels) or 'none'}")
        else:
            limit, size = parse_size(args.max), tree_size(args.folder)
            if size > limit:
                raise BundleError(f"{args.folder} holds {size / 2**20:.1f} MiB, over the {args.max} limit")
            print(f"{args.folder}: {size / 2**20:.1f} MiB (limit {args.max})")
    except BundleError as exc:
        print(f"bundle.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
