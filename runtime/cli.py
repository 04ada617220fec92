"""fmnist-predict: classify images with an exported model."""

from __future__ import annotations

import csv
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from fmnist_deploy import launch
from fmnist_deploy.atomic import atomic_path
from fmnist_deploy.models import default_model
from fmnist_deploy.runtime import BACKENDS, DEVICES, Predictor, backend_for, load
from fmnist_deploy.runtime.inputs import Item, chunks, iter_items
from fmnist_deploy.trust import Trust, trust_options

CHUNK = 1024  # images per model call and per write: bounded memory for folders of any size
OUTPUT_SUFFIXES = (".jsonl", ".csv")
CSV_FIELDS = ("input", "class", "probability", "top_k", "error")


def _paths(given: tuple[str, ...]) -> Iterator[Path]:
    """PATHS as given; `-` stands for the paths listed on standard input, one per line."""
    for arg in given:
        if arg == "-":
            for line in sys.stdin:
                if line.strip():
                    yield Path(line.rstrip("\n"))
        else:
            yield Path(arg)


def rows(chunk: list[Item], predictor: Predictor, top_k: int) -> list[dict[str, Any]]:
    """One record per item of a chunk, in input order: the answer, or the reason there is none."""
    good = [item.image for item in chunk if item.error is None]
    answers = iter(predictor.predict(np.stack(good)).top_k(top_k) if good else [])
    records = []
    for item in chunk:
        if item.error is not None:
            records.append({"input": item.name, "error": item.error})
            continue
        top = [{"class": c, "probability": round(p, 6)} for c, p in next(answers)]
        records.append(
            {"input": item.name, "class": top[0]["class"], "probability": top[0]["probability"], "top_k": top}
        )
    return records


def _human(record: dict[str, Any]) -> str:
    return f"{record['input']}: " + ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in record["top_k"])


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    top = ";".join(f"{t['class']}:{t['probability']}" for t in record.get("top_k", []))
    return {
        "input": record["input"],
        "class": record.get("class", ""),
        "probability": record.get("probability", ""),
        "top_k": top,
        "error": record.get("error", ""),
    }


def _write_output(path: Path, records: list[dict[str, Any]]) -> None:
    """All records into a .jsonl or .csv file, atomically: a failed run leaves no half file."""
    with _output_stream(path) as write:
        write(records)


@contextmanager
def _output_stream(path: Path) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """A writer of records into a .jsonl or .csv file, streamed chunk by chunk into a temporary file that
    replaces `path` only when the block ends without an error: memory holds one chunk, never every answer,
    and a failed or interrupted run leaves no half file."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":

            def write(records: list[dict[str, Any]]) -> None:
                f.write("".join(json.dumps(r) + "\n" for r in records))

        else:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
            writer.writeheader()

            def write(records: list[dict[str, Any]]) -> None:
                writer.writerows(_csv_row(r) for r in records)

        yield write


@contextmanager
def _without_pillows_bomb_warning() -> Iterator[None]:
    """The size limits are this toolkit's own (MAX_SIDE, checked before decoding, refused in one line);
    Pillow's DecompressionBombWarning between 89 and 179 Mpx would print two lines of Python warning
    before that refusal. Scoped to the command's loop (the decode processes fork inside it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _load(model: Path | None, backend: str, device: str, trust: Trust) -> tuple[Predictor, list[str]]:
    """The predictor, and the warnings its loading raised as one-line notes (TorchScript's deprecation)."""
    if model is None:
        model = default_model("onnxruntime" if backend == "auto" else backend)
    # Files are decoded by worker processes while the model runs in bursts of CHUNK images: ONNX Runtime's
    # threads spinning between bursts would take the cores the decoders need (measured: 38 -> 24 µs an
    # image on 2 cores, 12 rounds), and a command's own start-up dwarfs what spinning saves at batch 1.
    resolved = backend_for(model) if backend == "auto" else backend
    options = {"spinning": False} if resolved == "onnxruntime" else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = load(model, backend=backend, device=device, trust=trust, **options)
    notes = sorted({str(w.message).splitlines()[0] for w in caught})
    return predictor, notes


@click.command(cls=launch.Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--model",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=".onnx, .torchscript, .pt2 or a .pt weights file [default: the packaged file for --backend; "
    "fmnist_mlp.onnx for auto].",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", *BACKENDS]),
    default="auto",
    show_default=True,
    help="auto = from the model file's suffix.",
)
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--top-k", type=click.IntRange(1, 10), default=1, show_default=True)
@click.option("--invert", is_flag=True, help="Input is dark-on-light (photos, scans); Fashion-MNIST is light-on-dark.")
@click.option(
    "--image-column",
    default="image",
    show_default=True,
    help="The image-bytes column of Parquet / Arrow inputs (binary, or Hugging Face's {bytes, path} struct).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per input and line (JSON Lines), errors included."
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write every record to FILE (.jsonl or .csv) instead of standard output.",
)
@trust_options
@click.version_option(package_name="fmnist-deploy", message="%(prog)s %(version)s")
def main(
    paths: tuple[str, ...],
    model: Path | None,
    backend: str,
    device: str,
    top_k: int,
    invert: bool,
    image_column: str,
    as_json: bool,
    output: Path | None,
    trust: Trust,
) -> None:
    """Classify PATHS: image files (PNG, JPEG, BMP, GIF, TIFF, WebP, ...), .npy batches
    (uint8 [N,28,28]), IDX files, Parquet / Arrow tables of image bytes, or folders of them
    (walked in sorted order); `-` reads more paths from standard input, one per line.

    One line per image on stdout (with --json, one JSON record per input, failures as
    records with an "error" field); problems also on stderr. Exit 1 if any input failed,
    2 for a usage error.
    """
    if model is not None and not model.is_file():
        raise click.BadParameter(f"{model}: no such file", param_hint="--model")
    if output is not None and output.suffix not in OUTPUT_SUFFIXES:
        raise click.BadParameter(f"{output}: expected a {' or '.join(OUTPUT_SUFFIXES)} file", param_hint="--output")
    predictor, notes = _load(model, backend, device, trust)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    failed = answered = 0
    try:
        with ExitStack() as stack:
            write = stack.enter_context(_output_stream(output)) if output is not None else None
            stack.enter_context(_without_pillows_bomb_warning())
            for chunk in chunks(iter_items(_paths(paths), invert=invert, image_column=image_column), CHUNK):
                # One write per stream and chunk: a write per line cost more than decoding the image.
                problems = [
                    f"error: {item.error}" if item.error is not None else f"note: {item.name}: {item.note}"
                    for item in chunk
                    if item.error is not None or item.note is not None
                ]
                if problems:
                    click.echo("\n".join(problems), err=True)
                records = rows(chunk, predictor, top_k)
                if write is not None:
                    write(records)
                else:
                    lines = (
                        [json.dumps(r) for r in records]
                        if as_json
                        else [_human(r) for r in records if "error" not in r]
                    )
                    if lines:
                        click.echo("\n".join(lines))
                # counted once written: an interruption mid-write reports only the answers already out
                failed += sum("error" in record for record in records)
                answered += sum("error" not in record for record in records)
    except KeyboardInterrupt:
        unwritten = f"; {output} was not written" if output is not None else ""
        click.echo(f"interrupted after {answered} answer(s){unwritten}", err=True)
        sys.exit(130)
    except OSError as exc:
        if output is None:
            raise
        raise click.ClickException(f"{output}: cannot write ({exc.strerror or exc})") from None
    if output is not None:
        click.echo(f"wrote {failed + answered} record(s) to {output}", err=True)
    if failed + answered == 0:
        click.echo("error: no inputs", err=True)
        sys.exit(1)
    if failed:
        click.echo(f"{failed} input(s) failed", err=True)
        sys.exit(1)


if __name__ == "__main__":
    launch.run(main)
