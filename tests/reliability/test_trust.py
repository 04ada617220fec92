"""Code formats load only when trusted; even trusted .pt2 graphs are checked as data; ONNX is checked as data.

Every crafted file here runs code, writes a file or fills memory when an unguarded loader reads it
(tests/reliability/crafted.py); each test proves the toolkit refuses it in one line and nothing ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from onnx import TensorProto, helper

from fmnist_deploy.contract import sha256_file
from fmnist_deploy.integrity import IntegrityError
from fmnist_deploy.runtime import ModelError, load
from fmnist_deploy.runtime.cli import main as predict_cli
from fmnist_deploy.trust import MANIFEST_NAME, Trust, sign_file, signature_path
from tests.conftest import ARTIFACTS
from tests.reliability.crafted import evil_pt2, evil_torchscript, pt2_with_size, shell_marker_command, zip_bomb
from tests.reliability.damage import damaged_copies

SAMPLE = str(ARTIFACTS / "samples" / "0000_ankle_boot.png")
THREE_WAYS = ("--trusted-key", "--pin-sha256", "--trust-code")


def _predict(*args: str, env: dict[str, str] | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(predict_cli, [SAMPLE, *args], env=env)


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _keys(tmp_path: Path, name: str = "key") -> tuple[Path, Path]:
    private = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub"
    priv.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


# --- TorchScript: __setstate__ writes any file at load -------------------------------------------------


def test_crafted_torchscript_is_refused_before_torch_reads_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"intact")
    evil = evil_torchscript(tmp_path, victim)
    line = _one_line_error(_predict("--model", str(evil)))
    assert all(way in line for way in THREE_WAYS) and "runs code when loaded" in line, line
    assert sha256_file(evil) in line, "the pin to use is named"
    with pytest.raises(ModelError, match="not trusted"):
        load(evil)
    with pytest.raises(ModelError, match="not trusted"):
        load(evil, backend="torchscript", trust=Trust(pinned=frozenset({"0" * 64})))
    assert victim.read_bytes() == b"intact", "nothing of the archive ran"


def test_untrusted_torchscript_is_refused_by_export_verify(tmp_path: Path) -> None:
    from fmnist_deploy.export.cli import main as export_cli

    victim = tmp_path / "victim"
    victim.write_bytes(b"intact")
    evil = evil_torchscript(tmp_path, victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(export_cli, ["--verify", str(evil)])
    assert result.exit_code == 1, result.output
    assert "not trusted" in result.output and "Traceback" not in result.output
    assert victim.read_bytes() == b"intact"


def test_export_verify_runs_the_bytes_it_checked_not_a_file_swapped_in_after(tmp_path: Path, monkeypatch) -> None:
    """The trust check and the loader read one snapshot: a trusted file replaced by a hostile one right after
    the check (someone else's write into a shared folder) is run as the trusted bytes, so nothing of the
    hostile file runs, and the gate fails: the file on disk is no longer what it checked."""
    from fmnist_deploy.export import gate
    from fmnist_deploy.export.api import verify_file

    victim = tmp_path / "victim"
    victim.write_bytes(b"intact")
    evil = evil_torchscript(tmp_path, victim).read_bytes()
    model = tmp_path / "fmnist_mlp.torchscript"
    shutil.copy(ARTIFACTS / "fmnist_mlp.torchscript", model)  # trusted by content: the packaged file
    shutil.copy(ARTIFACTS / "fmnist_mlp.torchscript.json", tmp_path / "fmnist_mlp.torchscript.json")
    checked = []

    def check_then_swap(path, data, name, trust):
        gate_check(path, data, name, trust)
        checked.append(data)
        model.write_bytes(evil)  # the window between the check and the loader

    gate_check = gate.require_trusted
    monkeypatch.setattr(gate, "require_trusted", check_then_swap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = verify_file(model, weights_path=None, golden_path=ARTIFACTS / "golden.npz")
    assert checked and model.read_bytes() == evil, "the swap happened after the check"
    assert victim.read_bytes() == b"intact", "the swapped-in file's code never ran"
    # the trusted bytes ran and matched; the file now on disk is not them, which its sidecar check says
    assert [c.name for c in report.failures] == ["sidecar"] and "does not match" in report.failures[0].detail
    assert all(c.ok for c in report.checks if c.name.startswith(("loads", "torchscript:")))


def test_a_pinned_or_signed_file_loads_and_a_tampered_one_does_not(tmp_path: Path) -> None:
    model = tmp_path / "fmnist_mlp.torchscript"
    shutil.copy(ARTIFACTS / "fmnist_mlp.torchscript", model)
    shutil.copy(ARTIFACTS / "fmnist_mlp.torchscript.json", tmp_path / "fmnist_mlp.torchscript.json")
    # a copy of the packaged file is trusted by content; tamper one byte of its metadata record to leave that
    data = bytearray(model.read_bytes())
    at = data.index(b'"contract_version"')
    data[at + 1 : at + 2] = b"C"
    model.write_bytes(bytes(data))
    (tmp_path / "fmnist_mlp.torchscript.json").unlink()
    assert "not trusted" in _one_line_error(_predict("--model", str(model)))

    assert _predict("--model", str(model), "--pin-sha256", sha256_file(model)).exit_code in (0, 1)
    priv, pub = _keys(tmp_path)
    other_priv, other_pub = _keys(tmp_path, "other")
    sign_file(model, priv)
    assert signature_path(model).is_file()
    with pytest.raises(ModelError, match="does not verify against any trusted key"):
        load(model, trust=Trust(keys=(other_pub,)))
    # signed with the trusted key: trusted, and so it reaches torch (which finds the metadata damaged)
    with pytest.raises(ModelError) as signed:
        load(model, trust=Trust(keys=(pub,)))
    assert "not trusted" not in str(signed.value) and "verify" not in str(signed.value)
    result = _predict("--model", str(model), env={"FMNIST_TRUSTED_KEY": str(pub)})
    assert "not trusted" not in result.output and "verify" not in result.output, result.output
    # the signature does not travel to other bytes
    data[-30] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not verify"):
        load(model, trust=Trust(keys=(pub,)))


def test_a_signed_export_loads_with_the_trusted_key_only(tmp_path: Path) -> None:
    """A good file signed by its exporter: loads with --trusted-key, is refused without it."""
    model = tmp_path / "mine.torchscript"
    data = bytearray((ARTIFACTS / "fmnist_mlp.torchscript").read_bytes())
    data += b"\0"  # other bytes than the packaged file (zip readers ignore trailing bytes): not trusted by content
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="not trusted"):
        load(model)
    priv, pub = _keys(tmp_path)
    sign_file(model, priv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = load(model, trust=Trust(keys=(pub,)))
        assert predictor.backend.trusted.startswith("signed")
        assert load(model, trust=Trust(pinned=frozenset({sha256_file(model)}))).backend.trusted == "pinned sha256"
        assert load(model, trust=Trust(code=True)).backend.trusted == "--trust-code"


def test_the_packaged_manifest_lists_the_packaged_code_files() -> None:
    manifest = json.loads((ARTIFACTS / MANIFEST_NAME).read_text())["files"]
    assert set(manifest) == {"fmnist_mlp.torchscript", "fmnist_mlp.pt2"}
    for name, entry in manifest.items():
        assert entry["sha256"] == sha256_file(ARTIFACTS / name), name


# --- .pt2: the graph's expressions go to sympify -------------------------------------------------------


def test_crafted_pt2_is_refused_untrusted_and_even_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = evil_pt2(tmp_path, shell_marker_command(marker))
    line = _one_line_error(_predict("--model", str(evil)))
    assert all(way in line for way in THREE_WAYS), line
    line = _one_line_error(_predict("--model", str(evil), "--trust-code"))
    assert "not plain symbol arithmetic" in line, line
    assert not marker.exists(), "the command in the graph ran"


@pytest.mark.parametrize(
    "expr", ["9**9**9**9", "s40 ** 2", "s40.__class__", "Symbol('s40', positive=True)", "s40(1)", "1(2)", "s40 / 0"]
)
def test_pt2_expressions_beyond_plain_arithmetic_are_refused(tmp_path: Path, expr: str) -> None:
    evil = evil_pt2(tmp_path, expr)
    with pytest.raises(ModelError, match="not plain symbol arithmetic"):
        load(evil, trust=Trust(code=True))


def test_pt2_with_an_absurd_size_is_one_line(tmp_path: Path) -> None:
    evil = pt2_with_size(tmp_path, 10**100)
    line = _one_line_error(_predict("--model", str(evil), "--trust-code"))
    assert "tensor dimension" in line or "beyond any sane size" in line, line


def test_plain_arithmetic_of_the_batch_symbol_passes() -> None:
    from fmnist_deploy.pt2_graph import check_expression

    for expr in ["s40", "784*s40", "s40 + 1", "-(s0 - 2) * 3"]:
        check_expression(expr, "x")


def test_the_packaged_pt2_graph_passes_its_own_check() -> None:
    from fmnist_deploy.integrity import inspect_pt2

    inspect_pt2(ARTIFACTS / "fmnist_mlp.pt2")


# --- ONNX: checked as data before a session exists ------------------------------------------------------


def _contract_graph(nodes, initializers=(), opset=17, domain_imports=()):
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 28, 28])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "g", [image], [logits, probs], initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domain_imports)]
    return helper.make_model(graph, opset_imports=imports)


def _loop_model():
    """A Loop that doubles a tensor by Concat on every one of 2**40 steps."""
    body = helper.make_graph(
        [
            helper.make_node("Concat", ["x_in", "x_in"], ["x_out"], axis=0),
            helper.make_node("Identity", ["c"], ["c_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None),
        ],
    )
    init = [
        helper.make_tensor("trip", TensorProto.INT64, [], [2**40]),
        helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        helper.make_tensor("x0", TensorProto.FLOAT, [1], [1.0]),
    ]
    nodes = [
        helper.make_node("Loop", ["trip", "cond", "x0"], ["grown"], body=body),
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["f"], ["logits"]),
        helper.make_node("Identity", ["f"], ["probabilities"]),
    ]
    return _contract_graph(nodes, init)


def _constant_of_shape_model():
    init = [helper.make_tensor("shape", TensorProto.INT64, [2], [2**20, 2**20])]
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("Cast", ["image"], ["logits"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["image"], ["probabilities"], to=TensorProto.FLOAT),
    ]
    return _contract_graph(nodes, init)


def _sparse_constant_model():
    """A Constant whose sparse value ONNX Runtime would densify: 2**40 zeros from a few bytes."""
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(values, indices, [2**20, 2**20])
    nodes = [
        helper.make_node("Constant", [], ["big"], sparse_value=sparse),
        helper.make_node("Cast", ["image"], ["logits"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["image"], ["probabilities"], to=TensorProto.FLOAT),
    ]
    return _contract_graph(nodes)


def _broadcast_model(reshape: bool):
    """Every pixel as a column, added to a row of 128: (N*784, 128) floats from a 1 KB file."""
    flat = (
        [
            helper.make_node("Reshape", ["f", "column"], ["col"]),
        ]
        if reshape
        else [helper.make_node("Flatten", ["f"], ["row"], axis=0), helper.make_node("Transpose", ["row"], ["col"])]
    )
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        *flat,
        helper.make_node("Add", ["col", "fc1.bias"], ["logits"]),
        helper.make_node("Relu", ["logits"], ["probabilities"]),
    ]
    init = [
        helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("fc1.bias", TensorProto.FLOAT, [128], np.zeros(128, np.float32)),
    ]
    return _contract_graph(nodes, init)


def _square_model(op: str):
    """The batch multiplied by itself transposed: (N, N) floats, 64 GB for N = 131 072 images of 100 MB."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "flat"], ["x"]),
        *(
            [helper.make_node("Gemm", ["x", "x"], ["logits"], transB=1)]
            if op == "Gemm"
            else [
                helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
                helper.make_node(op, ["x", "xt"], ["logits"]),
            ]
        ),
        helper.make_node("Relu", ["logits"], ["probabilities"]),
    ]
    return _contract_graph(nodes, [helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 784])])


def _untyped_shape_model():
    """A Reshape whose shape tensor has a data type ONNX does not define (found by fuzzing the .ort check)."""
    shape = TensorProto(name="flat", dims=[2], data_type=32, raw_data=np.array([-1, 784], np.int64).tobytes())
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "flat"], ["logits"]),
        helper.make_node("Relu", ["logits"], ["probabilities"]),
    ]
    return _contract_graph(nodes, [shape])


def _value_ints_model():
    """A Constant holding 100 000 values in its value_ints attribute (a tensor outside the initializers: the
    live chain of Adds built on such constants took gigabytes per request)."""
    nodes = [
        helper.make_node("Constant", [], ["big"], value_ints=[0] * 100_000),
        helper.make_node("Cast", ["big"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["f"], ["logits"]),
        helper.make_node("Relu", ["f"], ["probabilities"]),
    ]
    return _contract_graph(nodes)


def _reshape_v1_model():
    """A Reshape carrying Reshape-1's `shape` attribute: a runtime that does not re-check the graph against the
    operator's current definition (ONNX Runtime's minimal builds, for .ort files) would reshape by it."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "flat"], ["x"], shape=[-1, 1]),
        helper.make_node("Relu", ["x"], ["logits"]),
        helper.make_node("Relu", ["x"], ["probabilities"]),
    ]
    return _contract_graph(nodes, [helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 784])])


def _custom_op_model():
    nodes = [
        helper.make_node("Evil", ["image"], ["logits"], domain="com.attacker"),
        helper.make_node("Cast", ["image"], ["probabilities"], to=TensorProto.FLOAT),
    ]
    return _contract_graph(nodes, domain_imports=("com.attacker",))


def _external_data_model(tmp_path: Path):
    """fc1.weight read from another file (/etc/passwd by a relative path) instead of the model."""
    weights = TensorProto(name="fc1.weight", dims=[128, 784], data_type=TensorProto.FLOAT)
    weights.data_location = TensorProto.EXTERNAL
    weights.external_data.add(key="location", value="../../../../etc/passwd")
    return _contract_graph([helper.make_node("Cast", ["image"], ["logits"], to=TensorProto.FLOAT)], [weights])


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda _: _loop_model(), "Loop node"),
        (lambda _: _constant_of_shape_model(), "ConstantOfShape node"),
        (lambda _: _custom_op_model(), "custom operator domain 'com.attacker'"),
        (_external_data_model, "external data"),
        (lambda _: _sparse_constant_model(), "holds a sparse tensor"),
        (lambda _: _broadcast_model(True), "reshapes to [-1, 1], not [-1, 784]"),
        (lambda _: _broadcast_model(False), "flattens from axis 0, not 1"),
        (lambda _: _square_model("Gemm"), "Gemm node multiplies by 'x', which is not a weight of the file"),
        (lambda _: _square_model("MatMul"), "MatMul node multiplies by 'xt', which is not a weight of the file"),
        (lambda _: _untyped_shape_model(), "has a Reshape shape that is not a valid tensor"),
        (lambda _: _value_ints_model(), "has an attribute of 100,000 values, over the 64 limit"),
        (lambda _: _reshape_v1_model(), "has the attribute 'shape', not one the exporter writes on Reshape"),
    ],
    ids=[
        "loop",
        "constant_of_shape",
        "custom_op",
        "external_data",
        "sparse_constant",
        "reshape",
        "flatten",
        "gemm_square",
        "matmul_square",
        "untyped_shape",
        "value_ints",
        "reshape_v1",
    ],  # fmt: skip
)
def test_onnx_graphs_off_the_contract_are_refused_in_one_line(tmp_path: Path, build, needle: str) -> None:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(build(tmp_path).SerializeToString())
    line = _one_line_error(_predict("--model", str(path)))
    assert needle in line and "refused before ONNX Runtime loads it" in line, line


def _as_ort(model, path: Path) -> Path:
    """The graph saved by ONNX Runtime itself in its own format, unoptimised (as a hostile supplier could)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert path.read_bytes()[4:8] == b"ORTM"
    return path


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (_loop_model, "Loop node"),
        (lambda: _square_model("Gemm"), "Gemm node multiplies by 'x', which is not a weight of the file"),
        (lambda: _broadcast_model(True), "reshapes to [-1, 1], not [-1, 784]"),
        (_custom_op_model, "custom operator"),
    ],
    ids=["loop", "gemm_square", "reshape", "custom_op"],
)
def test_ort_format_graphs_off_the_contract_are_refused_as_their_onnx_twins(tmp_path: Path, build, needle) -> None:
    """An .ort file is read into an ONNX graph and checked as one: the attacks above, saved by ONNX Runtime in
    its own format, and an ONNX protobuf merely named .ort (checked by its bytes, not its name)."""
    model = build()
    if "custom" in needle:  # ONNX Runtime will not save a graph whose operator it has no kernel for
        files = [tmp_path / "renamed.ort"]
    else:
        files = [_as_ort(model, tmp_path / "hostile.ort"), tmp_path / "renamed.ort"]
    (tmp_path / "renamed.ort").write_bytes(model.SerializeToString())
    for path in files:
        line = _one_line_error(_predict("--model", str(path)))
        assert needle in line and "refused before ONNX Runtime loads it" in line, (path.name, line)


def test_an_ort_fused_gemm_must_fuse_relu(tmp_path: Path) -> None:
    """ONNX Runtime's FusedGemm takes its activation by name: another than the contract's Relu is refused."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "flat"], ["x"]),
        helper.make_node(
            "FusedGemm", ["x", "fc1.weight"], ["h"], domain="com.microsoft", transB=1, activation="Softplus"
        ),
        helper.make_node("Gemm", ["h", "fc2.weight"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    init = [
        helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 784]),
        helper.make_tensor("fc1.weight", TensorProto.FLOAT, [128, 784], np.zeros(128 * 784, np.float32)),
        helper.make_tensor("fc2.weight", TensorProto.FLOAT, [10, 128], np.zeros(1280, np.float32)),
    ]
    model = _contract_graph(nodes, init, domain_imports=("com.microsoft",))
    path = _as_ort(model, tmp_path / "softplus.ort")
    line = _one_line_error(_predict("--model", str(path)))
    assert "fuses the activation b'Softplus', not Relu" in line, line


def test_an_ort_file_has_a_budget_of_tensors_and_copies_only_small_ones(tmp_path: Path, monkeypatch) -> None:
    """A flatbuffer can point many tables at one block: every reference costs, however small the file (a 16 MB
    file referencing one 15 MB block 4 096 times made the reader copy 61 GB), so references are counted and
    only a tensor of at most 1 KB (a shape) is copied into the check."""
    from fmnist_deploy.export.ort_format import derive
    from fmnist_deploy.runtime import ort_check

    path = tmp_path / "fmnist_mlp.ort"
    derive(ARTIFACTS / "fmnist_mlp.onnx", path)
    model = ort_check._as_onnx(path, path.read_bytes())
    copied = {t.name: len(t.raw_data) for t in model.graph.initializer}
    assert copied["fc1.weight"] == 0 and 0 < max(copied.values()) <= ort_check.MAX_COPIED_BYTES, copied
    monkeypatch.setattr(ort_check, "MAX_TENSORS", 3)  # the converted file has 7 initializers
    with pytest.raises(IntegrityError, match="4 tensors, over the 3 limit; not the deployment contract's graph"):
        ort_check.check_ort(path, path.read_bytes())


def test_exported_ort_files_pass_and_damaged_ones_are_one_line(tmp_path: Path) -> None:
    from fmnist_deploy.export.ort_format import derive
    from fmnist_deploy.runtime.ort_check import check_ort

    for name in ("fmnist_mlp.onnx", "fmnist_mlp.int8.onnx"):
        path = tmp_path / name.replace(".onnx", ".ort")
        derive(ARTIFACTS / name, path)
        data = path.read_bytes()
        check_ort(path, data)
        assert len(load(path).predict(np.zeros((2, 28, 28), np.uint8)).labels) == 2
    # flipped bytes, truncations, absurd offsets and lengths (seeded: a failure names the case and repeats)
    cases = damaged_copies(data, 300, 20261205, keep=8, align=4)
    for i, damaged in enumerate(cases):
        try:
            check_ort(path, damaged)  # a change the check cannot see (a weight's bits) passes: the sidecar's digest
        except IntegrityError:  # and the gate are what notice those
            pass
        except Exception as exc:  # noqa: BLE001 - the point: nothing else escapes
            raise AssertionError(f"case {i}: {type(exc).__name__}: {exc}") from None
    for damaged in (data[:100], data[:8] + b"\xff" * 64, b"\x00\x00\x00\x00ORTM"):
        with pytest.raises(
            IntegrityError, match=r"not a readable ONNX Runtime format file|refused before ONNX Runtime"
        ):
            check_ort(path, damaged)


def test_a_graph_that_fails_while_running_is_one_line(tmp_path: Path) -> None:
    """A graph the check lets through (a fixed batch of 2) that ONNX Runtime refuses at run time for 1 image:
    one line naming ONNX Runtime's reason, exit 1, never its traceback."""
    import onnx

    model = onnx.load(str(ARTIFACTS / "fmnist_mlp.onnx"))
    reshape = next(node for node in model.graph.node if node.op_type == "Reshape")
    shape = next(t for t in model.graph.initializer if t.name == reshape.input[1])
    shape.CopyFrom(helper.make_tensor(shape.name, TensorProto.INT64, [2], [2, 784]))
    path = tmp_path / "fixed-batch.onnx"
    path.write_bytes(model.SerializeToString())
    result = _predict("--model", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()  # a note that no sidecar vouches for the file, then the error
    assert lines[-1].startswith("Error: ONNX Runtime run failed ([ONNXRuntimeError]"), lines
    assert len([line for line in lines if not line.startswith("note: ")]) == 1, lines


def test_an_onnx_file_over_the_size_cap_is_refused(tmp_path: Path, monkeypatch) -> None:
    from fmnist_deploy.runtime import onnx_check

    monkeypatch.setattr(onnx_check, "MAX_ONNX_BYTES", 1000)
    with pytest.raises(ModelError, match="over the 1,000 byte limit"):
        load(ARTIFACTS / "fmnist_mlp.onnx")


@pytest.mark.parametrize("name", ["fmnist_mlp.onnx", "fmnist_mlp.int8.onnx"])
def test_the_exported_onnx_files_pass_the_check(name: str) -> None:
    from fmnist_deploy.runtime.onnx_check import check_onnx

    check_onnx(ARTIFACTS / name, (ARTIFACTS / name).read_bytes())


# --- zip bombs: sizes checked before torch expands a record ---------------------------------------------

RSS_CAP_MB = 1024

# Peak RSS as VmHWM: the high-water mark of this process's own memory (getrusage's ru_maxrss survives
# exec and would count the forking pytest process's pages).
PEAK_RSS_MB = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024"

_LOAD_AND_MEASURE = f"""
import sys, warnings
from fmnist_deploy.runtime import ModelError, Trust, load
warnings.simplefilter("ignore")
try:
    load(sys.argv[1], trust=Trust(code=True))
    outcome = "loaded"
except ModelError as exc:
    outcome = "refused: " + str(exc)
print({PEAK_RSS_MB})
print(outcome)
"""


@pytest.mark.parametrize("name", ["fmnist_mlp.pt2", "fmnist_mlp.torchscript", "fmnist_mlp.pt"])
def test_zip_bombs_are_refused_under_the_memory_cap(tmp_path: Path, name: str) -> None:
    bomb = zip_bomb(tmp_path, ARTIFACTS / name)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_MEASURE, str(bomb)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    peak_mb, outcome = done.stdout.strip().splitlines()[-2:]
    assert "refused as a zip bomb" in outcome, done.stdout + done.stderr
    assert int(peak_mb) < RSS_CAP_MB, f"peak RSS {peak_mb} MB"


def test_export_sign_then_predict_with_the_trusted_key(tmp_path: Path, data) -> None:
    from fmnist_deploy.export.cli import main as export_cli
    from tests.test_export import random_weights

    priv, pub = _keys(tmp_path)
    weights = random_weights(tmp_path / "weights.pt")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(
            export_cli,
            [
                "--format",
                "torchscript",
                "--weights",
                str(weights),
                "--output",
                str(out),
                "--data-dir",
                str(data.root),
                "--sign",
                str(priv),
            ],
        )
    assert result.exit_code == 0, result.output
    model = out / "fmnist_mlp.torchscript"
    assert signature_path(model).is_file()
    manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert manifest == {"fmnist_mlp.torchscript": {"sha256": sha256_file(model)}}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no staging folder or journal left"
    assert "not trusted" in _one_line_error(_predict("--model", str(model)))
    assert _predict("--model", str(model), "--trusted-key", str(pub)).exit_code == 0
    _, other = _keys(tmp_path, "other")
    line = _one_line_error(_predict("--model", str(model), "--trusted-key", str(other)))
    assert "does not verify against any trusted key" in line, line
