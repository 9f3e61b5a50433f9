"""The packed layout of a one-input slots program whose slots hold copies of one input.

A model smaller than the ring's slots is laid out in one period of P slots and repeated over the
ciphertext (``backends.common.slot_period``: every input layout and plaintext vector repeats
with P, so every value does). Its lowering for K = slots / P inputs per ciphertext is the same
program laid out for P slots: the same ops, products, levels and weight tables, the same rotation
steps (each below P), the input layouts' first P slots, and each output read where its first copy
lies. ``interleaved_program`` writes that program from the one-input one instead of lowering the
model again (the ViT: 0.2 s instead of 2.8 s, and its magnitudes and outputs are the one-input
program's: every value is the same numbers in other slots). select-parameters and pack-inputs then
make it the program for K inputs per ciphertext, interleaved, as for a lowered one.

Assumes: a slots-layout program of the lowering (before rescales and parameters), one input per
ciphertext, ``slots`` in its ciphertext types. Guarantees: None unless every value repeats with
P = slots / K and every rotation step lies in (0, P); else the program the lowering makes for
``slots`` = P and ``inputs_per_ciphertext`` = K (tested against it), each constant it reads
renamed with ``prefix`` (the lowering's ``constant_prefix``; arrays shared, not copied).
"""
from __future__ import annotations

from hecc.backends.common import fold_slots, slot_period
from hecc.ir import CipherType, Graph

from . import ZERO_BLOCKS

# the attributes through which ops read the constant store
CONSTANT_ATTRS = {"hecc.input": ("layout",), "ckks.decrypt": ("layout",), "ckks.mul_plain": ("plain",),
                  "ckks.add_plain": ("plain", "checks_interval"), "tensor.constant": ("name",)}


def interleaved_program(graph: Graph, k: int, prefix: str) -> Graph | None:
    """``graph`` (changed in place) as the program for ``k`` inputs per ciphertext, or None (and
    ``graph`` unchanged) when it is not k copies of a one-input program (module docstring)."""
    inputs = [op for op in graph.ops if op.name == "hecc.input"]
    if k < 2 or not inputs or not all(op.attrs.get("layout") for op in inputs):
        return None
    slots = inputs[0].result.type.slots
    period = slots // k
    if period * k != slots or slot_period(graph, slots) > period:
        return None
    if any(op.name == "ckks.rotate" and not 0 < op.attrs["step"] < period for op in graph.ops):
        return None
    if any(op.name == "ckks.linear" for op in graph.ops):  # the batch layout's op
        return None
    names = set(graph.constants)
    for op in graph.ops:  # a constant read through an attribute this module does not know
        known = CONSTANT_ATTRS.get(op.name, ()) + (("name",) if op.name == "hecc.input" else ())
        if any(isinstance(v, str) and v in names and key not in known for key, v in op.attrs.items()):
            return None
    constants = {prefix + ZERO_BLOCKS: graph.constants[ZERO_BLOCKS]} if ZERO_BLOCKS in graph.constants else {}
    for op in graph.ops:
        for attr in CONSTANT_ATTRS.get(op.name, ()):
            name = op.attrs.get(attr)
            if not name:
                continue
            array = graph.constants[name]
            if op.name == "hecc.input":
                array = array[:, :period]
            elif attr in ("layout", "checks_interval"):  # slot numbers: the first copy's
                array = fold_slots(array, slots, period)
            op.attrs[attr] = prefix + name
            constants[prefix + name] = array
        for value in op.results:
            if isinstance(value.type, CipherType):
                value.type = value.type.but(slots=period)
    graph.constants = constants
    return graph

