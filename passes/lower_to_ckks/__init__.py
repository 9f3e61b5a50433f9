"""lower-to-ckks: tensor IR -> ckks IR in the batch layout (CryptoNets' packing) or the slots
layout (LoLa's packing; see ``SlotsLowering``).

Batch layout: every secret tensor becomes a tensor of ciphertexts, one per element; the slots of each ciphertext
hold up to N/2 different inputs, so no rotations are ever needed. Secret tensors are tracked as
affine forms of ciphertext tensors (sum_b A_b @ base_b + bias): affine tensor ops (conv2d, matmul,
avgpool, reshape, transpose, pad, concat, reduce, add/sub/mul by constants, sums of secret values,
...) only compose these forms, and a form becomes ciphertexts (one ``ckks.linear`` per base, a
multiply-by-plaintext-scalar and add tree, summed) only where a product or the output needs it. So
every ciphertext is computed from bases at the waterline scale. Products of secret values become
``ckks.mul`` / ``ckks.square``; a ``tensor.poly`` becomes its Chebyshev recurrence (the map to
[-1, 1] fused into the preceding layer); client-side ops run after ``ckks.decrypt``. A linear layer
whose weights are integers at a smaller scale (the 2 and -1 of the recurrences) gets that smaller,
exact weight scale.

Assumes: verified tensor IR whose constants have values; ``graph.meta["ranges"]`` (optional) maps
tensor values to their calibrated max |value|.
Slots layout: the same affine forms (convolutions, pooling and products by constant matrices kept
sparse), over ciphertext values that each hold one input's tensor in one ciphertext or several
(``placement``); a form becomes a diagonal-method map between placements (``ckks.rotate``,
``ckks.mul_plain``, ``ckks.add``, ``ckks.add_plain``, ``ckks.extract`` and ``ckks.concat`` for
values over several ciphertexts), and each input's slot layout (``hecc.input`` ``layout``) is
chosen at its first use (``inputs``). A decryption reads its tensor at the slots its ``layout``
constant lists.

Guarantees: ckks IR with inputs at level 0 and scale 2^scale_bits, no rescale, relinearize or
modswitch yet (later passes insert them), ``slots`` 0 until parameters are selected (slots layout:
the given slot count, which select-parameters keeps); ``graph.meta["max_abs"]`` maps each
ciphertext value to a bound on the values it holds.
Options: layout ("batch" | "slots"), scale_bits (26), weight_scale_bits (batch: 14; slots: the
largest w with scale_bits + 2w <= 60, if 16 or more, else scale_bits), slots (the slots layout's
slot count, N/2; 4096).
"""
from __future__ import annotations

from hecc.errors import PassError
from hecc.ir import Graph

from .batch import Lowering
from .slots import Relayout, SlotsLowering

NAME = "lower-to-ckks"
DEFAULT_SLOTS = 4096


def run(graph: Graph, options: dict | None = None) -> Graph:
    options = dict(options or {})
    layout = options.get("layout", "batch")
    if layout not in ("batch", "slots"):
        raise PassError(f"layout must be batch or slots, got {layout!r}")
    if layout == "batch":
        lowering = Lowering(graph, options)
    else:
        options.setdefault("slots", DEFAULT_SLOTS)
        while True:
            lowering = SlotsLowering(graph, options)
            try:
                for op in graph.ops:
                    lowering.lower(op)
                break
            except Relayout as exc:
                options["periodic_inputs"] = set(options.get("periodic_inputs", ())) | {exc.name}
        lowering.finish()
        lowering.out.meta["max_abs"] = lowering.max_abs
        return lowering.out
    for op in graph.ops:
        lowering.lower(op)
    out = lowering.out
    out.meta["max_abs"] = lowering.max_abs
    return out
