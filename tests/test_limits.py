"""Every threshold and limit at its edge, from both sides, against values written here from the README and the
contract's documentation (never recomputed with the code's own formula): the export gate's tolerances, the
contract's constants, the image decoder's side limit, the IDX size limit, every input shape and dtype the
runtime refuses, and a sidecar that describes a file differently from the file itself."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_deploy import contract
from fmnist_deploy.export.checks import GateReport
from fmnist_deploy.export.gate import EagerReference, References, _run_checks, compare
from fmnist_deploy.runtime import InputError, ModelError, load
from fmnist_deploy.runtime.images import read_batch, read_image
from tests.conftest import ARTIFACTS

# ---- the contract's constants, as the README documents them ------------------------------------------------


def test_contract_constants_are_the_documented_ones() -> None:
    assert contract.CONTRACT_VERSION == "1.0"
    assert (contract.INPUT_NAME, contract.INPUT_DTYPE, contract.IMAGE_SHAPE) == ("image", "uint8", (28, 28))
    assert (contract.OUTPUT_NAMES, contract.OUTPUT_DTYPE, contract.N_CLASSES) == (
        ("logits", "probabilities"),
        "float32",
        10,
    )
    assert contract.CLASS_NAMES == (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    assert contract.LOGIT_TOLERANCE == 1e-5  # README: "the gate's bound is 1e-5"
    assert contract.PROB_SUM_TOLERANCE == 1e-6  # README: "probabilities sum to 1 within 1e-6"
    assert contract.INT8_PROB_SUM_TOLERANCE == 1e-5
    assert contract.INT8_MAX_ACCURACY_DROP_POINTS == 0.5


def _valid_metadata() -> dict:
    return json.loads((ARTIFACTS / "fmnist_mlp.onnx.json").read_text())


@pytest.mark.parametrize(
    ("edit", "accepted"),
    [
        ({}, True),
        ({"contract_version": "1.9"}, True),  # a minor version: the same contract
        ({"contract_version": "2.0"}, False),
        ({"contract_version": "0.9"}, False),
        ({"contract_version": ""}, False),
        ({"class_names": list(contract.CLASS_NAMES[:9])}, False),
        ({"class_names": [*contract.CLASS_NAMES, "Hat"]}, False),
        ({"class_names": [*contract.CLASS_NAMES[:9], 9]}, False),
        ({"inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 28, 28]}]}, False),
        ({"inputs": [{"name": "image", "dtype": "uint8", "shape": ["N", 28, 29]}]}, False),
        ({"inputs": [{"name": "pixels", "dtype": "uint8", "shape": ["N", 28, 28]}]}, False),
        ({"outputs": [{"name": "logits", "dtype": "float32"}]}, False),
        ({"outputs": [{"name": "logits", "dtype": "float16"}, {"name": "probabilities", "dtype": "float32"}]}, False),
    ],
)
def test_contract_problems_at_each_field(edit: dict, accepted: bool) -> None:
    meta = {**_valid_metadata(), **edit}
    assert (contract.contract_problems(meta) == []) is accepted, contract.contract_problems(meta)


# ---- the export gate: values just inside and just outside each bound ---------------------------------------

N = 10_000  # the test set's size: one image is 0.01 percentage points


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def test_set() -> EagerReference:
    """A reference of N images whose logits have a clear winner (the label) in every row, but row 0, whose
    first two classes are 8e-6 apart; images are zeros (the runner below recognises the test set by identity)."""
    rng = np.random.default_rng(26)
    logits = rng.normal(0, 1, size=(N, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=N)
    logits[np.arange(N), labels] += 10.0
    logits[0] = 0.0
    logits[0, :2] = (4.0, 4.0 + 8e-6)  # within float32's spacing at 4 (4.8e-7): the gap is 8e-6 to a few %
    labels[0] = 1
    return EagerReference(np.zeros((N, 28, 28), np.uint8), labels, logits)


def _gate(test_set: EagerReference, logits: np.ndarray, probs: np.ndarray | None = None, int8: bool = False):
    """The gate's verdicts ({check: ok}) for a file that answers the test set with `logits` (and `probs`)."""
    probs = _softmax(logits) if probs is None else probs

    def run(images: np.ndarray):
        if images is test_set.images:
            return logits, probs
        n = len(images)
        return np.zeros((n, 10), np.float32), np.full((n, 10), 0.1, np.float32)

    report = GateReport(file="x", format="onnx")
    _run_checks(report, "x", run, References(test_set=test_set), int8, "")
    return {c.name.split(":", 1)[1]: c.ok for c in report.checks}, {c.name: c.detail for c in report.checks}


@pytest.mark.parametrize(("offset", "ok"), [(0.0, True), (9e-6, True), (2e-5, False), (1e-3, False)])
def test_gate_fp32_logit_bound(test_set, offset: float, ok: bool) -> None:
    shifted = test_set.logits.astype(np.float64)
    shifted[1:] += offset  # row 0 keeps its near tie
    verdicts, details = _gate(test_set, shifted.astype(np.float32))
    assert verdicts["test_set_parity"] is ok, details
    assert verdicts["batch_sizes"] and verdicts["accuracy"]


def test_gate_fp32_needs_every_argmax_to_agree(test_set) -> None:
    # row 0's two top classes swap by 8e-6 (within the logit bound): 99.99 % agreement
    flipped = test_set.logits.copy()
    flipped[0, :2] = test_set.logits[0, 1::-1]
    stats = compare(flipped, _softmax(flipped), test_set.logits)
    assert stats["argmax_agreement"] == 1 - 1 / N and stats["max_abs_logit_diff"] < 1e-5
    verdicts, details = _gate(test_set, flipped)
    assert verdicts["test_set_parity"] is False and "argmax agreement 99.99%" in details["x:test_set_parity"]


def test_gate_argmax_agreement_of_999_in_1000() -> None:
    reference = np.tile(np.float32([[1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]), (1000, 1))
    logits = reference.copy()
    logits[7] = [0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert compare(logits, _softmax(logits), reference)["argmax_agreement"] == 0.999
    labels = np.zeros(1000, dtype=np.int64)
    verdicts, details = _gate(EagerReference(np.zeros((1000, 28, 28), np.uint8), labels, reference), logits)
    assert verdicts["test_set_parity"] is False and "argmax agreement 99.90%" in details["x:test_set_parity"]


@pytest.mark.parametrize(("error", "int8", "ok"), [(5e-7, False, True), (2e-6, False, False), (5e-6, True, True), (2e-5, True, False)])  # fmt: skip
def test_gate_probability_sum_bounds(test_set, error: float, int8: bool, ok: bool) -> None:
    probs = _softmax(test_set.logits).astype(np.float64)
    probs[3, 0] += error
    verdicts, details = _gate(test_set, test_set.logits, probs.astype(np.float32), int8=int8)
    assert verdicts["test_set_parity"] is ok, details


def _wrong(test_set: EagerReference, count: int) -> np.ndarray:
    """The reference logits with `count` correctly answered images (rows 1..count) answered wrongly."""
    logits = test_set.logits.copy()
    rows = np.arange(1, count + 1)
    logits[rows, test_set.labels[rows]] -= 20.0
    return logits


@pytest.mark.parametrize(
    ("wrong", "int8", "ok"),
    [
        (0, False, True),
        (1, False, False),  # fp32 may lose nothing: one image of 10 000 fails it
        (40, True, True),  # int8: 0.40 points
        (50, True, True),  # exactly the 0.5-point budget
        (51, True, False),
        (100, True, False),  # an int8 file that loses 1 point
    ],
)
def test_gate_accuracy_budget(test_set, wrong: int, int8: bool, ok: bool) -> None:
    verdicts, details = _gate(test_set, _wrong(test_set, wrong), int8=int8)
    assert verdicts["accuracy"] is ok, details["x:accuracy"]
    assert f"drop {wrong / 100:.2f} points" in details["x:accuracy"]


def test_gate_batch_sizes_each_checked() -> None:
    """A file that fails at one batch size of the five (1, 2, 7, 100, 10 000) fails the gate."""
    for bad in (1, 2, 7, 100, 10_000):

        def run(images: np.ndarray, bad: int = bad):
            n = len(images)
            rows = n - 1 if n == bad else n
            return np.zeros((rows, 10), np.float32), np.full((rows, 10), 0.1, np.float32)

        report = GateReport(file="x", format="onnx")
        _run_checks(report, "x", run, References(), False, "")
        (check,) = report.checks
        assert check.ok is False and f"{bad}:bad output" in check.detail, check.detail


# ---- the image decoder's side limit and the IDX size limit -------------------------------------------------

MAX_SIDE = 8000  # README: "Images are limited to 8 000 pixels on their longest side"
MAX_BATCH_BYTES = 512 * 1024 * 1024  # a .npy or uncompressed IDX batch file


def _png(path: Path, width: int, height: int, color: int = 0) -> Path:
    """A PNG written by hand (8-bit, grayscale or RGB) so that its size costs no memory to make."""
    channels = 3 if color == 2 else 1
    raw = b"".join(b"\x00" + bytes(width * channels) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("color", [0, 2])
@pytest.mark.parametrize("tall", [False, True])
def test_decoder_side_limit_exactly_and_one_more(tmp_path: Path, color: int, tall: bool) -> None:
    for side, accepted in ((MAX_SIDE, True), (MAX_SIDE + 1, False)):
        size = (1, side) if tall else (side, 1)
        path = _png(tmp_path / f"{side}.png", *size, color=color)
        if accepted:
            assert read_image(path).shape == (28, 28)
        else:
            with pytest.raises(InputError, match=f"over the {MAX_SIDE}-pixel limit"):
                read_image(path)


def test_decoder_side_limit_through_pillow(tmp_path: Path) -> None:
    """Formats the fast PNG path does not take (a palette PNG, a BMP) meet the same limit in Pillow's path."""
    for side, accepted in ((MAX_SIDE, True), (MAX_SIDE + 1, False)):
        for suffix, mode in ((".png", "P"), (".bmp", "L")):
            path = tmp_path / f"{side}{suffix}"
            Image.new(mode, (side, 1)).save(path)
            if accepted:
                assert read_image(path).shape == (28, 28)
            else:
                with pytest.raises(InputError, match=f"{side}x1 image is over the {MAX_SIDE}-pixel limit"):
                    read_image(path)


def _idx_header(n: int) -> bytes:
    return b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28)


# The most images whose IDX file stays within 512 MiB: 16 + 684 784 x 784 = 536 870 672 bytes; one more is over.
MOST_IMAGES = 684_784


@pytest.mark.parametrize("suffix", [".idx", ".gz"])
def test_idx_header_declaring_too_much_is_refused_from_the_header(tmp_path: Path, suffix: str) -> None:
    assert 16 + MOST_IMAGES * 784 <= MAX_BATCH_BYTES < 16 + (MOST_IMAGES + 1) * 784
    for n, over in ((MOST_IMAGES, False), (MOST_IMAGES + 1, True)):
        blob = _idx_header(n) + bytes(784 * 2)  # two images of payload: the header lies either way
        path = tmp_path / f"{n}-images{suffix}"
        path.write_bytes(gzip.compress(blob) if suffix == ".gz" else blob)
        with pytest.raises(InputError) as info:
            read_batch(path)
        if over:
            assert f"IDX header declares {n} images, over the {MAX_BATCH_BYTES} byte limit" in str(info.value)
        else:  # within the limit: refused only because the payload is not there
            assert f"IDX header declares {n * 784} payload bytes" in str(info.value)


def test_idx_file_at_its_declared_size(tmp_path: Path) -> None:
    images = np.arange(3 * 784, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    good = tmp_path / "three.idx"
    good.write_bytes(_idx_header(3) + images.tobytes())
    assert np.array_equal(read_batch(good), images)
    for name, blob in (("short.idx", _idx_header(3) + images.tobytes()[:-1]), ("long.idx", _idx_header(3) + images.tobytes() + b"\x00")):  # fmt: skip
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(InputError, match="IDX header declares 2352 payload bytes"):
            read_batch(tmp_path / name)


# ---- the runtime's input checks: everything the README lists as refused, and what it accepts ---------------


@pytest.fixture(scope="module")
def predictor():
    return load(ARTIFACTS / "fmnist_mlp.onnx")


@pytest.fixture(scope="module")
def two_images() -> np.ndarray:
    return np.load(ARTIFACTS / "golden.npz", allow_pickle=False)["images"][:2]


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x[..., None].repeat(3, axis=-1),  # (N,28,28,3): RGB is not read as its first channel
        lambda x: x[..., None].repeat(2, axis=-1),  # (N,28,28,2)
        lambda x: x[:, None],  # (N,1,28,28): channels first
        lambda x: x[:0],  # N = 0
        lambda x: x[0][..., None],  # (28,28,1) without N
        lambda x: x[:, :, :27],  # (N,28,27)
        lambda x: x[:, :27],  # (N,27,28)
        lambda x: x.reshape(2, 784),  # flat
        lambda x: x.reshape(-1),
        lambda x: x[None],  # (1,N,28,28)
        lambda x: x.astype(np.float32),
        lambda x: x.astype(np.float64) / 255,
        lambda x: x.astype(np.int8),
        lambda x: x.astype(np.uint16),
        lambda x: x.astype(np.int64),
        lambda x: x.astype(bool),
        lambda x: x.tolist(),
        lambda x: np.uint8(7),
    ],
    ids=[
        "N,28,28,3",
        "N,28,28,2",
        "N,1,28,28",
        "N=0",
        "28,28,1",
        "N,28,27",
        "N,27,28",
        "N,784",
        "flat",
        "1,N,28,28",
        "float32",
        "float64",
        "int8",
        "uint16",
        "int64",
        "bool",
        "list",
        "scalar",
    ],
)
def test_refused_inputs_name_what_was_given(predictor, two_images, make) -> None:
    given = make(two_images)
    with pytest.raises(InputError, match=r"expected uint8 \[N,28,28\] \(N >= 1\), \[N,28,28,1\] or \[28,28\], got "):
        predictor.predict(given)


def test_accepted_inputs_give_the_same_answers(predictor, two_images) -> None:
    expected = predictor.predict(two_images).logits
    assert expected.shape == (2, 10)
    assert np.array_equal(predictor.predict(two_images[..., None]).logits, expected)  # (N,28,28,1)
    assert np.array_equal(predictor.predict(two_images[0]).logits, expected[:1])  # (28,28)
    transposed = np.ascontiguousarray(two_images.transpose(0, 2, 1)).transpose(0, 2, 1)  # not C-contiguous
    assert not transposed.flags.c_contiguous
    assert np.array_equal(predictor.predict(transposed).logits, expected)
    one = predictor.predict(two_images[:1]).logits
    assert np.array_equal(one, expected[:1])  # N = 1, the smallest batch


# ---- a sidecar must describe the file as the file describes itself -----------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["class_names"].__setitem__(0, "Hat"),
        lambda m: m.__setitem__("test_accuracy", 0.99),
        lambda m: m.__setitem__("weights_sha256", "0" * 64),
        lambda m: m.__setitem__("extra", 1),
        lambda m: m.pop("opset"),
    ],
    ids=["class name", "accuracy", "weights", "extra key", "missing key"],
)
def test_sidecar_metadata_differing_from_the_file_is_refused(tmp_path: Path, edit) -> None:
    path = tmp_path / "fmnist_mlp.onnx"
    shutil.copy(ARTIFACTS / path.name, path)
    side = json.loads((ARTIFACTS / "fmnist_mlp.onnx.json").read_text())
    shutil.copy(ARTIFACTS / "fmnist_mlp.onnx.json", tmp_path)
    assert load(path).predict(np.zeros((1, 28, 28), np.uint8)).logits.shape == (1, 10)  # the pair as exported
    edit(side)
    (tmp_path / "fmnist_mlp.onnx.json").write_text(json.dumps(side))  # file_sha256 still matches the file
    with pytest.raises(ModelError, match="fmnist_mlp.onnx.json: differs from the metadata inside fmnist_mlp.onnx"):
        load(path)


def test_batch_file_size_limit_exactly_and_one_more(tmp_path: Path) -> None:
    """Sparse files (no disk used): 512 MiB is read (and refused for what it holds), 512 MiB + 1 for its size."""
    for size, over in ((MAX_BATCH_BYTES, False), (MAX_BATCH_BYTES + 1, True)):
        path = tmp_path / f"{size}.idx"
        with open(path, "wb") as f:
            f.truncate(size)
        with pytest.raises(InputError) as info:
            read_batch(path)
        if over:
            assert str(info.value) == f"{path}: {size} bytes is over the {MAX_BATCH_BYTES} byte limit"
        else:
            assert str(info.value) == f"{path}: not an IDX image file (expected magic 00000803, got 00000000)"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x00\x00\x08\x01" + bytes(12), "not an IDX image file (expected magic 00000803, got 00000801)"),
        (b"\x00\x00\x09\x03" + bytes(12), "not an IDX image file (expected magic 00000803, got 00000903)"),
        (b"\x00\x00\x08\x03" + bytes(8), "not an IDX image file (expected magic 00000803, got 00000803)"),
        (b"\x00\x00\x08\x03" + struct.pack(">III", 1, 2**24 + 28, 28), f"IDX header says [1,{2**24 + 28},28]; expected [N,28,28]"),
        (b"\x00\x00\x08\x03" + struct.pack(">III", 1, 28, 2**16 + 28), f"IDX header says [1,28,{2**16 + 28}]; expected [N,28,28]"),
        (_idx_header(2**24 + 1), f"IDX header declares {2**24 + 1} images, over the {MAX_BATCH_BYTES} byte limit"),
    ],
)  # fmt: skip
def test_idx_headers_refused_with_their_reason(tmp_path: Path, header: bytes, message: str) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(header + (bytes(784) if len(header) == 16 else b""))  # a short header is the whole file
    with pytest.raises(InputError) as info:
        read_batch(path)
    assert str(info.value) == f"{path}: {message}"


def test_idx_payload_mismatch_messages(tmp_path: Path) -> None:
    for name, extra, holds in (("short.idx", -1, "2351"), ("long.idx", 1, "more")):
        path = tmp_path / name
        path.write_bytes(_idx_header(3) + bytes(3 * 784 + extra))
        with pytest.raises(InputError) as info:
            read_batch(path)
        assert str(info.value) == f"{path}: IDX header declares 2352 payload bytes, the file holds {holds}"


def test_refusals_describe_exactly_what_was_given(predictor, two_images) -> None:
    expected = "expected uint8 [N,28,28] (N >= 1), [N,28,28,1] or [28,28], got "
    for given, described in ((two_images.astype(np.float64), "float64 [2,28,28]"), (two_images.tolist(), "list")):
        with pytest.raises(InputError) as info:
            predictor.predict(given)
        assert str(info.value) == expected + described


@pytest.mark.parametrize(
    ("meta", "problems"),
    [
        ([], ["metadata is a JSON list, expected an object"]),
        ({}, ["no fmnist-deploy metadata; export the model with fmnist-export"]),
        ({"opset": 17}, ["contract version missing, this tool reads 1.x"]),
        ({"contract_version": 2}, ["contract version 2, this tool reads 1.x"]),
    ],
)
def test_contract_problems_word_each_refusal(meta, problems) -> None:
    assert contract.contract_problems(meta) == problems


def test_contract_problems_list_every_field_at_once() -> None:
    meta = {**_valid_metadata(), "inputs": [], "outputs": [], "class_names": ["Hat"]}
    assert contract.contract_problems(meta) == [
        "declares inputs [], expected image uint8 [N,28,28]",
        "declares outputs [], expected logits, probabilities float32 [N,10]",
        "class_names ['Hat']: expected 10 strings",
    ]


def _parity_check(stats: dict, int8: bool = False, hint: str = " HINT"):
    from fmnist_deploy.export.gate import _parity

    report = GateReport(file="x", format="onnx")
    _parity(report, "p", stats, int8, hint)
    (check,) = report.checks
    return check


def test_gate_bounds_are_inclusive_and_the_detail_is_exact() -> None:
    at = {"max_abs_logit_diff": 1e-5, "max_prob_sum_error": 1e-6, "argmax_agreement": 1.0}
    check = _parity_check(at)
    assert (
        check.ok and check.detail == "max |dlogit| 1e-05 (limit 1e-05), max |sum(p)-1| 1e-06, argmax agreement 100.00%"
    )
    int8 = _parity_check({**at, "max_abs_logit_diff": 0.5, "max_prob_sum_error": 1e-5}, int8=True)
    assert (
        int8.ok
        and int8.detail == "max |dlogit| 0.5, max |sum(p)-1| 1e-05, argmax agreement 100.00% (int8: accuracy gated)"
    )
    failed = _parity_check({**at, "argmax_agreement": 0.5})
    assert not failed.ok and failed.detail.endswith("argmax agreement 50.00% HINT")


def test_compare_sums_probabilities_in_float64() -> None:
    probs = np.full((1, 10), 0.1, np.float32)  # float32's sum is 1.0000001; in float64 1 + 1.49e-8
    stats = compare(np.zeros((1, 10), np.float32), probs, np.zeros((1, 10)))
    assert stats["max_prob_sum_error"] == pytest.approx(float(np.float64(np.float32(0.1)) * 10 - 1), rel=1e-6)


def test_sidecar_mismatch_names_every_differing_key_exactly(tmp_path: Path) -> None:
    path = tmp_path / "fmnist_mlp.onnx"
    shutil.copy(ARTIFACTS / path.name, path)
    side = json.loads((ARTIFACTS / "fmnist_mlp.onnx.json").read_text())
    side.pop("opset")
    side.update({"extra": 1, "test_accuracy": 0.5, "weights_sha256": "0" * 64, "zzz": 2, "aaa": 3})
    (tmp_path / "fmnist_mlp.onnx.json").write_text(json.dumps(side))
    with pytest.raises(ModelError) as info:
        load(path)
    assert str(info.value) == (
        f"{tmp_path / 'fmnist_mlp.onnx.json'}: differs from the metadata inside fmnist_mlp.onnx in "
        "aaa, extra, opset, test_accuracy, weights_sha256; restore the sidecar or re-export"
    )
