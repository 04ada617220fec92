"""Batch throughput per worker: one fmnist-predict process against fmnist-batch on Ray with 1 and 2 actors
(one per core here), on the training images as PNG files and as one IDX file, in interleaved rounds.

Start-up is reported apart on both sides: fmnist-predict's (a process answering one image) and
Ray's (`ray.init`, once), and within each Ray job the actor pool's (until the first actor holds its
session). The ratio is images/s past start-up, Ray over fmnist-predict, on the same cores; beside it
the profile of each Ray job: where its actors' seconds went, per image.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.benchmarks.latency import write_pngs
from fmnist_deploy.machine import environment

STAGES = ("decode", "model", "answers", "write")


def _predict(inputs: Path, model: Path, output: Path) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(inputs), "--model", str(model), "--json"]
        + ["--output", str(output)],
        capture_output=True,
        check=False,
    )
    return time.perf_counter() - start, done.returncode


def measure(
    images: np.ndarray, idx_file: Path, model: Path, actors: tuple[int, ...] = (1, 2), rounds: int = 1
) -> dict[str, Any]:
    """Seconds and images/s of every path on both inputs; the median of `rounds` interleaved rounds.

    Ray must not be running in this process yet (its start-up is timed here); it is left running.
    """
    from fmnist_deploy.scaleout.ray_job import JobConfig, run_job, start_ray

    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    load_before = os.getloadavg()[0]  # the machine may be shared: its load is part of the result
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "pngs"
        folder.mkdir()
        write_pngs(folder, images)
        inputs = {"png files": folder, "idx file": idx_file}
        one = Path(scratch) / "one.png"
        shutil.copy(folder / "00000.png", one)
        predict_start = statistics.median(_predict(one, model, Path(scratch) / "one.jsonl")[0] for _ in range(3))
        started = time.perf_counter()
        start_ray(None)
        ray_start = time.perf_counter() - started
        for _ in range(rounds):
            for label, path in inputs.items():
                seconds, code = _predict(path, model, Path(scratch) / "single.jsonl")
                runs.setdefault(("fmnist-predict (one process)", label), []).append(
                    {"seconds": seconds, "answer_s": seconds - predict_start, "exit": code}
                )
                for n in actors:
                    output = Path(scratch) / f"ray-{n}"
                    shutil.rmtree(output, ignore_errors=True)
                    began = time.perf_counter()
                    counts = run_job(JobConfig(model=model, output=output, actors=n), [path])
                    timing, seconds = counts["timing"], time.perf_counter() - began
                    runs.setdefault((f"fmnist-batch, Ray, {n} actor(s)", label), []).append(
                        {
                            "seconds": seconds,
                            "answer_s": seconds - timing["pool_start_s"],
                            "exit": 0 if not counts["failed"] else 1,
                            "timing": timing,
                        }
                    )
    rows = []
    count = len(images)
    for (path_label, label), measured in runs.items():
        best = sorted(measured, key=lambda r: r["seconds"])[len(measured) // 2]  # the median run, whole
        row = {
            "path": path_label,
            "input": label,
            "seconds": best["seconds"],
            "answer_s": best["answer_s"],
            "images_per_s": count / best["seconds"],
            # None: a run too short to outlast the start-up measured apart (a few hundred images)
            "answer_images_per_s": count / best["answer_s"] if best["answer_s"] > 0 else None,
            "exit": best["exit"],
            "rounds_seconds": [r["seconds"] for r in measured],
        }
        if "timing" in best:
            timing = best["timing"]
            for key in ("pool_start_s", "plan_s", "prepare_s", "actor_init_s"):
                row[key] = timing[key]
            row["actor_us_per_image"] = {s: timing[f"actor_{s}_s"] / count * 1e6 for s in STAGES}
        rows.append(row)
    single = {r["input"]: r["answer_images_per_s"] for r in rows if r["path"].startswith("fmnist-predict")}
    for row in rows:
        mine, theirs = row["answer_images_per_s"], single[row["input"]]
        row["ratio"] = mine / theirs if mine and theirs else None
    return {
        "benchmark": "batch",
        "images": int(count),
        "rounds": rounds,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-minute, before and after
        "predict_start_s": predict_start,
        "ray_start_s": ray_start,
        "rows": rows,
        "environment": environment(),
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The batch comparison as a Markdown table, with each Ray job's profile."""
    env = report["environment"]
    lines = [
        f"Batch inference of {report['images']} training images on {env['cpu']}, {env['usable_cores']} cores, "
        f"median of {report['rounds']} interleaved round(s). Start-up apart: fmnist-predict's "
        f"{report['predict_start_s']:.2f} s (a process answering one image), Ray's {report['ray_start_s']:.1f} s "
        "(once) and each Ray job's actor pool (below). fmnist-predict writes JSON Lines, fmnist-batch a folder of "
        f"Parquet files. Load average (1 min) {report['load_average'][0]:.1f} before the run, "
        f"{report['load_average'][1]:.1f} after.",
        "",
        "| path | input | seconds | images/s | start-up s | images/s past start-up | ratio to fmnist-predict |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        startup = r.get("pool_start_s", report["predict_start_s"])
        lines.append(
            f"| {r['path']} | {r['input']} | {r['seconds']:.2f} | {r['images_per_s']:,.0f} | {startup:.2f} "
            f"| {_number(r['answer_images_per_s'], ',.0f')} | {_number(r['ratio'], '.2f')} |"
        )
    lines += [
        "",
        "Where each Ray job's time went: on the driver, planning the units and preparing the dataset (s); the "
        "actor pool's start-up (s), of which an actor loading its session (the rest is Ray starting the actor "
        "process); and the actors' seconds per image (µs, summed over the actors) decoding, in the model, building "
        "the answers, writing the part files.",
        "",
        "| path | input | plan s | prepare s | pool start s | actor init s | decode µs | model µs | answers µs "
        "| write µs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "actor_us_per_image" in r:
            us = r["actor_us_per_image"]
            lines.append(
                f"| {r['path']} | {r['input']} | {r['plan_s']:.2f} | {r['prepare_s']:.2f} | {r['pool_start_s']:.2f} "
                f"| {r['actor_init_s']:.2f} | " + " | ".join(f"{us[s]:.1f}" for s in STAGES) + " |"
            )
    return "\n".join(lines) + "\n"


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)
