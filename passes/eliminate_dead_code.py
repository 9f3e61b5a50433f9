"""eliminate-dead-code: removes ops whose results nobody uses.

Assumes: verified IR of any stage.
Guarantees: every remaining op (other than inputs and outputs) contributes to an output; the
constant store keeps only the constants still referenced. Inputs stay even when unused, since
they are the program's interface.
"""
from __future__ import annotations

from hecc.ir import Graph
from hecc.rewrite import remove_dead_ops

NAME = "eliminate-dead-code"


def run(graph: Graph, options: dict | None = None) -> Graph:
    remove_dead_ops(graph)
    return graph
