"""fmnist-predict: classify images with an exported model."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import click
from PIL import Image

from fmnist_deploy import launch, options
from fmnist_deploy.models import default_model
from fmnist_deploy.runtime import BACKENDS, Predictor, backend_for, load
from fmnist_deploy.runtime.input_kinds import documented
from fmnist_deploy.runtime.inputs import chunks, iter_items
from fmnist_deploy.runtime.records import OUTPUT_SUFFIXES, classify, record_writer
from fmnist_deploy.trust import Trust, trust_options

# The torch backends run with one intra-op thread unless --threads says otherwise: this network's matrices
# (784x128, 128x64) are too small to split over threads, and on a busy machine torch's default (one thread per
# core) waits for cores others hold. Measured here (2 cores, load ~1.5), eager at batch 100, 200 calls:
# default p50 342 µs, p90 8.7 ms, p99 68 ms; one thread p50 466 µs, p90 526 µs, p99 875 µs.
TORCH_BACKENDS = ("torchscript", "pt2", "eager")
CHUNK = 1024  # images per model call and per write: bounded memory for folders of any size


def _paths(given: tuple[str, ...], null: bool) -> Iterator[Path]:
    """PATHS as given; `-` stands for the paths listed on standard input, one per line (`\r\n` line ends
    accepted), or separated by NUL bytes with --null (`find -print0`)."""
    for arg in given:
        if arg == "-":
            yield from (Path(name) for name in _stdin_names(sys.stdin.buffer, null))
        else:
            yield Path(arg)


# How image files start: standard input holding one of them was piped in where paths were expected.
# (BMP, TIFF, IDX and WebP headers hold NUL bytes, which no line of file names does.)
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"\x93NUMPY")


def _stdin_names(stream: BinaryIO, null: bool) -> Iterator[str]:
    """File names from a byte stream: lines (or NUL-separated with `null`), decoded as the file system does."""
    separator = b"\0" if null else b"\n"
    pending = b""
    first = True
    while True:
        block = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if first and block:
            first = False
            if block.startswith(IMAGE_MAGIC) or (not null and b"\0" in block[:4096]):
                raise click.UsageError(
                    "standard input holds binary data, but `-` reads file names from it, one per line "
                    "(-0/--null: NUL-separated); give the image as a path instead"
                )
        if not block:
            break
        pending += block
        *names, pending = pending.split(separator)
        yield from _decoded(names, null)
    yield from _decoded([pending], null)


def _decoded(names: list[bytes], null: bool) -> Iterator[str]:
    for name in names:
        if not null:
            name = name.rstrip(b"\r")  # Windows line ends
            if not name.strip():
                continue
        elif not name:
            continue
        yield os.fsdecode(name)


def _human(record: dict[str, Any]) -> str:
    return f"{record['input']}: " + ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in record["top_k"])


@contextmanager
def _without_pillows_bomb_warning() -> Iterator[None]:
    """The size limits are this toolkit's own (MAX_SIDE, checked before decoding, refused in one line);
    Pillow's DecompressionBombWarning between 89 and 179 Mpx would print two lines of Python warning
    before that refusal. Scoped to the command's loop (the decode processes fork inside it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _check_output(output: Path, as_json: bool) -> None:
    """--output is checked before any work: its suffix, its folder, and --json's agreement with it."""
    if output.suffix not in OUTPUT_SUFFIXES:
        accepted = f"{', '.join(OUTPUT_SUFFIXES[:-1])} or {OUTPUT_SUFFIXES[-1]}"
        raise click.BadParameter(f"{output}: expected a {accepted} file", param_hint="--output")
    if output.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise click.BadParameter(
            f"{output}: Parquet needs pyarrow: pip install 'fmnist-deploy[scale]'", param_hint="--output"
        )
    if as_json and output.suffix != ".jsonl":
        raise click.UsageError(
            f"--json writes JSON Lines but --output {output} names a {output.suffix} file; "
            "name a .jsonl file, or drop --json"
        )
    if not output.parent.is_dir():
        raise click.BadParameter(f"{output}: the folder {output.parent} does not exist", param_hint="--output")


def _load(
    model: Path | None, backend: str, device: str, threads: int | None, trust: Trust
) -> tuple[Predictor, list[str]]:
    """The predictor, and the warnings its loading raised as one-line notes (TorchScript's deprecation)."""
    if model is None:
        model = default_model("onnxruntime" if backend == "auto" else backend)
    # Files are decoded by worker processes while the model runs in bursts of CHUNK images: ONNX Runtime's
    # threads spinning between bursts would take the cores the decoders need (measured: 38 -> 24 µs an
    # image on 2 cores, 12 rounds), and a command's own start-up dwarfs what spinning saves at batch 1.
    resolved = backend_for(model) if backend == "auto" else backend
    settings: dict[str, Any] = {"spinning": False} if resolved == "onnxruntime" else {}
    if threads is not None:
        settings["threads"] = threads
    elif resolved in TORCH_BACKENDS:
        settings["threads"] = 1  # see TORCH_BACKENDS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = load(model, backend=backend, device=device, trust=trust, **settings)
    notes = sorted({str(w.message).splitlines()[0] for w in caught})
    return predictor, notes


@options.command("fmnist-predict")
@click.argument("paths", nargs=-1, required=True)
@options.model(
    ".onnx, .torchscript, .pt2 or a .pt weights file [default: the packaged file for --backend; "
    "fmnist_mlp.onnx for auto]."
)
@options.backend(BACKENDS)
@options.device()
@options.threads()
@options.top_k()
@options.invert()
@options.image_column()
@options.as_json("One JSON object per input and line (JSON Lines), errors included.")
@options.output_file(
    "Write every record to FILE (.jsonl, .csv or .parquet) instead of standard output; replaced atomically."
)
@click.option("-0", "--null", is_flag=True, help="With `-`: file names on standard input end with NUL, not newline.")
@trust_options
@documented
def main(
    paths: tuple[str, ...],
    model: Path | None,
    backend: str,
    device: str,
    threads: int | None,
    top_k: int,
    invert: bool,
    image_column: str,
    as_json: bool,
    output: Path | None,
    null: bool,
    trust: Trust,
) -> None:
    """Classify PATHS: {inputs}, or folders of them (walked in sorted order); `-` reads more
    file names (not image bytes) from standard input, one per line, or NUL-separated with -0/--null.

    One line per image on stdout (with --json, one JSON record per input, failures as
    records with an "error" field); problems also on stderr. Exit 1 if any input failed,
    2 for a usage error.
    """
    if model is not None and not model.is_file():
        raise click.BadParameter(f"{model}: no such file", param_hint="--model")
    if output is not None:
        _check_output(output, as_json)
    predictor, notes = _load(model, backend, device, threads, trust)
    for note in notes:
        options.say(f"note: {note}")
    options.detail(f"model: {predictor!r}")
    failed = answered = 0
    try:
        with ExitStack() as stack:
            write = stack.enter_context(record_writer(output)) if output is not None else None
            stack.enter_context(_without_pillows_bomb_warning())
            for chunk in chunks(iter_items(_paths(paths, null), invert=invert, image_column=image_column), CHUNK):
                # One write per stream and chunk: a write per line cost more than decoding the image.
                problems = [
                    f"error: {item.error}" if item.error is not None else f"note: {item.name}: {item.note}"
                    for item in chunk
                    if item.error is not None or item.note is not None
                ]
                if problems and options.verbosity() < 0:
                    problems = [p for p in problems if p.startswith("error")]  # --quiet: errors only
                if problems:
                    click.echo("\n".join(problems), err=True)
                records = classify(chunk, predictor, top_k)
                if write is not None:
                    write(records)
                else:
                    lines = (
                        [json.dumps(r) for r in records]
                        if as_json
                        else [_human(r) for r in records if r["error"] is None]
                    )
                    if lines:
                        click.echo("\n".join(lines))
                # counted once written: an interruption mid-write reports only the answers already out
                failed += sum(record["error"] is not None for record in records)
                answered += sum(record["error"] is None for record in records)
    except KeyboardInterrupt:
        unwritten = f"; {output} was not written" if output is not None else ""
        click.echo(f"interrupted after {answered} answer(s){unwritten}", err=True)
        sys.exit(130)
    except OSError as exc:
        if output is None:
            raise
        raise click.ClickException(f"{output}: cannot write ({exc.strerror or exc})") from None
    if output is not None:
        options.say(f"wrote {failed + answered} record(s) to {output}")
    if failed + answered == 0:
        click.echo("error: no inputs", err=True)
        sys.exit(1)
    if failed:
        click.echo(f"{failed} input(s) failed", err=True)
        sys.exit(1)


if __name__ == "__main__":
    launch.run(main)
