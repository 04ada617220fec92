"""Benchmarks: small, fast configurations; the reports' structure and internal consistency, never a time."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fmnist_deploy.benchmarks import coldstart, train_speed
from fmnist_deploy.benchmarks.cli import main as bench_cli
from fmnist_deploy.benchmarks.latency import TARGETS, Config, measure
from fmnist_deploy.benchmarks.numpy_ref import NumpyMLP
from fmnist_deploy.benchmarks.report import latency_markdown
from fmnist_deploy.benchmarks.stats import FLOP_PER_IMAGE, summarise
from tests.conftest import ARTIFACTS, REPO


def test_flop_count_of_the_network() -> None:
    assert FLOP_PER_IMAGE == 2 * 109_184 == 218_368


def test_summarise_against_values_worked_by_hand() -> None:
    # 1, 2, 3, 4, 100 µs: mean 22 µs; percentiles interpolate linearly between ranks (p90: rank 3.6 -> 4 + 0.6 x 96);
    # stdev with n - 1: sqrt((21² + 20² + 19² + 18² + 78²) / 4) = sqrt(1902.5); 10 images per 22 µs
    stats = summarise([1000, 2000, 3000, 4000, 100_000], batch=10)
    assert (stats["batch"], stats["repetitions"], stats["min_us"], stats["p50_us"]) == (10, 5, 1.0, 3.0)
    assert stats["mean_us"] == pytest.approx(22.0, rel=1e-12)
    assert stats["p90_us"] == pytest.approx(61.6, rel=1e-12)
    assert stats["p99_us"] == pytest.approx(96.16, rel=1e-12)
    assert stats["p99_9_us"] == pytest.approx(99.616, rel=1e-12)
    assert stats["stdev_us"] == pytest.approx(43.617656975128, rel=1e-9)
    assert stats["images_per_s"] == pytest.approx(454_545.454545, rel=1e-9)
    assert summarise([5000], batch=1)["stdev_us"] == 0.0


def test_time_calls_and_a_cell_with_a_known_clock(monkeypatch) -> None:
    """A clock that moves 2 µs per reading: every call measures 2 µs, the budget (10 µs) ends the loop after the
    minimum, and a batch of 8 per 2 µs is 4 000 000 images/s."""
    from fmnist_deploy.benchmarks import latency

    ticks = iter(range(0, 10**9, 2000))

    class Clock:
        @staticmethod
        def perf_counter_ns() -> int:
            return next(ticks)

    monkeypatch.setattr(latency, "time", Clock)
    calls = []
    samples = latency.time_calls(lambda: calls.append(1), budget_s=1e-5, min_repetitions=3, warmup=2)
    assert samples == [2000, 2000, 2000] and len(calls) == 5
    cell = latency._cell("onnxruntime", "cpu", "model", 8, samples, 1.5, 0.5, {"provider": "CPUExecutionProvider"})
    assert (cell["p50_us"], cell["p99_9_us"], cell["mean_us"], cell["stdev_us"]) == (2.0, 2.0, 2.0, 0.0)
    assert cell["images_per_s"] == pytest.approx(4_000_000.0, rel=1e-12)
    assert (cell["creation_ms"], cell["first_inference_ms"], cell["provider"]) == (1.5, 0.5, "CPUExecutionProvider")


def test_numpy_reference_matches_the_golden_logits() -> None:
    with np.load(ARTIFACTS / "golden.npz", allow_pickle=False) as golden:
        logits, probs = NumpyMLP(ARTIFACTS / "fmnist_mlp.pt")(golden["images"])
        assert np.abs(logits - golden["logits"]).max() <= 1e-5
        assert np.allclose(probs.sum(1), 1, atol=1e-6)


def _check_cells(report: dict, expected: set[tuple[str, str, str, int]]) -> None:
    assert {(c["backend"], c["device"], c["mode"], c["batch"]) for c in report["cells"]} == expected
    for c in report["cells"]:
        assert c["repetitions"] >= 3
        assert 0 < c["min_us"] <= c["p50_us"] <= c["p90_us"] <= c["p99_us"] <= c["p99_9_us"]
        assert c["mean_us"] > 0 and c["stdev_us"] >= 0 and c["creation_ms"] > 0 and c["first_inference_ms"] > 0
        # the mean call is no faster than the fastest one (the cell's arithmetic is checked with a known clock above)
        assert 0 < c["images_per_s"] <= c["batch"] / (c["min_us"] / 1e6) * (1 + 1e-9)
        assert c["fraction_of_ceiling"] > 0
    # 218 368 FLOP per image (test_flop_count_of_the_network): 1 GFLOP/s is 4 579.4 images/s
    assert report["ceiling"]["images_per_s"] / report["ceiling"]["sgemm_gflops"] == pytest.approx(4579.4, rel=1e-4)


def test_latency_small_grid(data) -> None:
    config = Config(
        backends=("onnxruntime", "ort-session", "numpy"), batches=(1, 8), budget_s=0.01, min_repetitions=3, warmup=1
    )
    report = measure(config, data.test_images[:16].numpy())
    _check_cells(
        report,
        {(b, "cpu", "model", n) for b in config.backends for n in (1, 8)}
        | {("onnxruntime", "cpu", "end_to_end", n) for n in (1, 8)},
    )
    assert {c["provider"] for c in report["cells"] if c["backend"] == "onnxruntime"} == {"CPUExecutionProvider"}
    assert set(report["summary"]) == {
        "predict_b1_over_numpy_b1",
        "bare_session_b1_over_numpy_b1",
        "predict_b1_over_bare_session_b1",
        "fastest_cpu_per_batch",
    }
    assert report["environment"]["logical_cores"] >= 1 and report["environment"]["packages"]["onnxruntime"]


def test_latency_cli_writes_every_report(tmp_path: Path, data) -> None:
    result = CliRunner().invoke(
        bench_cli,
        [
            "latency",
            "--backend",
            "pt2",
            "--backend",
            "onnxruntime-int8",
            "--device",
            "cpu",
            "--sizes",
            "1,8",
            "--seconds",
            "0.01",
            "--min-calls",
            "3",
            "--e2e-max-batch",
            "1",
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "latency.json").read_text())
    _check_cells(
        report,
        {(b, "cpu", "model", n) for b in ("pt2", "onnxruntime-int8") for n in (1, 8)}
        | {(b, "cpu", "end_to_end", 1) for b in ("pt2", "onnxruntime-int8")},
    )
    rows = list(csv.DictReader((tmp_path / "latency.csv").open()))
    assert len(rows) == len(report["cells"]) and rows[0]["backend"] == "pt2"
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| pt2 | cpu | model | 1 |" in (tmp_path / "latency.md").read_text()


def test_latency_cli_rejects_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(bench_cli, ["latency", "--backend", "tflite"]).exit_code == 2
    assert runner.invoke(bench_cli, ["latency", "--sizes", "1,x"]).exit_code == 2
    assert runner.invoke(bench_cli, ["latency", "--sizes", "0"]).exit_code == 2
    missing = runner.invoke(bench_cli, ["latency", "--artifacts", str(tmp_path)])
    assert missing.exit_code == 1 and "run `make export` first" in missing.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_latency_cuda_without_gpu_is_refused() -> None:
    result = CliRunner().invoke(bench_cli, ["latency", "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device" in result.output


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_latency_cuda_small_grid(data) -> None:
    config = Config(
        backends=("pt2", "eager"), devices=("cpu", "cuda"), batches=(1, 1000), budget_s=0.05, min_repetitions=3
    )
    report = measure(config, data.test_images[:1000].numpy())
    cuda = [c for c in report["cells"] if c["device"] == "cuda"]
    assert {c["provider"] for c in cuda} == {"torch:cuda"}
    assert set(report["summary"]["cuda_overtakes_cpu_at_batch"]) == {"pt2", "eager"}
    # host -> host and GPU-resident apart; each batch size captured once, its capture time kept apart
    assert {(c["backend"], c["mode"], c["batch"]) for c in cuda} == {
        (b, m, n) for b in ("pt2", "eager") for m in ("model", "resident") for n in (1, 1000)
    }
    assert all(c["cuda_graph"] and c["capture_ms"] > 0 for c in cuda), [c.get("cuda_graph_error") for c in cuda]
    gpu = report["ceiling"]["gpu"]
    assert gpu["fp32_tflops"] > 1 and gpu["h2d_gb_per_s"] > 1
    assert {c["ceiling"] for c in cuda if c["mode"] == "resident"} == {"gpu fp32"}
    assert {c["ceiling"] for c in report["cells"] if c["device"] == "cpu"} == {"cpu fp32 sgemm"}
    assert all(0 < c["fraction_of_ceiling"] < 1 for c in cuda)


def test_each_row_is_held_to_its_own_device_ceiling() -> None:
    from fmnist_deploy.benchmarks.latency import cell_ceiling
    from fmnist_deploy.benchmarks.stats import gpu_ceilings

    gpu = gpu_ceilings(fp32_tflops=60.0, h2d_gb_per_s=50.0)
    assert gpu["compute_images_per_s"] == pytest.approx(60e12 / FLOP_PER_IMAGE)
    assert gpu["h2d_images_per_s"] == pytest.approx(50e9 / 784)
    assert gpu["host_to_host_binds"] == "host->device copy"  # 64 M images/s of copy < 275 M of arithmetic
    assert cell_ceiling({"device": "cuda", "mode": "model"}, 1e6, gpu) == (
        "gpu host->device copy",
        gpu["h2d_images_per_s"],
    )
    assert cell_ceiling({"device": "cuda", "mode": "resident"}, 1e6, gpu) == ("gpu fp32", gpu["compute_images_per_s"])
    assert cell_ceiling({"device": "cpu", "mode": "model"}, 1e6, gpu) == ("cpu fp32 sgemm", 1e6)
    assert gpu_ceilings(fp32_tflops=0.01, h2d_gb_per_s=50.0)["host_to_host_binds"] == "fp32 arithmetic"
    with pytest.raises(ValueError, match="needs the GPU's ceilings"):
        cell_ceiling({"device": "cuda", "mode": "model"}, 1e6, None)


def _no_ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.mark.skipif(not _no_ort_cuda(), reason="checks the rows of an onnxruntime without its CUDA provider")
def test_latency_lists_what_is_not_installed_instead_of_stopping(data, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # OpenVINO unimportable, as on a machine without it
    config = Config(
        backends=("numpy", "openvino", "onnxruntime", "ort-session"),
        devices=("cpu", "cuda"),
        batches=(1,),
        budget_s=0.01,
        min_repetitions=3,
        warmup=1,
        e2e_max_batch=0,
        ceiling_rounds=0,
    )
    report = measure(config, data.test_images[:4].numpy())
    assert {(r["backend"], r["device"]) for r in report["not_installed"]} == {
        ("openvino", "cpu"),
        ("onnxruntime", "cuda"),
        ("ort-session", "cuda"),
    }
    assert {(c["backend"], c["device"]) for c in report["cells"]} == {
        ("numpy", "cpu"),
        ("onnxruntime", "cpu"),
        ("ort-session", "cpu"),
    }
    markdown = latency_markdown(report)
    assert "| openvino | cpu | — |" in markdown and "not installed: pip install 'fmnist-deploy[openvino]'" in markdown
    assert "| onnxruntime | cuda | — |" in markdown and "not installed: pip install onnxruntime-gpu" in markdown
    assert "gpu" not in report["ceiling"]  # no CUDA cell ran: no GPU ceiling is claimed


def test_latency_cli_fails_only_for_an_explicit_backend_that_cannot_run(tmp_path: Path, data, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    args = ["latency", "--device", "cpu", "--sizes", "1", "--seconds", "0.01", "--min-calls", "3"]
    args += ["--e2e-max-batch", "0", "--ceiling-rounds", "0", "--output", str(tmp_path), "--data-dir", str(data.root)]
    result = CliRunner().invoke(bench_cli, [*args, "--backend", "numpy", "--backend", "openvino"])
    assert result.exit_code == 1
    assert "--backend asked for what cannot run here: openvino/cpu: not installed: pip install" in result.output
    assert "numpy" not in result.output.splitlines()[-1]  # the backend that ran is not blamed
    report = json.loads((tmp_path / "latency.json").read_text())  # the report is written all the same
    assert report["not_installed"][0]["backend"] == "openvino" and report["cells"][0]["backend"] == "numpy"


def test_parity_without_openvino_passes_with_a_not_installed_row(tmp_path: Path, data, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = CliRunner().invoke(
        bench_cli, ["parity", "--device", "cpu", "--output", str(tmp_path), "--data-dir", str(data.root)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"]
    (row,) = [r for r in report["rows"] if r["backend"] == "openvino"]
    assert row["skipped"] == "not installed: pip install 'fmnist-deploy[openvino]'" and "pass" not in row
    assert "| not installed: pip install 'fmnist-deploy[openvino]' |" in (tmp_path / "parity.md").read_text()


def test_every_latency_target_has_its_file_committed() -> None:
    from fmnist_deploy.kinds import kind_named

    for backend, (name, _) in TARGETS.items():
        assert (ARTIFACTS / name).is_file() or not kind_named(name).packaged, backend


def test_parity_cli(tmp_path: Path, data) -> None:
    result = CliRunner().invoke(
        bench_cli, ["parity", "--device", "cpu", "--output", str(tmp_path), "--data-dir", str(data.root)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and report["images"] == 10000
    rows = {(r["file"], r["backend"], r.get("optimization")): r for r in report["rows"]}
    assert set(rows) == {
        ("fmnist_mlp.onnx", "onnxruntime", "all"),
        ("fmnist_mlp.onnx", "onnxruntime", "disabled"),
        ("fmnist_mlp.int8.onnx", "onnxruntime", "all"),
        ("fmnist_mlp.int8.onnx", "onnxruntime", "disabled"),
        ("fmnist_mlp.torchscript", "torchscript", None),
        ("fmnist_mlp.pt2", "pt2", None),
        ("fmnist_mlp.pt", "eager", None),
        ("fmnist_mlp.onnx", "openvino", None),
    }
    for r in report["rows"]:
        if r["backend"] == "openvino" and "skipped" in r:  # OpenVINO absent: a not-installed row
            assert r["skipped"].startswith("not installed: pip install")
            continue
        assert 0.80 < r["accuracy"] < 0.90 and r["max_abs_logit_diff"] >= 0 and r["max_abs_prob_diff"] >= 0
        if r["precision"] == "fp32":
            assert r["predictions_differing_from_eager"] == 0 and r["max_abs_logit_diff"] <= 1e-5


def test_parity_fails_for_a_wrong_model(tmp_path: Path, data) -> None:
    import shutil

    from fmnist_deploy.integrity import CONTENT_KEY, content_digest

    for name in ("fmnist_mlp.onnx", "fmnist_mlp.int8.onnx", "fmnist_mlp.torchscript", "fmnist_mlp.pt2"):
        shutil.copy(ARTIFACTS / name, tmp_path / name)
        shutil.copy(ARTIFACTS / f"{name}.json", tmp_path / f"{name}.json")
    payload = torch.load(ARTIFACTS / "fmnist_mlp.pt", weights_only=True)
    payload["model"]["fc3.bias"] = payload["model"]["fc3.bias"] + 0.01  # the eager reference moves; the files do not
    payload[CONTENT_KEY] = content_digest(payload)  # other, intact weights: not a damaged file
    torch.save(payload, tmp_path / "fmnist_mlp.pt")
    result = CliRunner().invoke(
        bench_cli,
        [
            "parity",
            "--artifacts",
            str(tmp_path),
            "--device",
            "cpu",
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
        ],
    )
    assert result.exit_code == 1 and "parity failed" in result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is False
    fp32 = [r for r in report["rows"] if r["precision"] == "fp32" and r["file"] != "fmnist_mlp.pt"]
    assert fp32 and all(not r["pass"] and r["max_abs_logit_diff"] > 1e-3 for r in fp32)


def test_train_speed_small(data) -> None:
    report = train_speed.measure(data, device=torch.device("cpu"), reference_epochs=1, fast_epochs=1, limit=500)
    s, r = report["seconds_per_epoch"], report["ratios"]
    assert all(v > 0 for v in s.values())
    assert s["reference_train"] <= s["reference_epoch"] and s["fast_train"] <= s["fast_epoch"]
    assert set(r) == {"reference_over_fast_epoch", "reference_over_fast_train", "fast_train_over_bare"}
    assert all(v > 0 for v in r.values())
    assert report["train_images"] == 500


def test_train_speed_ratios_from_known_times(data, monkeypatch) -> None:
    """Times the paths are made to report: reference 3 s of training in a 4 s epoch, fast 0.2 s in 0.25 s, the bare
    loop 0.16 s; the ratios are 16, 15 and 1.25."""
    times = iter(
        [train_speed.EpochTimes(9.0, 9.0), train_speed.EpochTimes(0.2, 0.25), train_speed.EpochTimes(3.0, 4.0)]
    )
    monkeypatch.setattr(train_speed, "_time_epochs", lambda *args: next(times))  # warm-up, fast, reference
    monkeypatch.setattr(train_speed, "_time_bare", lambda *args: 0.16)
    report = train_speed.measure(data, device=torch.device("cpu"), reference_epochs=1, fast_epochs=1, limit=500)
    assert report["seconds_per_epoch"] == {
        "reference_train": 3.0,
        "reference_epoch": 4.0,
        "fast_train": 0.2,
        "fast_epoch": 0.25,
        "bare_train": 0.16,
    }
    assert report["ratios"] == pytest.approx(
        {"reference_over_fast_epoch": 16.0, "reference_over_fast_train": 15.0, "fast_train_over_bare": 1.25}
    )


def test_coldstart_small() -> None:
    report = coldstart.measure(
        ARTIFACTS, ARTIFACTS / "samples" / "0000_ankle_boot.png", repetitions=1, backends=("onnxruntime", "eager")
    )
    assert set(report["backends"]) == {"onnxruntime", "eager"}
    for row in report["backends"].values():
        assert row["min_s"] > 0 and row["median_s"] >= row["min_s"]
        assert row["output"] == f"{ARTIFACTS}/samples/0000_ankle_boot.png: Ankle boot (0.673)"
    assert report["torch_over_onnx"] == pytest.approx(
        report["backends"]["eager"]["median_s"] / report["backends"]["onnxruntime"]["median_s"]
    )


def test_coldstart_with_a_missing_model_is_one_line(tmp_path: Path) -> None:
    image = ARTIFACTS / "samples" / "0000_ankle_boot.png"
    result = CliRunner().invoke(
        bench_cli,
        ["coldstart", "--artifacts", str(tmp_path), "--image", str(image), "--output", str(tmp_path / "out")],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {', '.join(str(tmp_path / n) for n in ('fmnist_mlp.onnx', 'fmnist_mlp.torchscript', 'fmnist_mlp.pt2', 'fmnist_mlp.pt'))}: "
        "no such file; run `make export` first"
    ]
    assert not (tmp_path / "out").exists()


def test_the_bench_module_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.benchmarks.cli", "coldstart", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0 and "fresh `fmnist-predict` process" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_parity_cuda_without_gpu_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(bench_cli, ["parity", "--device", "cuda", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "no CUDA device" in result.output and "FAIL" not in result.output
    assert not list(tmp_path.iterdir())


def test_parity_counts_a_model_that_is_not_a_file_as_a_failing_row(tmp_path: Path, data) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("fmnist_mlp.onnx", "fmnist_mlp.int8.onnx", "fmnist_mlp.torchscript", "fmnist_mlp.pt"):
        shutil.copy(ARTIFACTS / name, models / name)
        if name != "fmnist_mlp.pt":
            shutil.copy(ARTIFACTS / f"{name}.json", models / f"{name}.json")
    (models / "fmnist_mlp.pt2").mkdir()  # a directory where the .pt2 file should be
    result = CliRunner().invoke(
        bench_cli,
        [
            "parity",
            "--artifacts",
            str(models),
            "--output",
            str(tmp_path / "out"),
            "--data-dir",
            str(data.root),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1 and "parity failed" in result.output
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    failing = [r for r in report["rows"] if not r.get("pass", True)]
    assert [r["file"] for r in failing] == ["fmnist_mlp.pt2"] and "no such file" in failing[0]["error"]
    assert report["passed"] is False and "FAIL: " in (tmp_path / "out" / "parity.md").read_text()


def test_quick_runs_never_touch_the_committed_reports(tmp_path: Path, data, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = {p.name: p.read_bytes() for p in (ARTIFACTS / "bench").iterdir()}
    result = CliRunner().invoke(
        bench_cli,
        [
            "latency",
            "--backend",
            "onnxruntime",
            "--sizes",
            "1",
            "--seconds",
            "0.01",
            "--e2e-max-batch",
            "0",
            "--data-dir",
            str(data.root),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache" / "fmnist-deploy" / "bench" / "latency.json").is_file()
    assert f"reports written to {tmp_path / 'cache' / 'fmnist-deploy' / 'bench'}/latency.*" in result.stderr
    assert {p.name: p.read_bytes() for p in (ARTIFACTS / "bench").iterdir()} == before


def test_a_read_only_report_folder_keeps_the_printed_result(tmp_path: Path, data) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")  # a file where the report folder should be: every write fails
    result = CliRunner().invoke(
        bench_cli, ["parity", "--device", "cpu", "--output", str(blocked / "reports"), "--data-dir", str(data.root)]
    )
    assert result.exit_code == 1
    assert "**PASS**" in result.stdout
    assert (
        result.output.strip().splitlines()[-1].startswith(f"Error: cannot write the reports to {blocked / 'reports'}")
    )


def test_formats_table(tmp_path: Path, data) -> None:
    result = CliRunner().invoke(
        bench_cli, ["formats", "--seconds", "0.02", "--output", str(tmp_path), "--data-dir", str(data.root)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "formats.json").read_text())
    rows = {r["file"]: r for r in report["rows"]}
    assert set(rows) == {
        "fmnist_mlp.onnx",
        "fmnist_mlp.int8.onnx",
        "fmnist_mlp.torchscript",
        "fmnist_mlp.pt2",
        "fmnist_mlp.pt",
        "fmnist_mlp.fp16.onnx",
        "fmnist_mlp.ort",  # not committed: converted from the ONNX file for the row
    }
    assert rows["fmnist_mlp.ort"]["max_abs_logit_diff"] == rows["fmnist_mlp.onnx"]["max_abs_logit_diff"]
    assert rows["fmnist_mlp.ort"]["format"] == "onnx" and "converted here" in rows["fmnist_mlp.ort"]["label"]
    assert rows["fmnist_mlp.onnx"]["max_abs_logit_diff"] <= 1e-5 and rows["fmnist_mlp.int8.onnx"]["precision"] == "int8"
    assert rows["fmnist_mlp.int8.onnx"]["size_bytes"] < rows["fmnist_mlp.onnx"]["size_bytes"] / 3
    assert all(r["p50_us_batch_1"] > 0 and r["images_per_s_batch_1000"] > 0 for r in rows.values())
    # torch's TorchScript deprecation is one note, not a FutureWarning with a path into site-packages
    assert "note: `torch.jit.load` is deprecated" in result.stderr and "FutureWarning" not in result.stderr
    assert (tmp_path / "formats.png").read_bytes()[:4] == b"\x89PNG"


def test_batch_benchmark_small(tmp_path: Path, data) -> None:
    pytest.importorskip("ray", reason="the batch benchmark needs the optional ray package")
    result = CliRunner().invoke(
        bench_cli,
        ["batch", "--images", "300", "--rounds", "1", "--output", str(tmp_path), "--data-dir", str(data.root)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "batch.json").read_text())
    assert {r["path"] for r in report["rows"]} == {
        "fmnist-predict (one process)",
        "fmnist-batch, Ray, 1 actor(s)",
        "fmnist-batch, Ray, 2 actor(s)",
    }
    assert all(r["exit"] == 0 and r["images_per_s"] > 0 for r in report["rows"]) and report["ray_start_s"] > 0
    # start-up apart on both sides, the ratio past it, and each Ray job's profile
    rows = {(r["path"], r["input"]): r for r in report["rows"]}
    for (path, label), row in rows.items():
        assert row["answer_s"] < row["seconds"]
        single = rows[("fmnist-predict (one process)", label)]
        if single["answer_s"] > 0 and row["answer_s"] > 0:  # 300 images may not outlast fmnist-predict's start-up
            assert row["ratio"] == pytest.approx(row["answer_images_per_s"] / single["answer_images_per_s"])
        else:
            assert row["ratio"] is None
        if path.startswith("fmnist-batch"):
            assert row["answer_s"] > 0 and row["pool_start_s"] > row["actor_init_s"] > 0
            assert all(us > 0 for us in row["actor_us_per_image"].values())
    text = (tmp_path / "batch.md").read_text()
    assert "| fmnist-batch, Ray, 2 actor(s) | idx file |" in text and "actor init s" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="the serving benchmark needs wrk (make bench-deps)")
def test_serve_benchmark_small(tmp_path: Path, data) -> None:
    pytest.importorskip("fastapi", reason="the serving benchmark's naive peer needs fastapi")
    result = CliRunner().invoke(
        bench_cli,
        [
            "serve",
            "--seconds",
            "1",
            "--concurrency",
            "1,64",
            "--sizes",
            "1,32",
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "serve.json").read_text())
    assert len(report["cells"]) == 5 * 2 * 2  # batching on: binary, JSON, gRPC; off: binary; the peer: JSON
    assert all(c["requests_per_s"] > 0 and c["failures"] == 0 for c in report["cells"])
    batched = [
        c
        for c in report["cells"]
        if c["server"].startswith("fmnist-serve (dynamic") and c["concurrency"] == 64 and c["images_per_request"] == 1
    ]
    assert batched[0]["mean_batch_images"] > 1, "concurrent requests were batched"
    assert set(report["summary"]) >= {"server_over_peer_images_per_s_c64_b1", "batching_over_off_c64_b32"}
    assert report["summary"]["json_images_per_s_c64_b32"] > 0
    assert {c["encoding"] for c in report["cells"] if c["server"].startswith("fmnist-serve (dynamic")} == {
        "binary",
        "json",
        "grpc",
    }
    assert report["summary"]["grpc_images_per_s_c64_b32"] > 0
    assert (tmp_path / "serve.png").stat().st_size > 0


def test_int8_benchmark_compares_dynamic_and_static(tmp_path: Path, data) -> None:
    from fmnist_deploy.benchmarks.int8 import markdown, measure
    from fmnist_deploy.export.quantize import calibration_images

    calibration = calibration_images(data.train_images.numpy(), 1000)
    assert len(calibration) == 1000 and np.array_equal(calibration[1], data.train_images[60].numpy())
    report = measure(
        ARTIFACTS / "fmnist_mlp.onnx",
        data.train_images.numpy(),
        data.test_images[:2000].numpy(),
        data.test_labels[:2000].numpy(),
        rounds=1,
        budget_s=0.02,
        calibration_count=200,
    )
    rows = report["rows"]
    assert set(rows) == {"fp32", "int8-dynamic", "int8-static-qdq"}
    for name in ("int8-dynamic", "int8-static-qdq"):
        assert rows[name]["accuracy_drop_points"] <= 0.5 and rows[name]["bytes"] < rows["fp32"]["bytes"] / 3
    assert "| int8-static-qdq |" in markdown(report)


CUDA_SCRIPT = REPO / "benchmarks" / "cuda.sh"


def test_cuda_script_dry_run_lists_every_step_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    done = subprocess.run(
        ["bash", str(CUDA_SCRIPT), "--dry-run", "--quick", "--output", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("[")]
    text = "\n".join(steps)
    for expected in (
        "make setup data",
        "onnxruntime-gpu==",
        "fmnist_deploy.training.data",
        "fmnist_deploy.benchmarks.reexport --artifacts artifacts",
        "-m pytest -q -p no:cacheprovider -m cuda",
        "fmnist_deploy.benchmarks.junit",
        "latency --artifacts artifacts --device cpu --device cuda",
        "--sizes 1,100,1000,10000",
        "parity --artifacts artifacts --device cpu --device cuda",
        "train --device cuda",
        "fmnist_deploy.training.cli --device cuda --epochs 100",
        "fmnist_deploy.benchmarks.cuda_summary",
        "tar czf",
    ):
        assert expected in text, expected
    # every step that runs something is bounded and logged
    assert all("(timeout " in line and "log logs/" in line for line in steps[:-1]), steps
    assert not out.exists()
    if shutil.which("nvidia-smi") is None:
        assert "GPU: none here" in done.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the no-GPU refusal")
def test_cuda_script_without_a_gpu_stops_before_anything(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(CUDA_SCRIPT), "--output", str(tmp_path / "r")], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == "cuda.sh: no NVIDIA GPU here (nvidia-smi is missing or lists none); nothing was run"
    assert not (tmp_path / "r").exists()
    bad = subprocess.run(["bash", str(CUDA_SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --frobnicate" in bad.stderr


def test_cuda_script_with_an_interpreter_installs_into_it(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(CUDA_SCRIPT), "--dry-run", "--python", "/opt/py/bin/python3", "--data-dir", "/data"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "/opt/py/bin/python3 -m pip install --quiet --no-deps --no-build-isolation -e ." in done.stderr
    assert "/opt/py/bin/python3 -m fmnist_deploy.training.data --data-dir /data" in done.stderr
    assert "make setup" not in done.stderr


def test_cuda_script_offline_dry_run_installs_only_from_the_bundle(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(CUDA_SCRIPT), "--dry-run", "--python", "/opt/py/bin/python3", "--offline", "--from", "/b"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    text = done.stderr
    for expected in (
        "/opt/py/bin/python3 benchmarks/bundle.py join /b/wheels",
        "/opt/py/bin/python3 benchmarks/bundle.py venv",
        "bundle.py install /b/wheels",
        "-m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e .",
        "-m fmnist_deploy.training.data --data-dir /b/data",
        "latency --artifacts artifacts --device cpu --device cuda",
        "--sizes 1,8,32,100,1000,10000,100000",
    ):
        assert expected in text, expected
    assert "make setup" not in text and "pip download" not in text and "onnxruntime-gpu==" not in text
    no_python = subprocess.run(["bash", str(CUDA_SCRIPT), "--dry-run", "--offline"], capture_output=True, text=True)
    assert no_python.returncode == 2 and "--offline needs --python PY" in no_python.stderr


def test_junit_verdict_fails_skips_and_failures(tmp_path: Path) -> None:
    from fmnist_deploy.benchmarks.junit import main, verdict

    def report(skipped: int, failures: int, tests: int = 3) -> Path:
        skip = '<skipped message="needs a CUDA GPU"/>'
        cases = "".join(
            f'<testcase classname="t" name="c{i}">{skip if i < skipped else ""}</testcase>' for i in range(tests)
        )
        path = tmp_path / f"r{skipped}{failures}{tests}.xml"
        path.write_text(
            f'<testsuites><testsuite tests="{tests}" failures="{failures}" errors="0" skipped="{skipped}">'
            f"{cases}</testsuite></testsuites>"
        )
        return path

    assert verdict(report(0, 0)) == (True, "3 tests: 0 failed, 0 errors, 0 skipped")
    ok, line = verdict(report(1, 0))
    assert not ok and "t::c0 (needs a CUDA GPU)" in line
    assert not verdict(report(0, 1))[0] and not verdict(report(0, 0, tests=0))[0]
    assert main([str(report(1, 0))]) == 1 and main([str(tmp_path / "missing.xml")]) == 1 and main([]) == 2
    # a test skipped because an optional package is absent is listed, not failed
    absent = (
        report(0, 0)
        .read_text()
        .replace(
            '<testcase classname="t" name="c0"></testcase>',
            '<testcase classname="t" name="c0"><skipped message="tests/conftest.py:90: not installed: pip install '
            'onnxruntime-gpu"/></testcase>',
        )
    )
    path = tmp_path / "absent.xml"
    path.write_text(absent.replace('skipped="0"', 'skipped="1"'))
    ok, line = verdict(path)
    assert ok and "0 skipped, 1 not installed" in line and "t::c0" in line
