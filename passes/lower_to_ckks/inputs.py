"""How the client lays out an input for the first linear map that reads it, in the slots layout:
periodic (the tensor's placement, repeated over the ciphertext; the server rotates), periodic
with the client's baby steps (the input also sent rotated by each baby step of the map's plan),
expanded (im2col-style: at each output's slot, the pixel of one tap; no rotation), or gathered
(``gather``: taps that differ by whole output rows share a ciphertext; a rotation per output
row). The client may copy pixels freely: encrypting a ciphertext costs about what a rotation
does, so the plan costs choose; except for a model whose whole work is one linear map (a linear
classifier or regressor), whose cost is mostly what the client sends: its input goes periodic, in
as few ciphertexts as hold it.
"""
from __future__ import annotations

import numpy as np

from hecc.ir import CipherType, Op, Value

from .affine import Affine, TooLarge
from .diagonal import MAX_INPUT_CIPHERTEXTS, Part, Plan, Unfit, doublings
from .gather import GatherPlan, gather_plan
from .placement import Placement, blocked_grid, compact


def one_linear_map(graph) -> bool:
    """Whether the tensor graph is affine in its secret inputs: no product of two secret values
    and no polynomial, so its slots program is one linear map per output."""
    for op in graph.ops:
        if op.name == "tensor.poly":
            return False
        if op.name in ("tensor.mul", "tensor.matmul", "tensor.div", "tensor.conv2d") and sum(
                bool(getattr(v.type, "secret", False)) for v in op.operands) >= 2:
            return False
    return True


class Relayout(Exception):
    """An input laid out for one linear map is needed by another: lower again with it periodic."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class InputLayouts:
    """The slots lowering's input layouts (a mixin of ``SlotsLowering``)."""

    def lay_out_input(self, placeholder: Value, aff: Affine, rows, cols, vals, parts, want):
        """How the client lays out an input for its first linear map (the layout is chosen at
        the input's first use, whichever the plan costs say is cheapest): ("periodic", the
        input's ciphertext value, None or (output placement, baby step) when the client also
        sends its baby steps), or ("expanded" | "gather", None, the gather plan)."""
        source = self.placeholders[placeholder]
        name = source.attrs["name"]
        if placeholder in self.input_values:
            kind, value = self.input_values[placeholder]
            if kind != "periodic":
                raise Relayout(name)
            return "periodic", value, None
        shape = source.result.type.shape
        periodic = blocked_grid(shape, self.slots) or compact(int(np.prod(shape, dtype=np.int64)), self.slots)
        c = self.costs
        out = want or self.default_placement(aff)
        cts = self.expanded_ciphertexts(rows, out)
        per_ct = max(self.slots // out.period, 1)
        options = [(cts * (c["encrypt"] + c["multiply_plain"] + c["add"])
                    + out.cts * int(np.log2(per_ct)) * (c["rotate"] + c["add"]), "expanded", None)]
        gathered = gather_plan(aff.geometry, shape, aff.shape, out, rows, cols, vals, self.slots)
        if gathered is not None:
            options.append((gathered.layout.shape[0] * c["encrypt"] + gathered.rotations * c["rotate"]
                            + len(gathered.products) * (c["multiply_plain"] + c["add"]), "gather", gathered))
        trial = Part(placeholder, periodic, rows, cols, vals)
        for candidate in ([want] if want is not None else self.candidates(aff, parts + [trial])):
            try:
                plan = Plan(parts + [trial], candidate, self.slots)
            except (TooLarge, Unfit):
                continue
            options.append((plan.cost(self.steps, costs=c) + periodic.cts * c["encrypt"], "periodic",
                            (candidate, None)))
            if periodic.cts == 1:
                mine = frozenset(i for i, (part, _) in enumerate(plan.inputs) if part == len(parts))
                g, cost = plan.client_step(self.steps, mine, c)
                options.append((cost, "babies", (candidate, g)))
        taps = int(np.max(np.bincount(rows, minlength=1))) if rows.size else 0
        forced = name in self.periodic_inputs or (rows.size and np.array_equal(rows, cols) and taps == 1)
        if forced or cts > MAX_INPUT_CIPHERTEXTS:
            options = [o for o in options if o[1] not in ("expanded", "gather")] or options
        if one_linear_map(self.src):
            # the whole model is this map: what the client sends dominates its cost, so the input
            # goes densely packed in one periodic ciphertext (not a ciphertext per tap group, nor
            # rotated copies), a few server rotations instead
            options = [o for o in options if o[1] == "periodic"] or options
        _, kind, plan = min(options, key=lambda o: o[0])
        if kind in ("expanded", "gather"):
            return kind, None, plan
        if kind == "periodic":
            return "periodic", self.input_value(placeholder, periodic), plan
        chosen, g = plan
        full = Plan(parts + [Part(placeholder, periodic, rows, cols, vals)], chosen, self.slots)
        index = next(i for i, (part, _) in enumerate(full.inputs) if part == len(parts))
        babies = full.babies(g).get(index, [0])
        return "periodic", self.input_value(placeholder, periodic, babies), (chosen, g)

    def input_value(self, placeholder: Value, placement: Placement | None = None, babies=()) -> Value:
        """The input laid out periodically (``placement``, default its channel blocks); with
        ``babies``, the client also sends it rotated by each of these steps (one ciphertext
        each), so that the first map's baby steps cost the server nothing."""
        if placeholder in self.input_values:
            return self.input_values[placeholder][1]
        source = self.placeholders[placeholder]
        shape = source.result.type.shape
        placement = placement or blocked_grid(shape, self.slots) or compact(
            int(np.prod(shape, dtype=np.int64)), self.slots)
        layout = np.full((placement.cts, self.slots), -1, dtype=np.int64)
        index = np.arange(placement.pos.size)
        for start in range(0, self.slots, placement.period):  # every period holds a copy
            layout[placement.pos // self.slots, start + placement.pos % self.slots] = index
        steps = [b for b in babies if b]
        if steps:
            layout = np.concatenate([layout] + [np.roll(layout[:1], -b, axis=1) for b in steps])
        inp = self.emit_input(source, layout)
        if placement.cts == 1:
            value = self.typed("ckks.extract", [inp], {"index": 0}, inp.type.but(shape=tuple(shape)))
            self.client_babies[value] = {b: self.typed("ckks.extract", [inp], {"index": i + 1},
                                                       inp.type.but(shape=tuple(shape)))
                                         for i, b in enumerate(steps)}
        else:
            value = inp
        self.placement[value] = placement
        self.input_values[placeholder] = ("periodic", value)
        self.max_abs[value] = self.max_abs.get(placeholder, float("nan"))
        return value

    def expanded_ciphertexts(self, rows, out: Placement) -> int:
        """Input ciphertexts an expanded layout needs for weights in ``rows`` into ``out``."""
        per_ct = max(self.slots // out.period, 1)
        co = out.pos[rows] // self.slots if rows.size else np.zeros(0, int)
        total = 0
        for c in range(out.cts):
            taps = np.bincount(rows[co == c]).max() if np.any(co == c) else 0
            total += -(-int(taps) // per_ct)
        return max(total, 1)

    def expanded_map(self, placeholder: Value, rows, cols, vals, out: Placement, shape) -> Value:
        """A linear map of an input laid out expanded: tap t of output element i in its own
        input ciphertext group, slot (t % per_ct) * q + s_i (q the output's period)."""
        source = self.placeholders[placeholder]
        per_ct = max(self.slots // out.period, 1)
        q = out.period
        order = np.lexsort((cols, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        first = np.searchsorted(rows, rows)  # index of each row's first tap
        tap = np.arange(rows.size) - first
        pos = out.pos[rows]
        co, slot = pos // self.slots, pos % self.slots
        groups = []  # per output ciphertext: its input ciphertexts
        for c in range(out.cts):
            mine = co == c
            taps = int(tap[mine].max()) + 1 if np.any(mine) else 1
            groups.append(-(-taps // per_ct))
        offsets = np.cumsum([0] + groups)
        layout = np.full((offsets[-1], self.slots), -1, dtype=np.int64)
        weights = np.zeros((offsets[-1], self.slots))
        ct = offsets[co] + tap // per_ct
        at = (tap % per_ct) * q + slot
        layout[ct, at] = cols
        weights[ct, at] = vals
        inp = self.emit_input(source, layout)
        self.input_values[placeholder] = ("expanded", inp)
        plain = self.constant("taps", weights)
        results = []
        for c in range(out.cts):
            total = None
            for index in range(offsets[c], offsets[c + 1]):
                piece = self.typed("ckks.extract", [inp], {"index": int(index)}, inp.type.but(shape=tuple(shape)))
                term = self.typed("ckks.mul_plain", [piece], {"plain": plain, "row": int(index),
                                                              "weight_scale": self.weight_bits})
                total = term if total is None else self.typed("ckks.add", [total, term], {})
            results.append(self.rotate_and_sum(total, [b * q for b in doublings(self.slots // q)]))
        return self._joined(results, out)

    def gathered_map(self, placeholder: Value, plan: GatherPlan, out: Placement, shape) -> Value:
        """A linear map of an input the client gathered (``gather``): per rotation by m output
        rows, the sum of the gathered ciphertexts' products, in Horner form."""
        source = self.placeholders[placeholder]
        inp = self.emit_input(source, plan.layout)
        self.input_values[placeholder] = ("gather", inp)
        table = self.constant("gathered", np.asarray([w for _, _, w in plan.products]))
        pieces = {}
        sums: dict[int, Value] = {}
        for row, (g, m, _) in enumerate(plan.products):
            if g not in pieces:
                pieces[g] = self.typed("ckks.extract", [inp], {"index": g}, inp.type.but(shape=tuple(shape)))
            term = self.typed("ckks.mul_plain", [pieces[g]], {"plain": table, "row": row,
                                                              "weight_scale": self.weight_bits})
            sums[m] = term if m not in sums else self.typed("ckks.add", [sums[m], term], {})
        shifts = sorted(sums, reverse=True)
        acc, previous = sums[shifts[0]], shifts[0]
        for m in shifts[1:]:
            acc = self.typed("ckks.rotate", [acc], {"step": (previous - m) * plan.row_step})
            acc = self.typed("ckks.add", [acc, sums[m]], {})
            previous = m
        if previous:
            acc = self.typed("ckks.rotate", [acc], {"step": previous * plan.row_step})
        return self._joined([acc], out)

    def emit_input(self, source: Op, layout: np.ndarray) -> Value:
        name = source.attrs["name"]
        layout_name = self.constant("layout.", layout.astype(np.int64))
        t = CipherType((layout.shape[0],), 0, self.scale_bits, self.slots)
        op = Op("hecc.input", [], [t], {"name": name, "shape": list(source.result.type.shape),
                                        "layout": layout_name})
        self.out.ops.insert(len(self.input_ops), op)
        self.input_ops.append((self.src.ops.index(source), op))
        self.max_abs[op.result] = self.ranges.get(source.result, float("nan"))
        return op.result

