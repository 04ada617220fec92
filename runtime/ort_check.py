"""An ONNX Runtime format file (`.ort`) is data too: its flatbuffer read into an ONNX graph and checked as one.

An `.ort` file is ONNX Runtime's own serialisation (a flatbuffer, not a protobuf) of a graph that
`convert_onnx_models_to_ort` has already optimised: the contract's Gemm + Relu become ONNX Runtime's
`FusedGemm`, the int8 file's quantised products `DynamicQuantizeMatMul`, and every file imports all of
ONNX Runtime's built-in operator domains. So the graph is read with ONNX Runtime's own flatbuffer
bindings, every vector's length bounded before it is walked, into an ONNX `ModelProto` (operators,
attributes, initializers' shapes and data), and `onnx_check.check_model` decides, allowing those
fused operators and domains and nothing else: no subgraph, no external or sparse data, no fused node
or saved runtime optimisation (which ONNX Runtime would expand at load, out of the check's sight).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from fmnist_deploy.errors import IntegrityError
from fmnist_deploy.runtime.onnx_check import MAX_NODES, MAX_ONNX_BYTES, STANDARD_DOMAINS, _refuse, check_model

# The operator domains ONNX Runtime records in every .ort file it writes (its built-in ones).
ORT_DOMAINS = (
    *STANDARD_DOMAINS,
    "ai.onnx.ml",
    "ai.onnx.training",
    "ai.onnx.preview",
    "ai.onnx.preview.training",
    "com.microsoft",
    "com.microsoft.experimental",
    "com.microsoft.nchwc",
    "org.pytorch.aten",
)
# The com.microsoft operators its fixed CPU optimisations turn the contract's layers into (fp32: Gemm + Relu;
# int8: DynamicQuantizeLinear + MatMulInteger + Mul + Add; MatMul + Add from other exporter versions).
ORT_CONTRIB_OPS: dict[str, frozenset[str]] = {  # with the attributes the converter writes on each
    "FusedGemm": frozenset({"alpha", "beta", "transA", "transB", "activation"}),
    "FusedMatMul": frozenset({"alpha", "transA", "transB", "transBatchA", "transBatchB"}),
    "DynamicQuantizeMatMul": frozenset(),
}
MAX_ENTRIES = 64  # inputs, outputs or attributes of one node, dimensions of one tensor; the contract's use at most 5
MAX_TENSORS = 512  # initializers and attribute tensors in all (the contract's graphs: 7 and 13 initializers)
MAX_COPIED_BYTES = 1024  # a tensor's data read into the check (a shape: 16 bytes)


def check_ort(path: Path, data: bytes) -> None:
    """Raise IntegrityError (one line) unless `data`, an .ort file's bytes, hold the contract's graph in shape."""
    if len(data) > MAX_ONNX_BYTES:
        raise _refuse(path, f"{len(data):,} bytes, over the {MAX_ONNX_BYTES:,} byte limit")
    try:
        model = _as_onnx(path, data)
    except IntegrityError:  # a bound of this reader, already in one line
        raise
    except (IndexError, struct.error, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise IntegrityError(
            f"{path}: not a readable ONNX Runtime format file ({str(exc)[:80] or type(exc).__name__})"
        ) from None
    check_model(path, model, domains=ORT_DOMAINS, contrib=ORT_CONTRIB_OPS)


def _bounded(count: int, limit: int, what: str, path: Path) -> int:
    if count > limit:
        raise _refuse(path, f"{count:,} {what}, over the {limit} limit")
    return count


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", errors="replace")


def _as_onnx(path: Path, data: bytes) -> Any:
    import onnxruntime.tools.ort_format_model  # noqa: F401 - puts ONNX Runtime's flatbuffer bindings on the path
    from onnx import ModelProto
    from ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    session = InferenceSession.GetRootAs(data, 0)
    ort_model = session.Model()
    graph = ort_model.Graph() if ort_model is not None else None
    if graph is None:
        raise ValueError("no model graph")
    model = ModelProto()
    for j in range(_bounded(ort_model.OpsetImportLength(), MAX_ENTRIES, "operator domains", path)):
        opset = ort_model.OpsetImport(j)
        model.opset_import.add(domain=_text(opset.Domain()), version=opset.Version())
    reader = _Reader(path)
    nodes = graph.NodesLength()
    for j in range(min(nodes, MAX_NODES + 1)):  # one more than the limit: check_model refuses the count
        reader.node(model.graph.node.add(), graph.Nodes(j))
    for j in range(_bounded(graph.InitializersLength(), MAX_NODES, "initializers", path)):
        reader.tensor(model.graph.initializer.add(), graph.Initializers(j))
    if graph.SparseInitializersLength():
        model.graph.sparse_initializer.add()
    optimizations = graph.RuntimeOptimizations()
    if optimizations is not None and optimizations.RecordsLength():
        raise _refuse(path, "holds saved runtime optimisations, which ONNX Runtime applies at load")
    return model


class _Reader:
    """Nodes, attributes and tensors of the flatbuffer as ONNX protos, with a budget of tensors for the whole
    file: a flatbuffer may point many tables at one block, so each reference costs, however small the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors = 0

    def node(self, proto: Any, node: Any) -> None:
        path = self.path
        proto.name, proto.op_type, proto.domain = _text(node.Name()), _text(node.OpType()), _text(node.Domain())
        if node.Type() != 0:  # NodeType.Fused: a kernel ONNX Runtime compiled, not an operator of the graph
            raise _refuse(path, f"node {proto.name or proto.op_type!r} is a fused node, not an operator")
        count = _bounded(node.InputsLength(), MAX_ENTRIES, "inputs", path)
        proto.input.extend(_text(node.Inputs(k)) for k in range(count))
        count = _bounded(node.OutputsLength(), MAX_ENTRIES, "outputs", path)
        proto.output.extend(_text(node.Outputs(k)) for k in range(count))
        for k in range(_bounded(node.AttributesLength(), MAX_ENTRIES, "attributes", path)):
            self.attribute(proto.attribute.add(), node.Attributes(k))

    def attribute(self, proto: Any, attribute: Any) -> None:
        """An attribute's value as ONNX holds it (the two formats number attribute types alike); a subgraph or a
        sparse tensor is only marked, for check_model to refuse, never read."""
        from onnx import AttributeProto

        path = self.path
        kind = attribute.Type()
        proto.name, proto.type = _text(attribute.Name()), kind
        if kind == AttributeProto.FLOAT:
            proto.f = attribute.F()
        elif kind == AttributeProto.INT:
            proto.i = attribute.I()
        elif kind == AttributeProto.STRING:
            proto.s = attribute.S() or b""
        elif kind == AttributeProto.FLOATS:
            count = _bounded(attribute.FloatsLength(), MAX_ENTRIES, "floats", path)
            proto.floats.extend(attribute.Floats(k) for k in range(count))
        elif kind == AttributeProto.INTS:
            count = _bounded(attribute.IntsLength(), MAX_ENTRIES, "ints", path)
            proto.ints.extend(attribute.Ints(k) for k in range(count))
        elif kind == AttributeProto.STRINGS:
            count = _bounded(attribute.StringsLength(), MAX_ENTRIES, "strings", path)
            proto.strings.extend(attribute.Strings(k) for k in range(count))
        elif kind == AttributeProto.TENSOR and attribute.T() is not None:
            self.tensor(proto.t, attribute.T())
        elif kind == AttributeProto.TENSORS:
            for k in range(_bounded(attribute.TensorsLength(), MAX_ENTRIES, "tensors", path)):
                self.tensor(proto.tensors.add(), attribute.Tensors(k))
        if kind in (AttributeProto.GRAPH, AttributeProto.GRAPHS) or attribute.G() is not None:
            proto.g.SetInParent()
        if kind in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
            proto.sparse_tensor.SetInParent()

    def tensor(self, proto: Any, tensor: Any) -> None:
        from onnx import TensorProto

        self.tensors += 1
        _bounded(self.tensors, MAX_TENSORS, "tensors", self.path)
        proto.name, proto.data_type = _text(tensor.Name()), tensor.DataType()
        dims = _bounded(tensor.DimsLength(), MAX_ENTRIES, "dimensions", self.path)
        proto.dims.extend(tensor.Dims(k) for k in range(dims))
        # Only a small tensor's data is copied (a Reshape's target shape is read from it): the check needs the
        # others' shapes alone, and many tensors may point at one large block of the file.
        if 0 < tensor.RawDataLength() <= MAX_COPIED_BYTES:
            proto.raw_data = tensor.RawDataAsNumpy().tobytes()
        if tensor.ExternalDataOffset() >= 0:  # data in a file beside the model
            proto.data_location = TensorProto.EXTERNAL
            proto.external_data.add(key="offset", value=str(tensor.ExternalDataOffset()))


__all__ = ["ORT_CONTRIB_OPS", "ORT_DOMAINS", "check_ort"]
