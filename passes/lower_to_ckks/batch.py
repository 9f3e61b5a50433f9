"""The batch layout (CryptoNets' packing) and the op-by-op logic both layouts share: every
secret tensor is a tensor of ciphertexts, one per element, whose slots hold up to N/2 different
inputs; affine forms become ``ckks.linear`` (dense maps: multiply-by-plaintext-scalar and add
trees; elementwise maps: a diagonal ``ckks.linear`` with a vector of weights).
"""
from __future__ import annotations

import numpy as np

from hecc.backends.common import multiplied
from hecc.backends.reference import apply_op
from hecc.errors import PassError, UnsupportedOpError
from hecc.ir import OPS, CipherType, Graph, Op, TensorType, Value
from hecc.params import MAX_PRIME_BITS

from .affine import (MAX_MATRIX_ENTRIES, MAX_SPARSE_ENTRIES, Affine, Diagonal, TooLarge, element_count,
                     elementwise_sum, sparse_sum, union_bases)
from .sparse import (Sparse, avgpool_matrix, conv2d_matrix, left_matmul_matrix, matmul_matrix, pad_rows,
                     transpose_rows)

DEFAULT_SCALE_BITS = 26
DEFAULT_WEIGHT_SCALE_BITS = 14
AFFINE_OPS = {"tensor.add", "tensor.sub", "tensor.mul", "tensor.neg", "tensor.matmul", "tensor.conv2d",
              "tensor.avgpool", "tensor.reshape", "tensor.transpose", "tensor.concat", "tensor.pad",
              "tensor.reduce"}
ELEMENTWISE_AFFINE = {"tensor.add", "tensor.sub", "tensor.neg", "tensor.mul"}
POLY_OUTPUTS = ("merge", "materialize", "wide")
WIDE_POLY = 1024


BABY_STEP_MAX = 5  # polynomial degrees up to this compute every T_k; above, a baby-step giant-step split


def chebyshev_split(coefficients, m: int) -> tuple[list[float], list[float]]:
    """(a, b) with sum_k c_k T_k = sum_k<m a_k T_k + T_m * sum_j<=d-m b_j T_j for a degree
    m < d <= 2m, by T_m+j = 2 T_m T_j - T_m-j (0 <= j <= m)."""
    c = [float(v) for v in coefficients]
    d = len(c) - 1
    a = c[:m]
    b = [c[m]] + [2.0 * c[m + j] for j in range(1, d - m + 1)]
    for j in range(1, d - m + 1):
        a[m - j] -= c[m + j]
    return a, b


def materializes(poly_outputs: str, op: Op) -> bool:
    """Whether the batch lowering with ``poly_outputs`` makes ciphertexts of tensor.poly ``op``'s
    output (a polynomial of degree 2 or more)."""
    if len(op.attrs["coefficients"]) <= 2 or poly_outputs == "merge":
        return False
    return poly_outputs == "materialize" or op.result.type.size >= WIDE_POLY


def _is_identity(block: np.ndarray) -> bool:
    if block.ndim == 1:
        return bool(np.all(block == 1))
    return block.shape[0] == block.shape[1] and np.array_equal(block, np.eye(block.shape[0]))


class OverBudget(PassError):
    """The lowering emitted more products by plaintext weights than ``max_products``."""

    def __init__(self, products: int):
        super().__init__(f"over {products} products by plaintext weights")
        self.products = products


class Lowering:
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
        # "merge": a polynomial's output stays a form over its terms (no level; the next map
        # multiplies once per term); "materialize": one ciphertext per element (one level more);
        # "wide": materialize the outputs of WIDE_POLY elements or more (convolution layers)
        self.poly_outputs = options.get("poly_outputs", "merge")
        if self.poly_outputs not in POLY_OUTPUTS:
            raise PassError(f"poly_outputs must be one of {', '.join(POLY_OUTPUTS)}, got {self.poly_outputs!r}")
        self.rescale = options.get("rescale", "lazy")
        self.max_products = options.get("max_products")
        self.products = 0
        self.materializing = False  # the polynomial being lowered gets a ciphertext per element

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

    def mat(self, aff: Affine, max_abs: float, checks_interval: bool = False, scale: int | None = None) -> Value:
        """Emit the ckks.linear ops (one per base, summed) computing an affine form; with
        ``scale``, every product lands at 2^scale once the bases are rescaled (each part's weight
        scale is what its base lacks)."""
        if aff.is_base and scale is None:
            return aff.bases[0]
        bias = aff.bias_vector()
        total = None
        for i, (base, block) in enumerate(aff.parts()):
            if isinstance(block, Sparse) and 2 * block.nnz >= block.shape[0] * block.shape[1]:
                block = block.dense()  # stored densely when that is smaller
            part_bias = bias if i == 0 else np.zeros_like(bias)
            sparse = isinstance(block, Sparse)
            values = block.vals if sparse else block
            if i > 0 and not np.any(values):
                continue
            if (scale is None and not sparse and not np.any(part_bias) and aff.shape == base.type.shape
                    and _is_identity(block)):
                total = base if total is None else self._add(total, base, self.max_abs.get(base, 1.0))
                continue
            weight_scale = (self.exact_weight_scale(values, part_bias) if scale is None
                            else scale - self.rescaled_bits(base))
            # counted as the cost model and the budget's other side (``api._lowered_products``)
            # count: weights of 1 and -1 at scale 2^0 (window sums) are additions
            self.products += multiplied(values, weight_scale, self.rescale == "eager")
            if self.max_products is not None and self.products > self.max_products:
                raise OverBudget(self.products)
            self.linear_count += 1
            while f"linear{self.linear_count}.matrix" in self.src.constants:
                self.linear_count += 1
            name = f"linear{self.linear_count}"
            self.out.constants[f"{name}.matrix"] = values.copy()
            attrs = {"matrix": f"{name}.matrix", "shape": list(aff.shape), "weight_scale": weight_scale}
            if sparse:
                self.out.constants[f"{name}.index"] = np.stack([block.rows, block.cols]).astype(np.int64)
                attrs["index"] = f"{name}.index"
            if np.any(part_bias):
                self.out.constants[f"{name}.bias"] = part_bias
                attrs["bias"] = f"{name}.bias"
            if checks_interval:
                attrs["checks_interval"] = True
            ct = self.emit("ckks.linear", [base], attrs)
            # a rigorous bound for a partial sum; the calibrated range for the whole
            row_sums = (block.row_sums_abs() if sparse else np.abs(block) if block.ndim == 1
                        else np.abs(block).sum(axis=1))
            bound = float(np.max(row_sums * self.max_abs.get(base, 1.0) + np.abs(part_bias)))
            self.max_abs[ct] = bound
            total = ct if total is None else self._add(total, ct, bound)
        if np.isfinite(max_abs):
            self.max_abs[total] = max_abs
        return total

    def rescaled_bits(self, ct: Value) -> int:
        """The scale (bits) of ciphertext value ``ct`` once insert-rescale has brought every
        product back to the waterline: a linear map's result is its operand's plus its weights'."""
        producer = ct.producer
        if producer is None or producer.name in ("hecc.input", "ckks.mul", "ckks.square", "ckks.matmul"):
            return self.scale_bits
        if producer.name == "ckks.linear":
            return self.rescaled_bits(producer.operands[0]) + producer.attrs["weight_scale"]
        if producer.name == "ckks.rescale":
            return self.rescaled_bits(producer.operands[0]) - producer.attrs["bits"]
        return max(self.rescaled_bits(v) for v in producer.operands)  # a sum: align-levels raises the lower

    def _add(self, total: Value, ct: Value, bound: float) -> Value:
        previous = self.max_abs.get(total, 1.0)
        total = self.emit("ckks.add", [total, ct])
        self.max_abs[total] = previous + bound
        return total

    def exact_weight_scale(self, matrix, bias) -> int:
        """The smallest weight scale 2^k (k <= the configured one) at which every weight is an
        integer: then encoding is exact and the layer adds only k bits of scale."""
        head = matrix.ravel()[:1024]
        for k in range(self.weight_bits):
            if not np.all(np.mod(head * 2.0 ** k, 1.0) == 0):
                continue  # most weights fail at every k on their first values
            if np.all(np.mod(matrix * 2.0 ** k, 1.0) == 0) and np.all(np.mod(bias * 2.0 ** k, 1.0) == 0):
                return k
        return self.weight_bits

    def elementwise(self, op: Op, forms: list) -> Affine | None:
        """The form of an elementwise add, sub, neg or multiply by a constant of elementwise forms
        of the result's shape, built in linear time; None for anything else (``through`` then)."""
        shape = tuple(op.result.type.shape)
        secret = [f for f in forms if isinstance(f, Affine)]
        if op.name not in ELEMENTWISE_AFFINE or not all(f.elementwise and f.shape == shape for f in secret):
            return None
        try:
            constants = [np.broadcast_to(np.asarray(f, dtype=np.float64), shape) for f in forms
                         if not isinstance(f, Affine)]
        except ValueError:
            return None
        if op.name == "tensor.neg":
            return elementwise_sum([(-1.0, forms[0])], 0.0, shape)
        if op.name == "tensor.mul":
            return elementwise_sum([(constants[0], secret[0])], 0.0, shape) if len(secret) == 1 else None
        signs = [1.0, 1.0 if op.name == "tensor.add" else -1.0]
        parts = [(sign, f) for sign, f in zip(signs, forms) if isinstance(f, Affine)]
        constant = sum((sign * np.broadcast_to(np.asarray(f, dtype=np.float64), shape)
                        for sign, f in zip(signs, forms) if not isinstance(f, Affine)), np.zeros(shape))
        return elementwise_sum(parts, constant, shape)

    def structured(self, op: Op, forms: list) -> Affine | None:
        """The form of a structured affine op (convolution, pooling, product by a constant
        matrix, reshape, transpose, padding, sums and scalings of sparse forms) composed from its
        own sparse matrix, or None for anything else (``through`` then)."""
        x = forms[0]
        shape = tuple(op.result.type.shape)
        constants = forms[1:]
        if (op.name == "tensor.matmul" and not isinstance(x, Affine) and isinstance(forms[1], Affine)
                and np.ndim(x) == 2):  # a constant matrix times a secret one (a selection, say)
            matrix = left_matmul_matrix(np.asarray(x, dtype=np.float64), forms[1].shape)
            return None if matrix is None else self.compose(forms[1], matrix, None, shape)
        if not isinstance(x, Affine) or any(isinstance(f, Affine) for f in constants):
            if op.name in ("tensor.add", "tensor.sub") and all(isinstance(f, Affine) for f in forms):
                if all(f.shape == shape for f in forms):
                    return sparse_sum([(1.0, forms[0]), (1.0 if op.name == "tensor.add" else -1.0, forms[1])],
                                      0.0, shape)
            return None
        if op.name == "tensor.conv2d":
            matrix, _ = conv2d_matrix(op, constants[0], x.shape)
            bias = (np.tile(np.repeat(constants[1], shape[2] * shape[3]), shape[0])
                    if len(constants) > 1 else None)
            return self.compose(x, matrix, bias, shape)
        if op.name == "tensor.avgpool":
            matrix = avgpool_matrix(op, x.shape)[0]
            return self.summed_pooling(x, matrix, shape) or self.compose(x, matrix, None, shape)
        if op.name == "tensor.matmul" and constants[0].ndim == 2:
            matrix = matmul_matrix(constants[0], x.shape)
            return None if matrix is None else self.compose(x, matrix, None, shape)
        if op.name == "tensor.reshape":
            return Affine(x.bases, x.matrix, x.bias, shape)
        if op.name == "tensor.transpose":
            source = transpose_rows(op.attrs["perm"], x.shape)
            return self.compose(x, Sparse.identity(x.size).permute_rows(source), None, shape)
        if op.name == "tensor.pad":
            source, _ = pad_rows(op.attrs["pads"], x.shape)
            bias = np.where(source < 0, op.attrs.get("value", 0.0), 0.0)
            return self.compose(x, Sparse.identity(x.size).permute_rows(source), bias, shape)
        if isinstance(x.matrix, Sparse) and x.shape == shape and op.name in ELEMENTWISE_AFFINE:
            try:
                c = np.broadcast_to(np.asarray(constants[0] if constants else 0.0, dtype=np.float64), shape)
            except ValueError:
                return None
            if op.name == "tensor.mul":
                return sparse_sum([(c, x)], 0.0, shape)
            if op.name == "tensor.neg":
                return sparse_sum([(-1.0, x)], 0.0, shape)
            return sparse_sum([(1.0, x)], c if op.name == "tensor.add" else -c, shape)
        return None

    def summed_pooling(self, x: Affine, pool: Sparse, shape) -> Affine | None:
        """Average pooling ``pool`` of an elementwise form ``x`` as sums first: each window's
        elements of each base added up (a ``ckks.linear`` of unit weights: additions only, no
        level), the 1 / window and x's weights then an elementwise form over the sums, which
        the next map multiplies in. Folded instead, the next map would read every window
        element with a product of its own (LeNet-5's second convolution: 948,000 products per
        batch where 237,000 and 3,528 additions do). None unless every base's weight is the
        same across each window (one scale per window, as after an activation), or in the
        eager-rescale baseline (which rescales every term of a linear map)."""
        if not x.elementwise or self.rescale == "eager":
            return None
        rows, cols = pool.rows, pool.cols
        first = np.searchsorted(rows, np.arange(pool.shape[0]))
        if np.any(np.diff(np.r_[first, rows.size]) == 0):
            return None  # an empty window (padding only)
        unit = Sparse(rows, cols, np.ones(rows.size), pool.shape, canonical=True)
        vectors, bases = [], []
        for base, vector in zip(x.bases, x.diagonals()):
            weights = pool.vals * vector[cols]
            if np.any(weights != weights[first][rows]):
                return None
            if not np.any(weights):
                continue
            bases.append(self.mat(Affine([base], unit, None, shape), float("nan")))
            vectors.append(weights[first])
        if not bases:
            return None
        bias = self._bias_through(pool, x.bias_vector())
        return Affine(bases, Diagonal(vectors), bias, shape)

    def compose(self, x: Affine, matrix: Sparse, bias, shape) -> Affine:
        """The form of matrix @ x + bias."""
        total = self._bias_through(matrix, x.bias_vector())
        if bias is not None:
            total = total + np.asarray(bias, dtype=np.float64).reshape(-1)
        if x.matrix is None and len(x.bases) == 1:  # x is its base
            return Affine(x.bases, matrix, total, shape)
        inner = x.sparse()
        start = np.searchsorted(inner.rows, np.arange(inner.shape[0] + 1))
        joined = int((start[matrix.cols + 1] - start[matrix.cols]).sum())
        if self.max_products is not None and joined > self.max_products:
            raise OverBudget(joined)  # its products, once computed, would be past the budget alone
        dense_size = matrix.shape[0] * x.width
        # two dense maps: their product is dense, and a dense product is far cheaper than
        # sorting the partial products when there are many more of them than entries
        fits = max(dense_size, x.size * x.width, matrix.shape[0] * matrix.shape[1]) <= MAX_MATRIX_ENTRIES
        if joined > MAX_SPARSE_ENTRIES or 8 * dense_size < joined and fits:
            if dense_size > MAX_MATRIX_ENTRIES:
                raise TooLarge(f"{matrix.shape[0]} x {x.width}")
            product = matrix.dense() @ x.dense()[0]
            composed = Sparse.from_dense(product)
        else:
            composed = matrix @ inner
        return Affine(x.bases, composed, total, shape)

    @staticmethod
    def _bias_through(matrix: Sparse, bias: np.ndarray) -> np.ndarray:
        return np.bincount(matrix.rows, weights=matrix.vals * bias[matrix.cols], minlength=matrix.shape[0])

    def through(self, forms: list, fn, shape) -> Affine:
        """The affine form of fn applied to ``forms`` (affine forms or constant arrays): fn runs on
        one offset run plus one run per column of the union of their bases."""
        bases = union_bases([f for f in forms if isinstance(f, Affine)])
        n = sum(element_count(b) for b in bases)
        if (n + 1) * int(np.prod(shape, dtype=np.int64)) > MAX_MATRIX_ENTRIES:
            raise TooLarge(f"{int(np.prod(shape, dtype=np.int64))} x {n}")
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
        try:
            self.lower_op(op)
        except TooLarge as exc:
            self.fail(op, f"its dense linear map ({exc}) is too large for the {self.LAYOUT} layout of "
                          "this version")

    LAYOUT = "batch"
    # polynomial degrees above which ``poly`` splits in baby and giant steps; None: never
    BABY_STEP_MAX: int | None = BABY_STEP_MAX

    def lower_op(self, op: Op) -> None:
        if op.name == "hecc.input":
            t = op.result.type
            ct = self.out.append("hecc.input", [], [CipherType(t.shape, 0, self.scale_bits, 0)],
                                 dict(op.attrs)).result
            self.env[op.result] = self.base_form(ct)
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
            self.secret_matmul(op)
        elif op.name == "tensor.pow":
            self.power(op)
        elif op.name == "tensor.poly":
            self.poly(op)
        elif op.name in AFFINE_OPS:
            self.env[op.result] = self.affine_form(op, [self.env[v] for v in op.operands])
        elif op.name == "tensor.activation":
            self.fail(op, f"the {op.attrs['kind']} activation is not a polynomial (run "
                          "approximate-activations first)")
        else:
            self.fail(op, "no CKKS lowering for this op in the batch layout")

    def affine_form(self, op: Op, forms: list) -> Affine:
        """The form of an affine op's result from its operands' forms (affine forms or constant
        arrays)."""
        return (self.elementwise(op, forms) or self.structured(op, forms) or self.with_constant(op, forms)
                or self.through(forms, lambda args: apply_op(op, args), op.result.type.shape))

    def with_constant(self, op: Op, forms: list) -> Affine | None:
        """The form of an add, sub, neg or multiply of one form of the result's shape (a dense or
        sparse matrix, first or second operand) with a constant broadcast to it (a bias, a
        LayerNorm's scale): its matrix's rows scaled and its bias moved in one pass, the values
        ``through`` computes by running the op once per column (the ViT's 2.6 million entries
        per op, 8 s of its compile); None for anything else."""
        shape = tuple(op.result.type.shape)
        secret = [i for i, f in enumerate(forms) if isinstance(f, Affine)]
        if op.name not in ELEMENTWISE_AFFINE or len(secret) != 1:
            return None
        x = forms[secret[0]]
        if x.shape != shape or not (isinstance(x.matrix, Sparse)
                                    or isinstance(x.matrix, np.ndarray) and x.matrix.ndim == 2):
            return None
        try:
            c = np.broadcast_to(np.asarray(forms[1 - secret[0]] if len(forms) > 1 else 0.0, dtype=np.float64),
                                shape).reshape(-1)
        except ValueError:
            return None
        bias = x.bias_vector()
        if op.name == "tensor.mul":
            factor, bias = c, bias * c
        elif op.name == "tensor.neg" or (op.name == "tensor.sub" and secret[0] == 1):
            factor, bias = -1.0, (c if op.name == "tensor.sub" else 0.0) - bias
        else:  # x + c, c + x, x - c
            factor, bias = 1.0, bias + (-c if op.name == "tensor.sub" else c)
        if np.ndim(factor) == 0 and factor == 1.0:
            matrix = x.matrix
        elif isinstance(x.matrix, Sparse):
            matrix = x.matrix.scale_rows(np.broadcast_to(factor, c.shape))
        else:
            matrix = x.matrix * (factor[:, None] if np.ndim(factor) else factor)
        return Affine(x.bases, matrix, np.ascontiguousarray(bias, dtype=np.float64), shape)

    def base_form(self, ct: Value) -> Affine:
        """The affine form of ciphertext value ``ct`` itself."""
        return Affine.of(ct)

    def set_ct(self, v: Value, ct: Value) -> None:
        self.env[v] = self.base_form(ct)
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

    def secret_matmul(self, op: Op) -> None:
        """A product of two encrypted matrices (attention's Q K^T and A V), numpy.matmul's
        semantics over ranks 2 and more: both operands as ciphertext tensors (batch dimensions
        broadcast to the result's), one ``ckks.matmul`` (n m k ciphertext products summed at size
        3, one level), whose result the next map absorbs."""
        a, b, sa, _ = self.matmul_operands(op)
        ct = self.emit("ckks.matmul", [self.materialize(a), self.materialize(b)])
        self.set_ct(op.result, ct)  # its calibrated range, else a bound
        if not np.isfinite(self.max_abs[ct]):
            self.max_abs[ct] = sa[-1] * self.ranges.get(a, float("nan")) * self.ranges.get(b, float("nan"))

    def matmul_operands(self, op: Op):
        """(a, b, a's shape, b's shape) of a product of two encrypted matrices, a and b broadcast
        over the result's batch dimensions."""
        a, b = op.operands
        sa, sb, out = tuple(a.type.shape), tuple(b.type.shape), tuple(op.result.type.shape)
        if len(sa) < 2 or len(sb) < 2:
            self.fail(op, "a product of an encrypted vector (rank 1) and another encrypted tensor has no "
                          "lowering; reshape the vector to a matrix")
        return self.broadcast(a, out[:-2] + sa[-2:]), self.broadcast(b, out[:-2] + sb[-2:]), sa, sb

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
        """sum_k c_k T_k(t), t the input mapped to [-1, 1]. T_k by the doubling recurrences
        T_2m = 2 T_m^2 - 1 and T_2m+1 = 2 T_m T_m+1 - T_1 (depth ceil(log2 k)). Up to degree
        BABY_STEP_MAX every T_k is computed (d - 1 products) and the sum stays an affine form over
        them. Above it, one baby-step giant-step split (Paterson-Stockmeyer in the Chebyshev
        basis): with m = 2^(ceil(log2 d) - 1) and T_m+j = 2 T_m T_j - T_m-j,
        p = q0 + T_m * q1, q0 = sum_k<m a_k T_k, q1 = sum_j<=d-m b_j T_j: the baby steps T_2..T_m
        (m - 1 products) and one product T_m * q1, q1 a sum over them (a linear map of the terms,
        rescaled with the product): degree 8 takes 4 products (and relinearizations, a key switch
        each) instead of 7 at the same depth, and the sum has 5 terms instead of 9 (classic
        LeNet-5's batch program: 45,556 -> 26,032 relinearizations, 8,605 -> 5,582 s predicted)."""
        x = op.operands[0]
        lo, hi = op.attrs["interval"]
        coefficients = [float(c) for c in op.attrs["coefficients"]]
        degree = len(coefficients) - 1
        self.materializing = materializes(self.poly_outputs, op)
        alpha, beta = 2.0 / (hi - lo), -(lo + hi) / (hi - lo)
        t = self.env[x].scaled(alpha, beta)
        terms = {1: t}
        materialized: dict[int, Value] = {}

        def ct_of(k):
            if k not in materialized:
                materialized[k] = self.mat(terms[k], 1.0, checks_interval=(k == 1))
            return materialized[k]
        split = self.BABY_STEP_MAX is not None and degree > self.BABY_STEP_MAX
        giant = 1 << (int(np.ceil(np.log2(degree))) - 1) if split else degree
        for k in range(2, giant + 1):
            m = k // 2
            if k % 2 == 0:
                prod = self.emit("ckks.square", [ct_of(m)])
                self.max_abs[prod] = 1.0
                terms[k] = self.combination([(2.0, self.base_form(prod))], -1.0)
            else:
                prod = self.emit("ckks.mul", [ct_of(m), ct_of(m + 1)])
                self.max_abs[prod] = 1.0
                terms[k] = self.combination([(2.0, self.base_form(prod)), (-1.0, self.t1_term(t, ct_of(1)))], 0.0)
        if degree > 1:
            terms[1] = self.t1_term(t, ct_of(1))
        if split:
            low, high = chebyshev_split(coefficients, giant)
            q1 = [(b, terms[j]) for j, b in enumerate(high) if j >= 1 and b != 0]
            bound = float(np.sum(np.abs(high)))
            q1_ct = self.mat(self.combination(q1, high[0]), bound) if q1 else None
            parts = [(a, terms[k]) for k, a in enumerate(low) if k >= 1 and a != 0]
            if q1_ct is not None:
                prod = self.emit("ckks.mul", [ct_of(giant), q1_ct])
                self.max_abs[prod] = bound
                parts.append((1.0, self.base_form(prod)))
            elif high[0] != 0:
                parts.append((high[0], terms[giant]))
            constant = low[0]
        else:
            parts = [(c, terms[k]) for k, c in enumerate(coefficients) if k >= 1 and c != 0]
            constant = coefficients[0]
        if not parts:
            self.env[op.result] = np.full(op.result.type.shape, constant)
            return
        self.env[op.result] = self.combination(parts, constant)
        if self.materializing:
            # the terms summed at 2^(waterline + P), P the prime a square of a linear map's
            # result takes, then rescaled by it: one level, and the next map multiplies once
            prime = self.scale_bits + 2 * self.weight_bits
            if prime > MAX_PRIME_BITS:
                raise PassError(f"a polynomial's output at 2^{self.scale_bits} with weights at "
                                f"2^{self.weight_bits} would need a {prime}-bit prime (at most {MAX_PRIME_BITS})")
            total = self.mat(self.env[op.result], float("nan"), scale=self.scale_bits + prime)
            rescaled = self.emit("ckks.rescale", [total], {"bits": prime})
            self.max_abs[rescaled] = self.max_abs.get(total, float("nan"))
            self.set_ct(op.result, rescaled)

    def t1_term(self, t: Affine, ct: Value) -> Affine:
        """T_1 in the odd recurrences and the sum of terms: merged, its form (the layer before
        the activation, which the next layer's weights absorb at one weight scale), not its
        ciphertext (one weight scale more); materialized, its ciphertext (the sum takes each
        term at its own weight scale, and the layer before is not computed twice)."""
        return self.base_form(ct) if self.materializing else t

    def combination(self, parts, constant: float) -> Affine:
        """sum of c * (affine form) + constant, as one affine form over the union of bases."""
        shape = parts[0][1].shape
        if all(a.elementwise and a.shape == shape for _, a in parts):
            return elementwise_sum(parts, constant, shape)
        return sparse_sum(parts, constant, shape)


