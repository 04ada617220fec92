"""fmnist-export: write ONNX / TorchScript / .pt2 files of the trained weights, gated."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import click

from fmnist_deploy import launch, options
from fmnist_deploy.contract import GOLDEN_NAME, SAMPLES_DIR, WEIGHTS_NAME, sidecar_path
from fmnist_deploy.export.gate import report_path
from fmnist_deploy.export.onnx_format import DEFAULT_OPSET, MAX_OPSET, NATIVE_OPSET
from fmnist_deploy.kinds import KIND, exported_kinds
from fmnist_deploy.models import models_dir
from fmnist_deploy.trust import Trust, trust_options

# every kind with an exporter (fmnist_deploy.kinds), all (the portable, reproducible set), then the folder kinds
FORMAT_CHOICES = (
    *(k.name for k in exported_kinds() if not k.folder),
    "all",
    *(k.name for k in exported_kinds() if k.folder),
)
DEFAULT_WEIGHTS = Path("artifacts") / WEIGHTS_NAME


@options.command("fmnist-export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMAT_CHOICES),
    default="all",
    show_default=True,
    help="all = onnx, torchscript and pt2 (files for any machine); triton = a Triton model repository; "
    "aoti = an AOTInductor package compiled for this machine's CPU (~1 minute); int8 and ort (ONNX Runtime's "
    "format, for mobile and minimal builds) are made from the ONNX file, written too.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Weights file written by fmnist-train [default: {DEFAULT_WEIGHTS} when this folder has one, "
    "else the weights installed with the package].",
)
@options.output_folder(
    "Folder for the exported files (for --format triton: the model repository).",
    default=Path("artifacts"),
    aliases=("--out-dir",),
)
@click.option(
    "--opset",
    type=click.IntRange(min=DEFAULT_OPSET, max=MAX_OPSET),
    default=None,
    help=f"ONNX opset, {DEFAULT_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET}: the lowest this exporter reaches; "
    f"{NATIVE_OPSET}+ is native).",
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
@click.option(
    "--sign",
    "sign_key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Sign every model file written with this elliptic-curve private key (PEM; OpenSSF model-signing): "
    "<file>.sig, verified by --trusted-key PUB where the file is loaded.",
)
@trust_options(code_aliases=("--trust-native-code",))
@options.as_json("Print the full gate report(s) as JSON.")
@click.pass_context
def main(
    ctx: click.Context,
    fmt: str,
    weights: Path | None,
    output: Path,
    opset: int | None,
    quantize: str | None,
    data_dir: Path | None,
    verify_path: Path | None,
    golden_path: Path | None,
    report_to: Path | None,
    sign_key: Path | None,
    as_json: bool,
    trust: Trust,
) -> None:
    """Export the trained network with its normalisation baked in, then gate every file.

    Each file gets a JSON sidecar (<file>.json) and a gate report (<file>.gate.json).
    Exit status 1 if any check fails, 2 for a usage error.
    """
    from fmnist_deploy.export.api import ALL_FORMATS, run_export, verify_file
    from fmnist_deploy.export.checks import GateError
    from fmnist_deploy.export.gate import write_report

    out_dir = output
    # Every input is checked before any work or write.
    weights_given = weights is not None
    if weights is None:
        # An export starts from the packaged weights where this folder has none; --verify compares a file with
        # the weights it came from, which only the user knows: there the packaged ones would be a guess.
        packaged = models_dir() / WEIGHTS_NAME
        weights = DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() or verify_path is not None else packaged
        options.detail(f"weights: {weights}")
    if (weights_given or verify_path is None) and not weights.is_file():
        raise click.BadParameter(f"{weights}: no such file", param_hint="--weights")
    if verify_path is None and (golden_path is not None or report_to is not None):
        raise click.UsageError("--golden and --report go with --verify FILE")
    if verify_path is not None and not verify_path.is_file():
        raise click.BadParameter(f"{verify_path}: no such file", param_hint="--verify")
    if quantize == "int8" and fmt not in ("onnx", "all"):
        raise click.BadParameter(
            f"int8 quantises the ONNX file: use it with --format onnx or all, not {fmt}", param_hint="--quantize"
        )
    started = time.perf_counter()

    def progress(step: str) -> None:
        if not as_json:
            options.say(f"[{time.perf_counter() - started:5.1f}s] {step}")

    try:
        if verify_path is not None:
            # The default weights are used when they exist; named ones must exist (checked above).
            report = verify_file(
                verify_path,
                weights_path=weights if weights.is_file() else None,
                golden_path=golden_path,
                opset=opset,
                data_dir=data_dir,
                trust=trust,
            )
            _echo_reports([report], as_json)  # the verdict first, then anything written
            if report_to is not None:
                write_report(report_to, report)
                options.say(f"report written to {report_to}")
            if not report.passed:
                raise GateError(report)
            return
        if fmt in KIND and KIND[fmt].folder:
            _export_folder(fmt, weights, out_dir, opset or DEFAULT_OPSET, data_dir, progress, as_json)
            return
        formats = ALL_FORMATS if fmt == "all" else (fmt,)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = run_export(
                weights,
                formats,
                out_dir,
                opset=opset or DEFAULT_OPSET,
                int8=quantize == "int8",
                data_dir=data_dir,
                progress=progress,
                sign_key=sign_key,
            )
    except GateError as exc:  # the reports first, then the one error line
        if verify_path is None:
            _echo_reports(exc.reports, as_json)
        # Each failed check's detail was printed with its report above: the error line only names them.
        failed = "; ".join(
            f"{r.file} failed the export gate: {', '.join(c.name for c in r.failures)}" for r in exc.reports
        )
        failure = click.ClickException(f"{failed} (the details are above)")
        failure.exit_code = exc.exit_code
        raise failure from None
    except OSError as exc:
        raise click.ClickException(f"cannot write to {exc.filename or out_dir}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        click.echo(
            "interrupted: every file is written atomically, so each one is either complete or untouched", err=True
        )
        sys.exit(130)
    for note in sorted({str(w.message).splitlines()[0] for w in caught}):
        options.say(f"note: {note}")  # TorchScript's deprecation, once instead of at every call
    _echo_reports([r.report for r in results], as_json)
    if not as_json:
        _echo_written([r.path for r in results])


def _export_folder(
    fmt: str, weights: Path, repository: Path, opset: int, data_dir: Path | None, progress, as_json: bool
) -> None:
    """A folder kind (`--format triton`, fmnist_deploy.kinds): the file it is made from, exported and gated in a
    scratch folder, derived into the output folder itself; its report is that file's gate report (named by
    the copy inside the folder) plus the folder's own checks (for Triton: config.pbtxt parsed as Triton's
    ModelConfig, labels, the model file)."""
    import tempfile

    from fmnist_deploy.export.api import run_export
    from fmnist_deploy.export.checks import GateError
    from fmnist_deploy.export.formats import FORMATS

    kind, exporter = KIND[fmt], FORMATS[fmt]
    folder = repository / kind.file_name
    with tempfile.TemporaryDirectory() as scratch:
        (result,) = run_export(
            weights, (kind.source,), Path(scratch), opset=opset, data_dir=data_dir, progress=progress
        )
        progress(f"writing the {kind.description.removeprefix('a ')} into {repository}")
        exporter.derive(result.path, folder)
    written = exporter.written(folder)
    report = result.report
    report.file = str(exporter.model_file(folder))
    report.checks.extend(exporter.structure_checks(folder, opset))
    _echo_reports([report], as_json)
    if not report.passed:
        raise GateError(report)
    if not as_json:
        click.echo("\nwrote:")
        for path in written:
            click.echo(f"  {path.resolve()}  ({path.stat().st_size:,} bytes)")
        click.echo(
            f"next: fmnist-serve --model-repository {repository}   (or: tritonserver --model-repository "
            f"{repository.resolve()})"
        )


def _echo_reports(reports: list, as_json: bool) -> None:
    """Human summaries, or one JSON document: an object for one report, a list for several."""
    if as_json:
        documents = [r.to_dict() for r in reports]
        click.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
    else:
        for report in reports:
            click.echo(report.summary())


def _echo_written(paths: list[Path]) -> None:
    """What was written, where, how large, and the command to try it with."""
    from fmnist_deploy.export.formats import FORMATS, format_of

    click.echo("\nwrote:")
    for path in paths:
        companions = getattr(FORMATS[format_of(path)], "companions", lambda _: [])(path)  # files beside the file
        for written in (path, sidecar_path(path), report_path(path), *companions):
            click.echo(f"  {written.resolve()}  ({written.stat().st_size:,} bytes)")
    first = paths[0].resolve()
    for golden in (first.parent / GOLDEN_NAME, (first.parent / GOLDEN_NAME).with_suffix(".json")):
        if golden.is_file():
            click.echo(f"  {golden}  ({golden.stat().st_size:,} bytes)")
    samples = sorted((first.parent / SAMPLES_DIR).glob("*.png"))
    click.echo(f"  {first.parent / SAMPLES_DIR}/  ({len(samples)} sample images)")
    image = samples[0] if samples else "IMAGE.png"
    if KIND[format_of(first)].native_code:  # an AOTInductor package: the runtime does not load one
        click.echo(
            f"next: fmnist-bench latency --backend aoti --aoti-package {first}, or load it from C++ with "
            "torch::inductor::AOTIModelPackageLoader"
        )
    else:
        click.echo(f"next: fmnist-predict {image} --model {first}")


if __name__ == "__main__":
    launch.run(main)
