"""insert-relinearize: relinearizes lazily.

A product leaves a size-3 ciphertext. It stays size 3 through rescales, modswitches, and sums with
other size-3 ciphertexts (all cheaper on three polynomials than a relinearization, and a rescale
first makes the later relinearization cheaper still); one relinearization is inserted where a
size-3 value would reach an op that needs size 2 (a product, a linear layer, decryption) or a sum
with a size-2 value.

Assumes: ckks IR with rescales placed.
Guarantees: every op gets operands of the size it requires; at most one relinearize per value.
"""
from __future__ import annotations

from hecc.ir import CipherType, Graph, Op
from hecc.rewrite import retype, retype_op

NAME = "insert-relinearize"
SIZE3_OK = {"ckks.rescale", "ckks.modswitch"}


def _needs_size2(user: Op, value) -> bool:
    if user.name in SIZE3_OK:
        return False
    if user.name in ("ckks.add", "ckks.sub"):
        return any(v.type.size != 3 for v in user.operands)
    return True


def run(graph: Graph, options: dict | None = None) -> Graph:
    users = graph.users()
    max_abs = graph.meta.setdefault("max_abs", {})
    new_ops: list[Op] = []
    for op in graph.ops:
        new_ops.append(op)
        retype_op(op)  # operands may have been relinearized above
        for value in op.results:
            if not isinstance(value.type, CipherType) or value.type.size != 3:
                continue
            needing = [u for u in users.get(value, []) if _needs_size2(u, value)]
            if not needing:
                continue
            relin = Op("ckks.relinearize", [value], [value.type.but(size=2)])
            new_ops.append(relin)
            if value in max_abs:
                max_abs[relin.result] = max_abs[value]
            for user in needing:
                user.operands = [relin.result if v is value else v for v in user.operands]
    graph.ops = new_ops
    retype(graph)
    return graph
