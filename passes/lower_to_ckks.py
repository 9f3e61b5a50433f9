"""lower-to-ckks: tensor IR -> ckks IR in the batch layout (CryptoNets' packing).

Every secret tensor becomes a tensor of ciphertexts, one per element; the slots of each ciphertext
hold up to N/2 different inputs, so no rotations are ever needed. Chains of affine tensor ops
(conv2d, matmul, avgpool, reshape, transpose, pad, concat, reduce, add/sub/mul by constants, ...)
on one secret operand are fused into one ``ckks.linear`` (a multiply-by-plaintext-scalar and add
tree), emitted only where a nonlinear op or the output needs the values. Products of secret values
become ``ckks.mul`` / ``ckks.square``; client-side ops run after ``ckks.decrypt``.

Assumes: verified tensor IR whose constants have values; ``graph.meta["ranges"]`` (optional) maps
tensor values to their calibrated max |value|.
Guarantees: ckks IR with inputs at level 0 and scale 2^scale_bits, no rescale, relinearize or
modswitch yet (later passes insert them), ``slots`` 0 until parameters are selected;
``graph.meta["max_abs"]`` maps each ciphertext value to the calibrated max |value| it holds.
Options: scale_bits (26), weight_scale_bits (14).
"""
from __future__ import annotations

import numpy as np

from hecc.backends.reference import apply_op
from hecc.errors import UnsupportedOpError
from hecc.ir import OPS, CipherType, Graph, Op, TensorType, Value

NAME = "lower-to-ckks"
DEFAULT_SCALE_BITS = 26
DEFAULT_WEIGHT_SCALE_BITS = 14


class Affine:
    """A secret tensor as an affine function A @ base + b of a ciphertext tensor (A None: identity)."""

    __slots__ = ("base", "matrix", "bias", "shape")

    def __init__(self, base: Value, matrix, bias, shape):
        self.base, self.matrix, self.bias, self.shape = base, matrix, bias, tuple(shape)

    @property
    def is_base(self) -> bool:
        return self.matrix is None and self.bias is None and self.shape == self.base.type.shape

    def dense(self):
        n = self.base.type.count
        matrix = np.eye(n) if self.matrix is None else self.matrix
        bias = np.zeros(matrix.shape[0]) if self.bias is None else self.bias
        return matrix, bias


class _Lowering:
    def __init__(self, graph: Graph, options: dict):
        self.src = graph
        self.out = Graph()
        self.scale_bits = int(options.get("scale_bits", DEFAULT_SCALE_BITS))
        self.weight_bits = int(options.get("weight_scale_bits", DEFAULT_WEIGHT_SCALE_BITS))
        self.ranges = dict(graph.meta.get("ranges", {}))
        self.max_abs: dict[Value, float] = {}
        self.env: dict[Value, object] = {}
        self.materialized: dict[Value, Value] = {}
        self.decrypted: dict[Value, Value] = {}
        self.linear_count = 0

    # --- helpers -------------------------------------------------------------------------------
    def fail(self, op: Op, why: str):
        raise UnsupportedOpError({op.name: ["(tensor IR)"]}, {op.name: why})

    def is_secret(self, v: Value) -> bool:
        return isinstance(self.env[v], Affine)

    def materialize(self, v: Value) -> Value:
        """The ciphertext tensor holding tensor value ``v`` (emitting its ckks.linear once)."""
        if v in self.materialized:
            return self.materialized[v]
        aff = self.env[v]
        if aff.is_base:
            ct = aff.base
        else:
            matrix, bias = aff.dense()
            self.linear_count += 1
            while f"linear{self.linear_count}.matrix" in self.src.constants:
                self.linear_count += 1
            name = f"linear{self.linear_count}"
            self.out.constants[f"{name}.matrix"] = matrix
            attrs = {"matrix": f"{name}.matrix", "shape": list(aff.shape),
                     "weight_scale": self.weight_bits}
            if np.any(bias):
                self.out.constants[f"{name}.bias"] = bias
                attrs["bias"] = f"{name}.bias"
            ct = self.emit("ckks.linear", [aff.base], attrs)
        self.max_abs.setdefault(ct, self.ranges.get(v, float("nan")))
        self.materialized[v] = ct
        return ct

    def emit(self, name: str, operands, attrs=None) -> Value:
        opdef = OPS[name]
        full = {k: opdef.attr(attrs or {}, k) for k in opdef.attrs}
        types = opdef.infer([x.type for x in operands], full)
        return self.out.append(name, operands, types, attrs).result

    def tensor_operand(self, v: Value) -> Value:
        """``v`` as a plaintext tensor on the client side (decrypting secret values)."""
        if v in self.decrypted:
            return self.decrypted[v]
        item = self.env[v]
        if isinstance(item, Affine):
            result = self.emit("ckks.decrypt", [self.materialize(v)])
        elif isinstance(item, np.ndarray):
            name = self.src_const_name(v)
            self.out.constants[name] = item
            result = self.out.append("tensor.constant", [], [v.type], {"name": name}).result
        else:
            result = item
        self.decrypted[v] = result
        return result

    def src_const_name(self, v: Value) -> str:
        return v.producer.attrs["name"]

    # --- ops -----------------------------------------------------------------------------------
    def lower(self, op: Op) -> None:
        if op.name == "hecc.input":
            t = op.result.type
            ct = self.out.append("hecc.input", [], [CipherType(t.shape, 0, self.scale_bits, 0)],
                                 dict(op.attrs)).result
            self.env[op.result] = Affine(ct, None, None, t.shape)
            self.max_abs[ct] = self.ranges.get(op.result, float("nan"))
        elif op.name == "tensor.constant":
            self.env[op.result] = np.asarray(self.src.constants[op.attrs["name"]], dtype=np.float64)
        elif op.name == "hecc.output" or OPS[op.name].client_side:
            operands = [self.tensor_operand(v) for v in op.operands]
            types = [r.type for r in op.results]
            new = self.out.append(op.name, operands, types, dict(op.attrs))
            for old, value in zip(op.results, new.results):
                self.env[old] = value
        elif not any(self.is_secret(v) for v in op.operands):
            self.env[op.result] = apply_op(op, [self.env[v][None] for v in op.operands])[0]
        elif op.name == "tensor.mul" and all(self.is_secret(v) for v in op.operands):
            self.product(op, *op.operands)
        elif op.name == "tensor.pow":
            self.power(op)
        elif op.name in ("tensor.add", "tensor.sub") and all(self.is_secret(v) for v in op.operands) \
                and self.env[op.operands[0]].base is not self.env[op.operands[1]].base:
            a, b = (self.materialize(self.broadcast(v, op.result.type.shape)) for v in op.operands)
            self.set_ct(op.result, self.emit("ckks." + op.name.split(".")[1], [a, b]))
        elif op.name == "tensor.concat" and len({id(self.env[v].base) for v in op.operands
                                                 if self.is_secret(v)}) > 1:
            parts = [self.materialize(v) if self.is_secret(v) else self.encrypted_constant(op, v)
                     for v in op.operands]
            self.set_ct(op.result, self.emit("ckks.concat", parts, dict(op.attrs)))
        elif op.name in AFFINE_OPS:
            self.affine(op)
        elif op.name == "tensor.activation":
            self.fail(op, f"the {op.attrs['kind']} activation is not a polynomial; it can run only on "
                          "the reference backend until activation approximation lands")
        else:
            self.fail(op, "no CKKS lowering for this op in the batch layout")

    def set_ct(self, v: Value, ct: Value) -> None:
        self.env[v] = Affine(ct, None, None, v.type.shape)
        self.materialized[v] = ct
        self.max_abs[ct] = self.ranges.get(v, float("nan"))

    def encrypted_constant(self, op: Op, v: Value):
        self.fail(op, "concatenates encrypted tensors from different sources with a constant")

    def broadcast(self, v: Value, shape) -> Value:
        """``v`` broadcast to ``shape`` (an affine map of the same base: a tensor value of its own)."""
        if tuple(v.type.shape) == tuple(shape):
            return v
        aff = self.env[v]
        matrix, bias = aff.dense()
        n = aff.base.type.count
        runs = np.concatenate([bias[None], bias[None] + matrix.T]).reshape((n + 1,) + aff.shape)
        pad = (1,) * (len(shape) - len(aff.shape))
        y = np.broadcast_to(runs.reshape((n + 1,) + pad + aff.shape), (n + 1,) + tuple(shape))
        y = y.reshape(n + 1, -1)
        wide = Value(TensorType(tuple(shape), True))
        self.env[wide] = Affine(aff.base, (y[1:] - y[0]).T.copy(), y[0].copy(), shape)
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

    def affine(self, op: Op) -> None:
        """Compose op with the affine maps of its secret operands, evaluated on basis vectors."""
        secrets = [self.env[v] for v in op.operands if self.is_secret(v)]
        base = secrets[0].base
        if any(s.base is not base for s in secrets):
            self.fail(op, "combines encrypted tensors from different sources")
        n = base.type.count
        if (n + 1) * op.result.type.size > MAX_MATRIX_ENTRIES:
            self.fail(op, f"its dense linear map ({op.result.type.size} x {n}) is too large for the "
                          "batch layout of this version")
        # run 0: the offsets; runs 1..n: offsets plus one column of the linear part
        args = []
        for v in op.operands:
            item = self.env[v]
            if isinstance(item, Affine):
                matrix, bias = item.dense()
                runs = np.concatenate([bias[None], bias[None] + matrix.T], axis=0)
                args.append(runs.reshape((n + 1,) + item.shape))
            else:
                args.append(item[None])
        y = apply_op(op, args).reshape(n + 1, -1)
        self.env[op.result] = Affine(base, (y[1:] - y[0]).T.copy(), y[0].copy(), op.result.type.shape)


MAX_MATRIX_ENTRIES = 20_000_000  # 160 MB of float64 per fused linear layer

AFFINE_OPS = {"tensor.add", "tensor.sub", "tensor.mul", "tensor.neg", "tensor.matmul", "tensor.conv2d",
              "tensor.avgpool", "tensor.reshape", "tensor.transpose", "tensor.concat", "tensor.pad",
              "tensor.reduce"}


def run(graph: Graph, options: dict | None = None) -> Graph:
    lowering = _Lowering(graph, dict(options or {}))
    for op in graph.ops:
        if op.name == "tensor.matmul" and all(lowering.is_secret(v) for v in op.operands):
            lowering.fail(op, "a product of two encrypted matrices has no batch-layout lowering")
        lowering.lower(op)
    out = lowering.out
    out.meta["max_abs"] = lowering.max_abs
    return out
