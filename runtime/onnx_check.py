"""An ONNX file is data, checked as data before ONNX Runtime sees it: the contract's graph in shape.

ONNX Runtime runs whatever graph a file holds: a `Loop` that grows a tensor by `Concat`
every step fills memory, a `ConstantOfShape` of a huge shape allocates it, a custom-domain
operator loads code from a registered library, external data reads other files. So before a
session exists the file is parsed (size-capped) and refused, in one line, unless it holds only
the operators this exporter writes (the fp32 graph and the int8 one), in the standard domain,
with no subgraph, no function, no external or sparse data, initializers shaped as the
contract's layers are, and every product (Gemm, MatMul, MatMulInteger) taken with one of them.
"""

from __future__ import annotations

from pathlib import Path

from fmnist_deploy.errors import IntegrityError

MAX_ONNX_BYTES = 16 * 1024 * 1024  # the committed fp32 file: 0.4 MB
MAX_NODES = 256  # the committed graphs: 10 (fp32) and 22 (int8) nodes
# What fmnist-export writes: the fp32 graph (Cast, Reshape, Gemm, Relu, Softmax) and the int8 graph
# (DynamicQuantizeLinear, MatMulInteger, Mul, Add); the rest is what the same layers export as with
# other opsets or exporter versions (Div/Sub for the normalisation, MatMul + Add for Gemm, Flatten).
# Each with the attributes its current ONNX definition has: an attribute of another version of the
# operator (Reshape-1's `shape`) is refused, since a runtime that does not re-check the graph would obey it.
ALLOWED_OPS: dict[str, frozenset[str]] = {
    "Add": frozenset(),
    "Cast": frozenset({"to", "saturate", "round_mode"}),
    "Constant": frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"}),
    "Div": frozenset(),
    "DynamicQuantizeLinear": frozenset(),
    "Flatten": frozenset({"axis"}),
    "Gemm": frozenset({"alpha", "beta", "transA", "transB"}),
    "Identity": frozenset(),
    "MatMul": frozenset(),
    "MatMulInteger": frozenset(),
    "Mul": frozenset(),
    "Relu": frozenset(),
    "Reshape": frozenset({"allowzero"}),
    "Softmax": frozenset({"axis"}),
    "Sub": frozenset(),
    "Transpose": frozenset({"perm"}),
}
STANDARD_DOMAINS = ("", "ai.onnx")
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's own operators (built in, no library loaded)
MAX_INITIALIZER_ELEMENTS = 784 * 128  # the largest layer of the contract's network
MAX_ATTRIBUTE_VALUES = 64  # a list attribute (perm, value_ints, ...): the exporter writes at most 2 values


def _layer_shapes() -> set[tuple[int, ...]]:
    """Shapes a weight, bias, scale or zero point of the contract's layers may have (either orientation)."""
    from fmnist_deploy.contract import IMAGE_SHAPE, N_CLASSES

    sizes = (IMAGE_SHAPE[0] * IMAGE_SHAPE[1], 128, 64, N_CLASSES)
    shapes: set[tuple[int, ...]] = {(), (1,), (2,), (3,)}  # scalars and the Reshape target [-1, 784]
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        shapes |= {(fan_out, fan_in), (fan_in, fan_out), (fan_out,)}
    return shapes


def _refuse(path: Path, what: str) -> IntegrityError:
    return IntegrityError(f"{path}: {what}; not the deployment contract's graph, refused before ONNX Runtime loads it")


def check_onnx(path: Path, data: bytes) -> None:
    """Raise IntegrityError (one line) unless `data`, the bytes of `path`, hold the contract's graph in shape."""
    from google.protobuf.message import DecodeError
    from onnx import ModelProto

    if len(data) > MAX_ONNX_BYTES:
        raise _refuse(path, f"{len(data):,} bytes, over the {MAX_ONNX_BYTES:,} byte limit")
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise IntegrityError(f"{path}: not an ONNX model (protobuf: {str(exc)[:80] or type(exc).__name__})") from None
    check_model(path, model)


def check_model_bytes(path: Path, data: bytes) -> None:
    """check_onnx, or for the ONNX Runtime format (its flatbuffer identifier, whatever the file's name) check_ort."""
    if data[4:8] == b"ORTM":
        from fmnist_deploy.runtime.ort_check import check_ort

        check_ort(path, data)
    else:
        check_onnx(path, data)


def check_model(
    path: Path, model, *, domains: tuple[str, ...] = STANDARD_DOMAINS, contrib: dict[str, frozenset[str]] | None = None
) -> None:
    """The checks of a parsed graph (an ONNX ModelProto; the ONNX Runtime format's graph is read into one).

    `domains`: the operator domains the model may import; `contrib`: operators of ONNX Runtime's own
    com.microsoft domain it may hold (the fused ones ONNX Runtime writes into an .ort file).
    """
    from onnx import AttributeProto, TensorProto

    custom = sorted({o.domain for o in model.opset_import if o.domain not in domains})
    if custom:
        raise _refuse(path, f"imports the custom operator domain {custom[0]!r}")
    if len(model.functions):
        raise _refuse(path, f"defines {len(model.functions)} local function(s)")
    contrib = contrib or {}
    graph = model.graph
    if len(graph.node) > MAX_NODES:
        raise _refuse(path, f"{len(graph.node)} nodes, over the {MAX_NODES} limit")
    for node in graph.node:
        standard = node.domain in STANDARD_DOMAINS
        if not standard and not (node.domain == CONTRIB_DOMAIN and node.op_type in contrib):
            raise _refuse(
                path, f"node {node.name or node.op_type!r} is the custom operator {node.domain}::{node.op_type}"
            )
        if standard and node.op_type not in ALLOWED_OPS:
            raise _refuse(path, f"holds a {node.op_type} node, an operator this exporter never writes")
        known = ALLOWED_OPS[node.op_type] if standard else contrib[node.op_type]
        for attribute in node.attribute:
            if attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) or attribute.HasField("g"):
                raise _refuse(path, f"node {node.name or node.op_type!r} holds a subgraph")
            if attribute.HasField("sparse_tensor") or len(attribute.sparse_tensors):
                raise _refuse(path, f"node {node.name or node.op_type!r} holds a sparse tensor")
            if attribute.name not in known:
                raise _refuse(
                    path,
                    f"node {node.name or node.op_type!r} has the attribute {attribute.name!r}, not one the exporter "
                    f"writes on {node.op_type}",
                )
            if attribute.name == "activation" and attribute.s != b"Relu":  # a fused Gemm: the contract's Relu only
                raise _refuse(
                    path, f"node {node.name or node.op_type!r} fuses the activation {attribute.s[:40]!r}, not Relu"
                )
            values = len(attribute.ints) + len(attribute.floats) + len(attribute.strings) + len(attribute.tensors)
            if values > MAX_ATTRIBUTE_VALUES:  # a Constant's value_ints is a tensor too, outside the initializers
                raise _refuse(
                    path,
                    f"node {node.name or node.op_type!r} has an attribute of {values:,} values, over the "
                    f"{MAX_ATTRIBUTE_VALUES} limit",
                )
            for tensor in [attribute.t] if attribute.HasField("t") else []:
                _check_tensor(path, tensor, f"{node.op_type} constant", TensorProto)
            for tensor in attribute.tensors:
                _check_tensor(path, tensor, f"{node.op_type} constant", TensorProto)
    _check_wiring(path, graph)
    if len(graph.sparse_initializer):
        raise _refuse(path, "holds sparse initializers")
    for tensor in graph.initializer:
        _check_tensor(path, tensor, f"initializer {tensor.name!r}", TensorProto)
    shapes = _layer_shapes()
    odd = [(t.name, tuple(t.dims)) for t in graph.initializer if tuple(t.dims) not in shapes]
    if odd:
        raise _refuse(path, f"initializer {odd[0][0]!r} has shape {list(odd[0][1])}, not one of the contract's layers")


FLAT = [-1, 784]  # the one Reshape the exporter writes: (N, 28, 28) -> (N, 784)


def _check_wiring(path: Path, graph) -> None:
    """The shape-changing operators may only flatten each image: a Reshape to anything but [-1, 784], a
    Flatten of the batch axis or a Transpose of more than two axes would let allowed element-wise
    operators broadcast a column of every pixel against a row into gigabytes."""
    from onnx import numpy_helper

    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    constants[node.output[0]] = attribute.t
    for node in graph.node:
        if node.op_type == "Reshape":
            shape = constants.get(node.input[1]) if len(node.input) > 1 else None
            try:
                target = numpy_helper.to_array(shape).tolist() if shape is not None else None
            # data of another length or type than it declares (ValueError, TypeError), or of no ONNX type (KeyError)
            except (ValueError, TypeError, KeyError) as exc:
                raise _refuse(path, f"has a Reshape shape that is not a valid tensor ({str(exc)[:80]})") from None
            # [-1, 784], or [k, 784] (a fixed batch, which the gate names): neither can make a column
            flat = isinstance(target, list) and len(target) == 2 and target[1] == FLAT[1]
            if not (flat and (target[0] == -1 or 1 <= target[0] <= 1 << 20)):
                raise _refuse(path, f"reshapes to {target if target is not None else 'a computed shape'}, not {FLAT}")
        attributes = {a.name: helper_value(a) for a in node.attribute}
        if node.op_type == "Flatten" and attributes.get("axis", 1) != 1:
            raise _refuse(path, f"flattens from axis {attributes['axis']}, not 1")
        if node.op_type == "Transpose" and attributes.get("perm") != [1, 0]:
            raise _refuse(path, f"transposes with perm {attributes.get('perm', 'reversed')}, not [1, 0]")
    _check_products(path, graph, set(constants))


# Operators that pass a weight on unchanged in value (the exporter transposes or casts a weight on its way
# to a product); their output is a weight when every input is one.
WEIGHT_PRESERVING = frozenset({"Cast", "Identity", "Reshape", "Transpose"})
# the products, ONNX's and the fused ones of ONNX Runtime's format
PRODUCTS = frozenset({"Gemm", "MatMul", "MatMulInteger", "FusedGemm", "FusedMatMul", "DynamicQuantizeMatMul"})


def _check_products(path: Path, graph, weights: set[str]) -> None:
    """A product's second operand must be a weight of the file (an initializer or a Constant, or one of them
    transposed or cast): the batch times itself transposed is an (N, N) result, gigabytes from one request."""
    for node in graph.node:
        if node.op_type in WEIGHT_PRESERVING and all(name in weights for name in node.input if name):
            weights.update(node.output)
        if node.op_type in PRODUCTS and (len(node.input) < 2 or node.input[1] not in weights):
            operand = node.input[1] if len(node.input) > 1 else "nothing"
            raise _refuse(path, f"its {node.op_type} node multiplies by {operand!r}, which is not a weight of the file")


def helper_value(attribute):
    """An attribute's Python value (onnx.helper.get_attribute_value)."""
    from onnx import helper

    return helper.get_attribute_value(attribute)


def _check_tensor(path: Path, tensor, where: str, TensorProto) -> None:  # noqa: N803 - onnx's class, passed in
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        raise _refuse(path, f"{where} refers to external data (another file)")
    elements = 1
    for dim in tensor.dims:
        if dim < 0:
            raise _refuse(path, f"{where} has a negative dimension")
        elements *= dim
    if elements > MAX_INITIALIZER_ELEMENTS:
        raise _refuse(path, f"{where} has {elements:,} elements, over the contract's {MAX_INITIALIZER_ELEMENTS:,}")


__all__ = ["ALLOWED_OPS", "MAX_ONNX_BYTES", "check_model", "check_model_bytes", "check_onnx"]
