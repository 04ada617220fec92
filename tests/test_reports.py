"""Reports that do not mislead: noise is said as noise, winners only where the spread allows, no empty
sections, and the plots are drawn the way people read them. Built from small reports made here."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmnist_deploy.benchmarks import files, latency, report, serve
from fmnist_deploy.benchmarks.stats import summarise

ENV = {
    "cpu": "Test CPU",
    "usable_cores": 2,
    "packages": {"onnxruntime": "1", "torch": "2"},
}


def _cell(backend: str, batch: int, samples_us: list[float], mode: str = "model") -> dict:
    cell = summarise([int(us * 1000) for us in samples_us], batch)
    return cell | {
        "backend": backend,
        "device": "cpu",
        "mode": mode,
        "provider": "CPUExecutionProvider",
        "creation_ms": 1.0,
        "first_inference_ms": 0.1,
    }


def _latency_report(cells: list[dict], ceiling_images_per_s: float) -> dict:
    for c in cells:
        c["fraction_of_ceiling"] = c["images_per_s"] / ceiling_images_per_s
    return {
        "environment": ENV,
        "config": {"budget_s": 0.05},
        "ceiling": {"sgemm_gflops": 1.0, "flop_per_image": 218_112, "images_per_s": ceiling_images_per_s},
        "cells": cells,
        "summary": latency.summarise_grid(cells),
    }


def test_a_winner_is_named_from_the_median_and_only_where_the_spread_allows() -> None:
    ort = _cell("onnxruntime", 1, [10.0] * 8 + [2000.0, 2000.0])  # p50 10 µs; two slow calls: mean 408 µs
    eager = _cell("eager", 1, [30.0] * 10)  # p50 = mean = 30 µs: the faster one by the mean
    compiled = _cell("torch-compile", 1, [11.0] * 10)  # a rival 1 µs behind, inside onnxruntime's spread
    cells = [ort, eager, compiled]
    row = latency.summarise_grid(cells)["fastest_cpu_per_batch"]["1"]
    assert row["toolkit"] == "onnxruntime"  # by the median call, as the issue asks (the mean said eager)
    assert row["rival"] == "torch-compile" and row["toolkit_is_fastest"] is True
    assert row["decided"] is False  # onnxruntime's p90 is not below the rival's p50, nor the other way round
    text = report.latency_markdown(_latency_report(cells, 1e9))
    assert "| 1 | onnxruntime |" in text and "within noise" in text and "nan" not in text


def test_no_share_of_the_ceiling_above_100_percent_and_no_empty_summary() -> None:
    cells = [_cell("onnxruntime", 8, [10.0] * 10)]  # 800 000 images/s against a ceiling of 600 000
    text = report.latency_markdown(_latency_report(cells, 6e5))
    assert "133.3" not in text and "—†" in text and "above the ceiling" in text
    summary = text.split("Summary (ratios from this one run):")[1]
    assert summary.strip().startswith("- nothing to compare in this grid")


def test_files_says_noise_instead_of_a_negative_cost() -> None:
    rows = {
        "plain": {
            "marginal_us_per_image": -3.0,
            "marginal_us_min_max": [-3.0, -3.0],
            "noise": True,
            "images_per_s": None,
            "startup_s": 0.1,
            "cost_vs_plain": 1.0,
            "cost_vs_plain_min_max": [1.0, 1.0],
        }
    }
    rows["fmnist-predict"] = rows["plain"] | {
        "marginal_us_per_image": 26.4,
        "marginal_us_min_max": [-5.0, 62.2],
        "noise": False,
        "images_per_s": 37_842.0,
        "startup_s": -0.004,
    }
    text = files.markdown(
        {"sizes": [20, 40], "rounds": 1, "ways": rows, "same_answers_as_plain": True, "environment": ENV}
    )
    assert "| plain | noise [-3.0 to -3.0] | — |" in text
    assert "| fmnist-predict | 26.4* [-5.0 to 62.2] | 37,842 | ≈ 0 |" in text
    assert "measured the machine's noise" in text and "within the machine's noise" in text and "too few" in text
    assert "-3.0 [" not in text and "-0.004" not in text


def _serve_cell(server: str, size: int, concurrency: int, images_per_s: float) -> dict:
    return {
        "server": server,
        "images_per_request": size,
        "concurrency": concurrency,
        "requests_per_s": images_per_s / size,
        "images_per_s": images_per_s,
        "p50_ms": 1.0,
        "p90_ms": 2.0,
        "p99_ms": 3.0,
        "mean_batch_images": None,
        "failures": 0,
        "server_us": {},
    }


def test_serve_reports_a_small_grid_and_its_real_duration() -> None:
    cells = [
        _serve_cell(server, 1, c, speed * c)
        for server, speed in (
            ("fmnist-serve (dynamic batching)", 1000),
            ("fmnist-serve (batching off)", 900),
            ("naive FastAPI peer (session.run per request, JSON)", 500),
        )
        for c in (1, 4)
    ]
    summary = serve._targets(cells)
    assert "server_over_peer_images_per_s_c64_b1" not in summary
    assert summary["batching_over_off_min"] == pytest.approx(1000 / 900)
    text = serve.to_markdown({"environment": ENV, "seconds_per_cell": 1, "cells": cells, "summary": summary})
    assert "1 s per cell" in text and "0 s per cell" not in text
    assert "no comparison with the naive peer at 64 single-image clients" in text


def test_bench_serve_accepts_a_small_grid() -> None:
    """`--concurrency 1,4 --sizes 1` is a valid question (it was refused); here only the parsing is run."""
    from click.testing import CliRunner

    from fmnist_deploy.benchmarks.cli import main

    result = CliRunner().invoke(main, ["serve", "--concurrency", "1,4", "--sizes", "100", "--seconds", "0.3"])
    assert result.exit_code == 2 and "at most 64 images per request" in result.output
    assert "the targets compare cells" not in result.output


def test_serve_plot_ticks_at_the_measured_points_and_starts_at_zero(tmp_path: Path) -> None:

    cells = [
        _serve_cell(server, size, c, 3000 + 10 * c)
        for server in ("fmnist-serve (dynamic batching)", "naive FastAPI peer (session.run per request, JSON)")
        for size in (1, 32)
        for c in (1, 4, 16, 64)
    ]
    figure = serve.figure({"environment": ENV, "seconds_per_cell": 1, "cells": cells})
    for throughput in (figure.axes[0], figure.axes[2]):
        assert [round(t) for t in throughput.get_xticks()] == [1, 4, 16, 64]
        assert throughput.get_ylim()[0] == 0
    assert "Test CPU" in figure.get_suptitle()
    serve.plot({"environment": ENV, "seconds_per_cell": 1, "cells": cells}, tmp_path / "serve.png")
    assert (tmp_path / "serve.png").read_bytes()[:4] == b"\x89PNG"


def test_latency_plot_splits_model_calls_from_end_to_end_and_names_the_machine() -> None:
    cells = [_cell(b, n, [10.0 * n] * 5) for b in ("onnxruntime", "eager") for n in (1, 100)]
    cells += [_cell("onnxruntime", n, [50.0 * n] * 5, mode="end_to_end") for n in (1, 100)]
    figure = report.latency_figure(_latency_report(cells, 1e7))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == [
        "Latency, model call alone",
        "Throughput, model call alone",
        "Latency, end to end from PNG files (decode + model)",
        "Throughput, end to end from PNG files (decode + model)",
    ]
    assert "Test CPU" in figure.get_suptitle()
    ceiling = [line for ax in figure.axes for line in ax.get_lines() if "ceiling" in str(line.get_label())]
    assert len(ceiling) == 1 and ceiling[0].axes is figure.axes[1]  # only where it applies: model calls
    assert [round(t) for t in figure.axes[0].get_xticks()] == [1, 100]


def test_training_curves_call_the_test_set_the_test_set(tmp_path: Path, monkeypatch) -> None:
    from fmnist_deploy.training import report as training_report
    from fmnist_deploy.training.loop import EpochStats

    drawn = []
    save = training_report._save_figure
    monkeypatch.setattr(training_report, "_save_figure", lambda fig, path: (drawn.append(fig), save(fig, path)))
    history = [EpochStats(e, 1.0, 0.5, 1.0, 0.5, 1.0) for e in (1, 2)]
    training_report.plot_curves(tmp_path / "curves.png", history)
    labels = [line.get_label() for ax in drawn[0].axes for line in ax.get_lines()]
    assert labels == ["Training set loss", "Test set loss", "Training set accuracy", "Test set accuracy"]
    assert (tmp_path / "curves.png").is_file()


def test_both_wordings_of_onnx_runtimes_quantisation_advice_are_kept_quiet(caplog) -> None:
    """quantize_dynamic says "Please consider to run pre-processing...", quantize_static "Please consider
    pre-processing..." (the line `fmnist-bench int8` printed)."""
    import logging

    from fmnist_deploy.export.quantize import _without_preprocessing_advice

    with caplog.at_level(logging.WARNING), _without_preprocessing_advice():
        logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
        logging.warning("Please consider pre-processing before quantization. See ...")
        logging.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_library_warnings_become_one_note_each() -> None:
    import warnings

    import click
    from click.testing import CliRunner

    from fmnist_deploy import options

    @options.command("fmnist-demo")
    def demo() -> None:
        with options.upstream_notes():
            for _ in range(3):
                warnings.warn("`torch.jit.load` is deprecated.\nsecond line", FutureWarning, stacklevel=1)
        click.echo("done")

    result = CliRunner().invoke(demo, [])
    assert result.stdout == "done\n" and result.stderr == "note: `torch.jit.load` is deprecated.\n"
    assert CliRunner().invoke(demo, ["-q"]).stderr == ""
