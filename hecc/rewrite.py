"""A small local-rewrite driver shared by passes.

A rule is a function ``rule(rw, op) -> Value | None``: it inspects ``op`` and either returns None
(no match) or builds replacement ops with ``rw.emit`` and returns the value that replaces
``op``'s result. The driver applies rules until none matches, then removes dead ops.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .ir import OPS, Graph, Op, TensorType, Value


class Rewriter:
    """What a rule may use: the graph, value users, constant lookup and op emission."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.users = graph.users()
        self._pending: list[Op] = []

    def constant(self, value: Value) -> np.ndarray | None:
        return self.graph.constant_value(value)

    def single_use(self, value: Value) -> bool:
        return len(self.users.get(value, [])) == 1

    def const(self, array: np.ndarray, name: str) -> Value:
        name = self.graph.unique_constant_name(name)
        self.graph.constants[name] = np.asarray(array)
        op = Op("tensor.constant", [], [TensorType(np.shape(array), False)], {"name": name})
        self._pending.append(op)
        return op.result

    def emit(self, name: str, operands: list[Value], attrs: dict | None = None) -> Value:
        """Build op ``name`` with its result type inferred; raises ValueError if ill-typed."""
        opdef = OPS[name]
        attrs = dict(attrs or {})
        types = opdef.infer([v.type for v in operands], {k: opdef.attr(attrs, k) for k in opdef.attrs})
        op = Op(name, operands, types, attrs)
        self._pending.append(op)
        return op.result

    def take_pending(self) -> list[Op]:
        ops, self._pending = self._pending, []
        return ops


Rule = Callable[[Rewriter, Op], "Value | None"]


def apply_rules(graph: Graph, rules: list[Rule], max_sweeps: int = 100) -> bool:
    """Rewrite ``graph`` in place to a fixed point; return whether anything changed."""
    changed_any = False
    for _ in range(max_sweeps):
        rw = Rewriter(graph)
        changed = False
        new_ops: list[Op] = []
        replaced: dict[Value, Value] = {}
        for op in graph.ops:
            op.operands = [replaced.get(v, v) for v in op.operands]
            replacement = None
            if len(op.results) == 1:
                for rule in rules:
                    try:
                        replacement = rule(rw, op)
                    except ValueError:
                        replacement = None
                    if replacement is not None:
                        break
                    rw.take_pending()
            if replacement is not None and replacement.type == op.result.type:
                new_ops.extend(rw.take_pending())
                replaced[op.result] = replacement
                # the replacement has the replaced value's users: a chain can fold in one sweep
                rw.users[replacement] = rw.users.get(op.result, [])
                changed = True
            rw.take_pending()
            new_ops.append(op)
        graph.ops = new_ops
        remove_dead_ops(graph)
        if not changed:
            return changed_any
        changed_any = True
    raise RuntimeError("rewrite rules did not reach a fixed point")


def retype_op(op: Op) -> None:
    """Recompute ``op``'s result types from its operands' current types."""
    opdef = OPS[op.name]
    if opdef.infer is None:
        return
    types = opdef.infer([v.type for v in op.operands], {k: opdef.attr(op.attrs, k) for k in opdef.attrs})
    for value, t in zip(op.results, types):
        value.type = t


def retype(graph: Graph) -> None:
    """Recompute every derived result type in program order (after a pass changed a type)."""
    for op in graph.ops:
        retype_op(op)


def insert_after(graph: Graph, anchor: Op, new_ops: list[Op]) -> None:
    index = graph.ops.index(anchor)
    graph.ops[index + 1:index + 1] = new_ops


def remove_dead_ops(graph: Graph) -> bool:
    """Drop ops whose results nobody uses (inputs and outputs stay) and unreferenced constants."""
    live: set[Value] = set()
    keep = []
    for op in reversed(graph.ops):
        if op.name in ("hecc.input", "hecc.output") or any(r in live for r in op.results):
            keep.append(op)
            live.update(op.operands)
    keep.reverse()
    changed = len(keep) != len(graph.ops)
    graph.ops = keep
    used = {op.attrs["name"] for op in keep if op.name == "tensor.constant"}
    for name in [n for n in graph.constants if n not in used]:
        del graph.constants[name]
    return changed


def is_slots_layout(graph: Graph) -> bool:
    """Whether ``graph`` is a ckks program in the slots layout (its inputs carry a slot layout)."""
    return any(op.attrs.get("layout") for op in graph.inputs())


def scale_up(graph: Graph, x: Value, delta: int, matrix_name: str) -> Op:
    """An op multiplying ciphertext ``x`` by 1 encoded at 2^delta: the scale grows by ``delta``
    bits exactly, at no level. Batch layout: an identity ``ckks.linear`` (a diagonal map of ones,
    stored under ``matrix_name``); slots layout: a ``ckks.mul_plain`` by a vector of ones."""
    t = x.type.but(scale_bits=x.type.scale_bits + delta)
    if is_slots_layout(graph):
        graph.constants.setdefault("ones", np.ones((1, 1)))
        return Op("ckks.mul_plain", [x], [t], {"plain": "ones", "weight_scale": int(delta)})
    graph.constants.setdefault(matrix_name, np.ones(x.type.count))
    return Op("ckks.linear", [x], [t], {"matrix": matrix_name, "shape": list(x.type.shape),
                                        "weight_scale": int(delta)})
