"""Average pooling by rotations, in the slots layout: the alternative to folding a pooling into
the next linear map.

Folded (the affine forms' default), a 2x2 average pooling before a convolution or a dense layer
makes every weight of that map read four input slots: four diagonals where there was one, so a
convolution whose taps are 2 grid rows and columns apart (after a stride-2 pooling) spends four
products per (channel offset, tap) (LeNet-5's second convolution: 484 products). Summed first,
P = A + rot(A, x) then P + rot(P, y) on the activation's ciphertext A holds at the slot of each
window's first element the sum of its window, in log2(kh) + log2(kw) rotations and no product or
level (the 1/(kh kw) joins the next map's weights); the next map then reads one slot per weight.
Which is cheaper depends on the next map (a dense map from a small period has every diagonal
already), so the pooled tensor keeps both forms (``Affine.alt``) through the affine ops after it,
and the map that materializes them prices both plans and emits the cheaper.

Applies to a pooling without padding whose kernel sides are powers of two, of a ciphertext value
(not an input) on a grid, times a number plus any bias, when every window's elements lie where the
rotations bring them from (in the window's ciphertext, its rows and columns the grid's strides
apart): only real elements are then summed into the slots the next map reads.
"""
from __future__ import annotations

import numpy as np

from hecc.errors import UnsupportedOpError
from hecc.ir import Op, Value

from .affine import Affine, TooLarge, block_entries
from .diagonal import Part, Plan, Unfit
from .sparse import Sparse, avgpool_matrix


class PoolingByRotation:
    """The slots lowering's pooling alternative (a mixin of ``SlotsLowering``): ``pooled_alt``
    makes the alternative form, ``alternative_after`` carries it through an affine op, and
    ``cheaper_form`` chooses at the map."""

    def summed_pooling(self, x, pool, shape) -> None:
        """Not the batch layout's sums by unit weights (a ciphertext is a whole tensor here):
        ``pooled_alt`` sums by rotations instead."""
        return None

    def pooled_alt(self, op: Op, x) -> Affine | None:
        """The form of ``op`` (a tensor.avgpool of ``x``) over a window sum yet to be computed,
        or None where the alternative does not apply."""
        if not isinstance(x, Affine) or len(x.bases) != 1 or not x.elementwise:
            return None
        scale = x.diagonals()[0]
        if scale.size == 0 or np.ptp(scale) > 0:
            return None
        a = x.bases[0]
        placed = self.placement.get(a)
        kh, kw = (int(k) for k in op.attrs["kernel"])
        sy, sx = (int(s) for s in op.attrs["strides"])
        if (a in self.placeholders or placed is None or placed.grid is None
                or any(op.attrs["pads"]) or kh * kw < 2 or kh & (kh - 1) or kw & (kw - 1)
                or len(x.shape) != 4 or x.shape[0] != 1):
            return None
        _, c, h, w = x.shape
        _, _, oh, ow = op.result.type.shape
        if (oh - 1) * sy + kh > h or (ow - 1) * sx + kw > w:
            return None
        grid = placed.grid
        pos = placed.pos.reshape(c, h, w)
        anchors = pos[:, :(oh - 1) * sy + 1:sy, :(ow - 1) * sx + 1:sx]
        for dy in range(kh):  # every element a window sums is where the rotations take it from
            for dx in range(kw):
                near = pos[:, dy:dy + (oh - 1) * sy + 1:sy, dx:dx + (ow - 1) * sx + 1:sx]
                if (np.any(near != anchors + dy * grid.ys + dx * grid.xs)
                        or np.any(near // self.slots != anchors // self.slots)):
                    return None
        steps = [grid.xs * d for d in _doublings(kw)] + [grid.ys * d for d in _doublings(kh)]
        window = Value(a.type)  # computed only if chosen (``window_sum``)
        self.placement[window] = placed
        self.window_sums[window] = (a, steps)
        ch, oy, ox = np.meshgrid(np.arange(c), np.arange(oh), np.arange(ow), indexing="ij")
        rows = ((ch * oh + oy) * ow + ox).ravel()
        cols = ((ch * h + oy * sy) * w + ox * sx).ravel()
        matrix = Sparse(rows, cols, np.full(rows.size, scale[0] / (kh * kw)), (c * oh * ow, c * h * w))
        bias = None if x.bias is None else self._bias_through(avgpool_matrix(op, x.shape)[0], x.bias)
        form = Affine([window], matrix, bias, op.result.type.shape)
        form.geometry = x.geometry.window((sy, sx), op.attrs["pads"]) if x.geometry is not None else None
        return form

    def alternative_after(self, op: Op, forms: list) -> Affine | None:
        """The alternative form of an affine op's result when an operand has one: the op applied
        to the alternatives (the other operands as they are), or None."""
        if not any(isinstance(f, Affine) and f.alt is not None for f in forms):
            return None
        forms = [f.alt if isinstance(f, Affine) and f.alt is not None else f for f in forms]
        try:
            alt = self.affine_form(op, forms)
        except TooLarge:
            return None
        if isinstance(alt, Affine):
            alt.geometry = self.geometry_after(op, forms, alt)
            return alt
        return None

    def cheaper_form(self, aff: Affine, want) -> Affine:
        """``aff`` or its alternative, whichever map costs less with the window sums it needs;
        the chosen alternative's window sums are emitted and stand in its bases."""
        alt = aff.alt
        if any(b in self.placeholders for b in aff.bases + alt.bases):
            return aff
        sums = [b for b in alt.bases if b in self.window_sums and b not in self.window_values]
        mine, theirs = self._map_cost(aff, want), self._map_cost(alt, want)
        if theirs is None or mine is not None and mine <= theirs + self._sums_cost(sums):
            return aff
        values = {b: self.window_sum(b) for b in alt.bases if b in self.window_sums}
        chosen = Affine([values.get(b, b) for b in alt.bases], alt.matrix, alt.bias, alt.shape, alt.geometry)
        return chosen

    def _map_cost(self, aff: Affine, want) -> float | None:
        """The plan cost of the map computing ``aff``; None when it has no weight or does not fit."""
        parts = []
        for base, block in aff.parts():
            rows, cols, vals = block_entries(block)
            if vals.size:
                parts.append(Part(base, self.placement[base], rows, cols, vals))
        if not parts:
            return None
        try:
            if want is not None:
                return Plan(parts, want, self.slots).cost(self.steps, costs=self.costs)
            return self.cheapest(aff, parts)[1]
        except (TooLarge, Unfit, UnsupportedOpError):
            return None

    def _sums_cost(self, windows: list[Value]) -> float:
        c = self.costs
        steps = [s for w in windows for s in self.window_sums[w][1] for _ in range(self.placement[w].cts)]
        return len(steps) * (c["rotate"] + c["add"]) + len(set(steps) - self.steps) * c["key"]

    def window_sum(self, window: Value) -> Value:
        """The ciphertext of a window sum (emitted once)."""
        if window not in self.window_values:
            a, steps = self.window_sums[window]
            z, bound, placed = a, self.max_abs.get(a, float("nan")), self.placement[a]
            for step in steps:
                bound *= 2
                z = self._add_ct(z, self._placed(self.typed("ckks.rotate", [z], {"step": step}), placed), bound)
            self.window_values[window] = z
        return self.window_values[window]


def _doublings(k: int) -> list[int]:
    """Rotation steps (in units of one element) that sum k consecutive elements, k a power of two:
    z + rot(z, 1), then + rot(., 2), ..."""
    out, d = [], 1
    while d < k:
        out.append(d)
        d *= 2
    return out
