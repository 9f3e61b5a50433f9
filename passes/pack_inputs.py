"""pack-inputs: runs a one-input slots program on K inputs per ciphertext (LoLa's and CHET's
packing of several inputs side by side), interleaved.

A slots program laid out for N/2K slots works unchanged on ciphertexts of N/2 slots whose slot
u * K + r holds slot u of input r's layout: every rotation by s becomes a rotation by s * K, which
moves each input's slots among themselves, and each plaintext slot u serves slots u * K .. u * K +
K - 1 (the backends repeat it). The program then serves K inputs for the price of one.

Assumes: a slots-layout program after select-parameters, laid out for N/2K slots, with
``inputs_per_ciphertext`` = K in its ``ckks.params`` (select-parameters sets it from the option).
Guarantees: every rotation step is multiplied by K (steps the keys are made for); nothing else
changes: tables stay in one-input units (N/2K slots), which the backends and the client expand.
A program that already lists its rotation keys (minimize-rotation-keys ran: its steps are packed
already) is refused rather than packed twice.
"""
from __future__ import annotations

from hecc.errors import ParameterError
from hecc.ir import Graph

NAME = "pack-inputs"


def run(graph: Graph, options: dict | None = None) -> Graph:
    params = [op for op in graph.ops if op.name == "ckks.params"]
    k = int(params[0].attrs.get("inputs_per_ciphertext", 1)) if params else 1
    if k > 1 and params[0].attrs.get("galois_steps"):
        raise ParameterError("pack-inputs: the program already lists its rotation keys, so its "
                             "rotation steps are packed already; run pack-inputs before "
                             "minimize-rotation-keys, once")
    if k > 1:
        for op in graph.ops:
            if op.name == "ckks.rotate":
                op.attrs["step"] = int(op.attrs["step"]) * k
    return graph
