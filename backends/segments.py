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
temporaries never exist for all rows at once) or shared among workers. Assumes a verified CKKS
program; guarantees that evaluating every segment's rows in chunks, in segment order, computes
the same ciphertexts as evaluating the ops one by one.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Op
from .common import LinearWeights

ELEMENTWISE = {"ckks.square", "ckks.mul", "ckks.add", "ckks.sub", "ckks.relinearize", "ckks.rescale",
               "ckks.modswitch"}
ROWWISE = ELEMENTWISE | {"ckks.mul_plain", "ckks.add_plain"}
ROW_CHUNK = 32  # rows of a segment evaluated at once: a segment's temporaries exist for these only


def is_diagonal(graph: Graph, op: Op) -> bool:
    """A square linear op whose matrix has nonzeros on its diagonal only (row r reads row r)."""
    matrix = graph.constants[op.attrs["matrix"]]
    if op.attrs.get("index"):
        return LinearWeights(graph, op, exact=True).is_diagonal()
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


def temporaries(graph: Graph, server: list[Op], slots_layout: bool) -> dict:
    """Values that exist only ROW_CHUNK rows at a time (made and read inside one batch-layout
    segment of several ops): value -> the fraction of its rows alive at once."""
    if slots_layout:
        return {}
    position = {id(op): i for i, op in enumerate(server)}
    outside = {v for op in graph.ops if id(op) not in position for v in op.operands}
    out = {}
    for segment in group_segments(graph, server, slots_layout):
        if len(segment) < 2:
            continue
        kept = set(live_out(segment, server[position[id(segment[-1])] + 1:])) | outside
        for op in segment:
            if op.result not in kept:
                out[op.result] = min(1.0, ROW_CHUNK / max(1, op.result.type.count))
    return out


def live_out(segment: list[Op], later_ops) -> list:
    """The values of ``segment`` that ``later_ops`` (every op after it) read, in segment order."""
    inside = {op.result for op in segment}
    later = {v for op in later_ops for v in op.operands if v in inside}
    return [op.result for op in segment if op.result in later]
