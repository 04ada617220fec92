"""Embedding from other languages: Node.js and a web page in Chromium use only the ONNX file, its
JSON sidecar and the generated golden vectors, and answer as fmnist-predict does.

Skips say why (pytest -rs prints the reasons): Node.js, the npm packages (`make embed-deps`) or
Chromium missing. `make test` installs all three where it can.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_deploy import load
from tests.conftest import ARTIFACTS, REPO

NODE_EXAMPLE = REPO / "examples" / "node"
WEB_EXAMPLE = REPO / "examples" / "web"
SAMPLES = sorted((ARTIFACTS / "samples").glob("*.png"))
CHROMIUM = Path("/usr/bin/chromium")

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
needs_node_packages = pytest.mark.skipif(
    not (NODE_EXAMPLE / "node_modules" / "onnxruntime-node").is_dir(),
    reason="examples/node packages missing: run `make embed-deps`",
)
needs_browser = pytest.mark.skipif(
    not CHROMIUM.is_file() or not (WEB_EXAMPLE / "node_modules" / "playwright-core").is_dir(),
    reason="Chromium or examples/web packages missing: run `make embed-deps`",
)


def _node(*args: str, cwd: Path = NODE_EXAMPLE, stdin: str | None = None, timeout: int = 120):
    return subprocess.run(
        ["node", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, input=stdin
    )


def _predict_lines(paths: list[Path], *extra: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", *map(str, paths), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.stdout.splitlines()


@needs_node
@needs_node_packages
def test_node_runs_the_onnx_file_with_its_sidecar_and_matches_the_golden_logits() -> None:
    result = _node("predict.mjs", str(ARTIFACTS / "fmnist_mlp.onnx"), str(ARTIFACTS / "golden.json"))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("100 golden images: max |dlogit| ") and line.endswith("first image: Ankle boot")
    assert float(line.split("max |dlogit| ")[1].split(",")[0]) <= 1e-5


@needs_node
@needs_node_packages
def test_node_check_fails_for_the_wrong_model(tmp_path: Path) -> None:
    """The int8 model differs from the fp32 golden logits by far more than 1e-5: the check must say so."""
    shutil.copy(ARTIFACTS / "fmnist_mlp.int8.onnx", tmp_path / "m.onnx")
    shutil.copy(ARTIFACTS / "fmnist_mlp.int8.onnx.json", tmp_path / "m.onnx.json")
    result = _node("predict.mjs", str(tmp_path / "m.onnx"), str(ARTIFACTS / "golden.json"))
    # the check ran to its verdict (a crash also exits 1, with a stack trace on stderr and no verdict line)
    assert (result.returncode, result.stderr) == (1, ""), result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("100 golden images: max |dlogit| "), line
    max_diff = float(line.split("max |dlogit| ")[1].split(",")[0])
    assert max_diff > 1e-5, line


def test_golden_json_is_the_npz_generated() -> None:
    """One source of truth: golden.json holds exactly golden.npz's vectors."""
    import base64

    document = json.loads((ARTIFACTS / "golden.json").read_text())
    with np.load(ARTIFACTS / "golden.npz", allow_pickle=False) as golden:
        images = np.frombuffer(base64.b64decode(document["images_base64"]), np.uint8).reshape(document["shape"])
        assert np.array_equal(images, golden["images"])
        assert np.array_equal(np.asarray(document["logits"], np.float32), golden["logits"])
        assert document["labels"] == golden["labels"].tolist() and document["format_version"] == 2


@needs_node
@needs_node_packages
def test_node_classifies_the_samples_exactly_like_fmnist_predict() -> None:
    for extra in ((), ("--top-k", "3")):
        node = _node("classify.mjs", *map(str, SAMPLES), *extra)
        assert node.returncode == 0, node.stderr
        assert node.stdout.splitlines() == _predict_lines(SAMPLES, *extra)


@needs_node
@needs_node_packages
def test_node_preprocessing_of_larger_images_matches_pillow(tmp_path: Path, data) -> None:
    """Test images upscaled (square and not) go through Pillow's and the JS pipeline: identical labels.

    The JS port follows Pillow's integer arithmetic; measured on 2 000 such images, every
    28x28 input was identical byte for byte and every label the same.
    """
    paths = []
    for i, image in enumerate(data.test_images[:300].numpy()):
        size = (112, 112) if i % 2 == 0 else (112, 84)
        path = tmp_path / f"{i:04d}.png"
        Image.fromarray(image).resize(size, Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    node = _node("classify.mjs", "-", stdin="\n".join(map(str, paths)))
    assert node.returncode == 0, node.stderr
    python = _predict_lines(paths)
    labels = [line.rsplit(" (", 1)[0] for line in node.stdout.splitlines()]
    assert labels == [line.rsplit(" (", 1)[0] for line in python]


@needs_node
@needs_node_packages
def test_node_command_refuses_bad_inputs_and_models_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    bad = _node("classify.mjs", str(tmp_path / "notes.txt"), str(tmp_path / "missing.png"), str(SAMPLES[0]))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == _predict_lines(SAMPLES[:1])
    assert bad.stderr.splitlines() == [
        f"error: {tmp_path / 'notes.txt'}: not a PNG or JPEG image",
        f"error: {tmp_path / 'missing.png'}: no such file",
        "2 input(s) failed",
    ]
    # a graph that does not match its sidecar: the int8 file under the fp32 sidecar
    shutil.copy(ARTIFACTS / "fmnist_mlp.onnx.json", tmp_path / "m.onnx.json")
    shutil.copy(ARTIFACTS / "fmnist_mlp.int8.onnx", tmp_path / "m.onnx")
    swapped = _node("classify.mjs", "--model", str(tmp_path / "m.onnx"), str(SAMPLES[0]))
    assert swapped.returncode == 2 and swapped.stdout == ""
    assert swapped.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'm.onnx'}: sha256 {__import__('hashlib').sha256((tmp_path / 'm.onnx').read_bytes()).hexdigest()[:12]}"
        "… does not match its sidecar: damaged or replaced"
    ]
    side = json.loads((ARTIFACTS / "fmnist_mlp.onnx.json").read_text())
    side["outputs"][0]["name"] = "scores"
    (tmp_path / "m.onnx.json").write_text(json.dumps({**side, "file_sha256": side["file_sha256"]}))
    shutil.copy(ARTIFACTS / "fmnist_mlp.onnx", tmp_path / "m.onnx")
    renamed = _node("classify.mjs", "--model", str(tmp_path / "m.onnx"), str(SAMPLES[0]))
    assert renamed.returncode == 2
    assert "its sidecar says [image] and [scores,probabilities]" in renamed.stderr
    assert len(renamed.stderr.strip().splitlines()) == 1


@needs_node
@needs_browser
def test_the_web_page_in_chromium_answers_like_fmnist_predict(tmp_path: Path) -> None:
    answers = load(ARTIFACTS / "fmnist_mlp.onnx").predict_files(SAMPLES)
    expected = [
        {"file": name, "label": label, "probability": float(p.max())}
        for name, label, p in zip(
            answers.inputs, answers.prediction.labels, answers.prediction.probabilities, strict=True
        )
    ]
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    result = _node(
        "browser-test.mjs",
        str(tmp_path / "expected.json"),
        "--screenshot",
        str(tmp_path / "page.png"),
        cwd=WEB_EXAMPLE,
        timeout=180,
    )
    checks = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0, result.stdout + result.stderr
    assert [c["label"] for c in checks if c["check"] == "image"] == [e["label"] for e in expected]
    assert all(c["ok"] for c in checks) and {c["check"] for c in checks} == {"image", "text file", "offline", "queued"}
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"


@needs_node
@needs_node_packages
def test_node_command_walks_folders_and_has_help(tmp_path: Path) -> None:
    folder = _node("classify.mjs", str(ARTIFACTS / "samples"))
    assert folder.returncode == 0, folder.stderr
    assert folder.stdout.splitlines() == _predict_lines([ARTIFACTS / "samples"])
    (tmp_path / "empty").mkdir()
    empty = _node("classify.mjs", str(tmp_path / "empty"))
    assert empty.returncode == 1 and "no PNG or JPEG images found under this folder" in empty.stderr
    usage = _node("classify.mjs", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: node classify.mjs") and usage.stderr == ""
    crlf = _node("classify.mjs", "-", stdin=f"{SAMPLES[2]}\r\n")
    assert crlf.stdout.splitlines() == _predict_lines([SAMPLES[2]])


@needs_node
@needs_node_packages
def test_node_examples_leave_no_telemetry_files(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(tmp_path)
    for args in (
        ["classify.mjs", str(SAMPLES[0])],
        ["predict.mjs", str(ARTIFACTS / "fmnist_mlp.onnx"), str(ARTIFACTS / "golden.json")],
    ):
        done = subprocess.run(["node", *args], cwd=NODE_EXAMPLE, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
    assert list(tmp_path.rglob("*")) == [], "ONNX Runtime wrote its telemetry store under ~/.cache/Microsoft"


@needs_node
def test_the_page_server_serves_the_page_and_the_model_only() -> None:
    import urllib.error
    import urllib.request

    server = subprocess.Popen(
        ["node", "serve.mjs", "0", "--for", "60"], cwd=WEB_EXAMPLE, stdout=subprocess.PIPE, text=True
    )
    try:
        url = server.stdout.readline().split(" at ")[1].strip().removesuffix("/examples/web/")

        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(url + path, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        for path in (
            "/examples/web/",
            "/examples/web/app.mjs",
            "/artifacts/fmnist_mlp.onnx",
            "/artifacts/fmnist_mlp.onnx.json",
        ):
            assert status(path) == 200, path
        for path in (
            "/.git/config",
            "/artifacts/checkpoint.pt",
            "/artifacts/fmnist_mlp.pt",
            "/README.md",
            "/examples/web/serve.mjs",
            "/examples/web/package.json",
            "/examples/web/../../.git/config",
            "/examples/web/%2e%2e/%2e%2e/.git/config",
            "/artifacts/",
        ):
            assert status(path) == 404, path
    finally:
        server.terminate()
        server.wait(timeout=30)
