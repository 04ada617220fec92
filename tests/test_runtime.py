"""Runtime: every backend against the golden vectors, inputs of every kind, errors without tracebacks."""

from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fmnist_deploy import runtime
from fmnist_deploy.integrity import IntegrityWarning
from fmnist_deploy.runtime import BACKENDS, DeviceError, InputError, ModelError, OptionError, load
from fmnist_deploy.runtime.cli import main as predict_cli
from fmnist_deploy.runtime.images import read_image, to_model_input
from fmnist_deploy.runtime.inputs import chunks, iter_items
from tests.conftest import ARTIFACTS, REPO, require_backend, require_ort_cuda

# One case per registered backend: the committed file it reads.
CASES = {
    "onnxruntime": "fmnist_mlp.onnx",
    "torchscript": "fmnist_mlp.torchscript",
    "pt2": "fmnist_mlp.pt2",
    "eager": "fmnist_mlp.pt",
    "openvino": "fmnist_mlp.onnx",
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(ARTIFACTS / "golden.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_every_registered_backend_has_a_parity_case() -> None:
    assert set(CASES) == set(BACKENDS)


@pytest.mark.parametrize("backend", sorted(CASES))
def test_backend_matches_the_golden_logits(backend: str, golden) -> None:
    path = ARTIFACTS / CASES[backend]
    # chosen from the suffix, except openvino: it reads the .onnx that auto gives onnxruntime
    predictor = load(path) if runtime.backend_for(path) == backend else load(path, backend=backend)
    assert predictor.backend_name == backend
    prediction = predictor.predict(golden["images"])
    assert np.abs(prediction.logits - golden["logits"]).max() <= 1e-5
    assert np.abs(prediction.probabilities - golden["probabilities"]).max() <= 1e-6
    assert prediction.indices.tolist() == golden["logits"].argmax(1).tolist()
    assert prediction.labels == [CLASS_NAMES[i] for i in golden["logits"].argmax(1)]
    assert predictor.class_names == CLASS_NAMES


def test_int8_model_runs_through_the_same_interface(golden) -> None:
    prediction = load(ARTIFACTS / "fmnist_mlp.int8.onnx").predict(golden["images"])
    assert (prediction.indices == golden["labels"]).mean() >= 0.8


def test_single_image_and_forced_backend(golden) -> None:
    predictor = load(ARTIFACTS / "fmnist_mlp.onnx", backend="onnxruntime", threads=1, optimization="disabled")
    one = predictor.predict(golden["images"][0])
    assert one.logits.shape == (1, 10) and one.labels == ["Ankle boot"]


@pytest.mark.parametrize(
    ("images", "given"),
    [
        (np.zeros((3, 32, 32), dtype=np.float64), "float64 [3,32,32]"),
        (np.zeros((3, 28, 28), dtype=np.float32), "float32 [3,28,28]"),
        (np.zeros((28, 28, 3), dtype=np.uint8), "uint8 [28,28,3]"),
        (np.zeros((0, 28, 28), dtype=np.uint8), "uint8 [0,28,28]"),
        (np.zeros((2, 1, 28, 28), dtype=np.uint8), "uint8 [2,1,28,28]"),
        ([[0] * 28] * 28, "list"),
    ],
)
def test_predict_rejects_wrong_input_with_what_was_given(images, given: str) -> None:
    predictor = load(ARTIFACTS / "fmnist_mlp.onnx")
    with pytest.raises(InputError) as info:
        predictor.predict(images)
    assert str(info.value) == f"expected uint8 [N,28,28] (N >= 1), [N,28,28,1] or [28,28], got {given}"


def test_the_onnx_path_never_imports_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "import runtime\n"
        "from runtime.cli import main\n"
        "p = runtime.load('artifacts/fmnist_mlp.onnx')\n"
        "p.predict(np.zeros((4, 28, 28), np.uint8))\n"
        "main(['artifacts/samples/0000_ankle_boot.png'], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "artifacts/samples/0000_ankle_boot.png: Ankle boot (0.673)",
        "no torch",
    ]


@pytest.mark.parametrize("backend", sorted(CASES))
def test_a_predictor_shared_by_8_threads_answers_as_one_thread(backend: str, data) -> None:
    predictor = load(ARTIFACTS / CASES[backend], backend=backend)
    images = data.test_images[:800].numpy()
    expected = predictor.predict(images).logits
    results: dict[int, np.ndarray] = {}

    def work(t: int) -> None:
        out = [predictor.predict(images[i * 10 : (i + 1) * 10]).logits for i in range(80)]
        results[t] = np.concatenate(out)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for out in results.values():
        assert np.abs(out - expected).max() <= 1e-5


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="checks the no-GPU errors")
@pytest.mark.parametrize("backend", sorted(CASES))
def test_cuda_without_a_gpu_is_an_error_not_a_cpu_run(backend: str) -> None:
    with pytest.raises(DeviceError, match="cuda"):
        load(ARTIFACTS / CASES[backend], backend=backend, device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "pt2", "eager"])
def test_cuda_backends_match_the_golden_logits(backend: str, golden, request) -> None:
    if backend == "onnxruntime":
        require_ort_cuda(request.config)
    predictor = load(ARTIFACTS / CASES[backend], backend=backend, device="cuda")  # never a silent CPU run
    assert predictor.device == "cuda"
    if backend == "onnxruntime":
        assert predictor.backend.providers[0] == "CUDAExecutionProvider"
        assert predictor.backend.provider_options["use_tf32"] == "0"
    # Twice per size: the first call of a batch size captures its CUDA graph, the second replays it.
    for images in (golden["images"], golden["images"], golden["images"][:1], golden["images"][:1]):
        prediction = predictor.predict(images)
        assert np.abs(prediction.logits - golden["logits"][: len(images)]).max() <= 1e-4
        assert prediction.indices.tolist() == golden["logits"][: len(images)].argmax(1).tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "pt2", "eager"])
@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_large_batches_stream_and_match_the_cpu(backend: str, graphs: bool, request) -> None:
    # 20 000 images: past the largest captured size and the chunk size, so two streams carry odd-sized chunks.
    if backend == "onnxruntime":
        require_ort_cuda(request.config)
    images = np.random.default_rng(3).integers(0, 256, (20_000, 28, 28), dtype=np.uint8)
    cpu = load(ARTIFACTS / CASES[backend], backend=backend).predict(images)
    options = {"cuda_graph": graphs} if backend == "onnxruntime" else {"cuda_graphs": graphs, "chunk_rows": 6_000}
    gpu = load(ARTIFACTS / CASES[backend], backend=backend, device="cuda", **options)
    for _ in range(2):
        out = gpu.predict(images)
        assert np.abs(out.logits - cpu.logits).max() <= 1e-4
        assert (out.indices != cpu.indices).sum() <= 1  # a near-tie may flip between kernels


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_onnxruntime_tf32_is_an_opt_in_with_its_own_tolerance(golden, request) -> None:
    from fmnist_deploy.contract import TF32_LOGIT_TOLERANCE

    require_ort_cuda(request.config)
    predictor = load(ARTIFACTS / CASES["onnxruntime"], device="cuda", tf32=True)
    assert predictor.backend.provider_options["use_tf32"] == "1"
    assert np.abs(predictor.predict(golden["images"]).logits - golden["logits"]).max() <= TF32_LOGIT_TOLERANCE


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "pt2", "eager"])
def test_cuda_options_on_the_cpu_are_refused(backend: str) -> None:
    option = {"onnxruntime": "tf32", "torchscript": "cuda_graphs", "pt2": "graph_cache", "eager": "chunk_rows"}[backend]
    value = {"tf32": True, "cuda_graphs": False, "graph_cache": 2, "chunk_rows": 100}[option]
    with pytest.raises(OptionError, match=f"{option}: CUDA options, for device cuda"):
        load(ARTIFACTS / CASES[backend], backend=backend, **{option: value})


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="cannot tell the backend from the suffix '.tflite'"):
        load(tmp_path / "model.tflite")
    with pytest.raises(
        ModelError, match="this is an ONNX file, which the pt2 backend does not read; use --backend onnxruntime"
    ):
        load(ARTIFACTS / "fmnist_mlp.onnx", backend="pt2")
    with pytest.raises(DeviceError, match="expected one of cpu, cuda"):
        load(ARTIFACTS / "fmnist_mlp.onnx", device="tpu")


@pytest.mark.parametrize("backend", sorted(CASES))
def test_a_truncated_model_is_a_model_error(tmp_path: Path, backend: str) -> None:
    """Each backend reading its own file cut short (no sidecar beside it, so the backend's reader must refuse it)."""
    name = CASES[backend]
    path = tmp_path / name
    path.write_bytes((ARTIFACTS / name).read_bytes()[:20_000])
    # the weights file carries its own digest instead of a sidecar: only the other files warn that none is beside them
    warned = pytest.warns(IntegrityWarning) if backend != "eager" else contextlib.nullcontext()
    with warned, pytest.raises(ModelError, match=re.escape(str(path))):
        load(path, backend=backend)


def test_a_model_off_the_contract_is_refused(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(ARTIFACTS / "fmnist_mlp.onnx")
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, bare)
    with pytest.raises(ModelError, match="no fmnist-deploy metadata"):
        load(bare)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 5  # a fixed batch of 5
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, fixed)
    side = json.loads((ARTIFACTS / "fmnist_mlp.onnx.json").read_text())
    side["file_sha256"] = hashlib.sha256(fixed.read_bytes()).hexdigest()  # an intact file, off the contract
    fixed.with_name("fixed.onnx.json").write_text(json.dumps(side))
    with pytest.raises(ModelError, match="dynamic N"):
        load(fixed)


@pytest.mark.parametrize("change", ["fixed batch", "renamed input", "float input"])
def test_the_openvino_backend_refuses_a_graph_off_the_contract(tmp_path: Path, change: str) -> None:
    import onnx

    require_backend("openvino")
    model = onnx.load(ARTIFACTS / "fmnist_mlp.onnx")
    image = model.graph.input[0]
    if change == "fixed batch":
        image.type.tensor_type.shape.dim[0].dim_value = 5
    elif change == "renamed input":
        for node in model.graph.node:
            node.input[:] = ["pixels" if name == image.name else name for name in node.input]
        image.name = "pixels"
    else:
        model.graph.node[0].input[0] = "as_uint8"  # a float input, cast to what the graph expects
        model.graph.node.insert(0, onnx.helper.make_node("Cast", [image.name], ["as_uint8"], to=onnx.TensorProto.UINT8))
        image.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    path = tmp_path / "off.onnx"
    onnx.save(model, path)
    with pytest.warns(IntegrityWarning), pytest.raises(ModelError, match="graph has inputs") as refused:
        load(path, backend="openvino")
    assert "\n" not in str(refused.value)


# --- images in ----------------------------------------------------------------------------


def _garment(size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """A light rectangle on a dark background."""
    w, h = size
    array = np.zeros((h, w), dtype=np.uint8)
    array[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 200
    return array


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "I", "F", "CMYK"])
@pytest.mark.parametrize("size", [(28, 28), (56, 56), (100, 40), (7, 13), (1000, 1000)])
def test_any_mode_and_size_becomes_uint8_28x28(mode: str, size: tuple[int, int]) -> None:
    base = Image.fromarray(_garment(size), mode="L")
    if mode == "I;16":
        img = Image.fromarray(_garment(size).astype(np.uint16) * 257)  # 16-bit, same picture
        assert img.mode.startswith("I;16")
    else:
        img = base.convert(mode)
    out = to_model_input(img)
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert out.max() > 100 and out[0, 0] < 30  # the light garment stays light, the dark corner dark


def test_28x28_gray_passes_through_unchanged_and_invert_flips(golden) -> None:
    image = golden["images"][0]
    assert np.array_equal(to_model_input(Image.fromarray(image, mode="L")), image)
    assert np.array_equal(to_model_input(Image.fromarray(255 - image, mode="L"), invert=True), image)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    img = Image.fromarray(np.full((28, 28), 32768, dtype=np.uint16))
    assert to_model_input(img)[0, 0] == 128


def test_transparency_becomes_background() -> None:
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[0:5, :, :3] = 255  # transparent pixels whose colour must not show
    rgba[10:18, 10:18] = (255, 255, 255, 255)  # an opaque white garment
    out = to_model_input(Image.fromarray(rgba, mode="RGBA"))
    assert out[0, 0] == 0 and out[12, 12] == 255
    cutout = np.zeros((28, 28, 4), dtype=np.uint8)
    cutout[10:18, 10:18] = (20, 20, 20, 255)  # a dark garment cut out of a photo, for --invert
    out = to_model_input(Image.fromarray(cutout, mode="RGBA"), invert=True)
    assert out[0, 0] == 0 and out[12, 12] == 235


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_files_of_every_format_are_read(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"garment.{fmt.lower()}"
    Image.fromarray(_garment((64, 64)), mode="L").save(path, format=fmt)
    out = read_image(path)
    assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() > 100


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(_garment(), mode="L"), Image.fromarray(np.zeros((28, 28), np.uint8), mode="L")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert read_image(path).max() > 100


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(path)  # 81 Mpx in a few kB
    assert path.stat().st_size < 100_000
    with pytest.raises(InputError, match="9000x9000 image is over the 8000-pixel limit on its longest side"):
        read_image(path)


@pytest.mark.parametrize("name", sorted(p.name for p in (ARTIFACTS / "samples").glob("*.png")))
def test_shipped_samples_predict_their_true_labels(name: str) -> None:
    label = name.split("_", 1)[1].removesuffix(".png")
    predicted = load(ARTIFACTS / "fmnist_mlp.onnx").predict(read_image(ARTIFACTS / "samples" / name)).labels[0]
    assert predicted.lower().replace("/", "_").replace(" ", "_").replace("-", "_") == label


def test_batches_npy_and_idx(tmp_path: Path, golden) -> None:
    np.save(tmp_path / "five.npy", golden["images"][:5])
    header = b"\x00\x00\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in (3, 28, 28))
    (tmp_path / "three-idx3-ubyte.gz").write_bytes(gzip.compress(header + golden["images"][:3].tobytes()))
    items = list(iter_items([tmp_path / "five.npy", tmp_path / "three-idx3-ubyte.gz"]))
    assert [i.name.rsplit("/", 1)[1] for i in items] == [f"five.npy[{i}]" for i in range(5)] + [
        f"three-idx3-ubyte.gz[{i}]" for i in range(3)
    ]
    assert all(np.array_equal(item.image, golden["images"][i]) for i, item in enumerate(items[:5]))


def test_chunks_bound_the_batch_size() -> None:
    sizes = [len(c) for c in chunks(iter(range(1000)), 256)]  # type: ignore[arg-type]
    assert sizes == [256, 256, 256, 232]


# --- fmnist-predict -----------------------------------------------------------------------


def test_cli_readme_example() -> None:
    result = CliRunner().invoke(
        predict_cli,
        ["artifacts/samples/0000_ankle_boot.png", "--model", "artifacts/fmnist_mlp.onnx"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    assert result.output == "artifacts/samples/0000_ankle_boot.png: Ankle boot (0.673)\n"


@pytest.mark.parametrize("backend", sorted(CASES))
def test_cli_top_k_json_on_every_backend(backend: str) -> None:
    model = ARTIFACTS / CASES[backend]
    result = CliRunner().invoke(
        predict_cli,
        [str(ARTIFACTS / "samples"), "--model", str(model), "--backend", backend, "--top-k", "3", "--json"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 10 and rows[0]["class"] == "Ankle boot"
    assert [r["input"] for r in rows] == sorted(r["input"] for r in rows)
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] for r in rows)


def test_cli_one_bad_input_among_good_ones(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    good = ARTIFACTS / "samples" / "0001_pullover.png"
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    result = CliRunner().invoke(
        predict_cli,
        [
            str(good),
            str(tmp_path / "notes.png"),
            str(tmp_path / "nope.png"),
            str(truncated),
            str(ARTIFACTS / "samples" / "0002_trouser.png"),
        ],
    )
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert [line.split(": ")[1].split(" (")[0] for line in out] == ["Pullover", "Trouser"]
    errors = result.stderr.splitlines()
    assert any("notes.png: not an image Pillow can read" in e for e in errors)
    assert any("nope.png: no such file or folder" in e for e in errors)
    assert any("cut.png: damaged or truncated image" in e for e in errors)
    assert errors[-1] == "3 input(s) failed"
    assert "Traceback" not in result.output


def test_cli_errors_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(predict_cli, ["x.png", "--model", str(tmp_path / "none.onnx")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    bad_backend = runner.invoke(predict_cli, ["x.png", "--backend", "tflite"])
    assert bad_backend.exit_code == 2
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    result = runner.invoke(predict_cli, [str(ARTIFACTS / "samples"), "--model", str(corrupt)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()] and result.output.startswith("Error: ")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 28, 28), dtype=np.float32))
    result = runner.invoke(predict_cli, [str(wrong)])
    assert result.exit_code == 1 and "expected uint8 [N,28,28] or [28,28], got float32 [2,28,28]" in result.stderr


def test_cli_folder_larger_than_a_chunk(tmp_path: Path, data) -> None:
    n = 1100  # more than a model chunk (1024) and than a decode task (512): the decode processes run
    for i in range(n):
        Image.fromarray(data.test_images[i].numpy(), mode="L").save(tmp_path / f"img_{i:04d}.png")
    result = CliRunner().invoke(predict_cli, [str(tmp_path), "--json"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [Path(r["input"]).name for r in rows] == [f"img_{i:04d}.png" for i in range(n)]
    expected = load(ARTIFACTS / "fmnist_mlp.onnx").predict(data.test_images[:n].numpy()).labels
    assert [r["class"] for r in rows] == expected


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only: a torch backend may import torch when it is constructed
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_runtime_modules_import_torch_only_in_torch_backends() -> None:
    torch_free = [
        "base",
        "errors",
        "images",
        "onnxruntime_backend",
        "cli",
        "__init__",
        "eager_backend",
        "torchscript_backend",
        "pt2_backend",
    ]
    for name in torch_free:
        imports = _module_level_imports(REPO / "runtime" / f"{name}.py")
        assert not {m for m in imports if m == "torch" or m.startswith("torch.") or m.endswith("torch_common")}, name
    assert "torch" in _module_level_imports(REPO / "runtime" / "torch_common.py")  # the check can fail
    assert runtime.BACKENDS["onnxruntime"].__module__ == "fmnist_deploy.runtime.onnxruntime_backend"


@pytest.mark.parametrize("backend", sorted(CASES))
def test_large_batches_run_in_slices_with_the_same_answers(backend: str, data) -> None:
    predictor = load(ARTIFACTS / CASES[backend], backend=backend)
    images = data.test_images[:2500].numpy()  # two full slices of 1024 and a partial one
    sliced = predictor.predict(images)
    predictor.backend.chunk_rows = 10_000  # one call for the whole batch
    whole = predictor.predict(images)
    assert np.abs(sliced.logits - whole.logits).max() <= 1e-5
    assert sliced.indices.tolist() == whole.indices.tolist()


def test_unknown_option_values_are_typed_errors_naming_what_is_accepted() -> None:
    with pytest.raises(OptionError, match="optimization 'fast': expected one of all, extended, basic, disabled"):
        load(ARTIFACTS / "fmnist_mlp.onnx", optimization="fast")
    with pytest.raises(OptionError, match="threads 0: expected a whole number >= 1"):
        load(ARTIFACTS / "fmnist_mlp.onnx", threads=0)
    with pytest.raises(
        OptionError,
        match="the pt2 backend does not take spinning; its options: threads, cuda_graphs, graph_cache, max_graph_batch, chunk_rows",
    ):
        load(ARTIFACTS / "fmnist_mlp.pt2", spinning=False)
    with pytest.raises(OptionError, match="threads 0: expected a whole number >= 1"):
        load(ARTIFACTS / "fmnist_mlp.pt2", threads=0)
    with pytest.raises(
        OptionError,
        match="the onnxruntime backend does not take device_id; its options: threads, optimization, spinning",
    ):
        load(ARTIFACTS / "fmnist_mlp.onnx", device_id=1)


def test_metadata_that_breaks_the_contract_is_refused_in_one_line(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(ARTIFACTS / "fmnist_mlp.onnx")
    for prop in model.metadata_props:
        if prop.key == "class_names":
            prop.value = json.dumps(["only", "three", "names"])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"class_names \['only', 'three', 'names'\]: expected 10 strings"):
        load(tmp_path / "m.onnx")


# --- fmnist-predict as a tool ------------------------------------------------------------


def test_predict_works_from_any_folder_with_the_packaged_model(tmp_path: Path) -> None:
    image = tmp_path / "boot.png"
    image.write_bytes((ARTIFACTS / "samples" / "0000_ankle_boot.png").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", "boot.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "boot.png: Ankle boot (0.673)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.png"], "nothing written where it ran"


def test_backend_without_model_picks_its_packaged_file() -> None:
    result = CliRunner().invoke(
        predict_cli, [str(ARTIFACTS / "samples" / "0002_trouser.png"), "--backend", "pt2", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["class"] == "Trouser"


@pytest.mark.parametrize("content", ["empty", "text files"])
def test_a_folder_without_images_is_an_error_not_silence(tmp_path: Path, content: str) -> None:
    if content == "text files":
        (tmp_path / "notes.txt").write_text("nothing to see")
    result = CliRunner().invoke(predict_cli, [str(tmp_path)])
    assert result.exit_code == 1
    assert f"error: {tmp_path}: no images found under this folder" in result.stderr and result.stdout == ""


def test_json_lists_every_input_exactly_once_failures_included(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_text("not an image")
    good = ARTIFACTS / "samples" / "0001_pullover.png"
    result = CliRunner().invoke(
        predict_cli, [str(good), str(tmp_path / "bad.png"), str(tmp_path / "gone.png"), "--json"]
    )
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(good), str(tmp_path / "bad.png"), str(tmp_path / "gone.png")]
    assert records[0]["class"] == "Pullover" and records[0]["error"] is None  # one shape, answered or not
    assert [(r["path"], r["index"]) for r in records] == [(r["input"], -1) for r in records]
    assert "not an image" in records[1]["error"] and "no such file" in records[2]["error"]


def test_paths_from_stdin_and_output_files(tmp_path: Path) -> None:
    samples = sorted((ARTIFACTS / "samples").glob("*.png"))
    listing = "".join(f"{p}\n" for p in samples[:4]) + f"{tmp_path / 'missing.png'}\n"
    for suffix in (".jsonl", ".csv"):
        out = tmp_path / f"answers{suffix}"
        result = CliRunner().invoke(predict_cli, ["-", "--output", str(out), "--top-k", "2"], input=listing)
        assert result.exit_code == 1 and result.stdout == ""
        assert f"wrote 5 record(s) to {out}" in result.stderr
        if suffix == ".jsonl":
            records = [json.loads(line) for line in out.read_text().splitlines()]
            assert [r.get("class") for r in records] == ["Ankle boot", "Pullover", "Trouser", "Trouser", None]
            assert len(records[0]["top_k"]) == 2 and "error" in records[4]
        else:
            import csv

            table = list(csv.DictReader(out.open()))
            assert [r["class"] for r in table] == ["Ankle boot", "Pullover", "Trouser", "Trouser", ""]
            assert table[4]["error"].endswith("no such file or folder") and table[0]["top_k"].startswith("Ankle boot:")
    bad = CliRunner().invoke(predict_cli, [str(samples[0]), "--output", str(tmp_path / "answers.txt")])
    assert bad.exit_code == 2 and "expected a .jsonl, .csv or .parquet file" in bad.output


def test_dark_on_light_images_get_a_hint(tmp_path: Path) -> None:
    image = np.asarray(Image.open(ARTIFACTS / "samples" / "0000_ankle_boot.png"))
    Image.fromarray(255 - image).save(tmp_path / "scan.png")
    result = CliRunner().invoke(predict_cli, [str(tmp_path / "scan.png")])
    assert result.exit_code == 0
    assert "note: " in result.stderr and "pass --invert" in result.stderr
    inverted = CliRunner().invoke(predict_cli, [str(tmp_path / "scan.png"), "--invert"])
    assert inverted.stderr == "" and inverted.stdout.endswith("Ankle boot (0.673)\n")


def test_a_file_with_the_wrong_suffix_says_what_it_is(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes((ARTIFACTS / "fmnist_mlp.onnx").read_bytes())
    result = CliRunner().invoke(
        predict_cli, [str(ARTIFACTS / "samples" / "0000_ankle_boot.png"), "--model", str(tmp_path / "model.pt2")]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'model.pt2'}: torch.export.load cannot read it (not a zip archive); "
        "this is an ONNX file: use --backend onnxruntime or rename it to .onnx"
    ]


def test_torchscript_deprecation_is_one_note() -> None:
    result = CliRunner().invoke(
        predict_cli, [str(ARTIFACTS / "samples" / "0000_ankle_boot.png"), "--backend", "torchscript"]
    )
    assert result.exit_code == 0
    assert result.stderr.splitlines() == ["note: `torch.jit.load` is deprecated. Please switch to `torch.export`."]


def test_every_command_has_a_version() -> None:
    from fmnist_deploy.benchmarks.cli import main as bench_cli
    from fmnist_deploy.export.cli import main as export_cli
    from fmnist_deploy.training.cli import main as train_cli

    for command in (predict_cli, export_cli, train_cli, bench_cli):
        result = CliRunner().invoke(command, ["--version"])
        assert result.exit_code == 0 and result.output.strip().endswith(fmnist_version()), command.name


def fmnist_version() -> str:
    from importlib.metadata import version

    return version("fmnist-deploy")


def test_predict_files_and_channels_last_arrays(data) -> None:
    predictor = load(ARTIFACTS / "fmnist_mlp.onnx")
    samples = sorted((ARTIFACTS / "samples").glob("*.png"))
    answers = predictor.predict_files([*samples[:3], ARTIFACTS / "samples" / "nope.png"])
    assert answers.inputs == [str(p) for p in samples[:3]] and answers.prediction.labels == [
        "Ankle boot",
        "Pullover",
        "Trouser",
    ]
    assert list(answers.errors) == [str(ARTIFACTS / "samples" / "nope.png")]
    images = data.test_images[:5].numpy()
    assert predictor.predict(images[..., None]).labels == predictor.predict(images).labels
    top = predictor.predict(images).top_k(3)
    assert top[0][0][0] == "Ankle boot" and len(top[0]) == 3


def test_inputs_that_hold_nothing_or_cannot_be_converted_are_named(tmp_path: Path) -> None:
    (tmp_path / "x.png").mkdir()  # an empty folder with an image's name
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), np.uint8))
    Image.new("RGB", (20, 20)).convert("LAB").save(tmp_path / "lab.tif")
    result = CliRunner().invoke(
        predict_cli,
        [
            str(tmp_path / "x.png"),
            str(tmp_path / "none.npy"),
            str(tmp_path / "lab.tif"),
            str(ARTIFACTS / "samples" / "0000_ankle_boot.png"),
        ],
    )
    assert result.exit_code == 1
    assert result.stdout.endswith("Ankle boot (0.673)\n")
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'x.png'}: no images found under this folder",
        f"error: {tmp_path / 'none.npy'}: holds no images (shape [0, 28, 28])",
        f"error: {tmp_path / 'lab.tif'}: unsupported mode LAB; expected grayscale, RGB, CMYK or palette",
        "3 input(s) failed",
    ]


def test_a_sidecar_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes((ARTIFACTS / "fmnist_mlp.onnx").read_bytes())
    (tmp_path / "m.onnx.json").write_text("[]")
    with pytest.raises(ModelError, match=r"m.onnx.json: not a sidecar written by fmnist-export \(no file_sha256\)"):
        load(tmp_path / "m.onnx")


def test_describe_names_what_actually_runs() -> None:
    """Predictor.describe() is the one view the server and the benchmarks read: platform, backend, device,
    provider, precision, threads and the file's contract."""
    from fmnist_deploy.runtime import load as load_model

    onnx = load_model(ARTIFACTS / "fmnist_mlp.onnx", threads=1).describe()
    assert (onnx.platform, onnx.backend, onnx.device, onnx.provider) == (
        "onnxruntime_onnx",
        "onnxruntime",
        "cpu",
        "CPUExecutionProvider",
    )
    assert (onnx.precision, onnx.threads) == ("fp32", 1)
    assert onnx.contract["inputs"][0]["name"] == "image" and len(onnx.contract["class_names"]) == 10
    assert load_model(ARTIFACTS / "fmnist_mlp.int8.onnx").describe().precision == "int8"
    eager = load_model(ARTIFACTS / "fmnist_mlp.pt").describe()
    assert (eager.platform, eager.provider) == ("pytorch", "torch:cpu") and eager.threads >= 1
