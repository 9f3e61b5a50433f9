"""Prints the one generic text form, e.g.

    %3 = "tensor.add"(%1, %2) {} : (tensor<1x10, secret>, tensor<10, public>) -> tensor<1x10, secret>

Values are numbered in order of appearance, attributes sorted by name, floats printed as the
shortest text that reads back to the same double: the output depends on nothing but the graph.
"""
from __future__ import annotations

import json
import math
from typing import Any

from .graph import Graph, Op, Value


def format_attr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r}")


def _format_types(types) -> str:
    return "(" + ", ".join(str(t) for t in types) + ")"


def value_names(ops) -> dict[Value, str]:
    """The names ``print_op`` gives the results of ``ops`` printed in order (%0, %1, ...), without
    printing them: for naming one op in an error message."""
    names: dict[Value, str] = {}
    for op in ops:
        for r in op.results:
            names.setdefault(r, f"%{len(names)}")
    return names


def print_op(op: Op, names: dict[Value, str] | None = None) -> str:
    names = names if names is not None else {}

    def name(v: Value) -> str:
        return names.get(v, "%?")

    for r in op.results:
        names.setdefault(r, f"%{len(names)}")
    lhs = ", ".join(names[r] for r in op.results)
    attrs = ", ".join(f"{k} = {format_attr(op.attrs[k])}" for k in sorted(op.attrs))
    operands = ", ".join(name(v) for v in op.operands)
    if len(op.results) == 1:
        results = str(op.results[0].type)
    else:
        results = _format_types(r.type for r in op.results)
    text = (f'"{op.name}"({operands}) {{{attrs}}} : '
            f"{_format_types(v.type for v in op.operands)} -> {results}")
    return f"{lhs} = {text}" if lhs else text


def print_graph(graph: Graph) -> str:
    names: dict[Value, str] = {}
    return "".join(print_op(op, names) + "\n" for op in graph.ops)
