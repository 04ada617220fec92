"""The six commands as one tool: one vocabulary, the shared options, and the seams between commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import fmnist_deploy
from fmnist_deploy import launch, load, options
from fmnist_deploy.integrity import IntegrityWarning
from fmnist_deploy.runtime import ModelError
from tests.conftest import ARTIFACTS, REPO, console_script

SAMPLE = ARTIFACTS / "samples" / "0000_ankle_boot.png"
TROUSER = ARTIFACTS / "samples" / "0002_trouser.png"


def _commands() -> dict[str, tuple[click.Command, list[str]]]:
    """Every command and fmnist-bench subcommand: name -> (the top-level command, the args that reach it)."""
    found: dict[str, tuple[click.Command, list[str]]] = {}
    for name in launch.MODULES:
        command = launch.command(name)
        found[f"fmnist-{name}"] = (command, [])
        if isinstance(command, click.Group):
            for sub in command.commands:
                found[f"fmnist-{name} {sub}"] = (command, [sub])
    return found


COMMANDS = _commands()
OPTION_LINE = re.compile(r"^  (-\w, )?(--[\w-]+)")


def _help(name: str) -> str:
    command, args = COMMANDS[name]
    result = CliRunner().invoke(command, [*args, "--help"], prog_name=name.split()[0])
    assert result.exit_code == 0, result.output
    return result.output


def _shown_options(help_text: str) -> set[str]:
    names = set()
    for line in help_text.splitlines():
        match = OPTION_LINE.match(line)
        if match:
            names.update(n.strip(", ") for n in match.groups() if n)
    return names


# One name per idea: each idea's name, and the spellings that must not be shown for it.
SYNONYMS = {
    "--output": {"--out", "--out-dir", "--output-dir", "--outdir", "-o"},
    "--model": {"--model-file", "--model-path", "--onnx"},
    "--sizes": {"--batches", "--batch-sizes"},
    "--seconds": {"--budget", "--duration", "--time"},
    "--rounds": {"--repetitions", "--repeats", "--reps"},
    "--min-calls": {"--min-repetitions"},
    "--top-k": {"--topk", "--k"},
    "--json": {"--as-json", "--format-json"},
}


def test_there_are_six_commands_and_every_bench_subcommand() -> None:
    top = sorted(n for n in COMMANDS if " " not in n)
    assert top == sorted(f"fmnist-{n}" for n in ("train", "export", "predict", "bench", "batch", "serve"))
    assert {"fmnist-bench latency", "fmnist-bench serve", "fmnist-bench coldstart"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_help_speaks_the_one_vocabulary(name: str) -> None:
    shown = _shown_options(_help(name))
    assert {"--version", "-q", "--quiet", "-v", "--verbose", "-h", "--help"} <= shown, shown
    for idea, others in SYNONYMS.items():
        assert not shown & others, f"{name} shows {sorted(shown & others)} where the toolkit says {idea}"


def test_an_option_means_the_same_wherever_it_appears() -> None:
    """Same name -> same default and the same choices, read from every command's --help."""
    seen: dict[str, dict[str, str]] = {}
    for name in COMMANDS:
        text = _help(name)
        for block in re.split(r"\n(?=  -)", text):
            match = OPTION_LINE.match(block)
            if match is None:
                continue
            option = match.group(2)
            flat = " ".join(block.split())
            seen.setdefault(option, {})[name] = flat
    top_k = {name: re.search(r"default: (\d+)", text).group(1) for name, text in seen["--top-k"].items()}
    assert set(top_k) == {"fmnist-predict", "fmnist-batch"} and set(top_k.values()) == {str(options.TOP_K_DEFAULT)}
    backends = {
        re.search(r"\[(auto\|[\w|]+)\]", text).group(1) for text in seen["--backend"].values() if "[auto|" in text
    }
    assert len(backends) == 1, backends  # predict and serve offer the same backends
    assert {"fmnist-predict", "fmnist-batch", "fmnist-serve", "fmnist-bench files"} <= set(seen["--model"])
    assert {"fmnist-train", "fmnist-export", "fmnist-predict", "fmnist-batch", "fmnist-bench latency"} <= set(
        seen["--output"]
    )


def test_old_spellings_parse_but_say_their_new_name(tmp_path: Path) -> None:
    from fmnist_deploy.training.cli import main as train

    result = CliRunner().invoke(train, ["--out", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'run' / 'checkpoint.pt'}: no such file" in result.output  # --out was read as --output
    assert "note: --out is now --output" in result.stderr
    assert "--out " not in _help("fmnist-train") and "--out-dir" not in _help("fmnist-export")


def _old_spellings() -> set[str]:
    """Every hidden alias of every command: the names a release still parses but no longer shows."""
    found: set[str] = set()
    for command, args in COMMANDS.values():
        sub = command.commands[args[0]] if args else command
        found.update(a for p in sub.params for a in getattr(p, "aliases", ()))
    return found


def test_the_projects_own_scripts_and_docs_use_only_the_current_names() -> None:
    old = _old_spellings()
    assert {"--out", "--out-dir", "--batches", "--repetitions", "--trust-native-code"} <= old, old
    invocation = re.compile(r"(fmnist-(train|export|predict|bench|batch|serve)\b|-m fmnist_deploy|cuda\.sh)")
    files = [REPO / "Makefile", REPO / "README.md", REPO / ".ci" / "run", *(REPO / "benchmarks").glob("*.sh")]
    files += sorted((REPO / "docs").rglob("*.md")) + sorted((REPO / "examples").glob("*/*.sh"))
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if invocation.search(line) and not line.lstrip().startswith("#"):
                used = old & set(re.findall(r"(?<![\w-])--[\w-]+", line))
                if "cuda.sh" in line and "--budget" in used and "fmnist_deploy" not in line:
                    used.discard("--budget")  # cuda.sh's own overall budget, not fmnist-bench's old --budget
                found += [f"{path.relative_to(REPO)}:{number}: {sorted(used)}"] if used else []
    assert not found, found


def test_settings_come_from_environment_variables() -> None:
    from fmnist_deploy.runtime.cli import main as predict

    result = CliRunner().invoke(predict, [str(SAMPLE)], env={"FMNIST_PREDICT_TOP_K": "3"})
    assert result.exit_code == 0, result.output
    assert result.stdout.count("(") == 3  # three classes
    assert options.envvar_prefix("fmnist-bench") == "FMNIST_BENCH"


def test_quiet_keeps_only_results_and_verbose_says_what_was_loaded(tmp_path: Path) -> None:
    from fmnist_deploy.runtime.cli import main as predict

    out = tmp_path / "answers.jsonl"
    quiet = CliRunner().invoke(predict, [str(SAMPLE), "--output", str(out), "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and out.is_file()
    normal = CliRunner().invoke(predict, [str(SAMPLE), "--output", str(out)])
    assert "wrote 1 record(s)" in normal.stderr
    verbose = CliRunner().invoke(predict, [str(SAMPLE), "-v", "--backend", "eager"])
    assert "backend='eager'" in verbose.stderr and "threads=1" in verbose.stderr
    both = CliRunner().invoke(predict, [str(SAMPLE), "-q", "-v"])
    assert both.exit_code == 2 and "contradict" in both.output


def test_python_dash_m_runs_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy", "predict", str(TROUSER)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == f"{TROUSER}: Trouser (1.000)", done.stderr
    version = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy", "bench", "latency", "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("fmnist-bench ")
    unknown = subprocess.run([sys.executable, "-m", "fmnist_deploy", "nope"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "no command 'nope'" in unknown.stderr


# --- the Python interface -------------------------------------------------------------------


def test_load_without_a_path_loads_the_packaged_model_and_says_what_it_is() -> None:
    predictor = load()
    assert predictor.backend_name == "onnxruntime"
    text = repr(predictor)
    assert text.startswith("Predictor(file=") and "fmnist_mlp.onnx" in text
    assert "backend='onnxruntime'" in text and "device='cpu'" in text


def test_the_torch_backends_take_threads() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        predictor = load(backend="eager", threads=1)
        assert predictor.backend.threads == 1 and "threads=1" in repr(predictor)
    finally:
        torch.set_num_threads(before)


def test_dir_shows_only_public_names() -> None:
    names = dir(fmnist_deploy)
    assert set(names) == set(fmnist_deploy.__all__)
    assert not [n for n in names if n.startswith("_") and n != "__version__"]


# --- the bugs of issue 24, one test each ------------------------------------------------------


def test_a_named_backend_reads_a_file_whatever_its_suffix(tmp_path: Path) -> None:
    from fmnist_deploy.runtime.cli import main as predict

    onnx_named_otherwise = tmp_path / "m.torchscript"
    shutil.copy(ARTIFACTS / "fmnist_mlp.onnx", onnx_named_otherwise)
    result = CliRunner().invoke(
        predict, [str(TROUSER), "--model", str(onnx_named_otherwise), "--backend", "onnxruntime"]
    )
    assert result.exit_code == 0 and "Trouser" in result.stdout, result.output
    bin_file = tmp_path / "model.bin"
    shutil.copy(ARTIFACTS / "fmnist_mlp.onnx", bin_file)
    with pytest.warns(IntegrityWarning, match="no sidecar"):
        assert load(bin_file, backend="onnxruntime").backend_name == "onnxruntime"
    # the file is still checked: a TorchScript archive is not read as ONNX, and the hint can be followed
    torchscript_named_otherwise = tmp_path / "ts.bin"
    shutil.copy(ARTIFACTS / "fmnist_mlp.torchscript", torchscript_named_otherwise)
    with pytest.raises(ModelError, match="this is a TorchScript archive.*use --backend torchscript"):
        load(torchscript_named_otherwise, backend="onnxruntime")


def test_resume_continues_the_checkpoints_own_recipe(data, tmp_path: Path) -> None:
    """`fmnist-train --epochs 3 ...` interrupted after epoch 1, then `--resume` alone: up to epoch 3, not 100."""
    import torch

    from fmnist_deploy.training.cli import main as train
    from fmnist_deploy.training.config import Recipe
    from fmnist_deploy.training.loop import run

    class Killed(Exception):
        pass

    def kill_after_first(stats) -> None:
        raise Killed

    with pytest.raises(Killed):
        run(Recipe(epochs=3, train_limit=500), data, tmp_path, device=torch.device("cpu"), on_epoch=kill_after_first)
    result = CliRunner().invoke(train, ["--output", str(tmp_path), "--resume", "--data-dir", str(data.root)])
    assert result.exit_code == 0, result.output
    assert f"Resuming the run in {tmp_path} after epoch 1, up to epoch 3" in result.stderr
    assert "Epoch   3/3" in result.stdout and "/100" not in result.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the exit status without a GPU")
@pytest.mark.parametrize("command", ["predict", "train", "serve"])
def test_cuda_without_a_gpu_is_a_usage_error_everywhere(command: str, tmp_path: Path) -> None:
    args = {"predict": [str(SAMPLE)], "train": ["--output", str(tmp_path / "run")], "serve": ["--port", "0"]}
    result = CliRunner().invoke(launch.command(command), [*args[command], "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "nope.onnx", "--output", "o.jsonl"], "nope.onnx: no such file"),
        (["--output", "m.txt"], "m.txt: expected a .jsonl, .csv, .parquet file"),
        (["--output", "/nonexistent-folder/o.jsonl"], "the folder /nonexistent-folder does not exist"),
    ],
)
def test_batch_usage_errors_exit_2_before_ray_starts(args: list[str], needle: str) -> None:
    runner = CliRunner()
    with runner.isolated_filesystem():
        result = runner.invoke(launch.command("batch"), [str(SAMPLE), *args])
        assert result.exit_code == 2 and needle in result.output, result.output
        assert not list(Path().iterdir())


def test_a_reader_closing_the_pipe_is_not_a_failure() -> None:
    predict = console_script("fmnist-predict")
    idx = str(ARTIFACTS / "samples")
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"'{predict}' {idx} {idx} {idx} | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr


def test_make_export_leaves_the_checkout_clean() -> None:
    """The gate reports say which machine measured them, so they are not tracked: `make export` on any
    machine rewrites only files whose bytes depend on the weights and the tool versions (compared byte for
    byte in test_export)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "artifacts"], cwd=REPO, capture_output=True, text=True, check=True)
    assert not [n for n in tracked.stdout.split() if n.endswith(".gate.json")]
    for report in ("fmnist_mlp.onnx.gate.json", "fmnist_mlp.int8.onnx.gate.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"artifacts/{report}"], cwd=REPO)
        assert ignored.returncode == 0, f"artifacts/{report} would show in git status after make export"


def test_export_works_from_any_folder_and_lists_everything_it_wrote(tmp_path: Path, data, monkeypatch) -> None:
    from fmnist_deploy.export.cli import main as export

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export, ["--format", "onnx", "--output", "out", "--data-dir", str(data.root)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    written = (tmp_path / "out").resolve()
    for name in ("fmnist_mlp.onnx", "fmnist_mlp.onnx.json", "fmnist_mlp.onnx.gate.json", "golden.npz", "golden.json"):
        assert f"  {written / name}  (" in result.stdout, name


def test_a_failed_verify_ends_with_a_short_line(tmp_path: Path) -> None:
    from fmnist_deploy.export.cli import main as export

    broken = tmp_path / "fmnist_mlp.onnx"
    broken.write_bytes((ARTIFACTS / "fmnist_mlp.onnx").read_bytes()[:1000])
    result = CliRunner().invoke(export, ["--verify", str(broken), "--weights", str(ARTIFACTS / "fmnist_mlp.pt")])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: {broken.name} failed the export gate: loads") and len(last) < 200, last


def test_dash_reads_file_names_not_image_bytes(tmp_path: Path) -> None:
    from fmnist_deploy.runtime.cli import main as predict

    binary = CliRunner().invoke(predict, ["-"], input=SAMPLE.read_bytes())
    assert binary.exit_code == 2 and "`-` reads file names" in binary.output
    assert len(binary.output.strip().splitlines()[-1]) < 200
    crlf = CliRunner().invoke(predict, ["-"], input=f"{TROUSER}\r\n{SAMPLE}\r\n")
    assert crlf.exit_code == 0, crlf.output
    assert crlf.stdout.splitlines() == [f"{TROUSER}: Trouser (1.000)", f"{SAMPLE}: Ankle boot (0.673)"]
    odd = tmp_path / "a name with\nnewline.png"
    shutil.copy(TROUSER, odd)
    null = CliRunner().invoke(predict, ["-0", "-", "--json"], input=f"{odd}\0{SAMPLE}\0")
    assert null.exit_code == 0, null.output
    assert [json.loads(line)["input"] for line in null.stdout.splitlines()] == [str(odd), str(SAMPLE)]


def test_json_and_a_csv_output_contradict(tmp_path: Path) -> None:
    from fmnist_deploy.runtime.cli import main as predict

    result = CliRunner().invoke(predict, [str(SAMPLE), "--json", "--output", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "--json writes JSON Lines" in result.output
    assert not (tmp_path / "o.csv").exists()


def test_an_output_in_a_missing_folder_is_refused_not_created(tmp_path: Path) -> None:
    from fmnist_deploy.runtime.cli import main as predict

    result = CliRunner().invoke(predict, [str(SAMPLE), "--output", str(tmp_path / "nonexist" / "o.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "nonexist").exists()


def test_training_without_data_leaves_no_folder_and_a_true_hint(tmp_path: Path) -> None:
    from fmnist_deploy.training.cli import main as train

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(train, ["--data-dir", str(empty), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert not (tmp_path / "run").exists()
    assert "pass --data-dir" not in result.output and "point --data-dir at the folder" in result.output


def test_the_environment_of_the_commands_is_documented() -> None:
    # the README points to the getting-started page of the documentation, which says it in full
    readme = "\n".join((REPO / name).read_text(encoding="utf-8") for name in ("README.md", "docs/getting-started.md"))
    assert "FMNIST_PREDICT_TOP_K" in readme and "_FMNIST_PREDICT_COMPLETE" in readme
    assert "python -m fmnist_deploy" in readme
    for idea in SYNONYMS:
        assert f"`{idea}" in readme, idea


def test_commands_leave_no_file_where_they_run(tmp_path: Path) -> None:
    """The environment-variable and alias machinery writes nothing: a usage error in an empty folder."""
    done = subprocess.run(
        [console_script("fmnist-predict"), "--top-k", "11", str(SAMPLE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "FMNIST_PREDICT_INVERT": "1"},
    )
    assert done.returncode == 2 and list(tmp_path.iterdir()) == []


def test_shell_completion_works_as_the_readme_says() -> None:
    env = {
        **os.environ,
        "COMP_WORDS": "fmnist-predict --to",
        "COMP_CWORD": "1",
        "_FMNIST_PREDICT_COMPLETE": "bash_complete",
    }
    done = subprocess.run([console_script("fmnist-predict")], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["plain,--top-k"], done.stderr
    env |= {"COMP_WORDS": "fmnist-bench lat", "_FMNIST_BENCH_COMPLETE": "bash_complete"}
    done = subprocess.run([console_script("fmnist-bench")], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["plain,latency"], done.stderr
