"""The graph of a .pt2 archive (`models/model.json`), checked as data before torch.export.load reads it.

torch's deserializer hands every symbolic-size string (`expr_str`) to `sympy.sympify`, which
evaluates Python: `s0 + 0*__import__('os').system(...)` runs a command, `9**9**9**9` never
returns. It also resolves each node's `target` by name and runs `guards_code`. So even a file
the user trusts is read here first, size-capped, and refused unless every expression is a plain
batch-dimension symbol (or integer arithmetic of it), every operator is one this exporter
writes, every size is sane, and nothing else that holds code is present.

Pure Python: importing this module never imports torch.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from fmnist_deploy.errors import IntegrityError

MAX_GRAPH_JSON_BYTES = 4 * 1024 * 1024  # the committed model.json: 17 KB
MAX_JSON_DEPTH = 64
MAX_DIM = 1 << 20  # one tensor dimension (the contract's largest: 784)
MAX_INT = 1 << 62  # any integer anywhere in the graph
MAX_EXPR_CHARS = 200

# What torch.export writes for the dynamic batch dimension, and plain integer arithmetic of symbols.
_SYMBOL_REPR = re.compile(r"Symbol\('s\d{1,9}', positive=True, integer=True\)", re.ASCII)
_ARITHMETIC = re.compile(r"(?:\s*(?:s\d{1,9}|\d{1,9}|[-+*()])\s*)+", re.ASCII)
_SYMBOL_NAME = re.compile(r"s\d{1,9}", re.ASCII)  # ASCII digits: \d alone matches any script's

# The ATen operators the toolkit's .pt2 graph uses (the committed file's targets), and their kin.
ALLOWED_TARGETS = frozenset(
    f"torch.ops.aten.{name}"
    for name in (
        "_assert_tensor_metadata.default",
        "_softmax.default",
        "softmax.int",
        "_to_copy.default",
        "to.dtype",
        "addmm.default",
        "linear.default",
        "mm.default",
        "t.default",
        "add.Tensor",
        "mul.Tensor",
        "div.Tensor",
        "sub.Tensor",
        "permute.default",
        "relu.default",
        "sym_size.int",
        "view.default",
        "reshape.default",
        "flatten.using_ints",
        "_unsafe_view.default",
        "clone.default",
        "contiguous.default",
    )
)


def _refuse(source: str, what: str) -> IntegrityError:
    return IntegrityError(f"{source}: models/model.json {what}; refused before torch.export.load reads it")


def check_expression(expr: Any, source: str) -> None:
    """A symbolic size must be the batch symbol as torch.export writes it, or integer arithmetic of symbols."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise _refuse(source, f"holds a symbolic size that is not a short string ({str(expr)[:60]!r})")
    if _SYMBOL_REPR.fullmatch(expr):
        return
    if _ARITHMETIC.fullmatch(expr) and _plain_arithmetic(expr):
        return
    raise _refuse(source, f"holds a symbolic size that is not plain symbol arithmetic: {expr[:60]!r}")


def _plain_arithmetic(expr: str) -> bool:
    """Whether `expr` parses as + - * of symbol names and integers only (no call, power, attribute...)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Expression | ast.Add | ast.Sub | ast.Mult | ast.USub | ast.UAdd | ast.Load):
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            continue
        if isinstance(node, ast.Name) and _SYMBOL_NAME.fullmatch(node.id):
            continue
        if isinstance(node, ast.Constant) and type(node.value) is int:
            continue
        return False
    return True


def check_graph_json(blob: bytes, source: str) -> None:
    """Refuse a model.json that is too large, too deep, or holds anything that could run code or exhaust memory."""
    if len(blob) > MAX_GRAPH_JSON_BYTES:
        raise _refuse(source, f"is {len(blob):,} bytes, over the {MAX_GRAPH_JSON_BYTES:,} byte limit")
    try:
        graph = json.loads(blob)
    except (ValueError, RecursionError):
        raise _refuse(source, "is not JSON") from None
    if not isinstance(graph, dict):
        raise _refuse(source, "is not a JSON object")
    _walk(graph, source, 0, "")
    if graph.get("guards_code"):
        raise _refuse(source, "carries guards_code (Python source)")
    module = graph.get("graph_module")
    body = module.get("graph") if isinstance(module, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("nodes"), list):
        raise _refuse(source, "has no graph_module.graph.nodes")
    if body.get("custom_obj_values"):
        raise _refuse(source, "carries custom objects (script objects run code)")
    for node in body["nodes"]:
        target = node.get("target") if isinstance(node, dict) else None
        if target not in ALLOWED_TARGETS:
            raise _refuse(source, f"calls {str(target)[:80]!r}, an operator this exporter never writes")
    for name, bounds in (graph.get("range_constraints") or {}).items():
        if not _SYMBOL_NAME.fullmatch(name):
            raise _refuse(source, f"constrains {name[:60]!r}, not a symbol name")
        if not isinstance(bounds, dict):
            raise _refuse(source, f"has a range constraint of {name} that is not an object")


def _walk(value: Any, source: str, depth: int, key: str) -> None:
    """Depth, integer and expression bounds over the whole document."""
    if depth > MAX_JSON_DEPTH:
        raise _refuse(source, f"nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "expr_str":
                check_expression(v, source)
            elif k == "sizes" and isinstance(v, list):
                _check_sizes(v, source)
            _walk(v, source, depth + 1, k)
    elif isinstance(value, list):
        for item in value:
            _walk(item, source, depth + 1, key)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if abs(value) > MAX_INT:
            raise _refuse(source, f"holds the integer {str(value)[:24]}… (at {key}), beyond any sane size")
    elif isinstance(value, float):
        return


def _check_sizes(sizes: list[Any], source: str) -> None:
    for size in sizes:
        n = size.get("as_int") if isinstance(size, dict) else None
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_DIM):
            raise _refuse(source, f"declares a tensor dimension of {str(n)[:24]}, over the {MAX_DIM} limit")


__all__ = ["ALLOWED_TARGETS", "MAX_GRAPH_JSON_BYTES", "check_expression", "check_graph_json"]
