"""minimize-rotation-keys: chooses the rotation steps that get Galois keys.

Every Galois key costs about as much as the relinearization key (L x (L+1) x N words for L data
primes), so the key set is what the client uploads. By default the set is exactly the steps the
program's ``ckks.rotate`` ops use. Under ``max_rotation_keys = K`` with more distinct steps than
K, the pass picks K steps and rewrites each rotation as a chain of rotations by picked steps
(steps add modulo the slot count), so that the program does as few rotations in all as it can:
greedy forward selection among the used steps and the powers of two, then single swaps while one
helps; each step's chain is a shortest path on the ring of slot offsets (breadth-first search).

Assumes: ckks IR after select-parameters (``ckks.params`` gives N).
Guarantees: ``ckks.params`` lists the key steps, sorted, in ``galois_steps`` (absent when nothing
rotates); every rotation's
step is one of them; ``graph.meta["rotation_keys"]`` records the steps used, the keys and the
rotation counts with and without the budget. Raises PassError for a budget of no keys on a
program that rotates.
Options: max_rotation_keys (None: one key per step used).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from hecc.errors import PassError
from hecc.ir import Graph, Op

NAME = "minimize-rotation-keys"


def _distances(generators: list[int], slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Fewest rotations by ``generators`` reaching each offset (slots: unreachable), and the
    generator of the last rotation on one shortest chain (-1 at 0 and unreachable offsets)."""
    dist = np.full(slots, slots, dtype=np.int64)
    last = np.full(slots, -1, dtype=np.int64)
    dist[0] = 0
    frontier = np.array([0])
    gens = np.asarray(generators, dtype=np.int64)
    level = 0
    while frontier.size and gens.size:
        level += 1
        reach = (frontier[:, None] + gens[None, :]) % slots
        by = np.broadcast_to(gens[None, :], reach.shape)
        reach, by = reach.ravel(), by.ravel()
        fresh = dist[reach] > level
        reach, by = reach[fresh], by[fresh]
        reach, first = np.unique(reach, return_index=True)
        dist[reach] = level
        last[reach] = by[first]
        frontier = reach
    return dist, last


def _cost(keys: list[int], uses: Counter, slots: int) -> int:
    dist, _ = _distances(keys, slots)
    return int(sum(count * dist[step] for step, count in uses.items()))


def choose_keys(uses: Counter, budget: int, slots: int) -> list[int]:
    """At most ``budget`` steps under which the rotations ``uses`` (step -> count) cost the
    fewest rotations in all."""
    if len(uses) <= budget:
        return sorted(uses)
    candidates = sorted(set(uses) | {1 << i for i in range(max(slots.bit_length() - 1, 0))})
    chosen: list[int] = []
    for _ in range(budget):
        best = min((c for c in candidates if c not in chosen),
                   key=lambda c: (_cost(chosen + [c], uses, slots), c))
        chosen.append(best)
    current = _cost(chosen, uses, slots)
    improved = True
    while improved:
        improved = False
        for i in range(len(chosen)):
            for c in candidates:
                if c in chosen:
                    continue
                trial = chosen[:i] + [c] + chosen[i + 1:]
                cost = _cost(trial, uses, slots)
                if cost < current:
                    chosen, current, improved = trial, cost, True
    return sorted(chosen)


def run(graph: Graph, options: dict | None = None) -> Graph:
    options = dict(options or {})
    budget = options.get("max_rotation_keys")
    params = [op for op in graph.ops if op.name == "ckks.params"]
    if not params:
        raise PassError("minimize-rotation-keys needs ckks.params (run select-parameters first)")
    slots = params[0].attrs["poly_modulus_degree"] // 2
    rotations = [op for op in graph.ops if op.name == "ckks.rotate"]
    uses = Counter(op.attrs["step"] % slots for op in rotations)
    if budget is None:
        keys = sorted(uses)
    else:
        budget = int(budget)
        if budget < 1 and uses:
            raise PassError(f"the program rotates by {len(uses)} different steps; it needs at least "
                            "one rotation key (--max-rotation-keys 1 or more)")
        keys = choose_keys(uses, budget, slots)
    before = len(rotations)
    if set(uses) - set(keys):
        _, last = _distances(keys, slots)
        new_ops: list[Op] = []
        for op in graph.ops:
            if op.name != "ckks.rotate" or op.attrs["step"] in keys:
                new_ops.append(op)
                continue
            chain, offset = [], op.attrs["step"] % slots
            while offset:
                chain.append(int(last[offset]))
                offset = (offset - last[offset]) % slots
            value = op.operands[0]
            for step in sorted(chain, reverse=True)[:-1]:
                hop = Op("ckks.rotate", [value], [value.type], {"step": step})
                new_ops.append(hop)
                value = hop.result
            op.operands = [value]
            op.attrs["step"] = sorted(chain, reverse=True)[-1]
            new_ops.append(op)
        graph.ops = new_ops
    keys = sorted({op.attrs["step"] for op in graph.ops if op.name == "ckks.rotate"})  # none unused
    if keys:
        params[0].attrs["galois_steps"] = [int(k) for k in keys]
    graph.meta["rotation_keys"] = {
        "steps_used": sorted(int(s) for s in uses), "keys": [int(k) for k in keys],
        "rotations": sum(1 for op in graph.ops if op.name == "ckks.rotate"),
        "rotations_without_budget": before}
    return graph
