"""Turn files into model input: images of any kind, .npy batches, IDX files, folders.

Images: the first frame, composited onto black (onto white with `invert`, which
then turns it dark) when it has transparency, 16-bit scaled to 8-bit, converted to
8-bit grayscale (ITU-R 601-2 luma), padded to a square with the mean of its border
pixels so the garment keeps its aspect ratio, resized to 28x28 with Lanczos
(antialiased) resampling. `invert` turns dark-on-light photos into Fashion-MNIST's
light-on-dark.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_deploy.runtime.base import IMAGE_SHAPE, describe
from fmnist_deploy.runtime.errors import InputError

# Limits checked from the header, before any pixel is decoded. Padding to a square makes the
# working image max(width, height)^2 pixels, so the longest side is bounded, not just the area:
# a 64000 x 1000 image would otherwise pad to 4 Gpx.
MAX_SIDE = 8000
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # 64 Mpx: the padded square, and so the decoded image too
MAX_FILE_BYTES = 512 * 1024 * 1024  # a .npy or (uncompressed) IDX batch file
# Modes Pillow can turn into 8-bit luma here; others (LAB, HSV, YCbCr...) are refused by name.
SUPPORTED_MODES = {
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBX",
    "RGBa",
    "CMYK",
    "La",
    "I",
    "I;16",
    "I;16B",
    "I;16L",
    "I;16N",
    "F",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
BATCH_SUFFIXES = {".npy", ".idx", ".ubyte", ".gz"}


@dataclass(frozen=True)
class Item:
    """One image ready for the model, or the reason it is not."""

    name: str
    image: np.ndarray | None  # (28, 28) uint8
    error: str | None = None
    note: str | None = None  # a hint about a good input (e.g. it may want --invert)


def _to_gray(img: Image.Image, invert: bool) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(array * 255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        if not np.isfinite(array).all():
            raise InputError("has non-finite (NaN or infinite) pixel values")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" or img.mode == "LA" or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255) if invert else (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L")


def to_model_input(img: Image.Image, *, invert: bool = False) -> np.ndarray:
    """A decoded Pillow image -> uint8 (28, 28) raw pixels as the model expects (pure)."""
    gray = _to_gray(img, invert)
    width, height = gray.size
    if (width, height) != IMAGE_SHAPE[::-1]:
        array = np.asarray(gray)
        border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
        side = max(width, height)
        fill = int(round(float(border.mean())))
        gray = ImageOps.pad(gray, (side, side), color=fill, centering=(0.5, 0.5)) if width != height else gray
        gray = gray.resize(IMAGE_SHAPE[::-1], Image.Resampling.LANCZOS)
    array = np.asarray(gray, dtype=np.uint8)
    return 255 - array if invert else array.copy()


def read_image(path: Path, *, invert: bool = False) -> np.ndarray:
    """One image file -> uint8 (28, 28); refuses non-images, damaged files and decompression bombs."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if max(width, height) > MAX_SIDE:
                raise InputError(
                    f"{path}: {width}x{height} image is over the {MAX_SIDE}-pixel limit on its longest side "
                    f"(padded to a square it would be {max(width, height) ** 2 / 1e6:,.0f} Mpx)"
                )
            if img.mode not in SUPPORTED_MODES:
                raise InputError(f"{path}: unsupported mode {img.mode}; expected grayscale, RGB, CMYK or palette")
            img.seek(0)  # first frame of animations
            img.load()
            try:
                return to_model_input(img, invert=invert)
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
    except MemoryError:
        raise InputError(f"{path}: too large to decode in the memory available") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: damaged or truncated image ({exc})") from None


def parse_idx_images(data: bytes, name: str) -> np.ndarray:
    """An uncompressed IDX unsigned-byte file of shape (N, 28, 28) -> uint8 array."""
    if len(data) < 16 or data[:3] != b"\x00\x00\x08" or data[3] != 3:
        raise InputError(f"{name}: not an IDX image file (expected magic 00000803, got {data[:4].hex()})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    if shape[1:] != IMAGE_SHAPE or len(data) != 16 + shape[0] * 28 * 28:
        raise InputError(
            f"{name}: IDX header says {list(shape)} with {len(data) - 16} payload bytes; expected [N,28,28]"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(shape)


def read_batch(path: Path) -> np.ndarray:
    """A .npy (uint8 [N,28,28] or [28,28]) or IDX (.idx/.ubyte, optionally .gz) file -> uint8 (N, 28, 28)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes is over the {MAX_FILE_BYTES} byte limit")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path}: not a readable .npy file ({exc})") from None
        if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
            array.close()
            raise InputError(f"{path}: an .npz archive, not a .npy array; save one array with np.save")
        if array.dtype != np.uint8 or array.shape[-2:] != IMAGE_SHAPE or array.ndim not in (2, 3):
            raise InputError(f"{path}: expected uint8 [N,28,28] or [28,28], got {describe(array)}")
        return array[None] if array.ndim == 2 else array
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        # Streamed: the header says how many bytes follow, which is checked against the limit before
        # they are read, so a small .gz that inflates to gigabytes never gets to allocate them.
        with opener(path, "rb") as f:
            header = f.read(16)
            declared = _idx_payload_bytes(header, str(path))
            payload = f.read(declared + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: unreadable or damaged ({exc})") from None
    if len(payload) != declared:
        raise InputError(
            f"{path}: IDX header declares {declared} payload bytes, the file holds "
            f"{'more' if len(payload) > declared else len(payload)}"
        )
    return parse_idx_images(header + payload, str(path))


def _idx_payload_bytes(header: bytes, name: str) -> int:
    """The payload size an IDX image header declares, refused above MAX_FILE_BYTES."""
    if len(header) < 16 or header[:3] != b"\x00\x00\x08" or header[3] != 3:
        raise InputError(f"{name}: not an IDX image file (expected magic 00000803, got {header[:4].hex()})")
    n, rows, cols = (int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    if (rows, cols) != IMAGE_SHAPE:
        raise InputError(f"{name}: IDX header says [{n},{rows},{cols}]; expected [N,28,28]")
    if 16 + n * rows * cols > MAX_FILE_BYTES:
        raise InputError(f"{name}: IDX header declares {n} images, over the {MAX_FILE_BYTES} byte limit")
    return n * rows * cols


def is_batch_file(path: Path) -> bool:
    """Whether a path names a .npy / IDX batch file rather than an image."""
    return path.suffix in BATCH_SUFFIXES or "idx3" in path.name


def walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and the files under folders named, each folder walked in sorted order.

    A folder with no image or batch file under it is yielded itself, so that the caller
    reports it rather than answering nothing.
    """
    for path in paths:
        if path.is_dir():
            found = False
            for child in sorted(path.rglob("*")):
                if child.is_file() and (child.suffix.lower() in IMAGE_SUFFIXES or is_batch_file(child)):
                    found = True
                    yield child
            if not found:
                yield path
        else:
            yield path


def looks_dark_on_light(image: np.ndarray) -> bool:
    """True when a (28, 28) model input has a bright border: probably a photo or scan that wants --invert."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return float(border.mean()) > 127.5


def iter_items(paths: Iterable[Path], *, invert: bool = False) -> Iterator[Item]:
    """Every image of every input, one at a time; a bad input becomes an Item with its error."""
    for path in walk(paths):
        if path.is_dir():
            yield Item(str(path), None, f"{path}: no images found under this folder")
            continue
        if not path.exists():
            yield Item(str(path), None, f"{path}: no such file or folder")
            continue
        try:
            if is_batch_file(path):
                batch = read_batch(path)
                if batch.shape[0] == 0:
                    raise InputError(f"{path}: holds no images (shape {list(batch.shape)})")
                for i in range(batch.shape[0]):
                    image = np.asarray(batch[i])
                    yield Item(f"{path}[{i}]", 255 - image if invert else image)
            else:
                image = read_image(path, invert=invert)
                note = None
                if not invert and looks_dark_on_light(image):
                    note = "looks dark-on-light (bright border); Fashion-MNIST is light-on-dark: pass --invert for photos and scans"
                yield Item(str(path), image, note=note)
        except InputError as exc:
            yield Item(str(path), None, str(exc))
        except MemoryError:  # one input's failure never costs the others their answers
            yield Item(str(path), None, f"{path}: too large to decode in the memory available")


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of at most `size` items: bounded memory for any number of files."""
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
