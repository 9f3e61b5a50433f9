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
[-1, 1] fused into the preceding layer; in the batch layout above degree 5 split in baby and
giant steps, ``Lowering.poly``); client-side ops run after ``ckks.decrypt``. A linear layer
whose weights are integers at a smaller scale (the 2 and -1 of the recurrences) gets that smaller,
exact weight scale. An average pooling of an elementwise form (an activation's output) is its
windows' sums first, a ``ckks.linear`` of unit weights at weight scale 2^0 (additions: no product,
no level), the 1/window and the form's weights then scaling the sums in the next map.

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
slot count, N/2; 4096), objective (slots layout: "time", the default, chooses plans by this
machine's relative costs, a rotation about ten products and a new Galois key four rotations;
"operations" counts every product and rotation alike); batch layout: poly_outputs ("merge": a polynomial's output stays a form
over its terms, which the next map multiplies one by one; "materialize": one ciphertext per element
at one level more), max_products (stop with ``OverBudget`` past this many products by plaintext
weights).
"""
from __future__ import annotations

import numpy as np

from hecc.errors import HeccError, PassError
from hecc.ir import Graph

from .batch import Lowering, OverBudget  # noqa: F401  (OverBudget: raised by run)
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
        lowering = lower_slots(graph, options)
        _count_zero_blocks(graph, options, lowering.out)
        return lowering.out
    for op in graph.ops:
        lowering.lower(op)
    out = lowering.out
    out.meta["max_abs"] = lowering.max_abs
    return out


ZERO_BLOCKS = "zero_blocks"  # the constant (after the options' constant_prefix) holding the counts


def _count_zero_blocks(graph: Graph, options: dict, out: Graph) -> None:
    """Slots layout: when weights of convolutions or products by constant matrices are zero (a
    pruned model), the products by plaintext vectors and the rotations the program has, and those
    of the same graph with every such zero made non-zero (the maps then have no all-zero
    diagonal or block to skip), as the constant ``<constant_prefix>zero_blocks``: int64
    [products, rotations, products without zeros, rotations without zeros], which the compile
    report reads (nothing when the maps without zeros do not lower). The second lowering is
    cached per slot count in ``graph.meta``."""
    weights = set()
    for op in graph.ops:
        if op.name == "tensor.conv2d" and len(op.operands) > 1:
            weights.add(op.operands[1])
        elif op.name == "tensor.matmul":
            weights.update(op.operands)
    names = [op.attrs["name"] for op in graph.ops if op.name == "tensor.constant" and op.result in weights]
    zeros = [n for n in names if n in graph.constants and _pruned(np.asarray(graph.constants[n]))]
    if not zeros:
        return
    cache = graph.meta.setdefault("zero_blocks_dense", {})
    key = int(options["slots"])
    if key not in cache:
        dense = graph.copy()
        dense.constants = dict(graph.constants)
        for name in zeros:
            array = np.asarray(graph.constants[name], dtype=np.float64)
            nonzero = np.abs(array[array != 0])
            fill = float(nonzero.mean()) if nonzero.size else 1.0
            # distinct positive values: no sum of weights cancels by accident
            dense.constants[name] = np.where(array != 0, array, fill * (1 + np.random.default_rng(0).random(array.shape)))
        pairs = dict(zip(graph.ops, dense.ops))
        dense.meta["ranges"] = {pairs[op].results[i]: m for op in graph.ops for i, v in enumerate(op.results)
                                for m in [graph.meta.get("ranges", {}).get(v)] if m is not None}
        try:
            counts = slots_op_counts(lower_slots(dense, dict(options)).out)
            cache[key] = [counts["products"], counts["rotations"]]
        except HeccError:  # the dense maps do not fit (say, too many diagonals): nothing to record
            cache[key] = None
    if cache[key] is None:
        return
    counts = slots_op_counts(out)
    out.constants[str(options.get("constant_prefix", "")) + ZERO_BLOCKS] = np.asarray(
        [counts["products"], counts["rotations"]] + cache[key], dtype=np.int64)


def _pruned(array: np.ndarray) -> bool:
    """Whether a matrix constant looks like weights with zeros among them: not a selection of 0s
    and 1s (a Gather of the class token becomes one; counting its zeros cost the ViT a second
    lowering per slot count)."""
    if array.ndim < 2 or array.dtype.kind != "f" or np.all(array):
        return False
    return bool(np.any(array[array != 0] != 1.0))


def lower_slots(graph: Graph, options: dict, lowering_class=SlotsLowering) -> SlotsLowering:
    """The finished slots lowering of ``graph`` (by ``lowering_class``, a ``SlotsLowering``); an
    input the lowering wants laid out periodic (``Relayout``) is added to
    ``options["periodic_inputs"]`` and the lowering starts again."""
    while True:
        lowering = lowering_class(graph, options)
        try:
            for op in graph.ops:
                lowering.lower(op)
            break
        except Relayout as exc:
            options["periodic_inputs"] = set(options.get("periodic_inputs", ())) | {exc.name}
    lowering.finish()
    lowering.out.meta["max_abs"] = lowering.max_abs
    return lowering


def slots_op_counts(graph: Graph) -> dict[str, int]:
    """Products by plaintext vectors (``products``), rotations and ciphertext products
    (``ct_products``) of a slots program, each ciphertext of a value counted."""
    counts = {"products": 0, "rotations": 0, "ct_products": 0}
    names = {"ckks.mul_plain": "products", "ckks.rotate": "rotations", "ckks.mul": "ct_products",
             "ckks.square": "ct_products"}
    for op in graph.ops:
        if op.name in names:
            counts[names[op.name]] += int(op.result.type.count)
    return counts
