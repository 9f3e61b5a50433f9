"""insert-relinearize: relinearizes lazily.

A product leaves a size-3 ciphertext. It stays size 3 through sums with other size-3 ciphertexts
and through modswitches; one relinearization is inserted where a size-3 value would reach anything
else: a product, a linear layer, decryption, a sum with a size-2 value, or a rescale. Relinearizing
before the rescale rather than after costs a key switch on one more prime, but divides the
key-switching noise (absolute, about 2^13 on SEAL at N=8192) by the dropped prime: after the
rescale it would cost about 1e-3 relative precision at scale 2^26 (measured). Nor does a size-3
value pass a rescale (which SEAL allows): the rounding error of its third component is multiplied
by s^2 at decryption. Tried for a degree-8 ReLU (its terms rescaled, scaled and summed at size 3,
one relinearization per element instead of seven): ten times the error of relinearizing each
product (TenSEAL 0.0066 against 0.00066 on a small CNN's outputs).

Assumes: ckks IR with rescales placed.
Guarantees: every op gets operands of the size it requires; at most one relinearize per value.
"""
from __future__ import annotations

from hecc.ir import CipherType, Graph, Op
from hecc.rewrite import retype, retype_op

NAME = "insert-relinearize"
SIZE3_OK = {"ckks.modswitch"}


def _needs_size2(user: Op, value) -> bool:
    if user.name in SIZE3_OK:
        return False
    if user.name in ("ckks.add", "ckks.sub", "ckks.concat"):
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
