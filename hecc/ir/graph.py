"""The IR graph: ``Value``, ``Op`` and ``Graph``.

A graph is a list of ops in program order (every operand is defined by an earlier op), plus the
constant store: numpy arrays referenced by name from ``tensor.constant`` ops, never printed inline.
Values have no names of their own; the printer numbers them in order of appearance.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

from .types import Type


class Value:
    """An SSA value: the result of exactly one op."""

    __slots__ = ("type", "producer")

    def __init__(self, type: Type, producer: "Op | None" = None):
        self.type = type
        self.producer = producer

    def __repr__(self) -> str:
        producer = self.producer.name if self.producer else "?"
        return f"<Value {self.type} from {producer}>"


class Op:
    """One operation: a name from the op table, operand values, result values, attributes."""

    __slots__ = ("name", "operands", "results", "attrs")

    def __init__(self, name: str, operands: Iterable[Value], result_types: Iterable[Type],
                 attrs: dict[str, Any] | None = None):
        self.name = name
        self.operands = list(operands)
        self.results = [Value(t, self) for t in result_types]
        self.attrs = dict(attrs or {})

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.name} has {len(self.results)} results, not one")
        return self.results[0]

    def __repr__(self) -> str:
        return f"<Op {self.name} {self.attrs}>"


class Graph:
    """Ops in program order and the named constant arrays they reference.

    ``meta`` holds analysis results passes hand to later passes (value ranges, for one); it is
    never printed or saved, and ``copy`` does not carry it.
    """

    __slots__ = ("ops", "constants", "meta")

    def __init__(self, ops: Iterable[Op] = (), constants: dict[str, np.ndarray] | None = None):
        self.ops = list(ops)
        self.constants = dict(constants or {})
        self.meta: dict[str, Any] = {}

    def append(self, name: str, operands: Iterable[Value] = (), result_types: Iterable[Type] = (),
               attrs: dict[str, Any] | None = None) -> Op:
        op = Op(name, operands, result_types, attrs)
        self.ops.append(op)
        return op

    def inputs(self) -> list[Op]:
        return [op for op in self.ops if op.name == "hecc.input"]

    def outputs(self) -> list[Op]:
        return [op for op in self.ops if op.name == "hecc.output"]

    def users(self) -> dict[Value, list[Op]]:
        """Map from each value to the ops that use it (in program order)."""
        uses: dict[Value, list[Op]] = {}
        for op in self.ops:
            for v in op.operands:
                uses.setdefault(v, []).append(op)
        return uses

    def replace_uses(self, old: Value, new: Value) -> None:
        for op in self.ops:
            op.operands = [new if v is old else v for v in op.operands]

    def constant_value(self, value: Value) -> np.ndarray | None:
        """The array behind ``value`` if it is a ``tensor.constant`` with a stored value."""
        op = value.producer
        if op is None or op.name != "tensor.constant":
            return None
        return self.constants.get(op.attrs["name"])

    def unique_constant_name(self, base: str) -> str:
        """``base`` if free, else ``base.1``, ``base.2``, ... (numbered from base's root)."""
        if base not in self.constants:
            return base
        root = re.sub(r"(\.\d+)+$", "", base)
        counters = self.meta.setdefault("constant_name_counters", {})  # probing resumes: linear time
        i = counters.get(root, 1)
        while f"{root}.{i}" in self.constants:
            i += 1
        counters[root] = i
        return f"{root}.{i}"

    def copy(self) -> "Graph":
        """A structural copy: new ops and values, the same (immutable by convention) arrays."""
        mapping: dict[Value, Value] = {}
        ops = []
        for op in self.ops:
            new = Op(op.name, [mapping[v] for v in op.operands], [r.type for r in op.results],
                     _copy_attrs(op.attrs))
            for old_r, new_r in zip(op.results, new.results):
                mapping[old_r] = new_r
            ops.append(new)
        return Graph(ops, self.constants)


def _copy_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in attrs.items()}
