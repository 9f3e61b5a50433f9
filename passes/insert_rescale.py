"""insert-rescale: places rescales by the waterline rule (lazy, EVA-style).

A ciphertext-ciphertext product (mul, square) doubles the scale; right after it one rescale by a
prime of (scale - waterline) bits brings it back to the waterline 2^scale_bits. Multiplications by
plaintext weights (``ckks.linear``) are never rescaled on their own: their products are summed at
scale 2^(waterline + weight_scale) and that sum is rescaled only as part of the next product's
rescale. So each path has one rescale per multiplicative level, never one per multiply.
With ``rescale = "eager"`` (the baseline) every plaintext product inside a linear op is rescaled
too (``rescale_terms``), as a hand-written program that rescales after every multiply would.

Assumes: ckks IR from lower-to-ckks (no rescale yet); ``graph.meta["max_abs"]`` if present.
Guarantees: every mul/square result is rescaled (in steps of at most 60 bits) to the waterline;
rescale values inherit max_abs.
Options: scale_bits (26), rescale ("lazy" | "eager").
"""
from __future__ import annotations

from hecc.errors import PassError
from hecc.ir import Graph, Op
from hecc.rewrite import retype, retype_op

NAME = "insert-rescale"
MAX_PRIME_BITS = 60


def run(graph: Graph, options: dict | None = None) -> Graph:
    options = dict(options or {})
    waterline = float(options.get("scale_bits", 26))
    mode = options.get("rescale", "lazy")
    if mode not in ("lazy", "eager"):
        raise PassError(f"rescale mode must be lazy or eager, got {mode!r}")
    if mode == "eager":
        for op in graph.ops:
            if op.name == "ckks.linear":
                op.attrs["rescale_terms"] = True
        retype(graph)
    max_abs = graph.meta.setdefault("max_abs", {})
    users = graph.users()
    new_ops: list[Op] = []
    for op in graph.ops:
        new_ops.append(op)
        retype_op(op)  # operands may have been rescaled above
        if op.name not in ("ckks.mul", "ckks.square"):
            continue
        value = op.result
        excess = value.type.scale_bits - waterline
        last = value
        while excess > 0:
            bits = int(min(excess, MAX_PRIME_BITS))
            if bits != min(excess, MAX_PRIME_BITS):
                raise PassError(f"scale 2^{value.type.scale_bits} is not a whole number of bits above "
                                f"the waterline 2^{waterline}")
            rescale = Op("ckks.rescale", [last], [last.type.but(level=last.type.level + 1,
                                                               scale_bits=last.type.scale_bits - bits)],
                         {"bits": bits})
            new_ops.append(rescale)
            if last in max_abs:
                max_abs[rescale.result] = max_abs[last]
            last, excess = rescale.result, excess - bits
        for user in users.get(value, []):
            user.operands = [last if v is value else v for v in user.operands]
    graph.ops = new_ops
    retype(graph)
    return graph
