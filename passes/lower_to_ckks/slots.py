"""The slots layout (LoLa's packing, over one or more ciphertexts): one input's tensor in the slots
of one ciphertext, or of several when it is larger, linear maps by the generalized diagonal method
between placements (see ``SlotsLowering``).
"""
from __future__ import annotations

import numpy as np

from hecc.errors import PassError, UnsupportedOpError
from hecc.ir import OPS, CipherType, Graph, Op, TensorType, Value

from .affine import Affine, TooLarge, block_entries
from .batch import AFFINE_OPS, ELEMENTWISE_AFFINE, Lowering
from .diagonal import MAX_INPUT_CIPHERTEXTS, Part, Plan, Unfit, fits, plan_costs
from .inputs import InputLayouts, Relayout
from .placement import (Geometry, Placement, blocked_grid, compact, gathered, multiplexed, next_pow2, row_stride,
                        rows, spanned)
from .pooling import PoolingByRotation
from .sparse import Sparse

MIN_MERGED_WEIGHT_BITS = 16


def merged_weight_bits(scale_bits: int) -> int:
    """The slots layout's default weight scale: the largest w with scale_bits + 2w <= 60, so that
    a linear map and the product after it share one 60-bit prime (insert-rescale); at least
    MIN_MERGED_WEIGHT_BITS (a vector is encoded with an error of about 0.3 sqrt(N) / 2^w per
    slot), else the waterline scale itself (each linear map then gets its own prime)."""
    w = (60 - int(scale_bits)) // 2
    return w if w >= MIN_MERGED_WEIGHT_BITS else int(scale_bits)


class SlotsLowering(InputLayouts, PoolingByRotation, Lowering):
    """The slots layout: one input's tensors in the slots of one or a few ciphertexts.

    Every ciphertext value has a ``Placement``: a slot for each element, over one ciphertext
    (whose content may repeat with a period, a power of two: then every rotation is cyclic within
    the data) or several. A linear map (any fused chain of affine tensor ops: conv, dense,
    pooling, flatten, BN) is the generalized diagonal method between placements (``diagonal``):
    for each output ciphertext, sum over input ciphertexts and non-zero diagonals k of
    D_k * rotate(x, k), baby-step giant-step, the baby steps of each input ciphertext computed
    once for every output ciphertext, and, when the output's period is shorter than the input's,
    a rotate-and-sum over its blocks. The output's placement is the cheapest of a few candidates
    (compact; channel blocks of a power of two; for a convolution or pooling, multiplexed on its
    input's grid), a new rotation key counting as a cost. An average pooling of a ciphertext is
    either folded into the next map or summed by rotations first (``pooling``), whichever that
    map's plan costs say is cheaper. Baby steps rotate the previous baby
    and giant steps are in Horner form, so a map needs few distinct steps. The input is laid out
    by the client, who may copy pixels: for the first linear map it is either periodic, or
    expanded (im2col-style: tap t of output i in slot t*q + s_i, over as many ciphertexts as the
    taps need), whichever the plan costs say is cheaper; then that map is C products and
    log2(slots/q) rotations. During the lowering a ciphertext value has the shape of the tensor it
    holds; at the end every value but the inputs becomes one ciphertext, or a tensor of them.
    """

    LAYOUT = "slots"
    # no baby-step giant-step split: with a prime per linear map (weights and values at 2^26),
    # the map summing q1 costs a level of its own (LeNet-5: depth 21 -> 25, 17.1 -> 18.6 s)
    BABY_STEP_MAX = None

    def __init__(self, graph: Graph, options: dict):
        super().__init__(graph, options)
        self.slots = int(options["slots"])
        self.weight_bits = int(options.get("weight_scale_bits") or merged_weight_bits(self.scale_bits))
        if self.slots < 1 or self.slots & (self.slots - 1):
            raise PassError(f"slots must be a power of two, got {self.slots}")
        self.periodic_inputs = set(options.get("periodic_inputs", ()))
        self.placement: dict[Value, Placement] = {}
        self.placeholders: dict[Value, Op] = {}
        self.input_values: dict[Value, tuple[str, Value]] = {}
        self.input_ops: list[tuple[int, Op]] = []
        self.steps: set[int] = set()
        self.client_babies: dict[Value, dict[int, Value]] = {}  # an input's rotations the client sent
        self.window_sums: dict[Value, tuple[Value, list[int]]] = {}  # pooling: (ciphertext, steps)
        self.window_values: dict[Value, Value] = {}  # the window sums emitted
        self.to_client = False  # materializing a value the client decrypts
        self.costs = plan_costs(options.get("objective"))
        self.count = 0
        self.prefix = str(options.get("constant_prefix", ""))

    def fail_size(self, what: str, n: int):
        raise UnsupportedOpError({what: []}, {what: f"{n} values are too many for the slots layout of "
                                              "this version"})

    def typed(self, name: str, operands, attrs, result_type=None, shape=None) -> Value:
        """Append op ``name``; its type is ``result_type``, or inferred (with ``shape``, the
        logical shape of the tensor the result holds, if given)."""
        if name == "ckks.rotate":
            self.steps.add(attrs["step"])
        if result_type is None:
            opdef = OPS[name]
            full = {k: opdef.attr(attrs, k) for k in opdef.attrs}
            result_type = opdef.infer([x.type for x in operands], full)[0]
            if shape is not None:
                result_type = result_type.but(shape=tuple(shape))
        return self.out.append(name, operands, [result_type], attrs).result

    def emit(self, name: str, operands, attrs=None) -> Value:
        value = super().emit(name, operands, attrs)
        placed = [self.placement[v] for v in operands if v in self.placement]
        if placed:  # elementwise: the operands share a placement (the longest period holds)
            self.placement[value] = max(placed, key=lambda p: p.period)
        return value

    def base_form(self, ct: Value) -> Affine:
        form = Affine.of(ct)
        placed = self.placement.get(ct)
        if placed is not None and placed.grid is not None:
            form.geometry = Geometry(placed.grid, 1, 1, 0, 0)
        return form

    def constant(self, stem: str, array: np.ndarray) -> str:
        """A new constant's name (with the option ``constant_prefix``, so that two programs of
        one artifact never share a name)."""
        self.count += 1
        name = f"{self.prefix}{stem}{self.count}"
        while name in self.src.constants or name in self.out.constants:
            self.count += 1
            name = f"{self.prefix}{stem}{self.count}"
        self.out.constants[name] = array
        return name

    # --- ops -----------------------------------------------------------------------------------
    def lower_op(self, op: Op) -> None:
        if op.name == "hecc.input":
            t = op.result.type
            placeholder = Value(CipherType(t.shape, 0, self.scale_bits, self.slots))
            self.placeholders[placeholder] = op
            form = Affine.of(placeholder)
            grid = blocked_grid(t.shape, self.slots)
            if grid is not None:
                form.geometry = Geometry(grid.grid, 1, 1, 0, 0)
            self.env[op.result] = form
            self.max_abs[placeholder] = self.ranges.get(op.result, float("nan"))
            return
        forms = [self.env.get(v) for v in op.operands]
        super().lower_op(op)
        form = self.env.get(op.result) if op.results else None
        if op.name in AFFINE_OPS and isinstance(form, Affine) and not form.is_base:  # not a product
            form.geometry = self.geometry_after(op, forms, form)
            form.alt = (self.pooled_alt(op, forms[0]) if op.name == "tensor.avgpool"
                        else self.alternative_after(op, forms))

    def geometry_after(self, op: Op, forms: list, result: Affine):
        """Where ``result``, an affine op's result from operand ``forms``, lies on its input's
        grid (see ``Geometry``)."""
        x = forms[0]
        if not isinstance(x, Affine) or x.geometry is None or len(x.shape) != 4:
            if op.name in ELEMENTWISE_AFFINE:
                return result.geometry
            return None
        if op.name in ("tensor.conv2d", "tensor.avgpool"):
            return x.geometry.window(op.attrs["strides"], op.attrs["pads"])
        if op.name == "tensor.pad":
            pads = op.attrs["pads"]
            if pads[0] == pads[1] == pads[4] == pads[5] == 0:
                return x.geometry.padded(pads[2], pads[3])
            return None
        if op.name in ELEMENTWISE_AFFINE and tuple(op.result.type.shape) == x.shape:
            secret = [f for f in forms if isinstance(f, Affine)]
            return x.geometry if all(f.geometry == x.geometry for f in secret) else None
        return None

    def poly(self, op: Op) -> None:
        """As in the batch layout, then the sum of the terms (T_1 as its ciphertext) becomes one
        ciphertext here: the next linear map then rotates one input instead of one per term."""
        super().poly(op)
        form = self.env[op.result]
        if isinstance(form, Affine) and len(form.bases) > 1:
            try:
                ct = self.mat(form, self.ranges.get(op.result, float("nan")),
                              want=self.placement.get(form.bases[0]))
            except Unfit:
                ct = self.mat(form, self.ranges.get(op.result, float("nan")))
            self.set_ct(op.result, ct)

    def t1_term(self, t: Affine, ct: Value) -> Affine:
        """T_1 as its ciphertext: its form would rotate the layer's input again."""
        return self.base_form(ct)

    def secret_matmul(self, op: Op) -> None:
        """A product of two encrypted matrices (attention's Q K^T and A V; numpy.matmul over ranks
        2 and more, batch dimensions broadcast): C = sum over t < k of L_t * R_t, where L_t holds
        A[..., i, t] and R_t holds B[..., t, j] at the slot of every C[..., i, j]. The operands
        are materialized in rows of rho slots (rho the power of two that holds a row of A, of B
        and of C), A[..., i, t] at (batch * n + i) * rho + t, B[..., t, j] at (batch * k + t) * rho
        + j, and C takes C[..., i, j] at (batch * n + i) * rho + j: L_t is then a map with the m
        diagonals t - j and R_t one with the diagonals rho (t - i) plus the batch offsets, far
        fewer than between placements chosen apart. 2k maps and k ciphertext products: one level
        for the operands, one for the maps and one for the products."""
        a, b, sa, sb = self.matmul_operands(op)
        shape = tuple(op.result.type.shape)
        n, k, m = sa[-2], sa[-1], sb[-1]
        size = int(np.prod(shape, dtype=np.int64))
        batches, rho = size // (n * m), next_pow2(max(k, m))
        placements = []
        for shape_of in (shape[:-2] + (n, k), shape[:-2] + (k, m), shape):
            placed = rows(shape_of, rho, self.slots)
            if placed is None or placed.cts > MAX_INPUT_CIPHERTEXTS:
                self.fail(op, f"a product of two encrypted {n} x {k} and {k} x {m} matrices is too large for "
                              "the slots layout of this version")
            placements.append(placed)
        forms = [self.base_form(self.mat(self.env[v], self.ranges.get(v, float("nan")), want=placed))
                 for v, placed in zip((a, b), placements)]
        out = placements[2]
        batch, i, j = np.unravel_index(np.arange(size), (batches, n, m))
        bound = k * self.ranges.get(a, float("nan")) * self.ranges.get(b, float("nan"))
        total = None
        for t in range(k):
            factors = []
            for form, cols in ((forms[0], (batch * n + i) * k + t), (forms[1], (batch * k + t) * m + j)):
                copy = Sparse(np.arange(size), cols, np.ones(size), (size, form.size))
                factors.append(self.mat(self.compose(form, copy, None, shape), float("nan"), want=out))
            term = self._placed(self.emit("ckks.mul", factors), out)
            total = term if total is None else self._add_ct(total, term, bound)
        self.set_ct(op.result, total)
        if not np.isfinite(self.max_abs[total]):
            self.max_abs[total] = bound

    def product(self, op: Op, a: Value, b: Value) -> None:
        """Both factors in one placement (the first factor's)."""
        if a is b:
            return super().product(op, a, b)
        shape = op.result.type.shape
        a, b = self.broadcast(a, shape), self.broadcast(b, shape)
        x = self.materialize(a)
        try:
            y = self.mat(self.env[b], self.ranges.get(b, float("nan")), want=self.placement[x])
        except Unfit:  # x's spans cannot gather b's inputs: both factors in a placement without spans
            common = self.default_placement(self.env[b])
            x = self.mat(self.base_form(x), self.max_abs.get(x, float("nan")), want=common)
            y = self.mat(self.env[b], self.ranges.get(b, float("nan")), want=common)
        self.set_ct(op.result, self.emit("ckks.mul", [x, y]))

    def tensor_operand(self, v: Value) -> Value:
        if v not in self.decrypted and isinstance(self.env[v], Affine):
            self.to_client = True
            try:
                ct = self.materialize(v)
            finally:
                self.to_client = False
            placed = self.placement[ct]
            attrs = {"shape": list(v.type.shape), "layout": self.constant("result.", placed.pos.copy())}
            self.decrypted[v] = self.typed("ckks.decrypt", [ct], attrs, TensorType(v.type.shape, True))
        return super().tensor_operand(v)

    # --- linear maps ---------------------------------------------------------------------------
    def mat(self, aff: Affine, max_abs: float, checks_interval: bool = False, want: Placement | None = None) -> Value:
        if aff.alt is not None:
            aff = self.cheaper_form(aff, want)
        base = aff.bases[0]
        if (aff.is_base and base not in self.placeholders
                and (want is None or self.placement[base].same(want))):
            return base
        scalar = self.scalar_map(aff, want)
        if scalar is not None:
            self.max_abs[scalar] = max_abs if np.isfinite(max_abs) else self.max_abs.get(scalar, float("nan"))
            return scalar
        parts, inputs = [], []
        for base, block in aff.parts():
            rows, cols, vals = block_entries(block)
            if base in self.placeholders:
                inputs.append((base, rows, cols, vals))
            elif vals.size:
                parts.append(Part(base, self.placement[base], rows, cols, vals))
        expanded, hint = [], None
        for placeholder, rows, cols, vals in inputs:
            kind, laid, plan = self.lay_out_input(placeholder, aff, rows, cols, vals, parts, want)
            if kind == "periodic":
                hint = plan
                parts.append(Part(laid, self.placement[laid], rows, cols, vals))
            else:
                expanded.append((placeholder, rows, cols, vals, kind, plan))
        if not parts and not expanded:  # the zero map
            base = aff.bases[0]
            if base in self.placeholders:
                base = self.input_value(base)
            parts = [Part(base, self.placement[base], np.zeros(1, int), np.zeros(1, int), np.zeros(1))]
        g = None
        if want is not None:
            out = want
            if not fits(parts, want):  # the caller places the value otherwise
                raise Unfit("the placement asked for cannot gather this map's inputs")
        elif expanded:
            out = self.default_placement(aff)
        elif hint is not None and len(inputs) == 1:
            out, g = hint
        else:
            out = self.cheapest(aff, parts)[0]
        total, bound = None, 0.0
        for placeholder, rows, cols, vals, kind, plan in expanded:
            bound += self._bound(placeholder, rows, vals, aff.size)
            if kind == "gather":
                part = self.gathered_map(placeholder, plan, out, aff.shape)
            else:
                part = self.expanded_map(placeholder, rows, cols, vals, out, aff.shape)
            total = part if total is None else self._add_ct(total, part, bound)
        if parts:
            bound += sum(self._bound(p.key, p.rows, p.vals, aff.size) for p in parts)
            try:
                plan = Plan(parts, out, self.slots, g)
            except TooLarge as exc:
                raise UnsupportedOpError({"a linear map": []}, {"a linear map": f"{exc} are too many "
                                         "for the slots layout of this version"}) from None
            part = self.matvec(plan, aff.shape)
            total = part if total is None else self._add_ct(total, part, bound)
        self.placement[total] = out
        bias = aff.bias_vector()
        if np.any(bias) or checks_interval:
            attrs = {"plain": self.constant("bias", self.plain_table(out, bias))}
            if checks_interval:
                attrs["checks_interval"] = self.constant("interval.", out.pos.copy())
            total = self._placed(self.typed("ckks.add_plain", [total], attrs, total.type), out)
            bound += float(np.max(np.abs(bias)))
        self.max_abs[total] = max_abs if np.isfinite(max_abs) else bound
        return total

    def scalar_map(self, aff: Affine, want: Placement | None) -> Value | None:
        """An elementwise form whose weights and bias are each one number, over bases in one
        placement: products by constants (a constant vector is a constant polynomial, encoded
        exactly at the fewest bits that hold it; 1 is no product, 2 a sum), no rotation, and the
        junk slots between elements scaled alike; or None for any other form."""
        if not aff.elementwise or any(b in self.placeholders for b in aff.bases):
            return None
        placed = self.placement[aff.bases[0]]
        if any(not self.placement[b].same(placed) for b in aff.bases) or (want is not None and not want.same(placed)):
            return None
        vectors, bias = aff.diagonals(), aff.bias_vector()
        if any(np.ptp(v) > 0 for v in vectors) or np.ptp(bias) > 0 or placed.pos.size != aff.size:
            return None
        total, bound = None, 0.0
        for base, vector in zip(aff.bases, vectors):
            c = float(vector[0]) if vector.size else 0.0
            if c == 0.0:
                continue
            term = self.times_constant(base, c)
            bound += abs(c) * self.max_abs.get(base, 1.0)
            total = term if total is None else self._add_ct(total, term, bound)
        if total is None:
            return None
        if bias.size and bias[0] != 0:
            total = self._placed(self.typed("ckks.add_plain", [total], {"plain": self.constant(
                "bias", np.full((1, 1), float(bias[0])))}, total.type), placed)
        self.max_abs[total] = bound + (abs(float(bias[0])) if bias.size else 0.0)
        return total

    def times_constant(self, x: Value, c: float) -> Value:
        """x * c for a constant c: x itself, a sum (2), or a product by c encoded at the fewest
        bits (up to the weight scale) that hold it exactly."""
        if c == 1.0:
            return x
        if c == 2.0:
            return self._placed(self.typed("ckks.add", [x, x], {}, x.type), self.placement[x])
        bits = next((k for k in range(self.weight_bits) if (c * 2.0 ** k) % 1.0 == 0), self.weight_bits)
        y = self.typed("ckks.mul_plain", [x], {"plain": self.constant("scalar", np.full((1, 1), c)),
                                                "weight_scale": bits})
        return self._placed(y, self.placement[x])

    def _bound(self, base, rows, vals, size) -> float:
        sums = np.bincount(rows, weights=np.abs(vals), minlength=size)
        return float(np.max(sums * self.max_abs.get(base, 1.0))) if sums.size else 0.0

    def _add_ct(self, a: Value, b: Value, bound: float) -> Value:
        total = self.typed("ckks.add", [a, b], {})
        self.max_abs[total] = bound
        self.placement[total] = self.placement.get(a)
        return total

    def _placed(self, value: Value, placement: Placement) -> Value:
        self.placement[value] = placement
        return value

    def plain_table(self, placement: Placement, vector) -> np.ndarray:
        """A vector over the elements as plaintext rows of ``placement``: one row per
        ciphertext (its period long), the element values at their slots."""
        width = placement.period
        table = np.zeros((placement.cts, width))
        pos = placement.pos
        table[pos // self.slots, pos % self.slots] = vector
        return table

    def default_placement(self, aff: Affine) -> Placement:
        """An expanded map's output: channel blocks (for the next convolution), unless packing
        the elements end to end needs fewer ciphertexts or a shorter period (fewer input
        ciphertexts: the client's taps fill the rest)."""
        grid, flat = blocked_grid(aff.shape, self.slots), compact(aff.size, self.slots)
        if grid is None or (flat.cts, flat.period) < (grid.cts, grid.period):
            return flat
        return grid

    def candidates(self, aff: Affine, parts: list[Part]) -> list[Placement]:
        """Output placements worth pricing: multiplexed on the input's grid (a convolution or
        pooling), channel blocks, compact; single-ciphertext ones also with longer periods, up
        to the inputs' (a shorter rotate-and-sum); for a value the client decrypts, also gathered
        from the inputs' period (``placement.gathered``)."""
        found = []
        g = aff.geometry
        if g is not None and all(p.placement.grid == g.grid for p in parts):
            found.append(multiplexed(g, aff.shape, self.slots))
        periods = {p.placement.period for p in parts}
        found += [blocked_grid(aff.shape, self.slots), compact(aff.size, self.slots),
                  spanned(aff.size, min(periods), self.slots) if len(periods) == 1 else None]
        if len(aff.shape) >= 2:  # rows of the inputs' stride, or of the row's length
            strides = {row_stride(p.placement) for p in parts} | {next_pow2(aff.shape[-1])}
            found += [rows(aff.shape, stride, self.slots) for stride in sorted(strides - {None})]
        found = [c for c in found if c is not None]
        top = max(p.placement.period for p in parts)
        longer = []
        for c in found:
            period = c.period
            if self.to_client and c.cts == 1 and not c.span and period < top:
                longer.append(gathered(c, top))
            while c.cts == 1 and not c.span and period < top:
                period *= 2
                longer.append(c.with_period(period))
        return found + longer

    def cheapest(self, aff: Affine, parts: list[Part]):
        """(placement, cost) of the cheapest output placement for ``parts``."""
        best = None
        for candidate in self.candidates(aff, parts):
            try:
                cost = Plan(parts, candidate, self.slots).cost(self.steps, costs=self.costs)
            except (TooLarge, Unfit):
                continue
            if best is None or cost < best[1]:
                best = (candidate, cost)
        if best is None:
            raise UnsupportedOpError({"a linear map": []}, {"a linear map": "its diagonals are too many "
                                     "for the slots layout of this version"})
        return best

    def matvec(self, plan: Plan, shape) -> Value:
        """Emit ``plan``: per output ciphertext, the sum over its inputs' baby steps of products
        by pre-rotated diagonals, giant steps in Horner form, then the rotate-and-sum."""
        w = self.weight_bits
        g, out = plan.g, plan.out
        inputs, ks, cos = plan._product_fields()
        babies: dict[tuple[int, int], Value] = {}
        for index, steps in plan.babies().items():
            part_index, ct = plan.inputs[index]
            x = self._ciphertext(plan.parts[part_index].key, ct)
            sent = self.client_babies.get(x, {})
            babies[(index, 0)] = x
            for before, after in zip(steps, steps[1:]):
                babies[(index, after)] = sent[after] if after in sent else self.typed(
                    "ckks.rotate", [babies[(index, before)]], {"step": after - before})
        results = []
        order = np.lexsort((inputs, ks, cos))
        name = self.constant("diagonals", np.zeros((0, plan.length)))
        table = []  # the product of each row of the weights, in the order the products are emitted
        for co in range(out.cts):
            mine = order[cos[order] == co]
            inner: dict[int, Value] = {}
            for at in mine.tolist():
                k = int(ks[at])
                i, j = k % g, k // g
                table.append(at)
                x = babies[(int(inputs[at]), i)]
                term = self.typed("ckks.mul_plain", [x], {"plain": name, "row": len(table) - 1, "weight_scale": w},
                                  shape=shape)
                inner[j] = term if j not in inner else self.typed("ckks.add", [inner[j], term], {})
            if not inner:  # an output ciphertext no weight reaches: zeros
                x = next(iter(babies.values()), None) or self._ciphertext(plan.parts[0].key, 0)
                table.append(-1)
                inner[0] = self.typed("ckks.mul_plain", [x], {"plain": name, "row": len(table) - 1,
                                                              "weight_scale": w}, shape=shape)
            giants = sorted(inner, reverse=True)
            acc, previous = inner[giants[0]], giants[0]
            for j in giants[1:]:
                acc = self.typed("ckks.rotate", [acc], {"step": (previous - j) * g})
                acc = self.typed("ckks.add", [acc, inner[j]], {})
                previous = j
            last = plan.last_step(previous, g)
            if last:
                acc = self.typed("ckks.rotate", [acc], {"step": last})
            results.append(self.rotate_and_sum(acc, plan.sum_steps()))
        self.out.constants[name] = plan.diagonal_rows(np.array(table, dtype=np.int64), g)
        return self._joined(results, out)

    def _joined(self, results: list[Value], out: Placement) -> Value:
        """The output ciphertexts as one value (during the lowering, of the tensor's shape)."""
        if len(results) == 1:
            return self._placed(results[0], out)
        joined = self.typed("ckks.concat", results, {"axis": 0}, results[0].type)
        return self._placed(joined, out)

    def _ciphertext(self, value: Value, ct: int) -> Value:
        """Ciphertext ``ct`` of a value (the value itself when it has one)."""
        if self.placement[value].cts == 1:
            return value
        return self.typed("ckks.extract", [value], {"index": ct}, value.type)

    def rotate_and_sum(self, z: Value, steps: list[int]) -> Value:
        """z + rot(z, t) for each step t in turn: with ``diagonal.doublings`` of p / q blocks of q
        slots, every block of a p-periodic z summed into each (period q)."""
        for step in steps:
            z = self.typed("ckks.add", [z, self.typed("ckks.rotate", [z], {"step": step})], {})
        return z

    def finish(self) -> None:
        for placeholder in self.placeholders:
            if placeholder not in self.input_values:  # an input nothing reads: still part of the API
                self.input_value(placeholder)
        ordered = [op for _, op in sorted(self.input_ops, key=lambda pair: pair[0])]
        rest = [op for op in self.out.ops if op.name != "hecc.input"]
        self.out.ops = ordered + rest
        for op in self.out.ops:
            if op.name == "hecc.input":
                continue
            for v in op.results:
                if isinstance(v.type, CipherType):
                    placed = self.placement.get(v)
                    cts = placed.cts if placed is not None else 1
                    v.type = v.type.but(shape=(cts,) if cts > 1 else ())
