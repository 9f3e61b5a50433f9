"""align-levels: makes the operands of every binary ciphertext op agree in level and scale.

The operand that has dropped fewer primes is modswitched down to the other's level (when it is
a product by a plaintext used only there, or a rotation of one, that chain runs at the lower
level instead, on its operand modswitched once for all such chains: a map of a residual network
reads its input ciphertext beside deeper ones, and one modswitch of the input replaces one per
product); for a sum or
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
MIN_HOISTED_WEIGHT_BITS = 16  # a constant encoded exactly at fewer bits (2, -1) stays where it is


def run(graph: Graph, options: dict | None = None) -> Graph:
    max_abs = graph.meta.setdefault("max_abs", {})
    new_ops: list[Op] = []
    count = 0
    uses: dict = {}
    for op in graph.ops:
        for v in op.operands:
            uses[v] = uses.get(v, 0) + 1
    raised: dict = {}  # (value, level) -> the value at that level, for the operands of hoisted ops
    dead: set = set()

    def hoistable(v) -> bool:
        """A product by a plaintext (of weights, at MIN_HOISTED_WEIGHT_BITS or more) used only
        here, or a rotation of one: its plaintext's encoding scale absorbs the exact scale the sum needs (a modswitch feeding the sum directly gets it
        from the backend instead), so the chain can run at the sum's level."""
        producer = v.producer
        if producer is None or uses.get(v) != 1:
            return False
        if producer.name == "ckks.mul_plain":  # encoded at enough bits to absorb the adjustment
            return producer.attrs.get("weight_scale", 0) >= MIN_HOISTED_WEIGHT_BITS
        return producer.name == "ckks.rotate" and hoistable(producer.operands[0])

    def switched(v, level: int):
        result = v
        while result.type.level < level:
            switch = Op("ckks.modswitch", [result], [result.type.but(level=result.type.level + 1)])
            new_ops.append(switch)
            max_abs[switch.result] = max_abs.get(v, float("nan"))
            result = switch.result
        return result

    def lowered(v, level: int, shared: bool = False):
        """``v`` at ``level``: a hoistable chain rerun on its operand at that level (modswitched
        once for every such chain: ``shared``), else ``v`` modswitched."""
        if v.type.level >= level:
            return v
        if hoistable(v):
            producer = v.producer
            again = Op(producer.name, [lowered(producer.operands[0], level, shared=True)],
                       [v.type.but(level=level)], dict(producer.attrs))
            new_ops.append(again)
            dead.add(producer)
            max_abs[again.result] = max_abs.get(v, float("nan"))
            return again.result
        if not shared:
            return switched(v, level)
        if (v, level) not in raised:
            raised[(v, level)] = switched(v, level)
        return raised[(v, level)]

    for op in graph.ops:
        if op.name in ("ckks.add", "ckks.sub", "ckks.mul", "ckks.matmul", "ckks.concat"):
            target = max(v.type.level for v in op.operands)
            for i, v in enumerate(op.operands):
                op.operands[i] = lowered(v, target)
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
    graph.ops = [op for op in new_ops if op not in dead]
    retype(graph)
    return graph
