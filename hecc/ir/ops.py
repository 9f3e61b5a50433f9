"""The op table: the single source of truth for every op's name, operands, attributes and typing.

Printer, parser, verifier, passes and every backend read ``OPS``. Dialects register their ops
with ``define``; a backend keeps its own table of implementations keyed by the same names, and a
test checks that each backend implements every op of the dialects it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .types import Type

ATTR_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "ints": lambda v: isinstance(v, list) and all(ATTR_KINDS["int"](x) for x in v),
    "floats": lambda v: isinstance(v, list) and all(ATTR_KINDS["float"](x) for x in v),
    "list": lambda v: isinstance(v, list),
}

REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED
    choices: tuple | None = None


@dataclass(frozen=True)
class OpDef:
    """How one op looks and types.

    ``operands`` is the (min, max) operand count (max None: variadic). ``infer`` maps operand
    types and attributes to result types, raising ``ValueError`` with a readable reason when the
    op is ill-typed; ``None`` means the result types are declared, not derived (sources).
    ``client_side`` ops run on the client after decryption (softmax, argmax, ...).
    """

    name: str
    operands: tuple[int, int | None]
    num_results: int
    attrs: dict[str, Attr] = field(default_factory=dict)
    infer: Callable[[list[Type], dict[str, Any]], list[Type]] | None = None
    client_side: bool = False
    doc: str = ""

    def attr(self, attrs: dict[str, Any], name: str) -> Any:
        """An attribute's value, or its default."""
        if name in attrs:
            return attrs[name]
        return self.attrs[name].default


OPS: dict[str, OpDef] = {}


def define(name: str, operands: int | tuple[int, int | None], num_results: int = 1,
           attrs: dict[str, Attr] | None = None, infer=None, client_side: bool = False,
           doc: str = "") -> OpDef:
    if name in OPS:
        raise ValueError(f"op {name} defined twice")
    if isinstance(operands, int):
        operands = (operands, operands)
    opdef = OpDef(name, operands, num_results, attrs or {}, infer, client_side, doc)
    OPS[name] = opdef
    return opdef


def dialect_ops(prefix: str) -> list[str]:
    return sorted(n for n in OPS if n.startswith(prefix + "."))
