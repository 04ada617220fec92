"""Files to answers: what a folder of PNG files costs per image, the toolkit beside a plain Pillow loop.

Each way of answering a folder is timed on 2 000 and on 6 000 test images (by default) in the
same round, rounds interleaved; the marginal cost per image, (t6000 - t2000) / 4000, leaves
out what every run pays once (imports, model load, pool start), which is reported apart
as start-up = t2000 - 2000 x marginal.

- plain: `np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])` and one
  `session.run` of the same ONNX file: what a user writes by hand.
- sequential: `Predictor.predict_files` with one decode process (the fast PNG path only).
- predict_files: `Predictor.predict_files` as shipped (decode processes, one per core).
- fmnist-predict: the command on the folder, in a fresh process, stdout to a pipe.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.benchmarks.latency import rotated
from fmnist_deploy.machine import environment

SIZES = (2000, 6000)
WAYS = ("plain", "sequential", "predict_files", "fmnist-predict")


def write_folders(images: np.ndarray, root: Path, sizes: tuple[int, ...] = SIZES) -> dict[int, Path]:
    """A folder of `n` PNG files (the first n images) for each size."""
    from PIL import Image

    folders = {}
    for n in sizes:
        folder = root / f"png{n}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
        folders[n] = folder
    return folders


def _ways(model: Path) -> dict[str, Callable[[Path], np.ndarray | None]]:
    import onnxruntime as ort
    from PIL import Image

    from fmnist_deploy.runtime import load

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    predictor = load(model)

    def plain(folder: Path) -> np.ndarray:
        paths = sorted(folder.iterdir())
        pixels = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])
        return session.run(None, {"image": pixels})[0].argmax(axis=1)

    def toolkit(workers: int | None) -> Callable[[Path], np.ndarray]:
        def run(folder: Path) -> np.ndarray:
            answer = predictor.predict_files([folder], workers=workers)
            assert answer.prediction is not None and not answer.errors
            return answer.prediction.indices

        return run

    def command(folder: Path) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(folder), "--model", str(model)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"fmnist-predict failed: {done.stderr.decode(errors='replace').strip()[-300:]}")

    return {"plain": plain, "sequential": toolkit(1), "predict_files": toolkit(None), "fmnist-predict": command}


def measure(model: Path, folders: dict[int, Path], rounds: int = 5) -> dict[str, Any]:
    """Marginal µs per image and start-up seconds of every way, medians over interleaved rounds."""
    ways = _ways(model)
    small, large = sorted(folders)
    answers = {name: ways[name](folders[large]) for name in ("plain", "predict_files")}  # warm-up + same answers
    same = bool(np.array_equal(answers["plain"], answers["predict_files"]))
    marginal: dict[str, list[float]] = {name: [] for name in ways}
    startup: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds):
        for name in rotated(ways, r):
            seconds = {}
            for n in (small, large):
                start = time.perf_counter()
                ways[name](folders[n])
                seconds[n] = time.perf_counter() - start
            per_image = (seconds[large] - seconds[small]) / (large - small)
            marginal[name].append(per_image * 1e6)
            startup[name].append(seconds[small] - small * per_image)
    ratios = {name: [m / p for m, p in zip(marginal[name], marginal["plain"], strict=True)] for name in ways}
    rows = {
        name: {
            "marginal_us_per_image": statistics.median(marginal[name]),
            "marginal_us_min_max": [min(marginal[name]), max(marginal[name])],
            # The median round's larger folder took no longer than the smaller one: noise, not a cost.
            "noise": statistics.median(marginal[name]) <= 0,
            "images_per_s": 1e6 / statistics.median(marginal[name]) if statistics.median(marginal[name]) > 0 else None,
            "startup_s": statistics.median(startup[name]),
            "cost_vs_plain": statistics.median(ratios[name]),
            "cost_vs_plain_min_max": [min(ratios[name]), max(ratios[name])],
        }
        for name in ways
    }
    return {
        "benchmark": "files",
        "model": str(model),
        "sizes": [small, large],
        "rounds": rounds,
        "same_answers_as_plain": same,
        "ways": rows,
        "environment": environment(),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    small, large = report["sizes"]
    lines = [
        "# Files to answers",
        "",
        f"Marginal cost per image = (t{large} - t{small}) / {large - small} over PNG folders of test images; "
        f"start-up = t{small} - {small} x marginal. Medians of {report['rounds']} interleaved rounds "
        "(min to max in brackets). cost vs plain = marginal / plain's marginal, per round.",
        "",
        "| way | µs / image | images/s | start-up s | cost vs plain |",
        "|---|---:|---:|---:|---:|",
    ]
    noise, noisy = [], []
    for name, row in report["ways"].items():
        low, high = row["marginal_us_min_max"]
        rlow, rhigh = row["cost_vs_plain_min_max"]
        if row["marginal_us_per_image"] <= 0:  # the median round measured no cost: nothing to report
            noise.append(name)
            lines.append(f"| {name} | noise [{low:.1f} to {high:.1f}] | — | — | — |")
            continue
        mark = ""
        if low <= 0:  # some round measured no cost: the median stands, but inside the noise
            noisy.append(name)
            mark = "*"
        startup = f"{row['startup_s']:.3f}" if row["startup_s"] > 0 else "≈ 0"  # an intercept below 0 is noise
        lines.append(
            f"| {name} | {row['marginal_us_per_image']:.1f}{mark} [{low:.1f} to {high:.1f}] | "
            f"{row['images_per_s']:,.0f} | {startup} | {row['cost_vs_plain']:.2f} [{rlow:.2f} to {rhigh:.2f}] |"
        )
    env = report["environment"]
    if noise:
        lines += [
            "",
            f"noise: for {', '.join(noise)} the larger folder took no longer than the smaller one in the median round, "
            "so the difference measured the machine's noise, not a cost per image; run more --rounds or further "
            "apart --sizes.",
        ]
    if noisy:
        lines += [
            "",
            f"\\* {', '.join(noisy)}: at least one round measured no cost at all, so this median is within the "
            "machine's noise.",
        ]
    if report["rounds"] < 3:
        lines += [
            "",
            f"{report['rounds']} round(s): too few for the medians and ranges to mean much (9 is the default).",
        ]
    lines += [
        "",
        f"Same answers as plain: {report['same_answers_as_plain']}. "
        f"Machine: {env.get('cpu', '?')}, {env.get('usable_cores', '?')} cores.",
        "",
    ]
    return "\n".join(lines)
