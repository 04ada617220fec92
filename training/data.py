"""Find, verify and load the four Fashion-MNIST IDX files.

Search order: an explicit folder; a project's own ./data/FashionMNIST/raw (read in
place); the per-user cache ($XDG_CACHE_HOME/fmnist-deploy, default
~/.cache/fmnist-deploy); Debian's dataset-fashion-mnist package (decompressed into
the cache); torchvision's download into the cache, for users who are online. Nothing
is ever written into the working directory. Every file's uncompressed bytes are
checked against the published sha256 before anything trains on it.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist_deploy.atomic import atomic_path
from fmnist_deploy.errors import InputError
from fmnist_deploy.models import cache_root

SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
LOCAL_ROOT = Path("data")  # a project's own copy, read in place and never written
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = (
    "get the data with `make data` (Debian: apt-get install dataset-fashion-mnist) "
    "or pass --data-dir pointing at the four IDX files"
)


class DataError(InputError):
    """The data set is missing, truncated or altered; the message says which file and how to fix it."""


class DataMissing(DataError):
    """No copy of the data set was found at all (as opposed to a damaged one)."""


@dataclass(frozen=True)
class FashionMNIST:
    """The verified data set as tensors, plus where it came from."""

    root: Path  # torchvision root: root/FashionMNIST/raw holds the uncompressed files
    train_images: torch.Tensor  # (60000, 28, 28) uint8
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 28, 28) uint8
    test_labels: torch.Tensor  # (10000,) int64
    sha256: dict[str, str]


def raw_dir(root: Path) -> Path:
    """root/FashionMNIST/raw: where torchvision expects the uncompressed IDX files."""
    return Path(root) / "FashionMNIST" / "raw"


def _read(path: Path) -> bytes:
    """Uncompressed bytes of an IDX file, gzipped or not."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); the file is damaged: {HOW_TO_GET}") from None


def _verified(path: Path, name: str) -> bytes:
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise DataError(
            f"{path}: sha256 {digest[:12]}… does not match the published {SHA256[name][:12]}… "
            f"({len(data)} bytes): the file is truncated or altered; delete it and {HOW_TO_GET}"
        )
    return data


def _find_in(folder: Path) -> dict[str, Path] | None:
    """The four files in `folder`, each uncompressed or .gz, or None if any is missing."""
    found: dict[str, Path] = {}
    for name in SHA256:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found if len(found) == len(SHA256) else None


def _materialise(files: dict[str, Path], root: Path) -> None:
    """Write verified uncompressed copies into root/FashionMNIST/raw (torchvision's layout)."""
    target = raw_dir(root)
    for name, path in files.items():
        if path == target / name:
            continue  # already in place; `load` verifies it
        data = _verified(path, name)
        try:
            with atomic_path(target / name) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:  # the data set is there; the per-user cache is not writable
            raise DataError(
                f"found the data set in {path.parent} but cannot write its uncompressed copy to {target} "
                f"({exc.strerror or exc}): set XDG_CACHE_HOME to a writable folder, or pass --data-dir"
            ) from None


def _torchvision_download(root: Path) -> None:
    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    try:
        TVFashionMNIST(str(root), train=True, download=True)
        TVFashionMNIST(str(root), train=False, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"Fashion-MNIST not found and the download failed ({exc}); {HOW_TO_GET}") from None


def locate(data_dir: Path | None = None, *, root: Path | None = None, download: bool = True) -> Path:
    """Return a torchvision root whose FashionMNIST/raw holds the four verified files.

    `root` is where copies are written (default: `cache_root()`). An explicit
    `data_dir` must hold the data (as FashionMNIST/raw/ under it, or the files
    themselves, plain or .gz); it never falls back to another source.
    """
    root = cache_root() if root is None else Path(root)
    if data_dir is not None:
        data_dir = Path(data_dir)
        for folder in (raw_dir(data_dir), data_dir):
            files = _find_in(folder)
            if files is None:
                continue
            if all(p.suffix != ".gz" for p in files.values()) and folder == raw_dir(data_dir):
                return data_dir
            _materialise(files, root)
            return root
        raise DataError(
            f"--data-dir {data_dir}: the four Fashion-MNIST IDX files ({', '.join(SHA256)}, plain or .gz) are "
            f"not there nor under {raw_dir(data_dir)}; point --data-dir at the folder that holds them, "
            "or leave it out to use the copy `make data` installs"
        )

    local = _find_in(raw_dir(LOCAL_ROOT))
    if local is not None and all(p.suffix != ".gz" for p in local.values()):
        return LOCAL_ROOT
    for folder in (raw_dir(root), DEBIAN_DIR):
        files = _find_in(folder)
        if files is not None:
            _materialise(files, root)
            return root
    if raw_dir(root).is_dir() and any(raw_dir(root).iterdir()):
        missing = [n for n in SHA256 if not (raw_dir(root) / n).is_file()]
        raise DataError(f"{raw_dir(root)}: missing {', '.join(missing)}; {HOW_TO_GET}")
    if not download:
        raise DataMissing(f"Fashion-MNIST not found in {raw_dir(root)} or {DEBIAN_DIR}; {HOW_TO_GET}")
    _torchvision_download(root)
    return root


def parse_idx(data: bytes, name: str = "IDX") -> np.ndarray:
    """Parse an uncompressed IDX buffer (unsigned-byte payload) into an array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{name}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{name}: {len(data) - header} payload bytes for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load(data_dir: Path | None = None, *, root: Path | None = None, download: bool = True) -> FashionMNIST:
    """Locate, verify and load the data set as tensors."""
    try:
        return _load(data_dir, root, download)
    except OSError as exc:  # an unreadable folder, a directory where a file should be, a full disk
        where = exc.filename or data_dir or root or cache_root()
        raise DataError(f"{where}: {exc.strerror or exc}; {HOW_TO_GET}") from None


def _load(data_dir: Path | None, root: Path | None, download: bool) -> FashionMNIST:
    found = locate(data_dir, root=root, download=download)
    arrays = {}
    for name in SHA256:
        path = raw_dir(found) / name
        arrays[name] = parse_idx(_verified(path, name), str(path))
    return FashionMNIST(
        root=found,
        train_images=torch.from_numpy(arrays["train-images-idx3-ubyte"].copy()),
        train_labels=torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["t10k-images-idx3-ubyte"].copy()),
        test_labels=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        sha256=dict(SHA256),
    )


__all__ = ["DataError", "DataMissing", "FashionMNIST", "SHA256", "load", "locate", "parse_idx", "raw_dir"]


def _main() -> None:
    """`python -m fmnist_deploy.training.data [--data-dir DIR]`: locate and verify the data set, one line out."""
    import sys

    args = sys.argv[1:]
    if args not in ([],) and not (len(args) == 2 and args[0] == "--data-dir"):
        sys.exit("usage: python -m fmnist_deploy.training.data [--data-dir DIR]")
    try:
        data = load(Path(args[1]) if args else None)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    print(
        f"Fashion-MNIST verified in {raw_dir(data.root)}: "
        f"{len(data.train_labels)} training and {len(data.test_labels)} test images, sha256 OK"
    )


if __name__ == "__main__":
    _main()
