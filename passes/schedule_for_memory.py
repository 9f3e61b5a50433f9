"""schedule-for-memory: orders the server ops of a batch-layout program so fewer ciphertexts are
alive at once.

In the batch layout every element of a tensor is a ciphertext (a few MB at N=16384), so a value
that stays alive is costly, and the order the lowering emits keeps values alive longer than
needed: when the terms of a polynomial activation are merged into the next linear layers, the
input and each power of the activation stay alive until the last layer that reads them, although
those small maps could run as soon as their operand exists. This pass lists the server ops again
greedily: of the ops whose operands are ready, the one that adds the fewest bytes (its result,
minus the operands it reads last), ties in the original order. Any such order computes the same
ciphertexts; only the peak memory (``backends.common.predicted_peak_bytes``) changes, and the
pass keeps the original order when its own prediction is not lower.

Assumes: ckks IR after select-parameters (``ckks.params`` gives N and the chain).
Guarantees: the same ops with the same operands and results, in a topological order; the server
ops (``backends.common.SERVER_OPS``) keep the positions the server block had, every other op
keeps its place. Slots-layout programs (a value is a ciphertext or a few), programs whose server
ops are not one block, and programs of more than MAX_OPS server ops are left as they are.
Options: none.
"""
from __future__ import annotations

from hecc.params import data_primes
from hecc.backends.common import SERVER_OPS, ciphertext_bytes, is_slots, predicted_peak_bytes, program_params
from hecc.ir import CipherType, Graph

NAME = "schedule-for-memory"
MAX_OPS = 5000


def run(graph: Graph, options=None) -> Graph:
    if is_slots(graph) or not any(op.name == "ckks.params" for op in graph.ops):
        return graph
    positions = [i for i, op in enumerate(graph.ops) if op.name in SERVER_OPS]
    if not positions or len(positions) > MAX_OPS or positions[-1] - positions[0] + 1 != len(positions):
        return graph
    server = [graph.ops[i] for i in positions]
    order = _greedy(graph, server)
    if order == server:
        return graph
    before = predicted_peak_bytes(graph)
    original = list(graph.ops)
    graph.ops[positions[0]:positions[-1] + 1] = order
    if predicted_peak_bytes(graph) >= before:
        graph.ops[:] = original
    return graph


def _greedy(graph: Graph, server: list) -> list:
    params = program_params(graph)
    n, primes = params.poly_modulus_degree, len(data_primes(params.coeff_modulus_bits))

    def size(v) -> int:
        t = v.type
        return t.count * ciphertext_bytes(n, primes - t.level, t.size) if isinstance(t, CipherType) else 0
    made_here = {op.result: i for i, op in enumerate(server) if op.results}
    readers = {}
    for i, op in enumerate(server):
        for v in set(op.operands):
            readers[v] = readers.get(v, 0) + 1
    read_later = {v for op in graph.ops if op.name not in SERVER_OPS for v in op.operands}
    waiting = {i: sum(1 for v in set(op.operands) if v in made_here) for i, op in enumerate(server)}
    users = {}
    for i, op in enumerate(server):
        for v in set(op.operands):
            if v in made_here:
                users.setdefault(v, []).append(i)
    ready = {i for i, count in waiting.items() if count == 0}
    left = dict(readers)
    order = []
    while ready:
        def cost(i):
            op = server[i]
            freed = sum(size(v) for v in set(op.operands) if left[v] == 1 and v not in read_later)
            return (sum(size(v) for v in op.results) - freed, i)
        i = min(ready, key=cost)
        ready.remove(i)
        op = server[i]
        order.append(op)
        for v in set(op.operands):
            left[v] -= 1
        for v in op.results:
            for j in users.get(v, []):
                waiting[j] -= 1
                if waiting[j] == 0:
                    ready.add(j)
    return order if len(order) == len(server) else server
