"""Block pruning for the slots layout: weights pruned in the blocks that the compiled program turns
into ciphertext products and rotations (MOFHEI's idea), so that whole products and rotations
disappear from the program, by saliency with fine-tuning in between.

How a linear layer becomes products and rotations in the slots layout
---------------------------------------------------------------------
(``passes/lower_to_ckks``: ``slots``, ``diagonal``, ``placement``, ``inputs``, ``gather``.)

- *Maps.* A chain of affine tensor ops between two products of ciphertexts (an activation x*x or
  a polynomial) is one linear map: a Linear (MatMul/Gemm) with the flatten, average pooling or
  BatchNorm around it, or a Conv2d with the AvgPool that follows its activation folded into the
  *next* map (pool -> conv2 -> pool ... never into its own). Its matrix is built sparse, from the
  weights' non-zeros only (``sparse.Sparse`` drops zeros): a zero weight is absent from the map.
- *Placements.* Every ciphertext value has a placement: the slot of each tensor element over one
  ciphertext (periodic: a vector of n values repeats every p = next_pow2(n) slots) or several
  (period = the slots). A convolution's output is a channel grid (each channel's plane in a
  power-of-two block) or, after a strided window op, multiplexed on its input's grid
  (``placement.multiplexed``); a vector is compact (element i at slot i) or spanned over the
  input's periods. The cost model (``Plan.cost``) chooses the output placement per map.
- *Diagonals.* Weight (i, j) of a map reads input element j at slot s_j of input ciphertext
  s_j // slots and adds to output element i at slot s_i. With input period p and output period q
  it belongs to the generalized diagonal k = (s_j - s_i) mod p, reduced mod q when q < p (a
  rotate-and-sum over the p / q blocks adds the partial sums, log2(p / q) rotations per output
  ciphertext). Each distinct (input ciphertext, diagonal k, output ciphertext) is one
  ``ckks.mul_plain`` (a product by the diagonal's plaintext vector); a diagonal none of whose
  weights is non-zero does not exist, so it costs nothing. Multi-ciphertext values split a map
  into blocks, one per (input ciphertext, output ciphertext) pair that some weight connects.
- *Rotations.* Baby-step giant-step with baby step g (``diagonal.baby_step``, the power of two
  that needs the fewest rotations for the diagonals present): per input ciphertext one rotation
  per distinct k mod g (0 excepted; none when the client sent its input rotated), per output
  ciphertext one rotation per distinct giant step k // g in Horner form (-1, +1 if the smallest
  is not 0), plus the rotate-and-sum. A rotation disappears when every diagonal of its baby
  (input ciphertext, k mod g) or giant (output ciphertext, k // g) group is zero.
- *The first layer* reads the client's input, which may be laid out periodic (the diagonal
  method above), expanded (im2col-style: tap t of each output in input ciphertext t // (slots/q),
  one product per input ciphertext; the taps are each output's non-zero weights in order, so a
  product disappears when every output of its ciphertext has per_ct fewer non-zero taps) or
  gathered (``gather``: one product per (channel, tap row residue, tap column) ciphertext and
  row shift, i.e. per kernel tap across all output channels; a rotation per distinct shift).
- For a convolution on a grid, weight W[o, c, ty, tx] lands in diagonal
  c_off[c] - c_off'[o] + (ty, tx) . (row, column strides): a product collects one tap over every
  (input, output) channel pair with the same channel-offset difference; with the pooling before it
  folded, each weight lands in one diagonal per pooling window position (the lowering may instead
  sum the windows by rotations first, ``pooling``: then one diagonal). For a dense layer from a
  compact vector, W[i, j] lands in diagonal (j - i) mod q.

How ``block_prune`` finds the blocks
------------------------------------
Rather than re-deriving placements (the cost model chooses them, and pruning changes the choice),
``block_prune`` asks the compiler: it lowers the current model (``lower-to-ckks``, slots layout,
the compiled program's slot count and objective) with a recording subclass of ``SlotsLowering``
that keeps every map's plan (its weights' entries and the product each lands in, baby steps and
giant steps) and the first layer's expanded or gathered layout. It lowers three times with the
prunable weights replaced by tags (zeros stay zero, so every lowering makes the same choices): a small
integer a_w per weight (1 to 3, not all equal: a map of equal weights would be lowered as a
scalar), a_w times a distinct integer per weight, and a_w times the square of the weight's
position in its kernel (Conv) or row (Linear). Every entry of a map is linear in the weights, so
the ratio of the second lowering's entry to the first's is the tag of the weight it comes from;
the third checks that only one weight contributes. An entry fed by several weights (a pooling
after a convolution in the same map, two dense layers with no activation between) is attributed
to the whole kernel or row it comes from, or else to the whole layer: conservatively, the
product is then taken to disappear only when all of these are zero (a superset of its weights;
checked against zeroing weights one by one). This gives, for every ciphertext product of the
program, the set of torch weights that feed it, and for every rotation the products whose
removal removes it. Three lowerings of LeNet-5 take about 3 seconds.

Each round measures saliencies (optimal brain damage: 1/2 the empirical Fisher (w dL/dw)^2 from
per-sample gradients, divided by the density of the weight's layer, since the sum over a block
underestimates what the last weights of a layer are worth) and greedily zeroes the unit with the
least saliency per share of what it removes: a product, all products of one baby or giant step
(whose removal also removes a rotation), or, for a sparsity target, a single weight; the share
is of the program's products and rotations (priced by the cost model for a latency target),
plus, for a sparsity target, of the weights. Units are re-scored as blocks die. No layer keeps
fewer than ``floor`` of its weights or loses more than ``step`` of its live weights in a round,
and each output of the model's last layer keeps a tenth of its inputs (a class whose logit lost
its weights cannot come back). The greedy stops at the round's goal in this model of the program;
the model is fine-tuned with the masks held (cross-entropy plus distillation from the unpruned
model, optionally a group lasso over the blocks), and lowered again: the compiler may lay the
sparser maps out otherwise, so the next round's blocks are the new program's, and the counts each
round reports are exact. The goals follow a schedule that reaches the target at the last round
(cubic in the sparsity, geometric in operations or latency). A round that removes nothing (the
compiler chose placements with as many operations) is undone and tried again with half its step,
twice at most; one that costs more accuracy than allowed is undone, and pruning stops. The HE
operations counted are those of the slots program:
``ckks.mul_plain`` (products by plaintext vectors) and ``ckks.rotate``.

Measured (``examples/lenet_he_friendly``: the standard LeNet-5 made HE-friendly, 99.16% on MNIST's
10,000 test images, 61,718 parameters; two cores): an operation target of 160 then a sparsity
target of 0.92 keep 98.99% with 5,165 parameters (-91.6%) and 133 operations (of 739 under the
default objective, -82.0%), in 164 s. Counted under the default objective, going further stalls
near 105 operations: the compiler, weighing a rotation as ten products, answers a sparser map with
a layout of more products and fewer rotations, more operations by this count. With
``objective="operations"`` (the compiler then weighs a product and a rotation alike), distilled
from the original network, 10 rounds of 2 epochs and 8 final epochs reach 72 operations (of 722
under that objective, -90.0%) with 2,636 parameters (-95.7%) at 98.24%, in 198 s.
"""
from __future__ import annotations

import copy
import io
import math
import time

import numpy as np

from ..errors import InputError, UserError

PRUNABLE = ("Linear", "Conv1d", "Conv2d")
OUTPUT_FLOOR = 0.1  # of its inputs, each output of the model's last layer keeps at least
TAG_CHUNK = 1 << 20  # weights tagged per lowering (tags times 1..3 stay exact in float32)


# --- the compiler's view of the model ---------------------------------------------------------

def _export(model, shape) -> bytes:
    """The model as ONNX (legacy exporter, opset 13, dynamic batch), as hecc's examples export."""
    import torch
    buffer = io.BytesIO()
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(model, (torch.zeros((1,) + tuple(shape), device=device),), buffer, dynamo=False,
                              opset_version=13, input_names=["input"], output_names=["output"],
                              do_constant_folding=False,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    finally:
        model.train(was_training)
    return buffer.getvalue()


def _recorder_class():
    from ..passes.lower_to_ckks.slots import SlotsLowering

    class Recorder(SlotsLowering):
        """The slots lowering, keeping every linear map's plan (see the module docstring)."""

        def __init__(self, graph, options):
            super().__init__(graph, options)
            self.maps = []
            self.first = {}

        def matvec(self, plan, shape):
            client = frozenset(i for i, (part, _) in enumerate(plan.inputs)
                               if plan.parts[part].placement.cts == 1
                               and self.client_babies.get(plan.parts[part].key))
            self.maps.append(("plan", plan, client))
            return super().matvec(plan, shape)

        def lay_out_input(self, placeholder, aff, rows, cols, vals, parts, want):
            kind, value, plan = super().lay_out_input(placeholder, aff, rows, cols, vals, parts, want)
            if kind == "gather":
                self.first[id(plan)] = (rows, cols, vals, aff.geometry, self.placeholders[placeholder]
                                        .result.type.shape, aff.shape)
            return kind, value, plan

        def expanded_map(self, placeholder, rows, cols, vals, out, shape):
            self.maps.append(("expanded", (rows, cols, vals), out))
            return super().expanded_map(placeholder, rows, cols, vals, out, shape)

        def gathered_map(self, placeholder, plan, out, shape):
            self.maps.append(("gather", self.first[id(plan)], out))
            return super().gathered_map(placeholder, plan, out, shape)

    return Recorder


def _tensor_graph(onnx_bytes: bytes):
    """The model's tensor IR after the tensor passes, with every non-polynomial activation
    replaced by a quadratic (the maps' structure does not depend on the polynomials), and
    whether there was any."""
    from ..frontends.onnx import import_model
    from ..passes import APPROXIMATION_PIPELINE, TENSOR_PIPELINE
    from ..pipeline import run_passes
    graph = run_passes(import_model(onnx_bytes), TENSOR_PIPELINE).graph
    approximated = any(op.name == "tensor.activation" for op in graph.ops)
    if approximated:
        values = [v for op in graph.ops for v in op.results]
        graph.meta["intervals"] = {v: (-1.0, 1.0) for v in values}
        graph = run_passes(graph, APPROXIMATION_PIPELINE, {"activation_degree": 2}).graph
    return graph, approximated


def _lower(onnx_bytes: bytes, options: dict):
    """(recorded maps, op counts, slots) of the model's slots program at ``options["slots"]`` slots;
    the counts say whether activations were approximated (by quadratics: see ``_tensor_graph``)."""
    from ..passes.lower_to_ckks import lower_slots, slots_op_counts
    graph, approximated = _tensor_graph(onnx_bytes)
    lowering = lower_slots(graph, dict(options, layout="slots"), _recorder_class())
    counts = slots_op_counts(lowering.out)
    counts["approximated"] = approximated
    return lowering.maps, counts, lowering.slots


def _expanded_products(rows, cols, out, slots):
    """Per weight entry of an expanded first map, the input ciphertext it is multiplied in (as
    ``InputLayouts.expanded_map`` lays the taps out): the products of that map."""
    per_ct = max(slots // out.period, 1)
    order = np.lexsort((cols, rows))
    sorted_rows = rows[order]
    tap = np.arange(rows.size) - np.searchsorted(sorted_rows, sorted_rows)
    co = out.pos[sorted_rows] // slots
    groups = []
    for c in range(out.cts):
        mine = co == c
        groups.append(-(-(int(tap[mine].max()) + 1 if np.any(mine) else 1) // per_ct))
    offsets = np.cumsum([0] + groups)
    product = np.empty(rows.size, dtype=np.int64)
    product[order] = offsets[co] + tap // per_ct
    return product


def _gathered_products(rows, cols, geometry, in_shape, out_shape):
    """Per weight entry of a gathered first map, its (gathered ciphertext, row shift) pair (as
    ``gather.gathered_taps`` computes them for ``gather_plan``), numbered: the products of that map; and each product's
    shift."""
    from ..passes.lower_to_ckks.gather import gathered_taps
    shift, gathered = gathered_taps(geometry, in_shape, out_shape, rows, cols)
    pairs, product = np.unique(np.stack([shift, gathered]), axis=1, return_inverse=True)
    return product.ravel(), pairs[0]


class _Map:
    """One linear map of the program: the product each of its weight entries lands in, and per
    product the baby-step and giant-step groups (each a rotation) it belongs to."""

    def __init__(self, record, slots):
        kind, what, extra = record
        self.kind = kind
        self.babies = self.giants = None
        if kind == "plan":
            plan = what
            self.vals = plan.values
            self.product = plan.product_of
            inputs, ks, cos = plan._product_fields()
            self.count = int(plan.products.size)
            g = plan.g
            baby = np.where((ks % g != 0) & ~np.isin(inputs, list(extra)), inputs * plan.length + ks % g, -1)
            giant = np.where(ks // g != 0, cos * plan.length + ks // g, -1)
            self.babies, self.giants = baby, giant
        elif kind == "expanded":
            rows, cols, vals = what
            self.vals = vals
            self.product = _expanded_products(rows, cols, extra, slots)
            self.count = int(self.product.max()) + 1 if self.product.size else 0
        else:
            rows, cols, vals, geometry, in_shape, out_shape = what
            self.vals = vals
            self.product, shifts = _gathered_products(rows, cols, geometry, in_shape, out_shape)
            self.count = int(shifts.size)
            self.giants = np.where(shifts != 0, shifts, -1)


class _Layers:
    """The prunable weights (nn.Linear, nn.Conv1d, nn.Conv2d), numbered end to end; each weight's
    natural group (its kernel of a convolution, its row of a dense layer) and layer."""

    def __init__(self, model):
        self.modules = [(name, m) for name, m in model.named_modules()
                        if type(m).__name__ in PRUNABLE and getattr(m, "weight", None) is not None]
        seen, unique = set(), []
        for name, m in self.modules:  # a module used twice is one set of weights
            if id(m.weight) not in seen:
                seen.add(id(m.weight))
                unique.append((name, m))
        self.modules = unique
        sizes = [m.weight.numel() for _, m in self.modules]
        self.offsets = np.cumsum([0] + sizes)
        self.total = int(self.offsets[-1])
        group = np.empty(self.total, dtype=np.int64)  # first weight of the natural group
        layer = np.empty(self.total, dtype=np.int64)
        for index, (_, m) in enumerate(self.modules):
            lo, hi = self.offsets[index], self.offsets[index + 1]
            width = int(np.prod(m.weight.shape[1:])) if m.weight.dim() == 2 else int(np.prod(m.weight.shape[2:]))
            local = np.arange(hi - lo)
            group[lo:hi] = lo + local - local % width
            layer[lo:hi] = index
        self.group, self.layer = group, layer
        self.group_size = np.empty(self.total, dtype=np.int64)
        starts, counts = np.unique(group, return_counts=True)
        self.group_size = counts[np.searchsorted(starts, group)]

    def find_output(self, model, example) -> None:
        """The layer that computes the model's outputs (the last prunable module a forward calls):
        each of its rows (a class's logit) must keep weights, which fine-tuning cannot bring back."""
        import torch
        called, handles = [], []
        for index, (_, m) in enumerate(self.modules):
            handles.append(m.register_forward_hook(lambda mod, args, out, index=index: called.append(index)))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        self.output = called[-1] if called else None
        self.row = np.full(self.total, -1, dtype=np.int64)  # the output layer's row of each weight
        if self.output is not None:
            lo, hi = self.offsets[self.output], self.offsets[self.output + 1]
            rows = self.modules[self.output][1].weight.shape[0]
            self.row[lo:hi] = np.arange(hi - lo) // ((hi - lo) // rows)

    def weights(self) -> np.ndarray:
        return np.concatenate([m.weight.detach().cpu().double().numpy().ravel() for _, m in self.modules]) \
            if self.modules else np.zeros(0)

    def assign(self, model_layers, values: np.ndarray) -> None:
        """Write ``values`` (end to end) into the weights of ``model_layers`` (a copy's modules)."""
        import torch
        with torch.no_grad():
            for index, (_, m) in enumerate(model_layers):
                lo, hi = self.offsets[index], self.offsets[index + 1]
                m.weight.copy_(torch.as_tensor(values[lo:hi].reshape(m.weight.shape), dtype=m.weight.dtype))


class _Structure:
    """The slots program of the current model as blocks: for every ciphertext product, the weights
    that feed it (CSR ``p_ptr``/``p_w``; ``fixed`` products cannot be removed), and the rotation
    groups (a baby step of an input ciphertext, a giant step of an output ciphertext, a row shift
    of a gathered input) with their products. ``counts``: the program's exact op counts."""

    def __init__(self, model, layers: _Layers, shape, options: dict):
        weights = layers.weights()
        alive = weights != 0
        work = copy.deepcopy(model)
        work_layers = _Layers(work).modules
        # small integers, not all equal (the lowering treats a map of equal weights as a scalar),
        # so that every tag times them stays exact in float32
        ones = np.where(alive, np.random.default_rng(0).integers(1, 4, layers.total).astype(np.float64), 0.0)
        layers.assign(work_layers, ones)
        records, self.counts, self.slots = _lower(_export(work, shape), options)
        self.approximated = self.counts.pop("approximated")
        maps = [_Map(r, self.slots) for r in records]
        entries = sum(m.vals.size for m in maps)
        single = np.full(entries, -1, dtype=np.int64)  # the weight an entry comes from
        span = np.full((entries, 2), -1, dtype=np.int64)  # else the weights' range [lo, hi)
        v0 = np.concatenate([m.vals for m in maps]) if maps else np.zeros(0)
        position = np.arange(layers.total) - layers.group  # place in the natural group
        for start in range(0, max(layers.total, 1), TAG_CHUNK):
            stop = min(start + TAG_CHUNK, layers.total)
            chunk = np.zeros(layers.total, dtype=bool)
            chunk[start:stop] = True
            tags = ones.copy()
            tags[chunk] *= np.arange(2, stop - start + 2)
            squares = ones.copy()
            squares[chunk] *= (position[chunk] + 1.0) ** 2
            found = []
            for values in (tags, squares):
                layers.assign(work_layers, values)
                other, _, _ = _lower(_export(work, shape), dict(options, slots=self.slots))
                other = [_Map(r, self.slots) for r in other]
                if [m.vals.size for m in other] != [m.vals.size for m in maps]:
                    raise UserError("block_prune: the compiler laid the model out differently for two "
                                    "sets of the same non-zero weights; prune this model by hand")
                found.append(np.concatenate([m.vals for m in other]) if other else np.zeros(0))
            r1, r3 = found[0] / v0, found[1] / v0
            self._decode(layers, start, stop, r1, r3, single, span)
        self.maps = maps
        self._build(layers, maps, single, span, alive)

    @staticmethod
    def _decode(layers, start, stop, r1, r3, single, span):
        n = stop - start
        t = np.rint(r1)
        inside = (t >= 2) & (t < n + 2)
        ids = np.clip(t.astype(np.int64) - 2, 0, max(n - 1, 0)) + start
        u = (ids - layers.group[ids] + 1).astype(np.float64)
        one = inside & (np.abs(r1 - t) < 1e-3) & (np.abs(r3 - u * u) <= 1e-6 * u * u + 1e-3)
        single[one] = ids[one]
        outside = (np.abs(r1 - 1) < 1e-6) & (np.abs(r3 - 1) < 1e-6)  # weights of another chunk
        rest = ~one & ~outside & (single < 0) & (span[:, 0] < 0)
        if not np.any(rest):
            return
        # several weights: of one kernel or row (a weighted mean of its tags, variance >= 0), else
        # of one layer, else unknown (the product is then never removed)
        guess = np.clip(np.floor(r1).astype(np.int64) - 2, 0, max(n - 1, 0)) + start
        lo = layers.group[guess]
        hi = lo + layers.group_size[guess]
        mean_u = r1 - (lo - start + 2) + 1
        in_group = (rest & (r1 >= lo - start + 2 - 1e-6) & (r1 <= hi - start + 1 + 1e-6)
                    & (r3 - mean_u ** 2 >= -1e-6 * r3 - 1e-3))
        span[in_group, 0], span[in_group, 1] = lo[in_group], hi[in_group]
        layer = layers.layer[guess]
        llo, lhi = layers.offsets[layer], layers.offsets[layer + 1]
        in_layer = rest & ~in_group & (r1 >= np.maximum(llo, start) - start + 2 - 1e-6) \
            & (r1 <= np.minimum(lhi, stop) - start + 1 + 1e-6)
        span[in_layer, 0], span[in_layer, 1] = llo[in_layer], lhi[in_layer]
        unknown = rest & ~in_group & ~in_layer
        span[unknown, 0], span[unknown, 1] = 0, -2  # marks: never removed

    def _build(self, layers, maps, single, span, alive):
        offsets = np.cumsum([0] + [m.count for m in maps])
        self.products = int(offsets[-1])
        product = np.concatenate([m.product + o for m, o in zip(maps, offsets[:-1])]) if maps else np.zeros(0, int)
        self.fixed = np.zeros(self.products, dtype=bool)
        self.fixed[product[span[:, 1] == -2]] = True
        pairs = [np.stack([product[single >= 0], single[single >= 0]])]
        ranged = span[:, 1] >= 0
        if np.any(ranged):
            triples = np.unique(np.stack([product[ranged], span[ranged, 0], span[ranged, 1]]), axis=1)
            for p, lo, hi in triples.T:
                pairs.append(np.stack([np.full(hi - lo, p), np.arange(lo, hi)]))
        pairs = np.unique(np.concatenate(pairs, axis=1), axis=1)
        keep = alive[pairs[1]]
        pairs = pairs[:, keep]
        self.p_ptr = np.searchsorted(pairs[0], np.arange(self.products + 1))
        self.p_w = pairs[1]
        self.rotation_groups = []
        for index, m in enumerate(maps):
            for keys in (m.babies, m.giants):
                if keys is None:
                    continue
                for key in np.unique(keys[keys >= 0]):
                    self.rotation_groups.append(offsets[index] + np.flatnonzero(keys == key))
        self.multi = int(np.count_nonzero(single < 0))


class _Selection:
    """Greedy choice of blocks to zero (see the module docstring). Units are single products and
    rotation groups, and, when weights count (``weight_weight`` > 0), single weights; a unit's
    cost is the saliency of its live weights (the loss increase their removal predicts), its
    benefit what it removes: ``op_weight`` x its share of the program's products and rotations
    (weighted by ``op_costs``) plus ``weight_weight`` x its share of the weights. The cheapest unit
    per benefit goes first (re-scored lazily as blocks die). No layer keeps fewer than ``floor``
    of its weights or loses more than ``step`` of its live weights in one round, and no output of
    the output layer keeps fewer than OUTPUT_FLOOR of its inputs (a class whose logit lost its
    weights is lost for good: the fine-tuning keeps pruned weights at zero)."""

    def __init__(self, structure: _Structure, layers: _Layers, saliency: np.ndarray, alive: np.ndarray,
                 op_costs, op_weight: float, weight_weight: float, floor: float, step: float = 1.0):
        s = structure
        self.s, self.saliency, self.alive = s, saliency, alive.copy()
        self.c_product, self.c_rotation = op_costs
        n = s.products
        sizes = np.diff(s.p_ptr)
        live = np.zeros(n, dtype=np.int64)
        nonempty = sizes > 0
        if s.p_w.size:
            live[nonempty] = np.add.reduceat(self.alive[s.p_w].astype(np.int64), s.p_ptr[:-1][nonempty])
        live[s.fixed] += 1  # never reaches 0
        self.live = live
        order = np.argsort(s.p_w, kind="stable")  # weight -> the products it feeds
        self.w_products = np.repeat(np.arange(n), sizes)[order]
        self.w_ptr = np.searchsorted(s.p_w[order], np.arange(alive.size + 1))
        self.group_of = [[] for _ in range(n)]
        for index, members in enumerate(s.rotation_groups):
            for p in members.tolist():
                self.group_of[p].append(index)
        self.group_live = np.array([int(np.count_nonzero(live[g] > 0)) for g in s.rotation_groups], dtype=np.int64)
        self.units = [np.array([p]) for p in range(n)] + list(s.rotation_groups)
        self.unit_weights = [s.p_w[s.p_ptr[p]:s.p_ptr[p + 1]] for p in range(n)] + [
            np.unique(np.concatenate([s.p_w[s.p_ptr[p]:s.p_ptr[p + 1]] for p in g.tolist()]))
            for g in s.rotation_groups]
        total_ops = max(s.counts["products"] * self.c_product + s.counts["rotations"] * self.c_rotation, 1e-12)
        self.op_scale = op_weight / total_ops
        self.weight_scale = weight_weight / max(alive.size, 1)
        self.layer = layers.layer
        self.layer_alive = np.bincount(layers.layer[self.alive], minlength=len(layers.modules))
        self.layer_floor = np.maximum(np.ceil(floor * np.diff(layers.offsets)),
                                      np.ceil((1 - step) * self.layer_alive)).astype(np.int64)
        self.row = getattr(layers, "row", np.full(alive.size, -1, dtype=np.int64))
        rows = self.row[self.alive & (self.row >= 0)]
        self.row_alive = np.bincount(rows, minlength=int(self.row.max()) + 1 if self.row.size else 0)
        if self.row_alive.size:  # each output keeps a tenth of its inputs (at least ``floor``)
            width = int(np.count_nonzero(self.row == 0))
            self.row_floor = max(1, int(math.ceil(max(floor, OUTPUT_FLOOR) * width)))
        self.removed_products = 0
        self.removed_rotations = 0

    def ops_removed(self, unit: int) -> float:
        products = self.units[unit]
        live = products[self.live[products] > 0]
        if live.size == 0 or np.any(self.s.fixed[live]):
            return 0.0
        groups: dict[int, int] = {}
        for p in live.tolist():
            for g in self.group_of[p]:
                groups[g] = groups.get(g, 0) + 1
        rotations = sum(1 for g, k in groups.items() if k == self.group_live[g])
        return live.size * self.c_product + rotations * self.c_rotation

    def allowed(self, w: np.ndarray) -> bool:
        """Whether zeroing the live weights ``w`` keeps every layer and output above its floor."""
        per_layer = np.bincount(self.layer[w], minlength=self.layer_alive.size)
        if np.any((per_layer > 0) & (self.layer_alive - per_layer < self.layer_floor)):
            return False
        if self.row_alive.size:
            rows = self.row[w]
            per_row = np.bincount(rows[rows >= 0], minlength=self.row_alive.size)
            if np.any((per_row > 0) & (self.row_alive - per_row < self.row_floor)):
                return False
        return True

    def score(self, unit: int) -> float:
        ops = self.ops_removed(unit)
        if ops <= 0:
            return math.inf
        w = self.unit_weights[unit]
        w = w[self.alive[w]]
        if not self.allowed(w):
            return math.inf
        benefit = ops * self.op_scale + w.size * self.weight_scale
        return float(self.saliency[w].sum()) / benefit if benefit > 0 else math.inf

    def remove(self, w: np.ndarray) -> None:
        """Zero the live weights ``w``: products and rotation groups with no live weight left die."""
        w = w[self.alive[w]]
        self.alive[w] = False
        np.subtract.at(self.layer_alive, self.layer[w], 1)
        if self.row_alive.size:
            rows = self.row[w]
            np.subtract.at(self.row_alive, rows[rows >= 0], 1)
        if not w.size:
            return
        touched = np.concatenate([self.w_products[self.w_ptr[x]:self.w_ptr[x + 1]] for x in w.tolist()])
        np.subtract.at(self.live, touched, 1)
        for p in np.unique(touched).tolist():
            if self.live[p] == 0:
                self.removed_products += 1
                for g in self.group_of[p]:
                    self.group_live[g] -= 1
                    if self.group_live[g] == 0:
                        self.removed_rotations += 1

    def run(self, done) -> np.ndarray:
        """Remove units, cheapest first, until ``done(self)``; returns the weights still alive."""
        import heapq
        heap = [(self.score(u), u) for u in range(len(self.units))]
        heap = [entry for entry in heap if math.isfinite(entry[0])]
        heapq.heapify(heap)
        # single weights: their scores do not change within a round, so they wait in sorted order
        singles = np.flatnonzero(self.alive) if self.weight_scale > 0 else np.zeros(0, dtype=np.int64)
        single_scores = self.saliency[singles] / self.weight_scale if singles.size else np.zeros(0)
        order = np.argsort(single_scores, kind="stable")
        singles, single_scores = singles[order], single_scores[order]
        next_single = 0
        while not done(self):
            while next_single < singles.size and not self.alive[singles[next_single]]:
                next_single += 1
            single = single_scores[next_single] if next_single < singles.size else math.inf
            if not heap and not math.isfinite(single):
                break
            if heap and heap[0][0] <= single:
                _, unit = heapq.heappop(heap)
                fresh = self.score(unit)
                if not math.isfinite(fresh):
                    continue
                if fresh > min(heap[0][0] if heap else math.inf, single) * (1 + 1e-9):
                    heapq.heappush(heap, (fresh, unit))
                    continue
                w = self.unit_weights[unit]
                self.remove(w)
            else:
                w = singles[next_single:next_single + 1]
                next_single += 1
                if self.allowed(w):
                    self.remove(w)
        return self.alive


# --- data and training -----------------------------------------------------------------------

class _Data:
    """``data`` as (inputs, labels) batches: a pair of tensors or arrays, or a DataLoader of such
    pairs (its own batch size and order)."""

    def __init__(self, data, batch_size: int, seed: int, what: str = "data"):
        import torch
        self.loader, self.batch_size, self.what = None, batch_size, what
        self.generator = torch.Generator().manual_seed(seed)
        if isinstance(data, torch.utils.data.DataLoader):
            self.loader = data
            first = next(iter(data), None)
            if first is None:
                raise InputError(f"the DataLoader given as {what} yields no batch")
            self._split(first)
            return
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise InputError(f"{what} must be (inputs, labels) tensors or arrays or a torch DataLoader of "
                             f"(inputs, labels) batches; got {type(data).__name__}")
        self.inputs, self.labels = self._split(data)
        if len(self.inputs) == 0:
            raise InputError(f"{what} holds no inputs")

    def _split(self, batch):
        import torch
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise InputError(f"{self.what} must yield (inputs, labels) pairs; got {type(batch).__name__}")
        x, y = batch
        if not isinstance(x, (torch.Tensor, np.ndarray)) or not isinstance(y, (torch.Tensor, np.ndarray)):
            raise InputError(f"{self.what}: inputs and labels must be tensors or numpy arrays, got "
                             f"{type(x).__name__} and {type(y).__name__}")
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if not x.is_floating_point() or x.dim() < 2:
            raise InputError(f"{self.what}: inputs must be a float tensor (N, ...), got {x.dtype} of shape "
                             f"{tuple(x.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dim() != 1 or len(y) != len(x):
            raise InputError(f"{self.what}: labels must be N class indices (an integer tensor of shape "
                             f"({len(x)},)), got {y.dtype} of shape {tuple(y.shape)}")
        if len(y) and int(y.min()) < 0:
            raise InputError(f"{self.what}: labels must be class indices >= 0")
        if not torch.isfinite(x).all():
            raise InputError(f"{self.what}: inputs hold NaN or infinite values")
        return x.float(), y.long()

    def per_epoch(self) -> int:
        if self.loader is not None:
            try:
                return max(len(self.loader), 1)
            except TypeError:
                return 100
        return -(-len(self.inputs) // self.batch_size)

    def batches(self, count: int):
        """``count`` batches, cycling through the data in a fresh order each pass."""
        import torch
        done = 0
        while done < count:
            if self.loader is not None:
                source = (self._split(b) for b in self.loader)
            else:
                order = torch.randperm(len(self.inputs), generator=self.generator)
                source = ((self.inputs[order[i:i + self.batch_size]], self.labels[order[i:i + self.batch_size]])
                          for i in range(0, len(order), self.batch_size))
            empty = True
            for batch in source:
                empty = False
                yield batch
                done += 1
                if done >= count:
                    return
            if empty:
                return

    def example(self):
        return next(self.batches(1))[0]

    def sample(self, n: int) -> np.ndarray:
        """Up to ``n`` inputs (in order): calibration data for the compiler."""
        import torch
        if self.loader is None:
            return self.inputs[:n].numpy()
        taken, total = [], 0
        for x, _ in (self._split(b) for b in self.loader):
            taken.append(x)
            total += len(x)
            if total >= n:
                break
        return torch.cat(taken)[:n].numpy()


def _accuracy(model, data: _Data) -> float:
    import torch
    model.eval()
    device = _device(model)
    correct = total = 0
    with torch.no_grad():
        if data.loader is None:
            pairs = ((data.inputs[i:i + 1000], data.labels[i:i + 1000]) for i in range(0, len(data.inputs), 1000))
        else:
            pairs = (data._split(b) for b in data.loader)
        for x, y in pairs:
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            total += len(y)
    return correct / max(total, 1)


def _saliency(model, layers: _Layers, data: _Data, samples: int) -> np.ndarray:
    """Per weight, the loss increase zeroing it predicts (optimal brain damage with the empirical
    Fisher): 1/2 mean over ``samples`` inputs of (w dL_n/dw)^2, from per-sample gradients
    (``torch.func``; micro-batches of 8 where it does not apply), plus a tenth of each layer's
    total as a magnitude prior (w^2 scaled to the layer's Fisher mass), which orders weights whose
    gradient vanishes."""
    import torch
    import torch.nn.functional as F
    names = {id(p): name for name, p in model.named_parameters()}
    weights = [m.weight for _, m in layers.modules]
    keys = [names.get(id(w)) for w in weights]
    total = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    device = _device(model)
    was_training = model.training
    model.eval()
    seen = 0
    try:
        from torch.func import functional_call, grad, vmap
        if None in keys:
            raise TypeError("a weight is not a parameter of the model")
        fixed = {k: v.detach() for k, v in model.named_parameters()}
        fixed.update(dict(model.named_buffers()))

        def loss(chosen, x, y):
            out = functional_call(model, {**fixed, **chosen}, (x[None],))
            return F.cross_entropy(out, y[None])
        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
        chosen = {k: w.detach() for k, w in zip(keys, weights)}
        for x, y in _samples(data, samples, 64):
            g = per_sample(chosen, x.to(device), y.to(device))
            for acc, k, w in zip(total, keys, weights):
                acc += ((w.detach().double() * g[k].double()) ** 2).sum(0)
            seen += len(x)
    except Exception:  # a model torch.func cannot transform: micro-batches
        total = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
        seen = 0
        for x, y in _samples(data, samples, 8):
            x, y = x.to(device), y.to(device)
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights, allow_unused=True)
            for acc, w, g in zip(total, weights, grads):
                if g is not None:
                    acc += len(x) * (w.detach().double() * g.double()) ** 2
            seen += len(x)
    model.train(was_training)
    fisher = 0.5 * np.concatenate([t.cpu().numpy().ravel() for t in total]) / max(seen, 1)
    w2 = layers.weights() ** 2
    out = fisher.copy()
    for index in range(len(layers.modules)):
        lo, hi = layers.offsets[index], layers.offsets[index + 1]
        mass, energy = fisher[lo:hi].sum(), w2[lo:hi].sum()
        if energy > 0:
            prior = 0.1 * (mass if mass > 0 else 1.0) / energy
            out[lo:hi] += prior * w2[lo:hi]
    return out


def _samples(data: _Data, count: int, size: int):
    """Batches of ``size`` (from the data's own order: a DataLoader's batches are cut) until
    ``count`` inputs."""
    done = 0
    for x, y in data.batches(count):  # lazily: ends at count inputs
        for i in range(0, len(x), size):
            if done >= count:
                return
            yield x[i:i + size], y[i:i + size]
            done += len(x[i:i + size])


def _device(model):
    import torch
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _fine_tune(model, teacher, layers: _Layers, masks, data: _Data, steps: int, lr: float, alpha: float,
               temperature: float, structure: _Structure | None = None, group_decay: float = 0.0) -> float:
    """``steps`` batches of AdamW (cosine-decaying rate, gradients clipped to norm 1) on
    (1 - alpha) CE + alpha T^2 KL(teacher || student), plus ``group_decay`` x the sum over the
    products of ``structure`` of the L2 norm of the weights feeding each (a group lasso: it drives
    whole blocks towards zero, so that the next round removes them cheaply), the pruned weights
    held at zero; the last batches' mean loss (without the group term)."""
    import torch
    import torch.nn.functional as F
    if steps <= 0:
        return float("nan")
    groups = None
    if structure is not None and group_decay > 0 and structure.p_w.size:
        device = _device(model)
        groups = (torch.as_tensor(structure.p_w, device=device),
                  torch.as_tensor(np.repeat(np.arange(structure.products), np.diff(structure.p_ptr)), device=device),
                  structure.products)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    weights = [m.weight for _, m in layers.modules]
    model.train()
    losses = []
    device = _device(model)
    for x, y in data.batches(steps):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss = F.cross_entropy(out, y)
        if teacher is not None and alpha > 0:
            with torch.no_grad():
                soft = F.log_softmax(teacher(x) / temperature, dim=1)
            kl = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, log_target=True, reduction="batchmean")
            loss = (1 - alpha) * loss + alpha * temperature ** 2 * kl
        total = loss
        if groups is not None:
            flat = torch.cat([w.reshape(-1) for w in weights])
            norms = torch.zeros(groups[2], dtype=flat.dtype, device=flat.device).index_add_(
                0, groups[1], flat[groups[0]] ** 2)
            total = loss + group_decay * torch.sqrt(norms + 1e-12).sum()
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for w, mask in zip(weights, masks):
                w.mul_(mask)
        losses.append(loss.detach().item())
    model.eval()
    tail = losses[-max(len(losses) // 4, 1):]
    return float(np.mean(tail))


# --- the API ----------------------------------------------------------------------------------

COMPILE_OPTIONS = ("scale_bits", "weight_scale_bits", "max_rotation_keys", "activation_degree",
                   "approx_error", "activation_margin", "objective")
CALIBRATION_INPUTS = 64


def _target(target):
    """("sparsity", s) | ("ops", n) | ("latency", seconds)."""
    if isinstance(target, bool):
        raise UserError(f"target must be a sparsity in (0, 1), an HE-operation count or a latency such as "
                        f"'0.2s'; got {target!r}")
    if isinstance(target, (int, np.integer)):
        if target < 1:
            raise UserError(f"an HE-operation target must be a positive count of products and rotations, got {target}")
        return "ops", int(target)
    if isinstance(target, (float, np.floating)):
        if not (0.0 < target < 1.0):
            raise UserError(f"a sparsity target must lie in (0, 1), got {target!r} (an HE-operation count is an int)")
        return "sparsity", float(target)
    if isinstance(target, str):
        text = target.strip().lower()
        for unit, factor in (("ms", 1e-3), ("s", 1.0)):
            if text.endswith(unit):
                try:
                    seconds = float(text[:-len(unit)]) * factor
                except ValueError:
                    break
                if seconds > 0 and math.isfinite(seconds):
                    return "latency", seconds
                break
        raise UserError(f"a latency target is a positive time such as '0.25s' or '250ms', got {target!r}")
    raise UserError(f"target must be a sparsity in (0, 1) (float), an HE-operation count (int) or a predicted "
                    f"latency ('0.25s'); got {type(target).__name__}")


def _program_counts(program) -> dict[str, int]:
    from ..passes.lower_to_ckks import slots_op_counts
    return slots_op_counts(program.graph)


def _program_seconds(program) -> float:
    """Predicted server evaluation seconds per input (hecc's cost model: stored costs, else the
    modeled ones)."""
    from ..costmodel import modeled_costs
    from ..report import predict_seconds, primitive_costs
    params = program.parameters
    costs = primitive_costs(params, measure=False) or modeled_costs(params["poly_modulus_degree"],
                                                                     params["coeff_modulus_bits"])
    return float(predict_seconds(program.graph, costs)["eval"])


def _op_costs(program) -> tuple[float, float]:
    """Relative seconds of a product (multiply by a plaintext vector, and its add) and of a
    rotation (and its add) at the program's parameters."""
    from ..costmodel import modeled_costs
    from ..report import primitive_costs
    params = program.parameters
    costs = primitive_costs(params, measure=False) or modeled_costs(params["poly_modulus_degree"],
                                                                     params["coeff_modulus_bits"])
    add = float(np.mean(costs["add"]))
    return float(np.mean(costs["multiply_vector"])) + add, float(np.mean(costs["rotate"])) + add


def _compile(model, shape, calibration, options: dict):
    from ..api import compile as compile_model
    program = compile_model(_export(model, shape), calibration=calibration, layout="slots", **options)
    if "slots" not in program.layouts:
        why = program.artifact.manifest.get("layout_unavailable", {}).get("slots") or \
            program.artifact.manifest.get("not_encrypted_because", "")
        raise UserError(f"block_prune: the model does not compile to the slots layout ({why})")
    return program


def block_prune(model, program_or_layout, target, data, *, rounds: int = 8, epochs: float = 1.0,
                final_epochs: float | None = None, lr: float = 2e-3, batch_size: int = 128,
                alpha: float = 0.5, temperature: float = 4.0, floor: float = 0.02, step: float = 0.35,
                group_decay: float = 0.0, max_accuracy_drop: float | None = None,
                saliency_samples: int = 1024, eval_data=None, seed: int = 0, objective: str | None = None,
                teacher=None, progress=None):
    """A copy of ``model`` whose Linear and Conv weights are pruned in the blocks the compiled
    slots program turns into ciphertext products and rotations, fine-tuned in between, until
    ``target`` is met (see the module docstring). The model is a classifier (logits, class labels).

    ``program_or_layout``: a compiled hecc ``Program`` of the model (its slots program's ring and
    compile options are used) or ``"slots"`` (the model is compiled first). ``target``: a float in
    (0, 1) is the sparsity of the prunable weights (single weights count too: blocks and weights
    are ranked together, by saliency per share of the operations and weights they remove); an
    int, the products (``ckks.mul_plain``) plus rotations of the compiled slots program (blocks
    only); a string such as ``"0.2s"`` or ``"200ms"``, the server evaluation time per input that
    hecc's cost model predicts (blocks only, a rotation weighed as the cost model prices it).
    ``data``: (inputs, labels) tensors or arrays, or a DataLoader of such batches (fine-tuning,
    saliencies, measured on ``saliency_samples`` inputs, and the compiler's calibration).
    ``objective``: the compile option the slots programs are lowered with ("time" or
    "operations", see ``hecc.compile``; default: the given program's, else "time"). With
    "operations" the compiler weighs a product and a rotation alike, as an operation-count target
    does; with "time" it may trade a rotation for ten products.

    ``rounds`` of pruning follow a schedule that reaches the target at the last; each is followed
    by ``epochs`` passes of fine-tuning, and ``final_epochs`` (default ``epochs``) end it: AdamW at
    ``lr``, (1 - alpha) cross-entropy + alpha distillation from ``teacher`` (default: ``model``) at
    ``temperature``, plus ``group_decay`` x the sum of the L2 norms of the blocks (a group lasso).
    When pruning a pruned model further, the network it came from (the original, or the model
    ``he_friendly`` made) is the better teacher. No layer keeps fewer than ``floor`` of its
    weights, and no round prunes more than ``step`` of a layer's live weights; up to ``rounds``
    more rounds follow while the target is not met. A round that removes no
    operation (or predicted time), because the compiler lays the sparser maps out otherwise, is
    undone and tried again with half its step, up to MAX_RETRIES times in a row (smaller steps
    often keep the compiler's layout: the HE-friendly LeNet-5 went from 133 to 105 operations in
    steps where one step of 18 made it 150); a round after which the accuracy on ``eval_data``
    falls more than ``max_accuracy_drop`` (a fraction: 0.01 is a point) below the model's, or a
    last retry that removes nothing, is undone, and pruning stops there (a ``HeccWarning`` says
    the target was not met). ``eval_data`` (same forms): accuracy measured before, after each
    round and at the end. ``progress(message)`` gets a line per round. Deterministic for a given
    ``seed`` (the caller's random state is left as it was).

    Returns an ordinary ``torch.nn.Module`` (zeros in its weights, no hooks or pruning
    reparametrization), in eval mode, with a ``hecc_pruning`` dict: products, rotations, predicted
    seconds, non-zero parameters and accuracy before and after (from compiling the model and the
    pruned one), and each round's counts, densities and accuracy.
    """
    import torch
    import torch.nn as nn
    kind, goal = _target(target)
    if not isinstance(model, nn.Module):
        raise UserError(f"block_prune needs a torch.nn.Module, got {type(model).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise UserError(f"block_prune: teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    for name, value, ok in (("rounds", rounds, isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1),
                            ("epochs", epochs, isinstance(epochs, (int, float)) and epochs >= 0),
                            ("final_epochs", final_epochs, final_epochs is None or (
                                isinstance(final_epochs, (int, float)) and final_epochs >= 0)),
                            ("lr", lr, isinstance(lr, (int, float)) and lr > 0),
                            ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1),
                            ("alpha", alpha, isinstance(alpha, (int, float)) and 0 <= alpha <= 1),
                            ("temperature", temperature, isinstance(temperature, (int, float)) and temperature > 0),
                            ("floor", floor, isinstance(floor, (int, float)) and 0 <= floor < 1),
                            ("step", step, isinstance(step, (int, float)) and 0 < step <= 1),
                            ("group_decay", group_decay, isinstance(group_decay, (int, float)) and group_decay >= 0),
                            ("max_accuracy_drop", max_accuracy_drop, max_accuracy_drop is None or (
                                isinstance(max_accuracy_drop, (int, float)) and 0 <= max_accuracy_drop <= 1)),
                            ("saliency_samples", saliency_samples, isinstance(saliency_samples, int)
                             and saliency_samples >= 1)):
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"block_prune: {name} = {value!r} is out of range")
    train = _Data(data, batch_size, seed)
    evaluation = None if eval_data is None else _Data(eval_data, 1000, seed, "eval_data")
    if max_accuracy_drop is not None and evaluation is None:
        raise UserError("block_prune: max_accuracy_drop needs eval_data to measure the accuracy on")
    from ..api import Program
    if isinstance(program_or_layout, Program):
        if "slots" not in program_or_layout.layouts:
            raise UserError(f"block_prune prunes for the slots layout, and this program holds only "
                            f"{', '.join(program_or_layout.layouts) or 'no encrypted layout'}; compile "
                            "the model with layout='slots' (or 'auto')")
        program = program_or_layout.with_layout("slots")
        options = {k: v for k, v in program.artifact.manifest.get("options", {}).items()
                   if k in COMPILE_OPTIONS and v is not None}
    elif isinstance(program_or_layout, str):
        if program_or_layout != "slots":
            raise UserError(f"block_prune prunes in the blocks of the slots layout; give 'slots' or a "
                            f"compiled Program, not {program_or_layout!r} (the batch layout skips every "
                            "zero weight already: prune it without blocks)")
        program, options = None, {}
    else:
        raise UserError(f"program_or_layout must be a compiled hecc Program or 'slots', got "
                        f"{type(program_or_layout).__name__}")
    if objective is not None:
        from ..options import CompileOptions
        CompileOptions(objective=objective).checked()  # OptionError (a UserError) names the choices
        if options.get("objective", "time") != objective:
            program = None  # compiled again under this objective
        options["objective"] = objective
    say = progress or (lambda message: None)
    started = time.perf_counter()
    student = copy.deepcopy(model).eval()
    layers = _Layers(student)
    if not layers.total:
        raise UserError("block_prune found no nn.Linear or nn.Conv1d/2d weights to prune in the model")
    example = train.example()
    shape = tuple(example.shape[1:])
    layers.find_output(student, example[:2].to(_device(student)))
    calibration = train.sample(CALIBRATION_INPUTS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if program is None:
            program = _compile(student, shape, calibration, options)
        params = program.parameters
        slots = params["poly_modulus_degree"] // 2 // int(params.get("inputs_per_ciphertext", 1))
        lowering = {"slots": slots, "objective": options.get("objective", "time")}
        before = _program_counts(program)
        costs = _op_costs(program) if kind == "latency" else (1.0, 1.0)
        seconds_before = _program_seconds(program)
        teacher = copy.deepcopy(model if teacher is None else teacher).eval().requires_grad_(False) \
            if alpha > 0 else None
        accuracy_before = _accuracy(student, evaluation) if evaluation is not None else None
        weights0 = layers.weights()
        params_before = _nonzero_parameters(student)
        masks = [(m.weight != 0).to(m.weight.dtype) for _, m in layers.modules]  # zeros stay zero
        structure = _Structure(student, layers, shape, lowering)
        # polynomials the compiler fits to non-polynomial activations multiply by constants: the
        # structure's lowering (quadratics) counts fewer such products than the program
        offset = before["products"] - structure.counts["products"] if structure.approximated else 0
        if not structure.approximated and structure.counts["products"] != before["products"]:
            import warnings
            from ..errors import HeccWarning
            warnings.warn(f"the program given has {before['products']} products by plaintext vectors, but this "
                          f"model lowers to {structure.counts['products']}: is it the program of this model?",
                          HeccWarning, stacklevel=3)
        start_ops = structure.counts["products"] + structure.counts["rotations"] + offset
        history = []
        steps = max(int(round(epochs * train.per_epoch())), 0)

        def measure():
            count = structure.counts["products"] + structure.counts["rotations"]
            if kind == "sparsity":
                return float(np.mean(layers.weights() == 0))
            if kind == "ops":
                return count + offset
            return _program_seconds(_compile(student, shape, calibration, options))

        def met(value) -> bool:
            return value >= goal if kind == "sparsity" else value <= goal

        value = measure() if kind != "latency" else seconds_before
        say(f"block_prune: {layers.total} prunable weights in {len(layers.modules)} layers; slots program: "
            f"{before['products']} products, {before['rotations']} rotations; target {kind} {goal}")
        r, shrink, retries = 0, 1.0, 0
        while r < 2 * rounds and not met(value):
            r += 1
            fraction = min(r / rounds, 1.0)
            if kind == "sparsity":
                aim = goal * (1 - (1 - fraction) ** 3)
            elif kind == "ops":
                aim = start_ops * (goal / start_ops) ** (1 - (1 - fraction) ** 2) if goal < start_ops else goal
            else:
                aim = value * (goal / value) ** (1 / max(rounds - r + 1, 1)) if value > goal else goal
            if kind != "sparsity" and aim < value:
                aim = value - (value - aim) * shrink
            snapshot = (copy.deepcopy(student.state_dict()), [mask.clone() for mask in masks], structure, value)
            alive = layers.weights() != 0
            # a weight of a layer already sparse costs more: OBD's sum underestimates what the last
            # weights of a layer are worth, and a layer pruned to nothing breaks the network
            density = np.bincount(layers.layer[alive], minlength=len(layers.modules)) / np.diff(layers.offsets)
            saliency = _saliency(student, layers, train, saliency_samples) / np.maximum(density, 1e-6)[layers.layer]
            weight_weight = 1.0 if kind == "sparsity" else 0.0
            selection = _Selection(structure, layers, saliency, alive, costs, 1.0, weight_weight, floor, step)
            exact = ((structure.counts["products"] + offset) * costs[0] + structure.counts["rotations"] * costs[1])
            if kind == "sparsity":
                def reached(s):
                    return np.mean(~s.alive) >= aim
            elif kind == "ops":
                def reached(s):
                    return exact - s.removed_products - s.removed_rotations <= aim
            else:
                ratio = aim / value

                def reached(s):
                    return exact - s.removed_products * costs[0] - s.removed_rotations * costs[1] <= ratio * exact
            kept = selection.run(reached)
            for index, mask in enumerate(masks):
                lo, hi = layers.offsets[index], layers.offsets[index + 1]
                mask.copy_(torch.as_tensor(kept[lo:hi].reshape(mask.shape), dtype=mask.dtype, device=mask.device))
            with torch.no_grad():
                for (_, m), mask in zip(layers.modules, masks):
                    m.weight.mul_(mask)
            loss = _fine_tune(student, teacher, layers, masks, train, steps, lr, alpha, temperature,
                              structure, group_decay)
            structure = _Structure(student, layers, shape, lowering)
            value = measure()
            now = layers.weights() != 0
            record = {"round": r, "aim": aim, "sparsity": float(np.mean(~now)),
                      "density": {name: float(np.mean(now[lo:hi])) for (name, _), lo, hi
                                  in zip(layers.modules, layers.offsets[:-1], layers.offsets[1:])},
                      "products": structure.counts["products"] + offset, "rotations": structure.counts["rotations"],
                      "loss": loss, "seconds": time.perf_counter() - started}
            if kind == "latency":
                record["predicted_seconds"] = value
            if evaluation is not None:
                record["accuracy"] = _accuracy(student, evaluation)
            # a round that removed no operation (the compiler laid the sparser maps out otherwise) or
            # cost more accuracy than allowed is undone, and pruning stops there
            why, retry = None, False
            if kind != "sparsity" and value >= snapshot[3]:
                why = f"it removed nothing ({'operations' if kind == 'ops' else 'predicted time'} {value:.4g} >= {snapshot[3]:.4g})"
                retry = retries < MAX_RETRIES
            elif (max_accuracy_drop is not None and accuracy_before is not None
                  and record["accuracy"] < accuracy_before - max_accuracy_drop):
                why = (f"accuracy fell to {record['accuracy']:.4f}, more than {max_accuracy_drop} below "
                       f"{accuracy_before:.4f}")
            if why is not None:
                record["undone"] = why
            history.append(record)
            say(f"block_prune round {r}: sparsity {record['sparsity']:.3f}, {record['products']} products, "
                f"{record['rotations']} rotations"
                + (f", predicted {value * 1e3:.0f} ms" if kind == "latency" else "")
                + f" (aim {aim:.4g}), loss {loss:.4f}"
                + (f", accuracy {record['accuracy']:.4f}" if evaluation is not None else "")
                + f", {record['seconds']:.0f} s; density " + ", ".join(f"{k} {v:.3f}" for k, v in record["density"].items()))
            if why is not None:
                state, saved, structure, value = snapshot
                student.load_state_dict(state)
                for mask, old_mask in zip(masks, saved):
                    mask.copy_(old_mask)
                if retry:
                    shrink, retries = shrink / 2, retries + 1
                    record["undone"] += "; tried again with half the step"
                    say(f"block_prune: round {r} undone ({why}); trying again with half the step")
                    continue
                say(f"block_prune: round {r} undone ({why}); stopping")
                break
            retries = 0
        final_steps = max(int(round((epochs if final_epochs is None else final_epochs) * train.per_epoch())), 0)
        _fine_tune(student, teacher, layers, masks, train, final_steps, lr, alpha, temperature)
        after = _compile(student, shape, calibration, options)
        counts = _program_counts(after)
        seconds_after = _program_seconds(after)
    final = {"products": counts["products"], "rotations": counts["rotations"]}
    value = {"sparsity": float(np.mean(layers.weights() == 0)), "ops": sum(final.values()),
             "latency": seconds_after}[kind]
    if not met(value):
        import warnings
        from ..errors import HeccWarning
        warnings.warn(f"block_prune did not reach the target {kind} {goal} in {r} rounds (reached {value:.4g}); "
                      "give more rounds or a looser target", HeccWarning, stacklevel=2)
    student.hecc_pruning = {
        "target": {kind: goal}, "rounds": history,
        "before": {"products": before["products"], "rotations": before["rotations"],
                   "predicted_seconds": seconds_before, "parameters": params_before,
                   "prunable_weights": int(np.count_nonzero(weights0)), "accuracy": accuracy_before},
        "after": {**final, "predicted_seconds": seconds_after, "parameters": _nonzero_parameters(student),
                  "prunable_weights": int(np.count_nonzero(layers.weights())),
                  "accuracy": _accuracy(student, evaluation) if evaluation is not None else None},
        "seconds": time.perf_counter() - started,
    }
    say(f"block_prune: {before['products']} -> {final['products']} products, {before['rotations']} -> "
        f"{final['rotations']} rotations, {params_before} -> {student.hecc_pruning['after']['parameters']} "
        f"non-zero parameters in {student.hecc_pruning['seconds']:.0f} s")
    return student.eval()


MAX_RETRIES = 2  # rounds in a row undone for removing nothing, each retried with half the step


def _nonzero_parameters(model) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))
