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
import io
import os
import stat
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
from imagecodecs import SpngError, spng_decode
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_deploy.contract import IMAGE_SHAPE
from fmnist_deploy.runtime.arrays import describe
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
# Peak memory of decoding one image, per pixel of the image as declared, by mode: the decoded image
# plus the conversions and the padded square (measured at 8000 x 8000: L 248 MB, RGB 432 MB, a 32-bit
# float TIFF 1.72 GB, from a 372 KB file). The pixel limit alone lets the 32-bit modes through.
DECODE_BYTES_PER_PIXEL = {"1": 4, "L": 4, "P": 5, "RGB": 8, "RGBA": 8, "RGBX": 8, "RGBa": 8, "CMYK": 8}
WIDE_MODE_BYTES_PER_PIXEL = 28  # I, F, I;16*, and the two-band modes through their conversions
MAX_DECODE_BYTES = 768 * 1024 * 1024  # per image (times the number of decode processes)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that may precede IDAT without changing the 8-bit pixels Pillow's convert("L") sees.
PNG_NEUTRAL_CHUNKS = {b"IHDR", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"tIME"}
FAST_MAX_BYTES = 16 * 1024 * 1024  # files read whole for the fast path; larger ones stream through Pillow


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
    """One image file -> uint8 (28, 28); refuses non-images, damaged files and decompression bombs.

    A PNG of 8-bit grayscale or RGB with no transparency, palette or animation is decoded by
    libspng (through imagecodecs) from bytes read once: the same pixels Pillow gives, at a
    fraction of Pillow's per-file cost. Every other file, and any PNG libspng refuses, goes
    through Pillow, which also words the errors.
    """
    data = _small_file_bytes(path)
    if data is None:
        _require_regular(path)  # Pillow would block for ever opening a FIFO named x.png
        return _read_with_pillow(path, path, invert)
    return decode_image(data, invert=invert, name=str(path))


def decode_image(data: bytes, *, invert: bool = False, name: str = "image bytes") -> np.ndarray:
    """An image file's bytes -> uint8 (28, 28), exactly as `read_image` decodes that file; `name` goes in errors.

    For images that arrive as bytes (a request body, a Parquet cell, an archive member).
    """
    pixels = _fast_png(data)  # libspng refuses a PNG with rows missing
    if pixels is not None:
        if pixels.shape == IMAGE_SHAPE:  # already what the model takes: nothing left to do
            return 255 - pixels if invert else pixels
        img = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
        return to_model_input(img, invert=invert)
    image = _read_with_pillow(io.BytesIO(data), Path(name), invert)
    if data.startswith(PNG_SIGNATURE):
        _check_png_rows(data, Path(name))  # Pillow pads missing rows with black and answers
    return image


def _small_file_bytes(path: Path) -> bytes | None:
    """The whole file when it is at most FAST_MAX_BYTES (one fstat, one read: ~5 µs), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a FIFO named x.png never hangs the run
    except (OSError, ValueError):
        return None  # Pillow's path gives the error its usual wording
    try:
        info = os.fstat(fd)
        size = info.st_size
        if size > FAST_MAX_BYTES or not stat.S_ISREG(info.st_mode):
            return None
        data = os.read(fd, size + 1)
        return data if len(data) <= size else None  # grew while read: let Pillow stream it
    except OSError:
        return None
    finally:
        os.close(fd)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png_rows(data: bytes, path: Path) -> None:
    """Refuse a PNG whose image data holds fewer bytes than its header's rows need.

    A complete zlib stream may hold 5 of 28 rows: libspng refuses it, Pillow pads it with black
    and answers. So the IDAT stream is inflated here, at most one byte past what the header
    needs (bounded memory), and measured. Headers Pillow would refuse anyway are left to it.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return
    width, height, depth, color, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if color not in _PNG_CHANNELS or max(width, height) > MAX_SIDE or not width or not height:
        return
    bits = depth * _PNG_CHANNELS[color]
    passes = _ADAM7 if interlace == 1 else ((0, 0, 1, 1),)
    needed = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            needed += h * (1 + (w * bits + 7) // 8)
    inflate = zlib.decompressobj()
    got, offset = 0, 8
    try:
        while offset + 8 <= len(data) and got < needed:
            length, kind = struct.unpack_from(">I4s", data, offset)
            if kind == b"IDAT":
                got += len(inflate.decompress(data[offset + 8 : offset + 8 + length], needed - got))
            elif kind == b"IEND":
                break
            offset += 12 + length
    except zlib.error:
        return  # a damaged stream: Pillow refuses it and words why
    if got < needed:
        raise InputError(f"{path}: PNG image data holds {got} of the {needed} bytes its {width}x{height} header needs")


def _fast_png(data: bytes) -> np.ndarray | None:
    """The pixels of a PNG libspng decodes exactly as Pillow does (8-bit L or RGB), or None for Pillow to handle."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, color = struct.unpack_from(">IIBB", data, 16)
    if depth != 8 or color not in (0, 2):
        return None
    if max(width, height) > MAX_SIDE:
        return None  # Pillow's path words the refusal
    # Walk the chunk headers up to the first IDAT: anything that changes what Pillow makes of the
    # pixels (tRNS, PLTE, acTL for animations, an unknown chunk) sends the file to Pillow.
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind == b"IDAT":
            break
        if kind not in PNG_NEUTRAL_CHUNKS:
            return None
        offset += 12 + length
    else:
        return None
    try:
        pixels = spng_decode(data)
    except (SpngError, MemoryError, ValueError):  # libspng refuses it: Pillow then decides, and words it
        return None
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (height, width):
        return None
    return pixels


def _read_with_pillow(source: io.BytesIO | Path, path: Path, invert: bool) -> np.ndarray:
    try:
        with Image.open(source) as img:
            width, height = img.size
            if max(width, height) > MAX_SIDE:
                raise InputError(
                    f"{path}: {width}x{height} image is over the {MAX_SIDE}-pixel limit on its longest side "
                    f"(padded to a square it would be {max(width, height) ** 2 / 1e6:,.0f} Mpx)"
                )
            if img.mode not in SUPPORTED_MODES:
                raise InputError(f"{path}: unsupported mode {img.mode}; expected grayscale, RGB, CMYK or palette")
            cost = max(width, height) ** 2 * DECODE_BYTES_PER_PIXEL.get(img.mode, WIDE_MODE_BYTES_PER_PIXEL)
            if cost > MAX_DECODE_BYTES:
                raise InputError(
                    f"{path}: a {width}x{height} {img.mode} image needs ~{cost / 2**20:,.0f} MiB to decode, over the "
                    f"{MAX_DECODE_BYTES / 2**20:,.0f} MiB limit per image"
                )
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


def read_batch(path: Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """A .npy (uint8 [N,28,28] or [28,28]) or IDX (.idx/.ubyte, optionally .gz) file -> uint8 (N, 28, 28).

    `start`/`stop` select images [start, stop): of an uncompressed IDX file only those bytes are read.
    """
    _check_file_size(path)
    kind = path.suffix.lower()
    if kind == ".npy":
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
        # numpy parses the header's dict literal with the tokenizer: a damaged one raises its errors too
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, tokenize.TokenError) as exc:
            raise InputError(f"{path}: not a readable .npy file ({exc})") from None
        if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
            array.close()
            raise InputError(f"{path}: an .npz archive, not a .npy array; save one array with np.save")
        if array.dtype != np.uint8 or array.shape[-2:] != IMAGE_SHAPE or array.ndim not in (2, 3):
            raise InputError(f"{path}: expected uint8 [N,28,28] or [28,28], got {describe(array)}")
        return (array[None] if array.ndim == 2 else array)[start:stop]
    if kind != ".gz":
        return _uncompressed_idx(path, start, stop)[1]
    try:
        # Streamed: the header says how many bytes follow, which is checked against the limit before
        # they are read, so a small .gz that inflates to gigabytes never gets to allocate them.
        with gzip.open(path, "rb") as f:
            header = f.read(16)
            declared = _idx_payload_bytes(header, str(path))
            payload = f.read(declared + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: unreadable or damaged ({exc})") from None
    if len(payload) != declared:
        _payload_mismatch(path, declared, len(payload))
    return parse_idx_images(header + payload, str(path))[start:stop]


def batch_count(path: Path) -> int:
    """How many images a batch file holds, checked as read_batch checks it, without reading the images of an
    uncompressed IDX file (header and size) or a .npy file (memory-mapped); a .gz is inflated once, streamed."""
    if path.suffix.lower() in (".gz", ".npy"):
        return int(read_batch(path).shape[0])
    _check_file_size(path)
    return _uncompressed_idx(path, 0, 0)[0]


def _require_regular(path: Path) -> os.stat_result:
    """stat a path an input names; a FIFO, device, socket or folder is refused in one line, never opened."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next(
            (name for test, name in _SPECIAL if test(info.st_mode)),
            "not a regular file",
        )
        raise InputError(f"{path}: {kind}, not a regular file; refused")
    return info


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def _check_file_size(path: Path) -> None:
    size = _require_regular(path).st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES} byte limit")


def _uncompressed_idx(path: Path, start: int, stop: int | None) -> tuple[int, np.ndarray]:
    """An uncompressed IDX file's image count (header checked against the file's size) and images [start, stop),
    reading only those."""
    image_bytes = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    try:
        with open(path, "rb") as f:
            declared = _idx_payload_bytes(f.read(16), str(path))
            held = os.fstat(f.fileno()).st_size - 16
            if held != declared:
                _payload_mismatch(path, declared, held)
            first, last, _ = slice(start, stop).indices(declared // image_bytes)
            f.seek(16 + first * image_bytes)
            payload = f.read(max(0, last - first) * image_bytes)
    except OSError as exc:
        raise InputError(f"{path}: unreadable or damaged ({exc})") from None
    return declared // image_bytes, np.frombuffer(payload, dtype=np.uint8).reshape(-1, *IMAGE_SHAPE)


def _payload_mismatch(path: Path, declared: int, held: int) -> None:
    raise InputError(
        f"{path}: IDX header declares {declared} payload bytes, the file holds {'more' if held > declared else held}"
    )


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
