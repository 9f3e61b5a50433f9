"""align-levels: makes the operands of every binary ciphertext op agree in level and scale.

The operand that has dropped fewer primes is modswitched down to the other's level; for a sum or
a concatenation, an operand at a lower scale is multiplied by the constant 1 encoded at the missing scale (an identity
``ckks.linear``), so both sides carry the same scale without losing a level.

Assumes: ckks IR with rescales and relinearizations placed.
Guarantees: every ckks.add / ckks.sub / ckks.mul / ckks.concat has operands of equal level (and,
for sums and concatenations, equal scale); raises PassError when scales differ by a fraction of a
bit.
"""
from __future__ import annotations

from hecc.errors import PassError
from hecc.ir import Graph, Op
from hecc.rewrite import retype, scale_up

NAME = "align-levels"


def run(graph: Graph, options: dict | None = None) -> Graph:
    max_abs = graph.meta.setdefault("max_abs", {})
    new_ops: list[Op] = []
    count = 0
    for op in graph.ops:
        if op.name in ("ckks.add", "ckks.sub", "ckks.mul", "ckks.matmul", "ckks.concat"):
            target = max(v.type.level for v in op.operands)
            for i, v in enumerate(op.operands):
                while v.type.level < target:
                    switch = Op("ckks.modswitch", [v], [v.type.but(level=v.type.level + 1)])
                    new_ops.append(switch)
                    max_abs[switch.result] = max_abs.get(v, float("nan"))
                    v = switch.result
                op.operands[i] = v
            if op.name not in ("ckks.mul", "ckks.matmul"):
                scales = [v.type.scale_bits for v in op.operands]
                high = max(scales)
                for i, v in enumerate(op.operands):
                    diff = high - v.type.scale_bits
                    if diff == 0:
                        continue
                    if diff != int(diff):
                        raise PassError(f"cannot align scales 2^{scales[0]} and 2^{scales[1]}")
                    count += 1
                    one = scale_up(graph, v, int(diff), graph.unique_constant_name(f"align{count}.matrix"))
                    new_ops.append(one)
                    max_abs[one.result] = max_abs.get(v, float("nan"))
                    op.operands[i] = one.result
        new_ops.append(op)
    graph.ops = new_ops
    retype(graph)
    return graph
