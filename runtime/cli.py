"""fmnist-predict: classify images with an exported model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from fmnist_deploy.runtime import BACKENDS, DEVICES, RuntimeFailure, load
from fmnist_deploy.runtime.images import chunks, iter_items

CHUNK = 256  # images per model call: bounded memory for folders of any size


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=Path("artifacts/fmnist_mlp.onnx"),
    show_default=True,
    help=".onnx, .torchscript, .pt2 or a .pt weights file.",
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
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def main(
    paths: tuple[Path, ...], model: Path, backend: str, device: str, top_k: int, invert: bool, as_json: bool
) -> None:
    """Classify PATHS: image files (PNG, JPEG, BMP, GIF, TIFF, WebP, ...), .npy batches
    (uint8 [N,28,28]), IDX files, or folders of them (walked in sorted order).

    One line per image on stdout; problems on stderr. Exit 1 if any input failed.
    """
    try:
        predictor = load(model, backend=backend, device=device)
    except RuntimeFailure as exc:
        raise click.ClickException(str(exc)) from None
    failed = 0
    for chunk in chunks(iter_items(paths, invert=invert), CHUNK):
        good = [item for item in chunk if item.error is None]
        for item in chunk:
            if item.error is not None:
                failed += 1
                click.echo(f"error: {item.error}", err=True)
        if not good:
            continue
        prediction = predictor.predict(np.stack([item.image for item in good]))
        for item, top in zip(good, prediction.top_k(top_k, predictor.class_names), strict=True):
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "input": item.name,
                            "class": top[0][0],
                            "probability": round(top[0][1], 6),
                            "top_k": [{"class": c, "probability": round(p, 6)} for c, p in top],
                        }
                    )
                )
            else:
                click.echo(f"{item.name}: " + ", ".join(f"{c} ({p:.3f})" for c, p in top))
    if failed:
        click.echo(f"{failed} input(s) failed", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
