"""fmnist-batch: classify very large image sets on Ray Data, with fmnist-predict's exact answers.

A separate command rather than `fmnist-predict --engine ray`: a batch job always writes a
file (Parquet or JSON Lines) instead of lines for a person, has its own knobs (cluster
address, actors, batch size, resume), and needs the optional `ray` package, which
fmnist-predict's fast, torch-free start should not pay for.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import click

from fmnist_deploy import launch, options
from fmnist_deploy.models import default_model
from fmnist_deploy.runtime.input_kinds import documented


def _quiet_ray_data() -> None:
    """Ray Data's INFO lines (the execution plan, a progress block every 10 s) are for whoever debugs Ray;
    the command prints its own summary. -v keeps them."""
    import logging

    import ray.data  # noqa: F401  # configures its loggers on import: their levels are set after it

    for name in [n for n in logging.root.manager.loggerDict if n == "ray.data" or n.startswith("ray.data.")]:
        logging.getLogger(name).setLevel(logging.WARNING)


@options.command("fmnist-batch")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@options.output_file(
    "Results, one row per image: a .parquet, .jsonl or .csv file (written atomically; the columns of "
    "fmnist-predict --output), or a folder (a name "
    "without suffix) of Parquet files, one per unit of work, that Arrow and Ray read back in input order.",
    required=True,
    folder_ok=True,
)
@options.model("An .onnx file [default: the packaged fmnist_mlp.onnx].")
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join (`auto`, `ray://host:port`) [default: a local instance sized to this machine].",
)
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Predictor actors, each holding one ONNX Runtime session (never more than the job has units of work).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Images per unit of work: per model call and per part file.",
)
@options.top_k()
@options.invert()
@options.resume("Continue a killed job: skip the units whose part files it wrote.")
@options.overwrite("Start over where a killed job left part files (deletes them).")
@options.image_column()
@click.option("--id-column", default=None, help="A column of Parquet / Arrow inputs to carry into every answer.")
@documented
def main(
    inputs: tuple[Path, ...],
    output: Path,
    model: Path | None,
    address: str | None,
    actors: int,
    batch_size: int,
    top_k: int,
    invert: bool,
    resume: bool,
    image_column: str,
    id_column: str | None,
    overwrite: bool,
) -> None:
    """Classify INPUTS on Ray: {inputs}, folders of them, or .txt files listing paths.

    Every row has the input, its file and index within a batch or table file, the id
    (--id-column), the class, its probability, the top k, and an error for an input that
    could not be read: a bad file never fails the job. Exit 1 if any input failed, 2 for a
    usage error.
    """
    try:
        from fmnist_deploy.scaleout.ray_job import (
            OUTPUT_SUFFIXES,
            JobConfig,
            check_job,
            parts_folder,
            run_job,
            start_ray,
        )
    except ImportError as exc:
        raise click.ClickException(
            f"fmnist-batch needs Ray: pip install 'fmnist-deploy[scale]' ({exc.name} missing)"
        ) from None
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; give one")
    if model is not None and not model.is_file():
        raise click.BadParameter(f"{model}: no such file", param_hint="--model")
    if output.suffix and output.suffix not in OUTPUT_SUFFIXES and not output.is_dir():
        raise click.BadParameter(
            f"{output}: expected a {', '.join(OUTPUT_SUFFIXES)} file, or a folder name (no suffix)",
            param_hint="--output",
        )
    if not output.parent.is_dir():
        raise click.BadParameter(f"{output}: the folder {output.parent} does not exist", param_hint="--output")
    config = JobConfig(
        model=model or default_model("onnxruntime"),
        output=output,
        address=address,
        actors=actors,
        batch_size=batch_size,
        top_k=top_k,
        invert=invert,
        resume=resume,
        image_column=image_column,
        id_column=id_column,
    )
    if overwrite and parts_folder(config).is_dir():
        shutil.rmtree(parts_folder(config))
        options.say(f"removed {parts_folder(config)}, left by an earlier job")
    check_job(config)  # before Ray starts: a bad model or output name costs nothing
    options.detail(f"job: {config}")
    started = time.perf_counter()
    options.say(f"starting Ray: {'joining ' + address if address else 'a local instance'}…")
    try:
        with options.upstream_notes():  # Ray's own UserWarnings become one note line each
            start_ray(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise click.ClickException(f"cannot reach Ray at {address or 'a local instance'}: {exc}") from None
    ray_seconds = time.perf_counter() - started
    if options.verbosity() <= 0:
        _quiet_ray_data()
    try:
        with options.upstream_notes():  # Ray Data's UserWarnings (actor pool sizing) as one note line each
            counts = run_job(config, list(inputs))
    except KeyboardInterrupt:
        click.echo("interrupted; finished rows are kept: resume with the same command and --resume", err=True)
        sys.exit(130)
    seconds = time.perf_counter() - started - ray_seconds
    summary = {**counts, "output": str(output), "ray_start_s": round(ray_seconds, 2), "job_s": round(seconds, 2)}
    click.echo(json.dumps(summary))
    if counts["failed"]:
        options.say(f"{counts['failed']} input(s) failed: see the error column of {output}")
        sys.exit(1)


if __name__ == "__main__":
    launch.run(main)
