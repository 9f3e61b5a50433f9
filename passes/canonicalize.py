"""canonicalize: local simplifications of tensor IR, applied to a fixed point.

Assumes: verified tensor IR; constants have stored values (rules that need a value skip a
constant without one).
Guarantees: the same function of the inputs, up to float rounding, with
- a per-channel scale and shift after conv2d folded into its weight and bias (BatchNormalization
  as the ONNX frontend imports it), and a per-column scale after matmul folded into its weight;
- constant scales pushed through adds, and chains of constant adds or muls merged;
- multiplications by one, additions of zero and reshapes to the same shape removed; consecutive
  reshapes merged;
- the Erf form of GELU (x * 0.5 * (1 + erf(x / sqrt 2))) replaced by one gelu activation, and
  x * sigmoid(x) by one silu activation;
- PRelu with a constant slope s rewritten as (1 + s)/2 * x + (1 - s)/2 * abs(x), so that only abs
  needs a polynomial whatever the slopes.
"""
from __future__ import annotations

import math
import re

import numpy as np

from hecc.ir import Graph, Op
from hecc.rewrite import Rewriter, apply_rules

NAME = "canonicalize"


def _const_operand(rw: Rewriter, op: Op):
    """(other operand, constant array) when exactly one operand of a binary op is constant."""
    a, b = op.operands
    ca, cb = rw.constant(a), rw.constant(b)
    if cb is not None and ca is None:
        return a, cb
    if ca is not None and cb is None and op.name in ("tensor.add", "tensor.mul"):
        return b, ca
    return None, None


def _per_channel(c: np.ndarray, channels: int, rank: int, axis: int):
    """c as a vector of ``channels`` if it only varies along ``axis`` of a rank-``rank`` tensor."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1) if c.size > 1 else c.reshape(1), (channels,)).astype(np.float64)


def _scaled_producer(rw: Rewriter, op: Op, names: tuple, producer: str):
    """(producer op, constant) when ``op`` (one of ``names``) combines a constant with the only
    use of a ``producer`` result."""
    if op.name not in names:
        return None, None
    x, c = _const_operand(rw, op)
    if x is None or x.producer.name != producer or not rw.single_use(x):
        return None, None
    return x.producer, c


def fold_into_conv(rw: Rewriter, op: Op):
    conv, c = _scaled_producer(rw, op, ("tensor.mul", "tensor.add"), "tensor.conv2d")
    if conv is None:
        return None
    w = rw.constant(conv.operands[1])
    out_channels = conv.result.type.shape[1]
    vec = _per_channel(c, out_channels, 4, 1)
    if vec is None or w is None:
        return None
    b = rw.constant(conv.operands[2]) if len(conv.operands) == 3 else np.zeros(out_channels)
    if b is None:
        return None
    wname = re.sub(r"(\.\d+)+$", "", conv.operands[1].producer.attrs["name"])
    weight = conv.operands[1]
    if op.name == "tensor.mul":
        weight = rw.const(w * vec.reshape(-1, 1, 1, 1), wname)
        b = b * vec
    else:
        b = b + vec
    operands = [conv.operands[0], weight, rw.const(b, wname + ".bias")]
    return rw.emit("tensor.conv2d", operands, conv.attrs)


def fold_into_matmul(rw: Rewriter, op: Op):
    mm, c = _scaled_producer(rw, op, ("tensor.mul",), "tensor.matmul")
    if mm is None:
        return None
    w = rw.constant(mm.operands[1])
    rank = mm.result.type.rank
    if w is None or w.ndim != 2 or rank < 2:
        return None
    vec = _per_channel(c, w.shape[1], rank, rank - 1)
    if vec is None:
        return None
    name = mm.operands[1].producer.attrs["name"]
    return rw.emit("tensor.matmul", [mm.operands[0], rw.const(w * vec, name)])


def merge_constant_chain(rw: Rewriter, op: Op):
    """(x + a) + b -> x + (a + b); (x * a) * b -> x * (a * b); (x + a) * b -> x * b + a * b.
    A chain of same-kind ops is merged whole by its last op (the ones below it are left to die),
    so a chain of n ops costs O(n)."""
    if op.name not in ("tensor.add", "tensor.mul"):
        return None
    x, c = _const_operand(rw, op)
    if x is None or x.producer is None or not rw.single_use(x):
        return None
    users = rw.users.get(op.result, [])
    if len(users) == 1 and users[0].name == op.name and _const_operand(rw, users[0])[0] is op.result:
        return None  # not the chain's last op: that one merges the whole chain
    inner = x.producer
    if inner.name not in ("tensor.add", "tensor.mul"):
        return None
    y, d = _const_operand(rw, inner)
    if y is None:
        return None
    inner_name = next(v.producer.attrs["name"] for v in inner.operands
                      if v.producer is not None and v.producer.name == "tensor.constant")
    outer_const = next(v for v in op.operands if v is not x)
    if inner.name == op.name:
        constants = [c, d]  # outermost first
        while y.producer is not None and y.producer.name == op.name and rw.single_use(y):
            below, e = _const_operand(rw, y.producer)
            if below is None:
                break
            inner_name = next(v.producer.attrs["name"] for v in y.producer.operands
                              if v.producer is not None and v.producer.name == "tensor.constant")
            constants.append(e)
            y = below
        merged = constants[-1]
        for k in reversed(constants[:-1]):  # innermost first, as pairwise merging would sum
            merged = merged + k if op.name == "tensor.add" else merged * k
        return rw.emit(op.name, [y, rw.const(merged, inner_name)])
    if inner.name == "tensor.add" and op.name == "tensor.mul":
        scaled = rw.emit("tensor.mul", [y, outer_const])
        return rw.emit("tensor.add", [scaled, rw.const(d * c, inner_name)])
    return None


def remove_identity(rw: Rewriter, op: Op):
    if op.name in ("tensor.add", "tensor.sub", "tensor.mul"):
        x, c = _const_operand(rw, op)
        neutral = 1.0 if op.name == "tensor.mul" else 0.0
        if x is not None and np.all(c == neutral) and x.type.shape == op.result.type.shape:
            return x
    if op.name == "tensor.reshape":
        x = op.operands[0]
        if x.type.shape == op.result.type.shape:
            return x
        if x.producer is not None and x.producer.name == "tensor.reshape":
            return rw.emit("tensor.reshape", [x.producer.operands[0]], op.attrs)
    return None


def _scalar(rw: Rewriter, op: Op, value: float) -> object:
    """The non-constant operand of ``op`` if its other operand is the scalar ``value``."""
    x, c = _const_operand(rw, op)
    if x is not None and c.size == 1 and math.isclose(float(c.reshape(-1)[0]), value, rel_tol=1e-6):
        return x
    return None


def gelu_from_erf(rw: Rewriter, op: Op):
    """mul(mul(x, add(erf(mul(x, 1/sqrt2)), 1)), 0.5), in either operand order, or with the 0.5
    applied to x first."""
    if op.name != "tensor.mul":
        return None
    half = _scalar(rw, op, 0.5)
    candidates = []
    if half is not None and half.producer is not None and half.producer.name == "tensor.mul":
        candidates.append((half.producer.operands, None))
    candidates.append((op.operands, 0.5))
    for (a, b), needs_half in candidates:
        for x, s in ((a, b), (b, a)):
            if needs_half is not None:
                if x.producer is None or x.producer.name != "tensor.mul":
                    continue
                x = _scalar(rw, x.producer, 0.5)
                if x is None:
                    continue
            if s.producer is None or s.producer.name != "tensor.add":
                continue
            e = _scalar(rw, s.producer, 1.0)
            if e is None or e.producer is None or e.producer.attrs.get("kind") != "erf":
                continue
            inner = e.producer.operands[0]
            if inner.producer is None or inner.producer.name != "tensor.mul":
                continue
            if _scalar(rw, inner.producer, 1 / math.sqrt(2)) is x:
                return rw.emit("tensor.activation", [x], {"kind": "gelu"})
    return None


def silu_from_product(rw: Rewriter, op: Op):
    """x * sigmoid(x) (either order) -> one silu activation."""
    if op.name != "tensor.mul":
        return None
    for x, s in (op.operands, op.operands[::-1]):
        p = s.producer
        if p is not None and p.name == "tensor.activation" and p.attrs.get("kind") == "sigmoid" \
                and p.operands[0] is x:
            return rw.emit("tensor.activation", [x], {"kind": "silu"})
    return None


def prelu_as_abs(rw: Rewriter, op: Op):
    """prelu(x, s) = (1 + s)/2 * x + (1 - s)/2 * |x|: one activation (|x|) for every slope, so a
    per-channel slope needs a single polynomial."""
    if op.name != "tensor.prelu":
        return None
    slope = rw.constant(op.operands[1])
    if slope is None:
        return None
    x = op.operands[0]
    name = op.operands[1].producer.attrs["name"]
    linear = rw.emit("tensor.mul", [x, rw.const((1 + slope) / 2, name + ".linear")])
    magnitude = rw.emit("tensor.activation", [x], {"kind": "abs"})
    return rw.emit("tensor.add", [linear, rw.emit("tensor.mul", [magnitude, rw.const((1 - slope) / 2, name + ".abs")])])


RULES = [fold_into_conv, fold_into_matmul, merge_constant_chain, remove_identity, gelu_from_erf,
         silu_from_product, prelu_as_abs]


def run(graph: Graph, options: dict | None = None) -> Graph:
    apply_rules(graph, RULES)
    return graph
