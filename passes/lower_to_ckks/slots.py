"""The slots layout (LoLa's packing): one input's tensor in the slots of one ciphertext, linear
maps by the generalized diagonal method (see ``SlotsLowering``).
"""
from __future__ import annotations

import numpy as np

from hecc.errors import PassError, UnsupportedOpError
from hecc.ir import OPS, CipherType, Graph, Op, TensorType, Value

from .affine import Affine, TooLarge
from .batch import Lowering
from .diagonal import MAX_INPUT_CIPHERTEXTS, PLAN_COSTS, baby_step, diagonal_entries, diagonals, next_pow2

class Relayout(Exception):
    """An input laid out for one linear map is needed by another: lower again with it periodic."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class SlotsLowering(Lowering):
    """The slots layout: one input's tensors in the slots of one ciphertext (LoLa's packing).

    A ciphertext value of n elements is stored periodically: element i in every slot s with
    s mod p = i, for a power of two p >= n (other slots of a period hold bounded values that are
    never read with a non-zero weight). Periodic storage makes every rotation cyclic within the
    data, so a linear map (any fused chain of affine tensor ops: conv, dense, pooling, flatten,
    BN) is the generalized diagonal method: sum_k D_k * rotate(x, k) over the non-zero diagonals
    (zero diagonals, e.g. pruned blocks, are skipped), baby-step giant-step, and, when the output
    is shorter than the input period, a rotate-and-sum over its blocks. Baby steps rotate the
    previous baby and giant steps are in Horner form, so a map needs few distinct steps (keys)
    for the same number of rotations (SEAL has no hoisting to lose); the output period is chosen
    by the plan costs, a new key counting as a cost. The input is laid out by the client, who
    may copy pixels: for the first linear map it is either periodic, or expanded (im2col-style:
    tap t of output i in slot t*q + i, over as many ciphertexts as the taps need), whichever the
    plan costs say is cheaper; then that map is C products and log2(slots/q) rotations. During
    the lowering a ciphertext value has the shape of the tensor it holds; at the end every value
    but the inputs becomes one ciphertext.
    """

    def __init__(self, graph: Graph, options: dict):
        super().__init__(graph, options)
        self.slots = int(options["slots"])
        # a vector is encoded with an error of about sqrt(N) / 2^bits per slot (a scalar, only
        # 2^-bits), so weights get the full waterline scale and each linear map is rescaled
        self.weight_bits = int(options.get("weight_scale_bits") or self.scale_bits)
        if self.slots < 1 or self.slots & (self.slots - 1):
            raise PassError(f"slots must be a power of two, got {self.slots}")
        self.periodic_inputs = set(options.get("periodic_inputs", ()))
        self.period: dict[Value, int] = {}
        self.placeholders: dict[Value, Op] = {}
        self.input_values: dict[Value, tuple[str, Value]] = {}
        self.input_ops: list[tuple[int, Op]] = []
        self.steps: set[int] = set()
        self.count = 0

    def fail_size(self, what: str, n: int):
        raise UnsupportedOpError({what: []}, {what: f"{n} values do not fit the {self.slots} slots of "
                                              "one ciphertext in the slots layout of this version"})

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
        periods = [self.period[v] for v in operands if v in self.period]
        if periods:
            self.period[value] = max(periods)
        return value

    def constant(self, stem: str, array: np.ndarray) -> str:
        self.count += 1
        name = f"{stem}{self.count}"
        while name in self.src.constants or name in self.out.constants:
            self.count += 1
            name = f"{stem}{self.count}"
        self.out.constants[name] = array
        return name

    # --- ops -----------------------------------------------------------------------------------
    def lower(self, op: Op) -> None:
        if op.name == "hecc.input":
            t = op.result.type
            placeholder = Value(CipherType(t.shape, 0, self.scale_bits, self.slots))
            self.placeholders[placeholder] = op
            self.env[op.result] = Affine.of(placeholder)
            self.max_abs[placeholder] = self.ranges.get(op.result, float("nan"))
            return
        super().lower(op)

    def tensor_operand(self, v: Value) -> Value:
        if v not in self.decrypted and isinstance(self.env[v], Affine):
            ct = self.materialize(v)
            self.decrypted[v] = self.typed("ckks.decrypt", [ct], {"shape": list(v.type.shape)},
                                           TensorType(v.type.shape, True))
        return super().tensor_operand(v)

    def mat(self, aff: Affine, max_abs: float, checks_interval: bool = False) -> Value:
        base = aff.bases[0]
        if aff.is_base and base not in self.placeholders:
            return base
        m = int(np.prod(aff.shape, dtype=np.int64))
        q = next_pow2(m)
        if q > self.slots:
            self.fail_size("a linear map", m)
        bias = aff.bias_vector()
        total, bound = None, 0.0
        groups: dict[int, list] = {}
        for base, block in aff.parts():
            if not np.any(block):
                continue
            row_sums = np.abs(block) if block.ndim == 1 else np.abs(block).sum(axis=1)
            bound += float(np.max(row_sums * self.max_abs.get(base, 1.0)))
            if base in self.placeholders:
                part = self.from_input(base, block, q, aff.shape)
                total = part if total is None else self._add(total, part, bound)
            else:
                groups.setdefault(self.period[base], []).append((base, block))
        if total is None and not groups:  # the zero map
            base, block = next(iter(aff.parts()))
            if base in self.placeholders:
                total = self.from_input(base, block, q, aff.shape)
            else:
                groups[self.period[base]] = [(base, block)]
        if groups and total is None:  # the output period: the cheapest plan, keys included
            top = max([q] + list(groups))
            options = [q << i for i in range(int(np.log2(top // q)) + 1)]
            q = min(options, key=lambda period: (sum(self.plan_cost(parts, period)
                                                     for parts in groups.values()), period))
        for p, parts in groups.items():
            try:
                part = self.matvec(parts, q, aff.shape)
            except TooLarge as exc:
                raise UnsupportedOpError({"a linear map": []}, {"a linear map": f"{exc} are too many "
                                         "for the slots layout of this version"}) from None
            self.max_abs[part] = bound
            total = part if total is None else self._add(total, part, bound)
        if np.any(bias) or checks_interval:
            row = np.zeros((1, q))
            row[0, :m] = bias
            attrs = {"plain": self.constant("bias", row)}
            if checks_interval:
                attrs["checks_interval"] = m
            total = self.typed("ckks.add_plain", [total], attrs, total.type)
            bound += float(np.max(np.abs(bias)))
        self.period[total] = q
        self.max_abs[total] = max_abs if np.isfinite(max_abs) else bound
        return total

    def plan(self, parts: list, q: int):
        """The diagonal method's plan for ``parts`` (see ``matvec``) with output period q:
        ({part index: its non-zero diagonal numbers}, baby step g, the rotation steps it uses)."""
        p = self.period[parts[0][0]]
        used = {index: np.unique(diagonal_entries(matrix, p, q)[0]).tolist()
                for index, (_, matrix) in enumerate(parts)}
        used = {index: ks for index, ks in used.items() if ks} or {0: [0]}
        g = baby_step(sorted({k for ks in used.values() for k in ks}))
        steps = []
        for ks in used.values():
            babies = sorted({k % g for k in ks} | {0})
            steps += [b - a for a, b in zip(babies, babies[1:])]
        giants = sorted({k // g for ks in used.values() for k in ks}, reverse=True)
        steps += [(a - b) * g for a, b in zip(giants, giants[1:])] + ([giants[-1] * g] if giants[-1] else [])
        block = p // 2
        while block >= q:
            steps.append(block)
            block //= 2
        return used, g, steps

    def plan_cost(self, parts: list, q: int) -> float:
        """Relative cost of the plan with output period q: its rotations and products, and each
        rotation step no earlier map used (a new Galois key the client must make and send)."""
        used, _, steps = self.plan(parts, q)
        c = PLAN_COSTS
        products = sum(len(ks) for ks in used.values())
        return (len(steps) * c["rotate"] + products * (c["multiply_plain"] + c["add"])
                + len(set(steps) - self.steps) * c["key"])

    def matvec(self, parts: list, q: int, shape) -> Value:
        """y = sum over (x, matrix) in ``parts`` of matrix @ x, by the diagonal method (see the
        class docstring); every x has the same period p, and they share the giant steps. y has
        period q."""
        p = self.period[parts[0][0]]
        w = self.weight_bits
        _, g, _ = self.plan(parts, q)
        terms = []  # (k, part index, diagonal)
        for index, (_, matrix) in enumerate(parts):
            ks, dense = diagonals(matrix, p, q)
            terms += [(int(k), index, row) for k, row in zip(ks, dense)]
        if not terms:
            terms = [(0, 0, np.zeros(max(p, q)))]
        babies = {(0, index): x for index, (x, _) in enumerate(parts)}
        name = self.constant("diagonals", np.zeros((0, max(p, q))))
        rows, inner = [], {}
        for i, index in sorted({(k % g, index) for k, index, _ in terms}):
            if (i, index) not in babies:  # from the previous baby: one key (step 1) serves them all
                before = max(b for b, c in babies if c == index and b < i)
                x = babies[(before, index)]
                babies[(i, index)] = self.typed("ckks.rotate", [x], {"step": i - before}, x.type)
        for k, index, diagonal in sorted(terms, key=lambda t: (t[0], t[1])):
            i, j = k % g, k // g
            rows.append(np.roll(diagonal, j * g))
            term = self.typed("ckks.mul_plain", [babies[(i, index)]],
                              {"plain": name, "row": len(rows) - 1, "weight_scale": w}, shape=shape)
            inner[j] = term if j not in inner else self.typed("ckks.add", [inner[j], term], {})
        self.out.constants[name] = np.asarray(rows)
        giants = sorted(inner, reverse=True)
        acc, previous = inner[giants[0]], giants[0]
        for j in giants[1:]:
            acc = self.typed("ckks.rotate", [acc], {"step": (previous - j) * g})
            acc = self.typed("ckks.add", [acc, inner[j]], {})
            previous = j
        if previous:
            acc = self.typed("ckks.rotate", [acc], {"step": previous * g})
        return self.rotate_and_sum(acc, p, q)

    def rotate_and_sum(self, z: Value, p: int, q: int) -> Value:
        """Sum the p/q blocks of q slots of a p-periodic z into every block: period q."""
        step = p // 2
        while step >= q:
            z = self.typed("ckks.add", [z, self.typed("ckks.rotate", [z], {"step": step})], {})
            step //= 2
        return z

    def from_input(self, placeholder: Value, matrix: np.ndarray, q: int, shape) -> Value:
        """A linear map of an input, choosing the input's layout at its first use."""
        source = self.placeholders[placeholder]
        name = source.attrs["name"]
        if placeholder in self.input_values:
            kind, value = self.input_values[placeholder]
            if kind == "expanded":
                raise Relayout(name)
            return self.matvec([(value, matrix)], q, shape)
        n = matrix.shape[-1]
        p = next_pow2(n)
        taps = 1 if matrix.ndim == 1 else int(np.max(np.count_nonzero(matrix, axis=1))) if matrix.size else 0
        per_ct = self.slots // q
        cts = max(1, -(-taps // per_ct))
        c = PLAN_COSTS
        expanded = (cts * (c["encrypt"] + c["multiply_plain"] + c["add"])
                    + int(np.log2(per_ct)) * (c["rotate"] + c["add"]))
        if p <= self.slots:
            k = min(p, q)
            periodic = (c["encrypt"] + k * (c["multiply_plain"] + c["add"])
                        + 2 * np.sqrt(k) * c["rotate"] + np.log2(max(p // q, 1)) * c["rotate"])
        else:
            periodic = float("inf")
        diagonal = matrix.ndim == 1  # a diagonal map: the input periodic, one product
        if name in self.periodic_inputs or diagonal or cts > MAX_INPUT_CIPHERTEXTS or periodic <= expanded:
            if p > self.slots:
                self.fail_size(f"input {name!r}", n)
            layout = np.where(np.arange(self.slots) % p < n, np.arange(self.slots) % p, -1)[None]
            inp = self.emit_input(source, layout)
            value = self.typed("ckks.extract", [inp], {"index": 0},
                               inp.type.but(shape=tuple(source.result.type.shape)))
            self.period[value] = p
            self.input_values[placeholder] = ("periodic", value)
            self.max_abs[value] = self.max_abs.get(placeholder, float("nan"))
            return self.matvec([(value, matrix)], q, shape)
        # expanded: tap t of output row r in ciphertext t // per_ct, slot (t % per_ct) * q + r
        layout = np.full((cts, self.slots), -1, dtype=np.int64)
        weights = np.zeros((cts, self.slots))
        for r in range(matrix.shape[0]):
            cols = np.flatnonzero(matrix[r])
            t = np.arange(cols.size)
            layout[t // per_ct, (t % per_ct) * q + r] = cols
            weights[t // per_ct, (t % per_ct) * q + r] = matrix[r, cols]
        inp = self.emit_input(source, layout)
        self.input_values[placeholder] = ("expanded", inp)
        w = self.weight_bits
        plain = self.constant("taps", weights)
        total = None
        for index in range(cts):
            piece = self.typed("ckks.extract", [inp], {"index": index}, inp.type.but(shape=tuple(shape)))
            term = self.typed("ckks.mul_plain", [piece], {"plain": plain, "row": index, "weight_scale": w})
            total = term if total is None else self.typed("ckks.add", [total, term], {})
        return self.rotate_and_sum(total, self.slots, q)

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

    def finish(self) -> None:
        for placeholder, source in self.placeholders.items():
            if placeholder not in self.input_values:  # an input nothing reads: still part of the API
                n = int(np.prod(source.result.type.shape, dtype=np.int64))
                p = next_pow2(n)
                if p > self.slots:
                    self.fail_size(f"input {source.attrs['name']!r}", n)
                self.emit_input(source, np.where(np.arange(self.slots) % p < n,
                                                 np.arange(self.slots) % p, -1)[None])
        ordered = [op for _, op in sorted(self.input_ops, key=lambda pair: pair[0])]
        rest = [op for op in self.out.ops if op.name != "hecc.input"]
        self.out.ops = ordered + rest
        for op in self.out.ops:
            if op.name != "hecc.input":
                for v in op.results:
                    if isinstance(v.type, CipherType):
                        v.type = v.type.but(shape=())


