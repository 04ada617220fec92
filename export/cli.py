"""fmnist-export: write ONNX / TorchScript / .pt2 files of the trained weights, gated."""

from __future__ import annotations

import json
from pathlib import Path

import click

from export.onnx_format import DEFAULT_OPSET, NATIVE_OPSET

FORMAT_CHOICES = ("onnx", "torchscript", "pt2", "all")


def _fail(exc: Exception) -> click.ClickException:
    from export.checks import first_line

    return click.ClickException(first_line(exc, limit=100_000))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="all", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=False), default=Path("artifacts/fmnist_mlp.pt"),
              show_default=True, help="Weights file written by fmnist-train.")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts"), show_default=True)
@click.option("--opset", type=click.IntRange(min=7), default=None,
              help=f"ONNX opset (default {DEFAULT_OPSET}: the lowest this exporter reaches; {NATIVE_OPSET}+ is native).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also write fmnist_mlp.int8.onnx.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Test set for the gate's full parity check (default: ./data, if present).")
@click.option("--verify", "verify_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Only run the gate on an existing exported FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the full gate report(s) as JSON.")
def main(fmt: str, weights: Path, out_dir: Path, opset: int | None, quantize: str | None, data_dir: Path | None,
         verify_path: Path | None, as_json: bool) -> None:
    """Export the trained network with its normalisation baked in, then gate every file.

    Each file gets a JSON sidecar (<file>.json) and a gate report (<file>.gate.json).
    Exit status 1 if any check fails.
    """
    from export.api import ALL_FORMATS, run_export, verify_file
    from export.checks import ExportError, GateError
    from training.checkpoint import CheckpointError
    from training.data import DataError

    try:
        if verify_path is not None:
            if not verify_path.is_file():
                raise click.BadParameter(f"{verify_path}: no such file", param_hint="--verify")
            reports = [verify_file(verify_path, weights_path=weights if weights.is_file() else None, opset=opset,
                                   data_dir=data_dir)]
        else:
            formats = ALL_FORMATS if fmt == "all" else (fmt,)
            results = run_export(weights, formats, out_dir, opset=opset or DEFAULT_OPSET, int8=quantize == "int8",
                                 data_dir=data_dir)
            reports = [r.report for r in results]
    except GateError as exc:
        for report in exc.reports:
            click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
        raise _fail(exc) from None
    except (CheckpointError, ExportError, DataError, ValueError) as exc:
        raise _fail(exc) from None
    for report in reports:
        click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())


if __name__ == "__main__":
    main()
