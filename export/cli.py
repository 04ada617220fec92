"""fmnist-export: write ONNX / TorchScript / .pt2 files of the trained weights, gated."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from fmnist_deploy.contract import WEIGHTS_NAME
from fmnist_deploy.errors import first_line
from fmnist_deploy.export.onnx_format import DEFAULT_OPSET, NATIVE_OPSET

FORMAT_CHOICES = ("onnx", "torchscript", "pt2", "all")
DEFAULT_WEIGHTS = Path("artifacts") / WEIGHTS_NAME


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="all", show_default=True)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_WEIGHTS,
    show_default=True,
    help="Weights file written by fmnist-train.",
)
@click.option(
    "--out-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts"), show_default=True
)
@click.option(
    "--opset",
    type=click.IntRange(min=7),
    default=None,
    help=f"ONNX opset (default {DEFAULT_OPSET}: the lowest this exporter reaches; {NATIVE_OPSET}+ is native).",
)
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also write fmnist_mlp.int8.onnx.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Test set for the gate's full parity check (default: ./data, if present).",
)
@click.option(
    "--verify",
    "verify_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Only run the gate on an existing exported FILE (writes nothing unless --report).",
)
@click.option(
    "--golden",
    "golden_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="With --verify: the golden.npz to compare with (default: the one beside FILE).",
)
@click.option(
    "--report",
    "report_to",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --verify: also write the gate report as JSON to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full gate report(s) as JSON.")
@click.version_option(package_name="fmnist-deploy", message="%(prog)s %(version)s")
@click.pass_context
def main(
    ctx: click.Context,
    fmt: str,
    weights: Path,
    out_dir: Path,
    opset: int | None,
    quantize: str | None,
    data_dir: Path | None,
    verify_path: Path | None,
    golden_path: Path | None,
    report_to: Path | None,
    as_json: bool,
) -> None:
    """Export the trained network with its normalisation baked in, then gate every file.

    Each file gets a JSON sidecar (<file>.json) and a gate report (<file>.gate.json).
    Exit status 1 if any check fails, 2 for a usage error.
    """
    from fmnist_deploy.export.api import ALL_FORMATS, run_export, verify_file
    from fmnist_deploy.export.checks import ExportError, GateError
    from fmnist_deploy.export.golden import GoldenError
    from fmnist_deploy.training.checkpoint import CheckpointError
    from fmnist_deploy.training.data import DataError

    weights_given = ctx.get_parameter_source("weights") == ParameterSource.COMMANDLINE
    if weights_given and not weights.is_file():
        raise click.BadParameter(f"{weights}: no such file", param_hint="--weights")
    if verify_path is None and (golden_path is not None or report_to is not None):
        raise click.UsageError("--golden and --report go with --verify FILE")
    try:
        if verify_path is not None:
            if not verify_path.is_file():
                raise click.BadParameter(f"{verify_path}: no such file", param_hint="--verify")
            # The default weights are used when they exist; named ones must exist (checked above).
            reports = [
                verify_file(
                    verify_path,
                    weights_path=weights if weights.is_file() else None,
                    golden_path=golden_path,
                    opset=opset,
                    data_dir=data_dir,
                    report_to=report_to,
                )
            ]
        else:
            if not weights.is_file():
                raise click.BadParameter(f"{weights}: no such file", param_hint="--weights")
            formats = ALL_FORMATS if fmt == "all" else (fmt,)
            results = run_export(
                weights, formats, out_dir, opset=opset or DEFAULT_OPSET, int8=quantize == "int8", data_dir=data_dir
            )
            reports = [r.report for r in results]
    except GateError as exc:
        _echo_reports(exc.reports, as_json)
        raise click.ClickException(first_line(exc, limit=100_000)) from None
    except (CheckpointError, ExportError, DataError, GoldenError, ValueError) as exc:
        raise click.ClickException(first_line(exc, limit=100_000)) from None
    _echo_reports(reports, as_json)


def _echo_reports(reports: list, as_json: bool) -> None:
    """Human summaries, or one JSON document: an object for one report, a list for several."""
    if as_json:
        documents = [r.to_dict() for r in reports]
        click.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
    else:
        for report in reports:
            click.echo(report.summary())


if __name__ == "__main__":
    main()
