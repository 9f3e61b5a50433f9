"""Checks a graph against the op table; the pipeline runs it after every pass."""
from __future__ import annotations

from ..errors import VerifyError
from .graph import Graph, Op
from .ops import ATTR_KINDS, OPS, REQUIRED
from .printer import print_op, value_names


def verify(graph: Graph, check_constants: bool = True) -> None:
    """Raise ``VerifyError`` naming the first op that breaks a rule.

    Rules: the op is in the table; operand count and attributes fit its definition; every operand
    is defined earlier; declared result types equal the inferred ones; constants exist with the
    declared shape (when ``check_constants``); nothing on the server side consumes the result of a
    client-side op.
    """
    defined = set()
    client_values = set()
    for index, op in enumerate(graph.ops):
        try:
            _verify_op(op, defined, client_values, graph if check_constants else None)
        except ValueError as exc:
            names = value_names(graph.ops[:index])
            raise VerifyError(f"op #{index} is invalid: {exc}\n  {print_op(op, names)}") from None
        for r in op.results:
            defined.add(r)


def _verify_op(op: Op, defined, client_values, graph) -> None:
    opdef = OPS.get(op.name)
    if opdef is None:
        raise ValueError(f"unknown op {op.name!r}")
    lo, hi = opdef.operands
    n = len(op.operands)
    if n < lo or (hi is not None and n > hi):
        want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any number'}"
        raise ValueError(f"{op.name} takes {want} operand(s), got {n}")
    if len(op.results) != opdef.num_results:
        raise ValueError(f"{op.name} has {opdef.num_results} result(s), got {len(op.results)}")
    for v in op.operands:
        if v not in defined:
            raise ValueError(f"{op.name} uses a value before it is defined")
    for key, value in op.attrs.items():
        spec = opdef.attrs.get(key)
        if spec is None:
            raise ValueError(f"{op.name} has no attribute {key!r} "
                             f"(it takes: {', '.join(sorted(opdef.attrs)) or 'none'})")
        if not ATTR_KINDS[spec.kind](value):
            raise ValueError(f"attribute {key} of {op.name} must be of kind {spec.kind}, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise ValueError(f"attribute {key} of {op.name} must be one of {list(spec.choices)}, "
                             f"got {value!r}")
    for key, spec in opdef.attrs.items():
        if spec.default is REQUIRED and key not in op.attrs:
            raise ValueError(f"{op.name} needs attribute {key!r}")
    if opdef.infer is not None:
        attrs = {k: opdef.attr(op.attrs, k) for k in opdef.attrs}
        inferred = opdef.infer([v.type for v in op.operands], attrs)
        declared = [r.type for r in op.results]
        if inferred != declared:
            raise ValueError(f"result type(s) {', '.join(map(str, declared))} do not match the "
                             f"inferred {', '.join(map(str, inferred))}")
    if op.name == "tensor.constant" and graph is not None:
        name = op.attrs["name"]
        if name not in graph.constants:
            raise ValueError(f"constant {name!r} has no stored value")
        shape = tuple(graph.constants[name].shape)
        if shape != op.result.type.shape:
            raise ValueError(f"constant {name!r} has shape {shape}, declared {op.result.type.shape}")
    if not opdef.client_side and op.name != "hecc.output":
        if any(v in client_values for v in op.operands):
            raise ValueError(f"{op.name} runs on the server but uses the result of a client-side op")
    if opdef.client_side:
        client_values.update(op.results)
