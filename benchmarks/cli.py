"""fmnist-bench: training speed, latency/throughput, parity across backends."""

from __future__ import annotations

import json
from pathlib import Path

import click

from training.atomic import write_text_atomic

BENCH_DIR = Path("artifacts/bench")


def _write_reports(out_dir: Path, stem: str, report: dict, markdown: str) -> None:
    write_text_atomic(out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out_dir / f"{stem}.md", markdown)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks of the fmnist-deploy toolkit; reports go to --out-dir as JSON and Markdown."""


@main.command("train")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--reference-epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--fast-epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--limit", type=click.IntRange(min=100, max=60000), default=None, help="Time on the first N images only.")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=BENCH_DIR, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
def train_cmd(device: str, data_dir: Path | None, reference_epochs: int, fast_epochs: int,
              limit: int | None, out_dir: Path, as_json: bool) -> None:
    """Seconds per epoch: course DataLoader loop vs fast loader vs bare SGD steps."""
    from benchmarks.train_speed import measure, to_markdown
    from training.data import DataError, load
    from training.loop import TrainingError, resolve_device

    try:
        torch_device = resolve_device(device)
        data = load(data_dir)
    except (DataError, TrainingError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Timing {fast_epochs} fast and {reference_epochs} reference epoch(s) on {torch_device}…", err=True)
    report = measure(data, device=torch_device, reference_epochs=reference_epochs, fast_epochs=fast_epochs, limit=limit)
    markdown = to_markdown(report)
    stem = "train_speed" if torch_device.type == "cpu" else f"train_speed_{torch_device.type}"
    _write_reports(out_dir, stem, report, markdown)
    click.echo(json.dumps(report, indent=2) if as_json else markdown)
