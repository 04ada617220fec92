"""The ground floor in process: the atomic writer, the launch layer (Ctrl-C, standard output, start-up) and the
integrity checks, each rule at its edge. The installed commands around them are tests/test_processes.py's."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import sys
import threading
from pathlib import Path

import click
import pytest

from fmnist_deploy import atomic, errors, integrity, launch
from fmnist_deploy.contract import sha256_file
from tests.conftest import ARTIFACTS

# ---- the atomic writer ------------------------------------------------------------------------------------


def test_an_atomic_write_lands_whole_with_its_mode_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = tmp_path / "new" / "folder" / "file.bin"
    atomic.write_bytes_atomic(target, b"\x00payload")
    assert target.read_bytes() == b"\x00payload"
    assert target.stat().st_mode & 0o777 == 0o644
    assert len(synced) == 1, "the data reaches the disk before the rename"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]
    atomic.write_text_atomic(target, "é\n")
    assert target.read_bytes() == "é\n".encode()


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="disk on fire"), atomic.atomic_path(target) as tmp:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp != target
        assert tmp.name.startswith(".report.json.") and tmp.name.endswith(".tmp")
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert not seen[0].exists() and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    with atomic.atomic_path(tmp_path / "model.onnx") as tmp:
        name = tmp.name  # the name a killed writer would leave
    stale = tmp_path / name
    stale.write_bytes(b"half")
    keep = [".model.onnx.tmp", "model.onnx.abcdefgh.tmp", ".model.onnx.abcdefg.tmp", ".model.onnx.abcdefgh.tmpx"]
    for keep_name in keep:
        (tmp_path / keep_name).write_bytes(b"x")
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()
    assert atomic.remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, ".dir.abcdefgh.tmp", "model.onnx"])
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []


def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    atomic.check_writable(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        atomic.check_writable(tmp_path / "file")


# ---- the launch layer -------------------------------------------------------------------------------------


@pytest.fixture
def default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_raises_interrupted_in_the_main_thread_only(default_sigint) -> None:
    from_thread: list[object] = []
    thread = threading.Thread(
        target=lambda: (launch.catch_ctrl_c(), from_thread.append(signal.getsignal(signal.SIGINT)))
    )
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a thread cannot install it
    launch.catch_ctrl_c()
    with pytest.raises(launch.Interrupted):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0)  # a point where the handler runs
    assert issubclass(launch.Interrupted, KeyboardInterrupt) and launch.Interrupted is not KeyboardInterrupt


def test_a_handler_someone_else_installed_is_kept(default_sigint) -> None:
    def mine(signum, frame):
        return None

    signal.signal(signal.SIGINT, mine)
    launch.catch_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is mine


class _Failing(io.RawIOBase):
    def __init__(self, error: OSError) -> None:
        self.error = error

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "cannot write to standard output: No space left on device"),
        (OSError(errno.EIO, "Input/output error"), "cannot write to standard output: Input/output error"),
    ],
)
def test_standard_output_errors_become_one_line(error: OSError, expected: str) -> None:
    guarded = launch._GuardedOutput(_Failing(error))
    with pytest.raises(launch.StandardOutputError) as info:
        guarded.write(b"x")
    assert str(info.value) == expected and not isinstance(info.value, OSError)
    assert info.value.exit_code == 1


def test_a_closed_pipe_ends_quietly_with_0_never_an_oserror(tmp_path: Path) -> None:
    """The reader went away: a pipeline's normal end. Exit 0 through click, not an OSError (a command's handler
    for its own files would blame them), and later writes go to /dev/null."""
    target = tmp_path / "stdout"
    with open(target, "wb") as file:

        class Closed(io.FileIO):
            def write(self, data) -> int:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        inner = Closed(os.dup(file.fileno()), "w")
        guarded = launch._GuardedOutput(inner)
        with pytest.raises(click.exceptions.Exit) as info:
            guarded.write(b"x")
        assert info.value.exit_code == 0 and not isinstance(info.value, OSError)
        os.write(inner.fileno(), b"after")  # now /dev/null
        inner.close()
    assert target.read_bytes() == b""


def test_a_standard_output_started_closed() -> None:
    closed = launch._GuardedOutput(None)
    with pytest.raises(launch.StandardOutputError, match="cannot write to standard output: it is closed"):
        closed.write(b"x")
    closed.flush()  # nothing to flush: no error
    assert closed.writable() and not closed.isatty()
    with pytest.raises(io.UnsupportedOperation):
        closed.fileno()
    inner = io.BytesIO()
    working = launch._GuardedOutput(inner)
    assert working.write(b"abc") == 3 and inner.getvalue() == b"abc"


def test_guarding_keeps_encoding_and_buffering_and_happens_once(monkeypatch) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="latin-1", errors="strict", line_buffering=True)
    monkeypatch.setattr(sys, "stdout", stream)
    launch.guard_standard_output()
    guarded = sys.stdout
    assert isinstance(guarded.buffer, launch._GuardedOutput)
    assert (guarded.encoding, guarded.errors, guarded.line_buffering) == ("latin-1", "strict", True)
    launch.guard_standard_output()
    assert sys.stdout is guarded
    monkeypatch.setattr(sys, "stdout", None)
    launch.guard_standard_output()
    with pytest.raises(launch.StandardOutputError, match="it is closed"):
        sys.stdout.write("x")
        sys.stdout.flush()
    other = io.StringIO()
    monkeypatch.setattr(sys, "stdout", other)
    launch.guard_standard_output()
    assert sys.stdout is other


def test_telemetry_is_off_unless_the_user_chose(monkeypatch, default_sigint) -> None:
    monkeypatch.delenv(launch.ORT_TELEMETRY_VARIABLE, raising=False)
    launch._prepare_process()
    assert os.environ[launch.ORT_TELEMETRY_VARIABLE] == "1"
    monkeypatch.setenv(launch.ORT_TELEMETRY_VARIABLE, "0")
    launch._prepare_process()
    assert os.environ[launch.ORT_TELEMETRY_VARIABLE] == "0"
    assert launch.ORT_TELEMETRY_VARIABLE == "ORT_DISABLE_TELEMETRY"


def test_ctrl_c_while_the_command_imports_is_130_and_one_line(monkeypatch, capsys, default_sigint) -> None:
    def interrupted(name: str):
        raise launch.Interrupted

    monkeypatch.setattr(launch.importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as info:
        launch.predict()
    assert info.value.code == 130
    assert capsys.readouterr().err == "interrupted while starting; nothing was done\n"


@pytest.mark.parametrize(
    ("kind", "status"), [("UsageError", 2), ("InputError", 1), ("ModelError", 1), ("IntegrityError", 1)]
)
def test_run_maps_an_error_raised_outside_a_command_to_its_status(
    kind: str, status: int, capsys, default_sigint
) -> None:
    def command() -> None:
        raise getattr(errors, kind)(f"{kind} at the flush\nsecond line")

    with pytest.raises(SystemExit) as info:
        launch.run(command)
    assert info.value.code == status
    assert capsys.readouterr().err == f"Error: {kind} at the flush\n"


def test_run_flushes_and_ends_quietly_on_a_closed_pipe(monkeypatch, default_sigint) -> None:
    read, write = os.pipe()
    os.close(read)
    stream = io.TextIOWrapper(io.FileIO(write, "w", closefd=True), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)

    def command() -> None:
        print("answers")  # buffered: the pipe's state shows at the flush

    with pytest.raises(SystemExit) as info:
        launch.run(command)
    assert info.value.code == 0


def test_every_console_script_starts_its_own_command() -> None:
    from importlib import metadata

    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts") if e.name.startswith("fmnist-")}
    assert scripts == {
        "fmnist-train": "fmnist_deploy.launch:train",
        "fmnist-bench": "fmnist_deploy.launch:bench",
        "fmnist-export": "fmnist_deploy.launch:export",
        "fmnist-predict": "fmnist_deploy.launch:predict",
        "fmnist-batch": "fmnist_deploy.launch:batch",
        "fmnist-serve": "fmnist_deploy.launch:serve",
    }


# ---- integrity --------------------------------------------------------------------------------------------


def test_sidecar_check_each_outcome(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    side = tmp_path / "m.onnx.json"
    meta, note = integrity.sidecar_check(model)
    assert meta == {} and note == f"{model}: no sidecar m.onnx.json beside it, so its sha256 cannot be checked"
    side.write_text("{not json")
    with pytest.raises(errors.IntegrityError, match="m.onnx.json: unreadable sidecar"):
        integrity.sidecar_check(model)
    for document in ([], {"file_sha256": 7}, {"class_names": []}):
        side.write_text(json.dumps(document))
        with pytest.raises(errors.IntegrityError, match="not a sidecar written by fmnist-export"):
            integrity.sidecar_check(model)
    good = {"file_sha256": sha256_file(model), "opset": 17}
    side.write_text(json.dumps(good))
    assert integrity.sidecar_check(model) == (good, None)
    model.write_bytes(b"model bytez")
    with pytest.raises(errors.IntegrityError, match="does not match m.onnx.json") as info:
        integrity.sidecar_check(model)
    assert sha256_file(model)[:12] in str(info.value) and good["file_sha256"][:12] in str(info.value)


def test_content_digest_sees_every_value_and_type() -> None:
    base = {"a": 1, "b": [1, 2], "c": {"x": "y"}, "d": None, "e": 1.5, "f": True}
    digest = integrity.content_digest(base)
    assert integrity.content_digest(dict(reversed(list(base.items())))) == digest  # key order does not matter
    assert integrity.content_digest({**base, integrity.CONTENT_KEY: "anything"}) == digest
    changed = [
        {**base, "a": 2},
        {**base, "a": 1.0},
        {**base, "a": "1"},
        {**base, "f": 1},
        {**base, "b": [2, 1]},
        {**base, "b": [1, 2, 3]},
        {**base, "c": {"x": "z"}},
        {**base, "c": {"y": "x"}},
        {**base, "g": None},
    ]
    assert len({integrity.content_digest(d) for d in changed} | {digest}) == len(changed) + 1
    with pytest.raises(TypeError, match="cannot digest a set"):
        integrity.content_digest({"s": {1}})


def test_check_content_each_outcome() -> None:
    payload = {"weights": [1, 2, 3]}
    with pytest.raises(errors.IntegrityError, match="src: no content_sha256: not written by this version"):
        integrity.check_content(payload, "src")
    payload[integrity.CONTENT_KEY] = integrity.content_digest(payload)
    integrity.check_content(payload, "src")
    damaged = {**payload, "weights": [1, 2, 4]}
    with pytest.raises(errors.IntegrityError, match="src: content does not match its recorded content_sha256"):
        integrity.check_content(damaged, "src")
    odd = {"weights": object(), integrity.CONTENT_KEY: "0" * 64}
    with pytest.raises(errors.IntegrityError, match="src: unexpected content"):
        integrity.check_content(odd, "src")


def test_the_committed_weights_carry_the_digest_of_their_content() -> None:
    """The digest is a format: the committed weights file recorded it, so the function must still compute the
    very same value (any change to how content is fed in would make every weights file 'damaged')."""
    import torch

    payload = torch.load(ARTIFACTS / "fmnist_mlp.pt", map_location="cpu", weights_only=True)
    assert integrity.content_digest(payload) == payload[integrity.CONTENT_KEY]
    integrity.check_content(payload, "fmnist_mlp.pt")


def test_check_content_message_names_both_digests_exactly() -> None:
    payload = {"weights": [1, 2, 3], integrity.CONTENT_KEY: "a" * 64}
    actual = integrity.content_digest(payload)
    with pytest.raises(errors.IntegrityError) as info:
        integrity.check_content(payload, "w.pt")
    assert str(info.value) == (
        f"w.pt: content does not match its recorded content_sha256 ({actual[:12]}… vs {'a' * 12}…): the file is damaged"
    )


def test_an_entry_point_runs_its_command_through_run(monkeypatch, default_sigint) -> None:
    """`fmnist-predict` imports fmnist_deploy.runtime.cli and runs its `main` through `run` (standard output
    guarded, errors mapped)."""
    called: list[str] = []

    class Module:
        @staticmethod
        def main() -> None:
            called.append("main")

    imported: list[str] = []
    monkeypatch.setattr(launch.importlib, "import_module", lambda name: (imported.append(name), Module)[1])
    monkeypatch.setattr(launch, "run", lambda command: (called.append("run"), command())[1])
    launch.predict()
    assert imported == ["fmnist_deploy.runtime.cli"] and called == ["run", "main"]
    assert {name: launch.MODULES[name] for name in ("train", "serve")} == {
        "train": "fmnist_deploy.training.cli",
        "serve": "fmnist_deploy.serving.cli",
    }


def test_a_closed_standard_output_has_no_file_number() -> None:
    with pytest.raises(io.UnsupportedOperation, match="^standard output is closed$"):
        launch._GuardedOutput(None).fileno()


def test_check_writable_probes_the_folder_itself_and_accepts_an_existing_one(tmp_path: Path, monkeypatch) -> None:
    removed: list[str] = []
    real_unlink = os.unlink
    monkeypatch.setattr(atomic.os, "unlink", lambda name: (removed.append(str(name)), real_unlink(name))[1])
    atomic.check_writable(tmp_path)  # exists already
    atomic.check_writable(tmp_path)
    assert len(removed) == 2
    for probe in removed:
        assert Path(probe).parent == tmp_path
        assert Path(probe).name.startswith(".write-check.") and probe.endswith(".tmp")
    assert list(tmp_path.iterdir()) == []


def test_as_click_keeps_a_long_first_line_up_to_100_000_characters() -> None:
    for length, shown in ((100_000, 100_000), (100_001, 100_000), (250, 250)):
        failure = launch.as_click(errors.InputError("x" * length + "\nsecond line"))
        assert (len(failure.message), failure.exit_code) == (shown, 1)


@pytest.mark.parametrize("cls", [launch.Command, launch.Group])
def test_commands_and_groups_map_the_error_root_to_one_line_and_its_status(cls) -> None:
    from click.testing import CliRunner

    if cls is launch.Command:

        @click.command(cls=cls)
        @click.argument("kind")
        def entry(kind: str) -> None:
            raise getattr(errors, kind)(f"{kind} here\nmore")

        args = []
    else:

        @click.group(cls=cls)
        def entry() -> None:
            pass

        @entry.command()
        @click.argument("kind")
        def sub(kind: str) -> None:
            raise getattr(errors, kind)(f"{kind} here\nmore")

        args = ["sub"]
    for kind, status in (("UsageError", 2), ("ModelError", 1)):
        result = CliRunner().invoke(entry, [*args, kind])
        assert (result.exit_code, result.output) == (status, f"Error: {kind} here\n"), result.output
    ok = CliRunner().invoke(entry, [*args, "--help"])
    assert ok.exit_code == 0 and "Usage:" in ok.output


def test_a_temporary_removed_by_another_process_meanwhile_is_no_error(tmp_path: Path, monkeypatch) -> None:
    """Two starts clean the same folder: the other one removes a stale file between this one's listing and its
    unlink. Simulated deterministically: the file disappears right after it is seen."""
    stale = tmp_path / ".model.onnx.abcdefgh.tmp"
    stale.write_bytes(b"half")
    real_is_file = Path.is_file

    def seen_then_gone(self: Path) -> bool:
        found = real_is_file(self)
        if found and self == stale:
            os.unlink(self)  # the other process
        return found

    monkeypatch.setattr(Path, "is_file", seen_then_gone)
    assert atomic.remove_stale_temporaries(tmp_path) == [stale]


def test_a_standard_output_started_closed_writes_utf8_with_backslash_escapes(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    launch.guard_standard_output()
    assert (sys.stdout.encoding, sys.stdout.errors) == ("utf-8", "backslashreplace")


def test_guarding_keeps_the_error_handler_and_write_through(monkeypatch) -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)
    monkeypatch.setattr(sys, "stdout", stream)
    launch.guard_standard_output()
    assert (sys.stdout.errors, sys.stdout.write_through) == ("replace", True)


def test_an_error_without_strerror_is_worded_by_its_message() -> None:
    guarded = launch._GuardedOutput(_Failing(OSError("device went away")))
    with pytest.raises(launch.StandardOutputError) as info:
        guarded.write(b"x")
    assert str(info.value) == "cannot write to standard output: device went away"


def test_a_write_that_reports_no_count_counts_zero() -> None:
    class Silent(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data):
            return None

    assert launch._GuardedOutput(Silent()).write(b"abc") == 0


def test_an_unguarded_standard_output_whose_reader_left_ends_with_0_and_goes_to_devnull(
    monkeypatch, default_sigint
) -> None:
    """Standard output replaced by something `guard_standard_output` leaves alone: a closed pipe at the flush
    is the same quiet end, and the descriptor then points at /dev/null."""
    read, write = os.pipe()

    class Replaced:
        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def fileno(self) -> int:
            return write

    monkeypatch.setattr(sys, "stdout", Replaced())
    try:
        with pytest.raises(SystemExit) as info:
            launch.run(lambda: None)
        assert info.value.code == 0
        devnull = os.stat(os.devnull)
        now = os.fstat(write)
        assert (now.st_rdev, now.st_mode) == (devnull.st_rdev, devnull.st_mode)
    finally:
        os.close(read)
        os.close(write)


def test_sidecar_check_messages_exactly(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    side = tmp_path / "m.onnx.json"
    side.write_text("{not json")
    with pytest.raises(errors.IntegrityError) as info:
        integrity.sidecar_check(model)
    assert str(info.value) == f"{side}: unreadable sidecar (JSONDecodeError)"
    recorded = "f" * 64
    side.write_text(json.dumps({"file_sha256": recorded}))
    with pytest.raises(errors.IntegrityError) as info:
        integrity.sidecar_check(model)
    assert str(info.value) == (
        f"{model}: sha256 {sha256_file(model)[:12]}… does not match m.onnx.json ({recorded[:12]}…): "
        "the file is damaged or was replaced; restore it with its sidecar or re-export it"
    )


# ---- one error root ---------------------------------------------------------------------------------------

# Outside the root on purpose: a warning, Ctrl-C (a KeyboardInterrupt, so that it is never caught as an error),
# and the offline GPU bundle's script, which runs with a bare Python before the toolkit is installed.
OUTSIDE_THE_ROOT = {"IntegrityWarning", "Interrupted", "BundleError"}


def test_every_error_class_the_toolkit_defines_descends_from_the_root() -> None:
    import importlib
    import inspect
    import pkgutil

    packages = ["fmnist_deploy"] + [
        f"fmnist_deploy.{stage}" for stage in ("training", "export", "runtime", "benchmarks", "scaleout", "serving")
    ]
    seen, outside = set(), []
    for name in packages:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                    seen.add(value.__name__)
                    if value.__name__.startswith("_"):  # a private signal, caught inside its own module
                        continue
                    if not issubclass(value, errors.FmnistError) and value.__name__ not in OUTSIDE_THE_ROOT:
                        outside.append(f"{info.name}.{value.__name__}")
    assert not outside, outside
    assert {"ProtocolError", "QueueFull", "NotFound", "BodyError", "RepositoryError", "GateError"} <= seen
    assert OUTSIDE_THE_ROOT <= seen  # an exemption whose class is gone is dropped from the list


def test_the_servers_errors_take_their_kinds_and_keep_their_statuses() -> None:
    from fmnist_deploy.serving.app import NotFound
    from fmnist_deploy.serving.batcher import QueueFull
    from fmnist_deploy.serving.limits import BodyError
    from fmnist_deploy.serving.protocol import ProtocolError
    from fmnist_deploy.serving.repository import RepositoryError

    assert issubclass(ProtocolError, errors.InputError) and issubclass(ProtocolError, ValueError)
    assert (ProtocolError("x").status, ProtocolError("x", status=413).status) == (400, 413)
    assert issubclass(BodyError, errors.InputError) and BodyError("x", 408).status == 408
    assert issubclass(NotFound, errors.InputError)
    assert issubclass(RepositoryError, errors.ModelError) and issubclass(RepositoryError, ValueError)
    assert QueueFull.__bases__ == (errors.FmnistError,)
