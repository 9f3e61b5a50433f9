"""Parses the generic text form (``grammar.lark``) back into a ``Graph``.

``print_graph(parse(text)) == text`` for every canonical text. Errors are ``ParseError`` with the
line and column of the offending token; an undefined or redefined value is a parse error too.
Parsing does not verify: call ``verify`` (the pipeline does) to check types against the op table.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import lark
import numpy as np

from ..errors import ParseError
from .graph import Graph, Op, Value
from .types import CipherType, PlainType, TensorType


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = resources.files("hecc.ir").joinpath("grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, constants: dict[str, np.ndarray] | None = None, source: str = "<text>") -> Graph:
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        line, column = exc.line, exc.column
        token = getattr(exc, "token", None)
        if isinstance(exc, lark.exceptions.UnexpectedEOF) or (token is not None and token.type == "$END"):
            lines = text.split("\n")
            line, column = len(lines), len(lines[-1]) + 1
        raise ParseError(_describe(exc), line, column, source) from None
    builder = _Builder(source)
    graph = Graph(constants=constants)
    for node in tree.children:
        graph.ops.append(builder.op(node))
    return graph


_TOKEN_NAMES = {"LSQB": "'['", "RSQB": "']'", "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'",
                "RBRACE": "'}'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "ESCAPED_STRING": "a string",
                "SIGNED_INT": "an integer", "SIGNED_FLOAT": "a float", "VALUE": "a value like %0",
                "OPNAME": "an op name in quotes", "IDENT": "an attribute name", "SHAPE": "a shape like 1x28x28",
                "SECRECY": "secret or public", "TRUE": "true", "FALSE": "false", "SPECIAL_FLOAT": "inf/nan",
                "__ANON_0": "'->'", "MORETHAN": "'>'"}


def _describe(exc: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        return f"unexpected character {exc.char!r}"
    if isinstance(exc, lark.exceptions.UnexpectedEOF):
        return "unexpected end of text"
    token = getattr(exc, "token", None)
    if token is not None and token.type == "$END":
        return "unexpected end of text"
    expected = sorted(_TOKEN_NAMES.get(e, e) for e in getattr(exc, "expected", ()) or ())
    hint = f"; expected one of {', '.join(expected[:8])}" if expected else ""
    return f"unexpected {token!s:.40}{hint}" if token is not None else "syntax error"


class _Builder:
    def __init__(self, source: str):
        self.source = source
        self.values: dict[str, Value] = {}

    def error(self, message: str, meta) -> ParseError:
        return ParseError(message, meta.line, meta.column, self.source)

    def op(self, node: lark.Tree) -> Op:
        results, name, operands, attrdict, types, result_types = node.children
        operand_types = [self.type(t) for t in types.children if t is not None]
        values = []
        for token in (operands.children if operands is not None else []):
            if token not in self.values:
                raise ParseError(f"value {token} is used before it is defined", token.line,
                                 token.column, self.source)
            values.append(self.values[token])
        if len(values) != len(operand_types):
            raise self.error(f"{len(values)} operand(s) but {len(operand_types)} operand type(s)", node.meta)
        for v, t, token in zip(values, operand_types, operands.children if operands else []):
            if v.type != t:
                raise ParseError(f"{token} has type {v.type}, not {t}", token.line, token.column,
                                 self.source)
        rt = result_types.children[0]
        if isinstance(rt, lark.Tree) and rt.data == "types":
            out_types = [self.type(t) for t in rt.children if t is not None]
        else:
            out_types = [self.type(rt)]
        result_tokens = results.children if results is not None else []
        if len(result_tokens) != len(out_types):
            raise self.error(f"{len(result_tokens)} result name(s) but {len(out_types)} result type(s)",
                             node.meta)
        attrs = {}
        for attr in attrdict.children:
            if attr is None:
                continue
            key, value = attr.children
            if str(key) in attrs:
                raise ParseError(f"attribute {key} given twice", key.line, key.column, self.source)
            attrs[str(key)] = self.attr(value)
        op = Op(str(name)[1:-1], values, out_types, attrs)
        for token, value in zip(result_tokens, op.results):
            if token in self.values:
                raise ParseError(f"value {token} is defined twice", token.line, token.column, self.source)
            self.values[str(token)] = value
        return op

    def attr(self, node):
        kind = node.data
        if kind == "int":
            return self.integer(node.children[0])
        if kind == "float":
            return float(node.children[0])
        if kind == "string":
            token = node.children[0]
            try:
                return json.loads(token)
            except ValueError as exc:
                raise ParseError(f"bad string {token[:20]!r}: {exc.msg}", token.line, token.column,
                                 self.source) from None
        if kind == "true":
            return True
        if kind == "false":
            return False
        return [self.attr(c) for c in node.children if c is not None]

    def type(self, node: lark.Tree):
        if node.data == "tensor_type":
            shape_tok, secrecy, dtype = node.children
            shape = tuple(self.integer(d, shape_tok) for d in str(shape_tok).split("x")) if shape_tok is not None else ()
            return TensorType(shape, str(secrecy) == "secret", str(dtype) if dtype else "f64")
        shape_tok, level, scale, slots, *size = node.children
        shape = tuple(self.integer(d, shape_tok) for d in str(shape_tok).split("x")) if shape_tok is not None else ()
        if node.data == "plain_type":
            return PlainType(shape, self.integer(level), float(scale.children[0]), self.integer(slots))
        size = self.integer(size[0]) if size and size[0] is not None else 2
        return CipherType(shape, self.integer(level), float(scale.children[0]), self.integer(slots), size)

    def integer(self, text, token=None) -> int:
        """An integer of the text, within 64 bits (ParseError otherwise)."""
        token = token if token is not None else text
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or abs(value) >= 1 << 62:
            raise ParseError(f"number {str(text)[:20]!r} is out of range", getattr(token, "line", 0),
                             getattr(token, "column", 0), self.source)
        return value
