"""lower-to-ckks: tensor IR -> ckks IR in the batch layout (CryptoNets' packing) or the slots
layout (LoLa's packing; see ``_SlotsLowering``).

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
Slots layout: the same affine forms, over ciphertexts that each hold a whole tensor of one input;
a form becomes a diagonal-method map (``ckks.rotate``, ``ckks.mul_plain``, ``ckks.add``,
``ckks.add_plain``), and each input's slot layout (``hecc.input`` ``layout``) is chosen at its first
use. A linear map too large for one ciphertext raises UnsupportedOpError.

Guarantees: ckks IR with inputs at level 0 and scale 2^scale_bits, no rescale, relinearize or
modswitch yet (later passes insert them), ``slots`` 0 until parameters are selected (slots layout:
the given slot count, which select-parameters keeps); ``graph.meta["max_abs"]`` maps each
ciphertext value to a bound on the values it holds.
Options: layout ("batch" | "slots"), scale_bits (26), weight_scale_bits (batch: 14; slots: the
scale_bits), slots (the slots layout's slot count, N/2; 4096).
"""
from __future__ import annotations

import numpy as np

from hecc.backends.reference import apply_op
from hecc.errors import PassError, UnsupportedOpError
from hecc.ir import OPS, CipherType, Graph, Op, TensorType, Value

NAME = "lower-to-ckks"
DEFAULT_SCALE_BITS = 26
DEFAULT_WEIGHT_SCALE_BITS = 14
DEFAULT_SLOTS = 4096
MAX_MATRIX_ENTRIES = 20_000_000  # 160 MB of float64 per fused linear map

AFFINE_OPS = {"tensor.add", "tensor.sub", "tensor.mul", "tensor.neg", "tensor.matmul", "tensor.conv2d",
              "tensor.avgpool", "tensor.reshape", "tensor.transpose", "tensor.concat", "tensor.pad",
              "tensor.reduce"}


def _count(base: Value) -> int:
    """Elements of a base: its ciphertexts in the batch layout; in the slots layout (where a
    ciphertext value keeps the shape of the tensor it holds until the end of the lowering) the
    same, the tensor's elements."""
    return base.type.count


class Affine:
    """A secret tensor as sum_b A_b @ base_b + bias over ciphertext tensors (A None: identity)."""

    __slots__ = ("bases", "matrix", "bias", "shape")

    def __init__(self, bases: list[Value], matrix, bias, shape):
        self.bases = list(bases)
        self.matrix, self.bias, self.shape = matrix, bias, tuple(shape)

    @classmethod
    def of(cls, base: Value) -> "Affine":
        return cls([base], None, None, base.type.shape)

    @property
    def width(self) -> int:
        return sum(_count(b) for b in self.bases)

    @property
    def is_base(self) -> bool:
        return (len(self.bases) == 1 and self.matrix is None and self.bias is None
                and self.shape == self.bases[0].type.shape)

    def dense(self):
        matrix = np.eye(self.width) if self.matrix is None else self.matrix
        bias = np.zeros(matrix.shape[0]) if self.bias is None else self.bias
        return matrix, bias

    def over(self, bases: list[Value]) -> np.ndarray:
        """The linear part with one column block per entry of ``bases`` (a superset of ours)."""
        matrix, _ = self.dense()
        offsets = np.cumsum([0] + [_count(b) for b in bases])
        out = np.zeros((matrix.shape[0], offsets[-1]))
        col = 0
        for base in self.bases:
            i = next(i for i, b in enumerate(bases) if b is base)
            out[:, offsets[i]:offsets[i + 1]] = matrix[:, col:col + _count(base)]
            col += _count(base)
        return out

    def parts(self):
        """(base, its block of the linear part) for each base."""
        matrix, _ = self.dense()
        col = 0
        for base in self.bases:
            yield base, matrix[:, col:col + _count(base)]
            col += _count(base)


def union_bases(forms) -> list[Value]:
    bases: list[Value] = []
    for form in forms:
        for b in form.bases:
            if not any(b is c for c in bases):
                bases.append(b)
    return bases


class _TooLarge(Exception):
    pass


class _Lowering:
    def __init__(self, graph: Graph, options: dict):
        self.src = graph
        self.out = Graph()
        self.scale_bits = int(options.get("scale_bits", DEFAULT_SCALE_BITS))
        self.weight_bits = int(options.get("weight_scale_bits") or DEFAULT_WEIGHT_SCALE_BITS)
        self.ranges = dict(graph.meta.get("ranges", {}))
        self.max_abs: dict[Value, float] = {}
        self.env: dict[Value, object] = {}
        self.materialized: dict[Value, Value] = {}
        self.decrypted: dict[Value, Value] = {}
        self.linear_count = 0

    # --- helpers -------------------------------------------------------------------------------
    def fail(self, op: Op, why: str):
        raise UnsupportedOpError({op.name: []}, {op.name: why})

    def is_secret(self, v: Value) -> bool:
        return isinstance(self.env[v], Affine)

    def emit(self, name: str, operands, attrs=None) -> Value:
        opdef = OPS[name]
        full = {k: opdef.attr(attrs or {}, k) for k in opdef.attrs}
        types = opdef.infer([x.type for x in operands], full)
        return self.out.append(name, operands, types, attrs).result

    def materialize(self, v: Value) -> Value:
        """The ciphertext tensor holding tensor value ``v`` (emitted once)."""
        if v not in self.materialized:
            self.materialized[v] = self.mat(self.env[v], self.ranges.get(v, float("nan")))
        return self.materialized[v]

    def mat(self, aff: Affine, max_abs: float, checks_interval: bool = False) -> Value:
        """Emit the ckks.linear ops (one per base, summed) computing an affine form."""
        if aff.is_base:
            return aff.bases[0]
        _, bias = aff.dense()
        total = None
        for i, (base, block) in enumerate(aff.parts()):
            part_bias = bias if i == 0 else np.zeros_like(bias)
            if i > 0 and not np.any(block):
                continue
            if (block.shape[0] == block.shape[1] and not np.any(part_bias)
                    and np.array_equal(block, np.eye(block.shape[0])) and aff.shape == base.type.shape):
                total = base if total is None else self._add(total, base, self.max_abs.get(base, 1.0))
                continue
            self.linear_count += 1
            while f"linear{self.linear_count}.matrix" in self.src.constants:
                self.linear_count += 1
            name = f"linear{self.linear_count}"
            self.out.constants[f"{name}.matrix"] = block.copy()
            attrs = {"matrix": f"{name}.matrix", "shape": list(aff.shape),
                     "weight_scale": self.exact_weight_scale(block, part_bias)}
            if np.any(part_bias):
                self.out.constants[f"{name}.bias"] = part_bias
                attrs["bias"] = f"{name}.bias"
            if checks_interval:
                attrs["checks_interval"] = True
            ct = self.emit("ckks.linear", [base], attrs)
            # a rigorous bound for a partial sum; the calibrated range for the whole
            bound = float(np.max(np.abs(block).sum(axis=1) * self.max_abs.get(base, 1.0) + np.abs(part_bias)))
            self.max_abs[ct] = bound
            total = ct if total is None else self._add(total, ct, bound)
        if np.isfinite(max_abs):
            self.max_abs[total] = max_abs
        return total

    def _add(self, total: Value, ct: Value, bound: float) -> Value:
        previous = self.max_abs.get(total, 1.0)
        total = self.emit("ckks.add", [total, ct])
        self.max_abs[total] = previous + bound
        return total

    def exact_weight_scale(self, matrix, bias) -> int:
        """The smallest weight scale 2^k (k <= the configured one) at which every weight is an
        integer: then encoding is exact and the layer adds only k bits of scale."""
        for k in range(self.weight_bits):
            if np.all(np.mod(matrix * 2.0 ** k, 1.0) == 0) and np.all(np.mod(bias * 2.0 ** k, 1.0) == 0):
                return k
        return self.weight_bits

    def through(self, forms: list, fn, shape) -> Affine:
        """The affine form of fn applied to ``forms`` (affine forms or constant arrays): fn runs on
        one offset run plus one run per column of the union of their bases."""
        bases = union_bases([f for f in forms if isinstance(f, Affine)])
        n = sum(_count(b) for b in bases)
        if (n + 1) * int(np.prod(shape, dtype=np.int64)) > MAX_MATRIX_ENTRIES:
            raise _TooLarge(f"{int(np.prod(shape, dtype=np.int64))} x {n}")
        args = []
        for form in forms:
            if isinstance(form, Affine):
                matrix, bias = form.over(bases), form.dense()[1]
                runs = np.concatenate([bias[None], bias[None] + matrix.T], axis=0)
                args.append(runs.reshape((n + 1,) + form.shape))
            else:
                args.append(form[None])
        y = np.asarray(fn(args)).reshape(n + 1, -1)
        return Affine(bases, (y[1:] - y[0]).T.copy(), y[0].copy(), shape)

    def tensor_operand(self, v: Value) -> Value:
        """``v`` as a plaintext tensor on the client side (decrypting secret values)."""
        if v in self.decrypted:
            return self.decrypted[v]
        item = self.env[v]
        if isinstance(item, Affine):
            result = self.emit("ckks.decrypt", [self.materialize(v)])
        elif isinstance(item, np.ndarray):
            # a constant output: a stored constant, or a value that turned out not to depend on the
            # input (a polynomial whose fit is constant, e.g. ReLU of values that are never positive)
            producer = v.producer
            name = (producer.attrs["name"] if producer is not None and producer.name == "tensor.constant"
                    else self.out.unique_constant_name("constant_output"))
            self.out.constants[name] = np.broadcast_to(item, v.type.shape).copy()
            result = self.out.append("tensor.constant", [], [v.type], {"name": name}).result
        else:
            result = item
        self.decrypted[v] = result
        return result

    # --- ops -----------------------------------------------------------------------------------
    def lower(self, op: Op) -> None:
        if op.name == "hecc.input":
            t = op.result.type
            ct = self.out.append("hecc.input", [], [CipherType(t.shape, 0, self.scale_bits, 0)],
                                 dict(op.attrs)).result
            self.env[op.result] = Affine.of(ct)
            self.max_abs[ct] = self.ranges.get(op.result, float("nan"))
        elif op.name == "tensor.constant":
            self.env[op.result] = np.asarray(self.src.constants[op.attrs["name"]], dtype=np.float64)
        elif op.name == "hecc.output" or OPS[op.name].client_side:
            operands = [self.tensor_operand(v) for v in op.operands]
            new = self.out.append(op.name, operands, [r.type for r in op.results], dict(op.attrs))
            for old, value in zip(op.results, new.results):
                self.env[old] = value
        elif not any(self.is_secret(v) for v in op.operands):
            self.env[op.result] = apply_op(op, [self.env[v][None] for v in op.operands])[0]
        elif op.name == "tensor.mul" and all(self.is_secret(v) for v in op.operands):
            self.product(op, *op.operands)
        elif op.name == "tensor.matmul" and all(self.is_secret(v) for v in op.operands):
            self.fail(op, "a product of two encrypted matrices has no batch-layout lowering")
        elif op.name == "tensor.pow":
            self.power(op)
        elif op.name == "tensor.poly":
            self.poly(op)
        elif op.name in AFFINE_OPS:
            forms = [self.env[v] for v in op.operands]
            try:
                self.env[op.result] = self.through(forms, lambda args: apply_op(op, args),
                                                   op.result.type.shape)
            except _TooLarge as exc:
                self.fail(op, f"its dense linear map ({exc}) is too large for the batch layout of "
                              "this version")
        elif op.name == "tensor.activation":
            self.fail(op, f"the {op.attrs['kind']} activation is not a polynomial (run "
                          "approximate-activations first)")
        else:
            self.fail(op, "no CKKS lowering for this op in the batch layout")

    def set_ct(self, v: Value, ct: Value) -> None:
        self.env[v] = Affine.of(ct)
        self.materialized[v] = ct
        self.max_abs[ct] = self.ranges.get(v, float("nan"))

    def broadcast(self, v: Value, shape) -> Value:
        """``v`` broadcast to ``shape``, as a tensor value of its own."""
        if tuple(v.type.shape) == tuple(shape):
            return v
        aff = self.env[v]
        pad = (1,) * (len(shape) - len(aff.shape))
        wide = Value(TensorType(tuple(shape), True))
        self.env[wide] = self.through(
            [aff], lambda runs: np.broadcast_to(runs[0].reshape(runs[0].shape[:1] + pad + aff.shape),
                                                (runs[0].shape[0],) + tuple(shape)), shape)
        self.ranges[wide] = self.ranges.get(v, float("nan"))
        return wide

    def product(self, op: Op, a: Value, b: Value) -> None:
        if a is b:
            ct = self.emit("ckks.square", [self.materialize(a)])
        else:
            shape = op.result.type.shape
            a, b = self.broadcast(a, shape), self.broadcast(b, shape)
            ct = self.emit("ckks.mul", [self.materialize(a), self.materialize(b)])
        self.set_ct(op.result, ct)

    def power(self, op: Op) -> None:
        n, x = op.attrs["exponent"], op.operands[0]
        if n == 0:
            self.env[op.result] = np.ones(op.result.type.shape)
            return
        if n == 1:
            self.env[op.result] = self.env[x]
            return
        base = self.materialize(x)
        result, square, k = None, base, n
        while k:
            if k & 1:
                result = square if result is None else self.emit("ckks.mul", [result, square])
            k >>= 1
            if k:
                square = self.emit("ckks.square", [square])
        self.set_ct(op.result, result)

    def poly(self, op: Op) -> None:
        """sum_k c_k T_k(t), t the input mapped to [-1, 1]: T_k by the doubling recurrences
        T_2m = 2 T_m^2 - 1 and T_2m+1 = 2 T_m T_m+1 - T_1 (depth ceil(log2 d), d - 1 products);
        the sum stays an affine form over the T_k."""
        x = op.operands[0]
        lo, hi = op.attrs["interval"]
        coefficients = op.attrs["coefficients"]
        matrix, bias = self.env[x].dense()
        alpha, beta = 2.0 / (hi - lo), -(lo + hi) / (hi - lo)
        t = Affine(self.env[x].bases, matrix * alpha, bias * alpha + beta, self.env[x].shape)
        terms = {1: t}
        materialized: dict[int, Value] = {}

        def ct_of(k):
            if k not in materialized:
                materialized[k] = self.mat(terms[k], 1.0, checks_interval=(k == 1))
            return materialized[k]
        for k in range(2, len(coefficients)):
            m = k // 2
            if k % 2 == 0:
                prod = self.emit("ckks.square", [ct_of(m)])
                self.max_abs[prod] = 1.0
                terms[k] = self.combination([(2.0, Affine.of(prod))], -1.0)
            else:
                prod = self.emit("ckks.mul", [ct_of(m), ct_of(m + 1)])
                self.max_abs[prod] = 1.0
                terms[k] = self.combination([(2.0, Affine.of(prod)), (-1.0, t)], 0.0)
        parts = [(c, terms[k]) for k, c in enumerate(coefficients) if k >= 1 and c != 0]
        if not parts:
            self.env[op.result] = np.full(op.result.type.shape, coefficients[0])
            return
        self.env[op.result] = self.combination(parts, coefficients[0])

    def combination(self, parts, constant: float) -> Affine:
        """sum of c * (affine form) + constant, as one affine form over the union of bases."""
        bases = union_bases([a for _, a in parts])
        matrix = sum(c * a.over(bases) for c, a in parts)
        bias = sum(c * a.dense()[1] for c, a in parts) + constant
        return Affine(bases, matrix, bias, parts[0][1].shape)


# Relative costs (ms at N=8192, three primes, measured with SEAL on this machine) used only to
# choose between equivalent plans; the compile report uses the measured cost model.
# A rotation step no earlier map used costs a Galois key: about as many bytes as two ciphertexts of
# the chain for every client, once; weighted here as four rotations.
PLAN_COSTS = {"rotate": 1.9, "multiply_plain": 0.14, "add": 0.05, "encrypt": 2.0, "key": 7.6}
MAX_INPUT_CIPHERTEXTS = 64


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def diagonal_entries(matrix: np.ndarray, p: int, q: int):
    """The generalized diagonals of ``matrix`` (m x n) between an input stored with period p
    (n <= p) and an output stored with period q (m <= q), as (k, u, value) arrays, one entry per
    non-zero weight: diagonal k (k < min(p, q)) is the vector over slots u < max(p, q) holding
    matrix[u mod q, (u + k) mod p]. Then sum_k D_k * rotate(x, k) holds the output with period q
    when q >= p; when q < p it holds partial sums whose p/q blocks of q slots add up to it."""
    rows, cols = np.nonzero(matrix)
    d = (cols - rows) % p
    if q >= p:
        return d, rows, matrix[rows, cols]
    t = d // q
    return d - t * q, rows + t * q, matrix[rows, cols]


def diagonals(matrix: np.ndarray, p: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """(the non-zero diagonal numbers k, ascending; their vectors, one row each)."""
    k, u, values = diagonal_entries(matrix, p, q)
    ks, index = np.unique(k, return_inverse=True)
    if ks.size * max(p, q) > MAX_MATRIX_ENTRIES:
        raise _TooLarge(f"{ks.size} diagonals of {max(p, q)} slots")
    dense = np.zeros((ks.size, max(p, q)))
    dense[index, u] = values
    return ks, dense


def baby_step(nonzero: list[int]) -> int:
    """The baby-step size g (a power of two) that needs the fewest rotations for diagonals
    ``nonzero``: one rotation of the input per distinct k mod g, one per giant step (Horner)."""
    best = None
    top = next_pow2(max(nonzero) + 1)
    g = 1
    while g <= top:
        babies = len({k % g for k in nonzero} - {0})
        giants = sorted({k // g for k in nonzero})
        cost = babies + len(giants) - 1 + (giants[0] > 0)
        if best is None or cost < best[0]:
            best = (cost, g)
        g *= 2
    return best[1]


class _Relayout(Exception):
    """An input laid out for one linear map is needed by another: lower again with it periodic."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _SlotsLowering(_Lowering):
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
        _, bias = aff.dense()
        total, bound = None, 0.0
        groups: dict[int, list] = {}
        for base, block in aff.parts():
            if not np.any(block):
                continue
            bound += float(np.max(np.abs(block).sum(axis=1) * self.max_abs.get(base, 1.0)))
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
            except _TooLarge as exc:
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
                raise _Relayout(name)
            return self.matvec([(value, matrix)], q, shape)
        n = matrix.shape[1]
        p = next_pow2(n)
        taps = int(np.max(np.count_nonzero(matrix, axis=1))) if matrix.size else 0
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
        if name in self.periodic_inputs or cts > MAX_INPUT_CIPHERTEXTS or periodic <= expanded:
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
                n = source.result.type.count
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


def run(graph: Graph, options: dict | None = None) -> Graph:
    options = dict(options or {})
    layout = options.get("layout", "batch")
    if layout not in ("batch", "slots"):
        raise PassError(f"layout must be batch or slots, got {layout!r}")
    if layout == "batch":
        lowering = _Lowering(graph, options)
    else:
        options.setdefault("slots", DEFAULT_SLOTS)
        while True:
            lowering = _SlotsLowering(graph, options)
            try:
                for op in graph.ops:
                    lowering.lower(op)
                break
            except _Relayout as exc:
                options["periodic_inputs"] = set(options.get("periodic_inputs", ())) | {exc.name}
        lowering.finish()
        lowering.out.meta["max_abs"] = lowering.max_abs
        return lowering.out
    for op in graph.ops:
        lowering.lower(op)
    out = lowering.out
    out.meta["max_abs"] = lowering.max_abs
    return out
