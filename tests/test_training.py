"""Training: exactness of the fast loader, resume, data verification, the CLI, the committed run."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fmnist_deploy.contract import ACCURACY_SLACK_IMAGES
from fmnist_deploy.integrity import CONTENT_KEY, content_digest
from fmnist_deploy.training import data as data_mod
from fmnist_deploy.training.checkpoint import load_checkpoint, load_weights
from fmnist_deploy.training.cli import main as train_cli
from fmnist_deploy.training.config import CLASS_NAMES, Recipe
from fmnist_deploy.training.loop import TrainingError, evaluate, in_order, run
from fmnist_deploy.training.model import FashionMLP, normalise
from tests.conftest import ARTIFACTS

SMALL = Recipe(epochs=2, train_limit=3000)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs: max |d| {(a[key] - b[key]).abs().max()}"


def test_model_has_course_layer_names() -> None:
    model = FashionMLP()
    assert [name for name, _ in model.named_children()] == ["fc1", "dropout1", "fc2", "dropout2", "fc3"]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "fc1.weight": (128, 784),
        "fc1.bias": (128,),
        "fc2.weight": (64, 128),
        "fc2.bias": (64,),
        "fc3.weight": (10, 64),
        "fc3.bias": (10,),
    }


def test_recipe_defaults_are_the_course_and_round_trip() -> None:
    r = Recipe()
    assert (r.epochs, r.lr, r.momentum, r.batch_size, r.dropout, r.norm_mean, r.norm_std) == (
        100,
        1e-3,
        0.0,
        100,
        0.2,
        0.5,
        0.5,
    )
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({**r.to_dict(), "warmup": 3})


def test_normalise_matches_totensor_normalize(data) -> None:
    from PIL import Image
    from torchvision import transforms

    pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    images = data.train_images[:64]
    expected = torch.stack([pipeline(Image.fromarray(img.numpy(), mode="L")) for img in images])
    assert torch.equal(normalise(images, 0.5, 0.5), expected.squeeze(1))


def test_fast_loader_is_bit_identical_to_the_course_loop(data, tmp_path: Path) -> None:
    fast = run(SMALL, data, tmp_path / "fast", device=torch.device("cpu"), loader="fast")
    ref = run(SMALL, data, tmp_path / "ref", device=torch.device("cpu"), loader="reference")
    _assert_same_weights(fast.model.state_dict(), ref.model.state_dict())
    assert [(h.train_loss, h.valid_acc) for h in fast.history] == [(h.train_loss, h.valid_acc) for h in ref.history]


def test_a_different_seed_gives_different_weights(data, tmp_path: Path) -> None:
    a = run(replace(SMALL, epochs=1), data, tmp_path / "a", device=torch.device("cpu"))
    b = run(replace(SMALL, epochs=1, seed=1), data, tmp_path / "b", device=torch.device("cpu"))
    assert not torch.equal(a.model.fc1.weight, b.model.fc1.weight)


def test_killed_run_resumes_to_the_uninterrupted_weights(data, tmp_path: Path) -> None:
    recipe = Recipe(epochs=3, train_limit=2000)
    straight = run(recipe, data, tmp_path / "straight", device=torch.device("cpu"))

    class Killed(Exception):
        pass

    def kill_after_first(stats) -> None:
        if stats.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        run(recipe, data, tmp_path / "killed", device=torch.device("cpu"), on_epoch=kill_after_first)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt").epoch == 1
    torch.manual_seed(12345)  # a resumed process starts from another global RNG state
    resumed = run(recipe, data, tmp_path / "killed", device=torch.device("cpu"), resume=True)
    _assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert [h.valid_loss for h in straight.history] == [h.valid_loss for h in resumed.history]


def test_resume_refuses_a_different_recipe_or_fewer_epochs(data, tmp_path: Path) -> None:
    run(Recipe(epochs=2, train_limit=500), data, tmp_path, device=torch.device("cpu"))
    with pytest.raises(TrainingError, match="differs"):
        run(Recipe(epochs=3, train_limit=500, lr=0.1), data, tmp_path, device=torch.device("cpu"), resume=True)
    with pytest.raises(TrainingError, match="already holds 2 epochs"):
        run(Recipe(epochs=1, train_limit=500), data, tmp_path, device=torch.device("cpu"), resume=True)


def test_cli_train_then_resume_writes_every_artifact(data, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--limit", "1000", "--device", "cpu", "--output", str(tmp_path), "--data-dir", str(data.root)]
    first = runner.invoke(train_cli, [*args, "--epochs", "1"])
    assert first.exit_code == 0, first.output
    assert "Epoch   1/1" in first.output
    again = runner.invoke(train_cli, [*args, "--epochs", "2"])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(train_cli, [*args, "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "Epoch   2/2" in resumed.output and "Epoch   1/2" not in resumed.output
    assert f"Resuming the run in {tmp_path} after epoch 1, up to epoch 2" in resumed.output
    for name in (
        "fmnist_mlp.pt",
        "checkpoint.pt",
        "history.json",
        "history.csv",
        "metrics.json",
        "curves.png",
        "samples.png",
        "confusion.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "history.csv").read_text().splitlines()[
        0
    ] == "epoch,train_loss,train_acc,valid_loss,valid_acc,seconds"
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 3
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"
    wrong = runner.invoke(train_cli, [*args, "--epochs", "3", "--resume", "--lr", "0.5"])
    assert wrong.exit_code == 2 and "lr=0.001" in wrong.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--device", "tpu"], "--device"),
        (["--loader", "slow"], "--loader"),
        (["--limit", "70000"], "--limit"),
        (["--resume", "--overwrite"], "contradict"),
    ],
)
def test_cli_rejects_bad_options(args: list[str], needle: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, [*args, "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output


def test_cli_resume_without_a_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, ["--resume", "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'checkpoint.pt'}: no such file"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_cuda_without_gpu_fails_clearly(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, ["--device", "cuda", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "torch.cuda.is_available() is False" in result.output  # a usage error


# --- the data set -------------------------------------------------------------------------


def _copy_raw(data, dest: Path, *, gz: bool = False) -> Path:
    dest.mkdir(parents=True)
    for name in data_mod.SHA256:
        src = data_mod.raw_dir(data.root) / name
        if gz:
            with gzip.open(dest / f"{name}.gz", "wb") as f:
                f.write(src.read_bytes())
        else:
            shutil.copy(src, dest / name)
    return dest


def test_gzipped_folder_is_verified_and_laid_out_for_torchvision(data, tmp_path: Path) -> None:
    src = _copy_raw(data, tmp_path / "debian", gz=True)
    root = data_mod.locate(src, root=tmp_path / "cache")
    assert root == tmp_path / "cache"
    for name, digest in data_mod.SHA256.items():
        assert hashlib.sha256((data_mod.raw_dir(root) / name).read_bytes()).hexdigest() == digest


def test_an_unwritable_cache_names_itself_not_the_data_set(data, tmp_path: Path) -> None:
    """The data set is found but its copy cannot be written (the cache sits under a file, which stops root
    too): the error says so and how to move the cache, instead of asking to install the data set."""
    src = _copy_raw(data, tmp_path / "flat")  # files without torchvision's layout: a copy is needed
    (tmp_path / "a-file").write_text("")
    with pytest.raises(data_mod.DataError) as refused:
        data_mod.locate(src, root=tmp_path / "a-file" / "cache")
    message = str(refused.value)
    assert message.startswith(f"found the data set in {src} but cannot write its uncompressed copy to ")
    assert message.endswith("set XDG_CACHE_HOME to a writable folder, or pass --data-dir")


def test_a_flipped_byte_is_refused(data, tmp_path: Path) -> None:
    folder = _copy_raw(data, tmp_path / "raw")
    path = folder / "t10k-images-idx3-ubyte"
    blob = bytearray(path.read_bytes())
    blob[5000] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(data_mod.DataError, match=r"t10k-images-idx3-ubyte: sha256 .* does not match"):
        data_mod.load(folder, root=tmp_path / "cache")


def test_a_truncated_gzip_is_refused(data, tmp_path: Path) -> None:
    folder = _copy_raw(data, tmp_path / "gz", gz=True)
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data_mod.DataError, match="train-labels-idx1-ubyte.gz: cannot be read"):
        data_mod.load(folder, root=tmp_path / "cache")
    assert not (data_mod.raw_dir(tmp_path / "cache") / "train-labels-idx1-ubyte").exists()


def test_cli_refuses_bad_data_with_one_line(data, tmp_path: Path) -> None:
    folder = _copy_raw(data, tmp_path / "raw")
    (folder / "train-images-idx3-ubyte").write_bytes((folder / "train-images-idx3-ubyte").read_bytes()[:1000])
    result = CliRunner().invoke(
        train_cli, ["--data-dir", str(folder), "--epochs", "1", "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "truncated or altered" in lines[0]
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_missing_data_dir_names_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(data_mod.DataError, match="make data"):
        data_mod.locate(tmp_path, root=tmp_path / "cache")


def test_data_set_facts(data) -> None:
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert int(data.train_labels[0]) == 9 and data.test_labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10


# --- the committed run --------------------------------------------------------------------


def test_committed_weights_reproduce_their_recorded_accuracy(data) -> None:
    weights = load_weights(ARTIFACTS / "fmnist_mlp.pt")
    assert weights.recipe == Recipe() and weights.class_names == CLASS_NAMES
    assert weights.data_sha256 == data_mod.SHA256
    model = FashionMLP.from_recipe(weights.recipe)
    model.load_state_dict(weights.model)
    x = normalise(data.test_images, weights.recipe.norm_mean, weights.recipe.norm_std)
    loss, acc, confusion = evaluate(model, in_order(x, data.test_labels, 100))
    # Another CPU's float32 kernels may flip a near-tie (logits within the contract's tolerance):
    # the documented slack is ACCURACY_SLACK_IMAGES images of 10 000, no more.
    assert abs(acc - weights.test_accuracy) * len(data.test_labels) <= ACCURACY_SLACK_IMAGES + 1e-9
    assert loss == pytest.approx(weights.test_loss, rel=1e-5)
    assert (confusion - torch.tensor(weights.confusion_matrix)).abs().sum() <= 2
    assert 0.80 < acc < 0.90


def test_committed_weights_load_into_the_course_network_with_plain_torch_load() -> None:
    from torch import nn

    class CourseNetwork(nn.Module):  # as the course notes write it
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(784, 128)
            self.dropout1 = nn.Dropout(0.2)
            self.fc2 = nn.Linear(128, 64)
            self.dropout2 = nn.Dropout(0.2)
            self.fc3 = nn.Linear(64, 10)

    payload = torch.load(ARTIFACTS / "fmnist_mlp.pt", weights_only=True)
    assert set(payload) >= {"model", "recipe", "data_sha256", "test_accuracy", "test_loss", "versions"}
    CourseNetwork().load_state_dict(payload["model"], strict=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_loader_is_bit_identical_to_the_course_loop(data, tmp_path: Path) -> None:
    cuda = torch.device("cuda")
    fast = run(SMALL, data, tmp_path / "fast", device=cuda, loader="fast", cuda_graph=False)
    ref = run(SMALL, data, tmp_path / "ref", device=cuda, loader="reference")
    _assert_same_weights(fast.model.state_dict(), ref.model.state_dict())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", [SMALL, replace(SMALL, train_limit=3050, momentum=0.9)], ids=["course", "ragged"])
def test_cuda_graphed_steps_are_bit_identical_to_the_fast_loader(data, tmp_path: Path, recipe: Recipe) -> None:
    cuda = torch.device("cuda")
    graphed = run(recipe, data, tmp_path / "graphed", device=cuda, loader="fast", cuda_graph=True)
    plain = run(recipe, data, tmp_path / "plain", device=cuda, loader="fast", cuda_graph=False)
    _assert_same_weights(graphed.model.state_dict(), plain.model.state_dict())
    assert graphed.history[-1].train_loss == plain.history[-1].train_loss


@pytest.mark.parametrize("limit", [3000, 3050], ids=["whole-batches", "short-last-batch"])
def test_graphed_epochs_bookkeeping_matches_the_fast_loader_on_the_cpu(data, limit: int) -> None:
    # Without a GPU the graph itself cannot run; the same bookkeeping (RNG draws, index buffer, sums, short
    # last batch) runs uncaptured and must give the fast loader's weights, loss and accuracy exactly.
    from fmnist_deploy.training.loop import GraphedEpochs, TensorBatches, fresh_state, train_one_epoch

    recipe = replace(SMALL, train_limit=limit, momentum=0.9)
    cpu = torch.device("cpu")
    results = []
    for graphed in (False, True):
        state = fresh_state(recipe, cpu)
        batches = TensorBatches(data, recipe, cpu)
        stepper = GraphedEpochs(state.model, state.optimizer, batches, capture=False) if graphed else None
        sums = [
            stepper.epoch() if stepper else train_one_epoch(state.model, state.optimizer, batches.train_batches())
            for _ in range(2)
        ]
        results.append((state.model.state_dict(), sums))
    _assert_same_weights(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_cuda_graph_needs_cuda_and_the_fast_loader(data, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="CUDA-graphed step needs --device cuda"):
        run(SMALL, data, tmp_path, device=torch.device("cpu"), cuda_graph=True)


def test_resume_from_a_checkpoint_with_an_unknown_recipe_key_is_one_line(tmp_path: Path) -> None:
    payload = torch.load(ARTIFACTS / "checkpoint.pt", weights_only=True)
    payload["recipe"]["warmup_epochs"] = 3
    payload[CONTENT_KEY] = content_digest(payload)  # intact, but from an unknown recipe
    torch.save(payload, tmp_path / "checkpoint.pt")
    result = CliRunner().invoke(train_cli, ["--output", str(tmp_path), "--resume", "--epochs", "101"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "unknown recipe keys ['warmup_epochs']" in lines[0], result.output


def test_cli_resume_with_fewer_epochs_is_a_usage_error(data, tmp_path: Path) -> None:
    args = ["--limit", "300", "--output", str(tmp_path), "--data-dir", str(data.root), "--device", "cpu"]
    assert CliRunner().invoke(train_cli, [*args, "--epochs", "2"]).exit_code == 0
    result = CliRunner().invoke(train_cli, [*args, "--epochs", "1", "--resume"])
    assert result.exit_code == 2
    assert "already holds 2 epochs; ask for 2 or more" in result.output


def test_ctrl_c_during_training_names_the_epoch_and_the_resume_command(data, tmp_path: Path) -> None:
    """A real SIGINT to a real training process, after its second epoch's checkpoint is written."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmnist_deploy.training.cli",
            "--limit",
            "500",
            "--epochs",
            "100000",
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (tmp_path / "checkpoint.pt").exists() and load_checkpoint(tmp_path / "checkpoint.pt").epoch >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    epoch = int(last.split("interrupted after epoch ")[1].split(";")[0])
    assert last == (
        f"interrupted after epoch {epoch}; resume with: fmnist-train --output {tmp_path} --resume "
        f"--data-dir {data.root} --device cpu"
    )
    assert "Traceback" not in stderr and f"Epoch {epoch:3d}/100000" in stdout
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch >= epoch


def test_training_from_another_folder_writes_nothing_there(tmp_path: Path, monkeypatch, data) -> None:
    """The data set goes to the per-user cache, never into the working directory."""
    system = tmp_path / "system"  # stands for Debian's folder, whatever this machine has installed
    system.mkdir()
    for name in data_mod.SHA256:
        (system / name).symlink_to(data_mod.raw_dir(data.root) / name)
    monkeypatch.setattr(data_mod, "DEBIAN_DIR", system)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(
        train_cli, ["--epochs", "1", "--limit", "200", "--output", str(tmp_path / "run"), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert list(work.iterdir()) == []
    assert (tmp_path / "cache" / "fmnist-deploy" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert f"Fashion-MNIST from {tmp_path / 'cache' / 'fmnist-deploy' / 'FashionMNIST' / 'raw'}" in result.stderr
