"""fmnist-bench: training speed, latency/throughput, parity across backends."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fmnist_deploy import launch, options
from fmnist_deploy.atomic import write_text_atomic
from fmnist_deploy.contract import SAMPLES_DIR, WEIGHTS_NAME
from fmnist_deploy.models import cache_root, models_dir

# Quick runs write here; `make bench` passes --output artifacts/bench to refresh the committed reports.
OUTPUT_HELP = "Folder for the reports [default: $XDG_CACHE_HOME/fmnist-deploy/bench, i.e. ~/.cache/...]."


def _out_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return options.output_folder(OUTPUT_HELP, aliases=("--out-dir",))(fn)


def _data_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return options.data_dir()(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return options.as_json("Print the report as one JSON document.")(fn)


def _devices_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return options.devices()(fn)


def _artifacts_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return options.artifacts()(fn)


def _finish(
    report: dict,
    markdown: str,
    as_json: bool,
    output: Path | None,
    stem: str,
    extra: dict[str, Callable[[Path], None]] | None = None,
) -> None:
    """Print the result first, then write the reports: a write failure never costs the measurement."""
    click.echo(json.dumps(report, indent=2) if as_json else markdown)
    folder = output if output is not None else cache_root() / "bench"
    try:
        write_text_atomic(folder / f"{stem}.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(folder / f"{stem}.md", markdown)
        for suffix, write in (extra or {}).items():
            write(folder / f"{stem}{suffix}")
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the reports to {folder}: {exc.strerror or exc} (the results above are complete)"
        ) from None
    options.say(f"reports written to {folder}/{stem}.*")


@options.group("fmnist-bench")
def main() -> None:
    """Benchmarks of the fmnist-deploy toolkit; reports go to --output as JSON and Markdown."""


@main.command("train")
@options.device(auto=True)
@_data_dir_option
@click.option("--reference-epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--fast-epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--limit", type=click.IntRange(min=100, max=60000), default=None, help="Time on the first N images only.")
@_out_dir_option
@_json_option
def train_cmd(
    device: str,
    data_dir: Path | None,
    reference_epochs: int,
    fast_epochs: int,
    limit: int | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Seconds per epoch: course DataLoader loop vs fast loader vs bare SGD steps."""
    from fmnist_deploy.benchmarks.train_speed import measure, to_markdown
    from fmnist_deploy.training.data import load
    from fmnist_deploy.training.loop import resolve_device

    torch_device = resolve_device(device)
    data = load(data_dir)
    options.say(f"Timing {fast_epochs} fast and {reference_epochs} reference epoch(s) on {torch_device}…")
    report = measure(data, device=torch_device, reference_epochs=reference_epochs, fast_epochs=fast_epochs, limit=limit)
    stem = "train_speed" if torch_device.type == "cpu" else f"train_speed_{torch_device.type}"
    _finish(report, to_markdown(report), as_json, output, stem)


def _test_set(data_dir: Path | None):
    from fmnist_deploy.training.data import load

    return load(data_dir, download=False)


def _csv_ints(value: str) -> tuple[int, ...]:
    return options.int_list(value)


@main.command("latency")
@_artifacts_option
@click.option("--backend", "backends", multiple=True, help="Repeatable; default: every available backend.")
@_devices_option
@options.sizes("1,8,32,100,1000,10000", "Comma-separated batch sizes.", aliases=("--batches",))
@options.seconds(1.0, "Seconds of timed calls per cell.")
@click.option(
    "--min-calls",
    cls=options.Option,
    aliases=("--min-repetitions",),
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Timed calls per cell at least, however long they take.",
)
@click.option(
    "--e2e-max-batch",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Largest batch also timed end to end from PNG files.",
)
@options.threads("Intra-op threads of ONNX Runtime and OpenVINO [default: theirs].")
@click.option(
    "--aoti-package",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The aoti row's package (from fmnist-export --format aoti; loading it runs its code) [default: build one].",
)
@click.option(
    "--ceiling-rounds",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Interleaved rounds of sgemm peak and the fastest rows (0: none).",
)
@_data_dir_option
@_out_dir_option
@_json_option
def latency_cmd(
    artifacts: Path | None,
    backends: tuple[str, ...],
    devices: tuple[str, ...],
    sizes: str,
    seconds: float,
    min_calls: int,
    e2e_max_batch: int,
    threads: int | None,
    aoti_package: Path | None,
    ceiling_rounds: int,
    data_dir: Path | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """p50/p90/p99/p99.9 latency and images/s per backend x device x batch size, beside peer runtimes."""
    from fmnist_deploy.benchmarks.latency import TARGETS, Config, available_devices, measure
    from fmnist_deploy.benchmarks.report import latency_csv, latency_markdown, latency_plot

    artifacts = artifacts or models_dir()
    unknown = [b for b in backends if b not in TARGETS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: expected one of {', '.join(TARGETS)}", param_hint="--backend")
    asked = backends  # named with --backend: one that runs nowhere fails the command (after the report)
    if not backends:  # every row, those whose package is absent as "not installed" rows
        backends = tuple(b for b in TARGETS if (artifacts / TARGETS[b].file).is_file())
        if not backends:
            raise click.ClickException(
                f"{artifacts} holds none of {', '.join(sorted({t.file for t in TARGETS.values()}))}; "
                "run `make export` first"
            )
    missing = [TARGETS[b].file for b in backends if not (artifacts / TARGETS[b].file).is_file()]
    if missing:
        raise click.ClickException(f"{artifacts} lacks {', '.join(missing)}; run `make export` first")
    if "cuda" in devices and "cuda" not in available_devices():
        raise click.BadParameter("cuda requested but no CUDA device is available", param_hint="--device")
    config = Config(
        artifacts=artifacts,
        backends=backends,
        devices=devices or available_devices(),
        batches=_csv_ints(sizes),
        budget_s=seconds,
        min_repetitions=min_calls,
        e2e_max_batch=e2e_max_batch,
        threads=threads,
        aoti_package=aoti_package,
        ceiling_rounds=ceiling_rounds,
    )
    images = _test_set(data_dir).test_images.numpy()

    def progress(grid):
        if options.verbosity() < 0:
            yield from grid
            return
        with click.progressbar(
            grid, label="backend x device", file=sys.stderr, item_show_func=lambda c: f"{c[0]}/{c[1]}" if c else ""
        ) as bar:
            yield from bar

    with options.upstream_notes():
        report = measure(config, images, progress=progress)
    stem = "latency" if config.devices == ("cpu",) else "latency_" + "_".join(config.devices)
    extra = {
        ".csv": lambda path: write_text_atomic(path, latency_csv(report)),
        ".png": lambda path: latency_plot(report, path),
    }
    _finish(report, latency_markdown(report), as_json, output, stem, extra)
    ran = {c["backend"] for c in report["cells"]}
    missing = [
        f"{r['backend']}/{r['device']}: {r['reason']}"
        for r in report["not_installed"]
        if r["backend"] in asked and r["backend"] not in ran
    ]
    if missing:
        raise click.ClickException(f"--backend asked for what cannot run here: {'; '.join(missing)}")


@main.command("parity")
@_artifacts_option
@_devices_option
@_data_dir_option
@_out_dir_option
@_json_option
def parity_cmd(
    artifacts: Path | None, devices: tuple[str, ...], data_dir: Path | None, output: Path | None, as_json: bool
) -> None:
    """Accuracy and agreement with eager PyTorch of every format x backend x device on the full test set.

    Exit 1 if an fp32 backend disagrees with eager on any image or by more than 1e-5,
    or int8 loses more than 0.5 points, or a file is missing or does not load.
    """
    from fmnist_deploy.benchmarks.latency import available_devices
    from fmnist_deploy.benchmarks.parity import measure, to_markdown
    from fmnist_deploy.runtime import RuntimeFailure

    artifacts = artifacts or models_dir()
    if "cuda" in devices and "cuda" not in available_devices():
        raise click.BadParameter("cuda requested but no CUDA device is available", param_hint="--device")
    if not (artifacts / WEIGHTS_NAME).is_file():
        raise click.ClickException(f"{artifacts / WEIGHTS_NAME}: no such file (the eager reference)")
    data = _test_set(data_dir)
    try:
        with options.upstream_notes():
            report = measure(
                artifacts, data.test_images.numpy(), data.test_labels.numpy(), devices or available_devices()
            )
    except RuntimeFailure as exc:
        raise click.ClickException(f"the eager reference: {exc}") from None
    _finish(report, to_markdown(report), as_json, output, "parity")
    if report["measured"] == 0:
        raise click.ClickException("parity measured nothing: every row was skipped (see why above)")
    if not report["passed"]:
        raise click.ClickException("parity failed: see the rows marked FAIL")


@main.command("formats")
@_artifacts_option
@options.seconds(0.5, "Seconds of timed calls per file and batch size.")
@click.option(
    "--fp16/--no-fp16",
    default=True,
    show_default=True,
    help="Also measure an fp16 ONNX file built on the fly (not shipped).",
)
@_data_dir_option
@_out_dir_option
@_json_option
def formats_cmd(
    artifacts: Path | None, seconds: float, fp16: bool, data_dir: Path | None, output: Path | None, as_json: bool
) -> None:
    """One row per exported file: format, precision, size, accuracy, parity, latency and throughput."""
    from fmnist_deploy.benchmarks.formats import measure, plot, to_markdown

    artifacts = artifacts or models_dir()
    if not (artifacts / WEIGHTS_NAME).is_file():
        raise click.ClickException(f"{artifacts / WEIGHTS_NAME}: no such file (the eager reference)")
    data = _test_set(data_dir)
    with options.upstream_notes():
        report = measure(artifacts, data.test_images.numpy(), data.test_labels.numpy(), budget_s=seconds, fp16=fp16)
    _finish(report, to_markdown(report), as_json, output, "formats", {".png": lambda path: plot(report, path)})


@main.command("batch")
@click.option(
    "--images",
    "count",
    type=click.IntRange(1, 60_000),
    default=60_000,
    show_default=True,
    help="How many training images, as PNG files and as an IDX file.",
)
@options.rounds(3, "Interleaved rounds.")
@_data_dir_option
@_out_dir_option
@_json_option
def batch_cmd(count: int, rounds: int, data_dir: Path | None, output: Path | None, as_json: bool) -> None:
    """Images/s per worker: one fmnist-predict process vs fmnist-batch on Ray (1 and 2 actors), PNG files and IDX,
    start-up apart, with each Ray job's profile."""
    try:
        import ray

        from fmnist_deploy.benchmarks.batch import measure, to_markdown
        from fmnist_deploy.models import default_model
        from fmnist_deploy.training.data import raw_dir
    except ImportError as exc:
        raise click.ClickException(
            f"the batch benchmark needs Ray: pip install 'fmnist-deploy[scale]' ({exc})"
        ) from None
    data = _test_set(data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        idx = raw_dir(data.root) / "train-images-idx3-ubyte"
        if count < 60_000:  # the IDX file holds the whole training set: a shorter one for a shorter run
            idx = _idx_prefix(data.train_images.numpy()[:count], Path(scratch) / "train-images-idx3-ubyte")
        try:
            report = measure(data.train_images.numpy()[:count], idx, default_model("onnxruntime"), rounds=rounds)
        finally:
            ray.shutdown()
    _finish(report, to_markdown(report), as_json, output, "batch")


def _idx_prefix(images, path: Path) -> Path:
    """An IDX image file of `images` (uint8 [N,28,28])."""
    header = b"\x00\x00\x08\x03" + len(images).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + images.tobytes())
    return path


@main.command("files")
@options.rounds(9, "Interleaved rounds.")
@options.sizes("2000,6000", "The two folder sizes whose difference gives the marginal cost per image.")
@options.model("The ONNX file both sides run [default: the packaged fmnist_mlp.onnx].", exists=True)
@_data_dir_option
@_out_dir_option
@_json_option
def files_cmd(
    rounds: int, sizes: str, model: Path | None, data_dir: Path | None, output: Path | None, as_json: bool
) -> None:
    """Per-image cost of answering a folder of PNG files: the toolkit beside a plain Pillow + session.run loop."""
    from fmnist_deploy.benchmarks.files import markdown, measure, write_folders
    from fmnist_deploy.models import default_model

    pair = _csv_ints(sizes)
    if len(pair) != 2 or pair[0] >= pair[1] or pair[1] > 10_000:
        raise click.BadParameter(f"expected two increasing sizes up to 10000, got {sizes!r}", param_hint="--sizes")
    images = _test_set(data_dir).test_images.numpy()
    with tempfile.TemporaryDirectory() as scratch:
        options.say(f"Writing {' and '.join(map(str, pair))} test images as PNG files…")
        folders = write_folders(images, Path(scratch), pair)
        options.say(f"Timing {rounds} interleaved rounds…")
        report = measure(model or default_model("onnxruntime"), folders, rounds)
    _finish(report, markdown(report), as_json, output, "files")


@main.command("int8")
@options.rounds(5, "Interleaved rounds.")
@click.option(
    "--calibration",
    type=click.IntRange(10, 60_000),
    default=1000,
    show_default=True,
    help="Training images the static file is calibrated on.",
)
@_data_dir_option
@_out_dir_option
@_json_option
def int8_cmd(rounds: int, calibration: int, data_dir: Path | None, output: Path | None, as_json: bool) -> None:
    """Dynamic int8 (shipped) vs static QDQ int8 calibrated on training images: accuracy and speed."""
    from fmnist_deploy.benchmarks.int8 import markdown, measure
    from fmnist_deploy.models import default_model

    data = _test_set(data_dir)
    with options.upstream_notes():
        report = measure(
            default_model("onnxruntime"),
            data.train_images.numpy(),
            data.test_images.numpy(),
            data.test_labels.numpy(),
            rounds=rounds,
            calibration_count=calibration,
        )
    _finish(report, markdown(report), as_json, output, "int8")


@main.command("serve")
@options.seconds(3.0, "Seconds of load per cell.")
@click.option(
    "--concurrency",
    "concurrencies",
    default="1,4,16,64",
    show_default=True,
    help="Comma-separated numbers of closed-loop clients.",
)
@options.sizes("1,32", "Comma-separated images per request.")
@_data_dir_option
@_out_dir_option
@_json_option
def serve_cmd(
    seconds: float, concurrencies: str, sizes: str, data_dir: Path | None, output: Path | None, as_json: bool
) -> None:
    """Load on fmnist-serve (batching on and off) against a naive FastAPI peer, as perf_analyzer measures."""
    try:
        from fmnist_deploy.benchmarks.serve import measure, plot, to_markdown
    except ImportError as exc:
        raise click.ClickException(f"the serving benchmark needs httpx and fastapi ({exc})") from None
    from fmnist_deploy.models import default_model

    concurrency_list, size_list = _csv_ints(concurrencies), _csv_ints(sizes)
    if max(size_list) > 64:
        raise click.BadParameter(f"at most 64 images per request, got {max(size_list)}", param_hint="--sizes")
    if seconds != max(1, round(seconds)):
        options.say(f"note: wrk times whole seconds: each cell runs {max(1, round(seconds))} s")
    images = _test_set(data_dir).test_images.numpy()[:64]
    try:
        report = measure(
            default_model("onnxruntime"), images, concurrencies=concurrency_list, sizes=size_list, seconds=seconds
        )
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    _finish(report, to_markdown(report), as_json, output, "serve", {".png": lambda path: plot(report, path)})


@main.command("coldstart")
@_artifacts_option
@click.option(
    "--image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The image each fresh process classifies [default: the packaged sample 0000_ankle_boot.png].",
)
@options.rounds(5, "Fresh processes per row.", aliases=("--repetitions",))
@_out_dir_option
@_json_option
def coldstart_cmd(artifacts: Path | None, image: Path | None, rounds: int, output: Path | None, as_json: bool) -> None:
    """Wall time of a fresh `fmnist-predict` process on one image, ONNX vs the torch backends."""
    from fmnist_deploy.benchmarks.coldstart import ColdStartError, measure, to_markdown

    artifacts = artifacts or models_dir()
    image = image or models_dir() / SAMPLES_DIR / "0000_ankle_boot.png"
    try:
        report = measure(artifacts, image, rounds)
    except ColdStartError as exc:
        raise click.ClickException(str(exc)) from None
    _finish(report, to_markdown(report), as_json, output, "coldstart")


if __name__ == "__main__":
    launch.run(main)
