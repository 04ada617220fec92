"""Do the committed TorchScript / .pt2 files load in this torch? If not, re-export them here, gated.

A GPU machine brings its own torch (the H200 image: 2.11), older or newer than the one the
files were exported with. Files a torch cannot read are re-exported from the weights in
this torch, through the same gate as `fmnist-export`, into a copy of the artifacts
folder; both torch versions are recorded in `reexport.json` there. The folder the run
should use is printed on standard output; one line per re-exported file on stderr.

    python -m fmnist_deploy.benchmarks.reexport --artifacts artifacts --output OUT/models [--data-dir DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from fmnist_deploy.contract import WEIGHTS_NAME, sidecar_path
from fmnist_deploy.kinds import KIND

KINDS = ("torchscript", "pt2")  # the files whose loading depends on the torch version; ONNX does not


def exported_with(path: Path) -> str | None:
    """The torch version a file's sidecar says it was exported with, if it says."""
    try:
        return json.loads(sidecar_path(path).read_text(encoding="utf-8"))["exporter"]["torch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unloadable(artifacts: Path) -> dict[str, str]:
    """{kind: why} for each torch file of `artifacts` that this torch cannot load (on the CPU)."""
    from fmnist_deploy import runtime
    from fmnist_deploy.errors import first_line

    failed = {}
    for kind in KINDS:
        try:
            runtime.load(artifacts / KIND[kind].file_name, trust=runtime.Trust(code=True))  # the user's own
        except runtime.RuntimeFailure as exc:
            failed[kind] = first_line(exc, 200)
    return failed


def check_and_reexport(artifacts: Path, out: Path, data_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The artifacts folder the run should use, and the record of what was re-exported (empty when nothing)."""
    import torch

    from fmnist_deploy.export.api import run_export

    failed = unloadable(artifacts)
    if not failed:
        return artifacts, {}
    shutil.copytree(artifacts, out, dirs_exist_ok=True)
    record: dict[str, Any] = {"torch_here": torch.__version__, "files": {}}
    for kind, why in failed.items():
        name = KIND[kind].file_name
        before = exported_with(artifacts / name)
        click.echo(
            f"{name} does not load in torch {torch.__version__} (exported with torch {before or 'unknown'}: {why}); "
            "re-exporting it here from the weights",
            err=True,
        )
        run_export(artifacts / WEIGHTS_NAME, (kind,), out, data_dir=data_dir)  # gated: raises GateError on a failure
        record["files"][name] = {"torch_exported_with": before, "torch_reexported_with": torch.__version__, "why": why}
    (out / "reexport.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out, record


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--artifacts", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True)
@click.option(
    "--output", "out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Where re-exports go."
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
def main(artifacts: Path, out: Path, data_dir: Path | None) -> None:
    """Print the artifacts folder to use: ARTIFACTS, or OUT holding files re-exported in this torch."""
    from fmnist_deploy.export.checks import ExportError, GateError

    try:
        folder, _ = check_and_reexport(artifacts, out, data_dir)
    except (ExportError, GateError) as exc:  # a re-export that fails its gate is not used
        raise click.ClickException(f"re-export failed: {exc}") from None
    click.echo(str(folder))


if __name__ == "__main__":
    sys.exit(main())
