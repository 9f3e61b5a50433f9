"""Server ops grouped into segments whose rows are independent.

A CKKS program's server ops run in order; many of them act row by row (one ciphertext of a value
at a time). A *segment* is a linear op followed by the ops that act on its rows:

- batch layout: any op on values with the segment's row count that reads row r of its operands to
  make row r of its result: elementwise ops (``ROWWISE``; an operand made before the segment is read
  row by row too) and diagonal linear maps of the segment's own values (how a polynomial's
  coefficients are applied). A ReLU's whole polynomial after a convolution is one segment;
- slots layout (a value is usually one ciphertext): the elementwise ops on the segment's own
  values, as a segment's rows are what its workers share.

Any other op is a segment by itself. A segment's rows can be evaluated a chunk at a time (so its
temporaries never exist for all rows at once) or shared among workers.

A *stream* (``Stream``, batch layout) goes further: a polynomial activation whose terms were
merged into the next layers reads the same wide value in many linear maps, and evaluated one op
at a time its powers all stay alive at full width (eight terms of 676 ciphertexts at N=16384 are
gigabytes). A stream is everything that acts on the rows of one wide value: its *heads* (linear
ops making those rows from values made before it), the row-by-row ops on them and its *tails*
(linear ops that read those rows and make another value). ROW_CHUNK rows at a time run through
the whole stream, each tail adding their terms to its sums, so only the sums and one chunk exist
at once. ``plan`` orders the server ops so that every stream is contiguous.

Assumes a verified CKKS program; guarantees that evaluating every segment's rows in chunks, in
segment order, computes the same ciphertexts as evaluating the ops one by one in program order.
"""
from __future__ import annotations

import heapq

import numpy as np

from ..ir import Graph, Op
from ..params import data_primes
from .common import LinearWeights, ciphertext_bytes, program_params

ELEMENTWISE = {"ckks.square", "ckks.mul", "ckks.add", "ckks.sub", "ckks.relinearize", "ckks.rescale",
               "ckks.modswitch"}
ROWWISE = ELEMENTWISE | {"ckks.mul_plain", "ckks.add_plain"}
ROW_CHUNK = 32  # rows of a segment evaluated at once: a segment's temporaries exist for these only
CHUNK_BYTES = 64 << 20  # ... or fewer, so that a chunk of top-level ciphertexts stays under this
MIN_ROW_CHUNK = 4
STREAM_MIN_CHUNKS = 2  # a wide value is streamed when it has at least this many chunks of rows


def row_chunk(graph: Graph) -> int:
    """Rows of a segment evaluated at once: ROW_CHUNK, fewer where ROW_CHUNK top-level
    ciphertexts would pass CHUNK_BYTES (N=32768 with 15 primes: 8 rows of 7.9 MB, which takes
    the classic LeNet-5's predicted batch peak from 26.0 to 19.0 GB), at least MIN_ROW_CHUNK."""
    params = program_params(graph)
    top = ciphertext_bytes(params.poly_modulus_degree, len(data_primes(params.coeff_modulus_bits)))
    return min(ROW_CHUNK, max(MIN_ROW_CHUNK, CHUNK_BYTES // top))


class Stream(list):
    """A segment whose ops run a chunk of rows at a time from its first op to its last: ``count``
    rows; ``tails``: ids of its linear ops that read those rows and sum over them."""

    def __init__(self, ops, count: int, tails: set):
        super().__init__(ops)
        self.count, self.tails = count, tails

    def tail_ops(self) -> list[Op]:
        return [op for op in self if id(op) in self.tails]


def plan(graph: Graph, server: list[Op], slots_layout: bool, streams: bool = True) -> tuple[list[Op], list[list[Op]]]:
    """The order in which to evaluate ``server`` (the server ops in program order) and its
    segments: in the batch layout each stream contiguous (``Stream``), the rest in program
    order where that order allows; otherwise (or without ``streams``) the program order and
    ``group_segments``."""
    streams = [] if slots_layout or not streams else _streams(graph, server)
    order = _order(server, streams) if streams else None
    if order is None:
        return list(server), group_segments(graph, server, slots_layout)
    unit = {id(op): k for k, stream in enumerate(streams) for op in stream}
    segments, run = [], []
    for op in order:
        k = unit.get(id(op))
        if k is None:
            run.append(op)
            continue
        if run:
            segments += group_segments(graph, run, False)
            run = []
        if op is streams[k][0]:
            segments.append(streams[k])
    if run:
        segments += group_segments(graph, run, False)
    return order, segments


def _streams(graph: Graph, server: list[Op]) -> list[Stream]:
    """Streams of the batch-layout ops ``server``: the row-by-row ops of one row count joined
    through the values they read, with their heads and tails, where that saves memory (some
    tail, enough rows) and nothing the stream reads depends on what it makes."""
    made = {op.result: op for op in server}
    chunk = row_chunk(graph)
    parent = {}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    kind = {}
    for op in server:
        count = op.result.type.count
        if op.name == "ckks.linear":
            inner = op.operands[0].type.count == count and is_diagonal(graph, op)
            kind[id(op)] = "row" if inner else "head"
        elif op.name in ROWWISE and all(v.type.count == count for v in op.operands):
            kind[id(op)] = "row"
        else:
            continue
        parent[id(op)] = id(op)
        if kind[id(op)] == "row":
            for v in op.operands:
                p = made.get(v)
                if p is not None and id(p) in kind and p.result.type.count == count:
                    parent[find(id(p))] = find(id(op))
    members: dict = {}
    for op in server:
        if id(op) in kind:
            members.setdefault(find(id(op)), []).append(op)
    group_of = {id(op): root for root, ops in members.items() for op in ops}
    tails: dict = {}
    for op in server:
        if op.name != "ckks.linear" or kind.get(id(op)) == "row":
            continue
        p = made.get(op.operands[0])
        if p is not None and id(p) in group_of and group_of[id(p)] != group_of.get(id(op)):
            tails.setdefault(group_of[id(p)], []).append(op)
    out, taken = [], set()
    for root, ops in members.items():
        ends = [t for t in tails.get(root, []) if id(t) not in taken]
        count = ops[0].result.type.count
        if not ends or count < STREAM_MIN_CHUNKS * chunk:
            continue
        own = {op.result for op in ops}
        if any(kind[id(op)] == "head" and op.operands[0] in own for op in ops):
            continue  # a head would need all rows of a value the stream makes a chunk at a time
        body = [op for op in ops if id(op) not in taken]
        if not body:
            continue  # its ops are the tails of another stream: they head their own
        chosen = {id(op) for op in body + ends}
        stream = Stream([op for op in server if id(op) in chosen], count, {id(t) for t in ends})
        if _self_contained(server, stream):
            out.append(stream)
            taken |= chosen
    return out


def _self_contained(server: list[Op], stream: Stream) -> bool:
    """Whether nothing the stream reads from outside it depends on a value it makes (else it
    could not run as one piece)."""
    inside = {id(op) for op in stream}
    tainted = set()
    for op in server:
        if id(op) in inside:
            if any(v in tainted for v in op.operands):
                return False
        elif any(v in tainted for v in op.operands) or any(v.producer is not None and id(v.producer) in inside
                                                           for v in op.operands):
            tainted.update(op.results)
    return True


def _order(server: list[Op], streams: list[Stream]) -> list[Op] | None:
    """``server`` with each stream as one contiguous piece, otherwise as close to program order
    as dependencies allow (None if the streams depend on one another in a cycle)."""
    position = {id(op): i for i, op in enumerate(server)}
    unit_of = {id(op): ("s", k) for k, stream in enumerate(streams) for op in stream}
    units = {}
    for op in server:
        u = unit_of.get(id(op), ("o", position[id(op)]))
        units.setdefault(u, []).append(op)
    made = {op.result: unit_of.get(id(op), ("o", position[id(op)])) for op in server}
    needs = {u: set() for u in units}
    users = {u: set() for u in units}
    for u, ops in units.items():
        for op in ops:
            for v in op.operands:
                p = made.get(v)
                if p is not None and p != u:
                    needs[u].add(p)
                    users[p].add(u)
    first = {u: position[id(ops[0])] for u, ops in units.items()}
    ready = [(first[u], u) for u in units if not needs[u]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, u = heapq.heappop(ready)
        order += units[u]
        for w in users[u]:
            needs[w].discard(u)
            if not needs[w]:
                heapq.heappush(ready, (first[w], w))
    return order if len(order) == len(server) else None


def is_diagonal(graph: Graph, op: Op) -> bool:
    """A square linear op whose matrix has nonzeros on its diagonal only (row r reads row r)."""
    matrix = graph.constants[op.attrs["matrix"]]
    if op.attrs.get("index"):
        return LinearWeights(graph, op, exact=True).is_diagonal()
    if matrix.ndim == 1:  # a vector: the diagonal itself
        return op.result.type.count == op.operands[0].type.count
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        return False
    return not np.any(matrix[~np.eye(matrix.shape[0], dtype=bool)])


def group_segments(graph: Graph, server: list[Op], slots_layout: bool) -> list[list[Op]]:
    """``server`` (the program's server ops, in order) as consecutive segments."""
    segments, current, produced, count = [], None, set(), None
    for op in server:
        if current is not None and _joins(graph, op, produced, count, slots_layout):
            current.append(op)
            produced.add(op.result)
        elif op.name == "ckks.linear":
            current, produced, count = [op], {op.result}, op.result.type.count
            segments.append(current)
        else:
            current = None
            segments.append([op])
    return segments


def _joins(graph: Graph, op: Op, produced: set, count: int, slots_layout: bool) -> bool:
    if slots_layout:
        return op.name in ELEMENTWISE and all(v in produced for v in op.operands)
    if op.result.type.count != count or any(v.type.count != count for v in op.operands):
        return False
    if op.name == "ckks.linear":
        return op.operands[0] in produced and is_diagonal(graph, op)
    return op.name in ROWWISE and any(v in produced for v in op.operands)


def external(segment: list[Op]) -> list:
    """The values a segment reads that were made before it, in first-read order."""
    inside, out = {op.result for op in segment}, []
    for op in segment:
        for v in op.operands:
            if v not in inside and v not in out:
                out.append(v)
    return out


def memory_plan(graph: Graph, server: list[Op], slots_layout: bool,
                streams: bool = True) -> tuple[list[Op], dict, dict]:
    """What the backend's evaluation means for memory: ``plan``'s order of ``server``; the values
    that exist only ``row_chunk`` rows at a time (made and read inside one batch-layout segment of
    several ops), value -> the fraction of its rows alive at once; and for each stream tail's
    result, the op of that order from which its sums exist (the stream's first: they grow
    chunk by chunk)."""
    order, segments = plan(graph, server, slots_layout, streams)
    if slots_layout:
        return order, {}, {}
    chunk = row_chunk(graph)
    position = {id(op): i for i, op in enumerate(order)}
    outside = {v for op in graph.ops if id(op) not in position for v in op.operands}
    part, early = {}, {}
    for segment in segments:
        if len(segment) < 2:
            continue
        kept = set(live_out(segment, order[position[id(segment[-1])] + 1:])) | outside
        tails = segment.tails if isinstance(segment, Stream) else ()
        for op in segment:
            if id(op) in tails:
                early[op.result] = segment[0]
            elif op.result not in kept:
                part[op.result] = min(1.0, chunk / max(1, op.result.type.count))
    return order, part, early


def live_out(segment: list[Op], later_ops) -> list:
    """The values of ``segment`` that ``later_ops`` (every op after it) read, in segment order."""
    inside = {op.result for op in segment}
    later = {v for op in later_ops for v in op.operands if v in inside}
    return [op.result for op in segment if op.result in later]
