"""The ``ckks`` dialect: tensors of CKKS ciphertexts.

In the batch layout a ciphertext tensor has one ciphertext per tensor element and the slots hold
different inputs (``ckks.linear`` mixes ciphertexts with scalar weights). In the slots layout one
input lives in the slots of one ciphertext (shape ()), or of a few (the input, shape (C,), split by
``ckks.extract``); a value of n elements is stored periodically (element i in every slot s with
s mod p = i, p a power of two >= n), and linear maps are ``ckks.rotate``, ``ckks.mul_plain``
by plaintext vectors and sums. Elementwise ops are the same in both layouts.

Types propagate sizes, levels and scales without demanding that operands agree (a product of two
size-2 ciphertexts has size 3; a sum takes the larger level and scale), so the IR is well-typed
before insert-relinearize and align-levels run; the validate pass checks that every op that needs
size 2 gets it and that the operands of every sum and product agree in level (and scale, for sums).

Levels count primes dropped since encryption; scales are log2 of the nominal scale (a rescale by a
prime of ``bits`` bits subtracts ``bits``). Relinearize, rescale and modswitch are explicit ops.
Constants (matrices, biases) are named entries of the constant store, like tensor constants.
"""
from __future__ import annotations

from .ops import Attr, define
from .types import CipherType, TensorType


def _cipher(t, size: int | None = None) -> CipherType:
    if not isinstance(t, CipherType):
        raise ValueError(f"expected a ciphertext operand, got {t}")
    if size is not None and t.size != size:
        raise ValueError(f"expected a ciphertext of size {size}, got size {t.size}"
                         + (" (relinearize it first)" if t.size == 3 else ""))
    return t


def _linear(types, attrs):
    x = _cipher(types[0])
    w = attrs["weight_scale"]
    if attrs["rescale_terms"]:
        return [x.but(shape=tuple(attrs["shape"]), level=x.level + 1)]
    return [x.but(shape=tuple(attrs["shape"]), scale_bits=x.scale_bits + w)]


def _same_shape(a, b, what):
    if a.shape != b.shape:
        raise ValueError(f"{what} operands have shapes {a.shape} and {b.shape}")


def _mul(types, attrs):
    a, b = _cipher(types[0]), _cipher(types[1])
    _same_shape(a, b, "mul")
    return [a.but(level=max(a.level, b.level), scale_bits=a.scale_bits + b.scale_bits,
                  size=a.size + b.size - 1)]


def _matmul(types, attrs):
    a, b = _cipher(types[0]), _cipher(types[1])
    if len(a.shape) < 2 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"cannot multiply ciphertext matrices of shapes {a.shape} and {b.shape}")
    return [a.but(shape=a.shape[:-1] + b.shape[-1:], level=max(a.level, b.level),
                  scale_bits=a.scale_bits + b.scale_bits, size=a.size + b.size - 1)]


def _square(types, attrs):
    a = _cipher(types[0])
    return [a.but(scale_bits=2 * a.scale_bits, size=2 * a.size - 1)]


def _add(types, attrs):
    a, b = _cipher(types[0]), _cipher(types[1])
    _same_shape(a, b, "add")
    return [a.but(level=max(a.level, b.level), scale_bits=max(a.scale_bits, b.scale_bits),
                  size=max(a.size, b.size))]


def _concat(types, attrs):
    cs = [_cipher(t) for t in types]
    axis = attrs["axis"]
    if axis == 0 and all(c.shape == () for c in cs):  # single ciphertexts into a tensor of them
        cs = [c.but(shape=(1,)) for c in cs]
    first = cs[0]
    if any(len(c.shape) != len(first.shape) or not 0 <= axis < len(first.shape) for c in cs):
        raise ValueError(f"concat axis {axis} does not fit shapes {[c.shape for c in cs]}")
    if any(c.shape[:axis] + c.shape[axis + 1:] != first.shape[:axis] + first.shape[axis + 1:] for c in cs):
        raise ValueError(f"concat shapes {[c.shape for c in cs]} differ off axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(c.shape[axis] for c in cs)
    return [first.but(shape=tuple(shape), level=max(c.level for c in cs),
                      scale_bits=max(c.scale_bits for c in cs), size=max(c.size for c in cs))]


def _relinearize(types, attrs):
    return [_cipher(types[0], 3).but(size=2)]


def _rescale(types, attrs):
    a = _cipher(types[0], None)
    if not 0 < attrs["bits"] <= 60:
        raise ValueError(f"rescale bits must be 1..60, got {attrs['bits']}")
    return [a.but(level=a.level + 1, scale_bits=a.scale_bits - attrs["bits"])]


def _modswitch(types, attrs):
    a = _cipher(types[0], None)
    return [a.but(level=a.level + 1)]


def _decrypt(types, attrs):
    a = _cipher(types[0])
    if attrs["shape"]:
        if a.shape != () and not attrs["layout"]:
            raise ValueError(f"a slots-layout decrypt takes one ciphertext, got shape {a.shape}")
        return [TensorType(tuple(attrs["shape"]), True)]
    return [TensorType(a.shape, True)]


def _same_cipher(types, attrs):
    return [_cipher(types[0])]


def _rotate(types, attrs):
    a = _cipher(types[0])
    if attrs["step"] <= 0 or (a.slots and attrs["step"] >= a.slots):
        raise ValueError(f"rotation step {attrs['step']} must lie in 1..slots-1")
    return [a]


def _mul_plain(types, attrs):
    a = _cipher(types[0])
    return [a.but(scale_bits=a.scale_bits + attrs["weight_scale"])]


def _extract(types, attrs):
    a = _cipher(types[0])
    if len(a.shape) != 1 or not 0 <= attrs["index"] < a.shape[0]:
        raise ValueError(f"cannot extract ciphertext {attrs['index']} of shape {a.shape}")
    return [a.but(shape=())]


define("ckks.params", 0, 0,
       attrs={"poly_modulus_degree": Attr("int"), "coeff_modulus_bits": Attr("ints"),
              "security": Attr("int", 128), "layout": Attr("str", "batch"),
              "galois_steps": Attr("ints", []), "inputs_per_ciphertext": Attr("int", 1)},
       doc="The encryption parameters: ring degree N and the coefficient-modulus bit sizes "
           "[q0, primes dropped last to first, special prime] in SEAL's order; the layout; the "
           "rotation steps that get Galois keys (set by minimize-rotation-keys); in the slots layout, "
           "the inputs each ciphertext holds, interleaved (input r at slot u * K + r of a one-input "
           "layout of N/2K slots: every table of the program is in those units).")
define("ckks.linear", 1, infer=_linear,
       attrs={"matrix": Attr("str"), "index": Attr("str", ""), "bias": Attr("str", ""), "shape": Attr("ints"),
              "weight_scale": Attr("int"), "rescale_terms": Attr("bool", False),
              "checks_interval": Attr("bool", False)},
       doc="y = matrix @ x + bias over the ciphertexts of x (flattened): multiply-by-plaintext-"
           "scalar and add trees, zero weights skipped; a 1-D matrix is a diagonal map (y = matrix * x "
           "+ bias, elementwise: memory and work linear in the size), or, with `index` (the constant "
           "holding each weight's row and column, 2 x nnz), the values of a sparse matrix. "
           "Weights are encoded at 2^weight_scale, so "
           "the scale grows by weight_scale; with rescale_terms every product is rescaled first "
           "(the eager baseline). The bias is encoded at the result's scale. checks_interval marks the input "
           "of a polynomial activation mapped to [-1, 1]: the simulator counts values outside it.")
define("ckks.mul", 2, infer=_mul, doc="Elementwise ciphertext product (size 3 result).")
define("ckks.matmul", 2, infer=_matmul,
       doc="Matrix product of two ciphertext tensors (..., n, k) and (..., k, m), equal batch "
           "dimensions: each result is a sum of k ciphertext products (size 3 result, relinearized "
           "once after the sum).")
define("ckks.square", 1, infer=_square, doc="Elementwise ciphertext square (size 3 result).")
define("ckks.add", 2, infer=_add, doc="Elementwise sum; equal level, scale and size.")
define("ckks.sub", 2, infer=_add, doc="Elementwise difference; equal level, scale and size.")
define("ckks.concat", (1, None), infer=_concat, attrs={"axis": Attr("int")},
       doc="Concatenation of ciphertext tensors (no arithmetic); equal level, scale and size.")
define("ckks.relinearize", 1, infer=_relinearize, doc="Size 3 -> 2 with the relinearization key.")
define("ckks.rescale", 1, infer=_rescale, attrs={"bits": Attr("int")},
       doc="Divide by the next prime (of `bits` bits): one level down, scale - bits.")
define("ckks.modswitch", 1, infer=_modswitch, doc="Drop the next prime: one level down, same scale.")
define("ckks.decrypt", 1, infer=_decrypt, client_side=True,
       attrs={"shape": Attr("ints", []), "layout": Attr("str", "")},
       doc="Decrypt and decode (client-side): the server's result becomes a plaintext tensor. "
           "With `shape` (slots layout) the tensor is read from the slots listed by the constant "
           "`layout` (element e at slot layout[e] of the ciphertexts laid end to end), or without it "
           "from the first slots of one ciphertext.")
define("ckks.rotate", 1, infer=_rotate, attrs={"step": Attr("int")},
       doc="Slots layout: rotate the slots left by `step` (slot s receives slot s + step, cyclic), "
           "with the Galois key of that step.")
define("ckks.mul_plain", 1, infer=_mul_plain,
       attrs={"plain": Attr("str"), "row": Attr("int", 0), "weight_scale": Attr("int")},
       doc="Slots layout: multiply by the plaintext vector in row `row` of the constant `plain` "
           "(repeated periodically over the slots; ciphertext c of a tensor takes row `row` + c, or "
           "the only row), "
           "encoded at 2^weight_scale: the scale grows by weight_scale.")
define("ckks.add_plain", 1, infer=_same_cipher,
       attrs={"plain": Attr("str"), "row": Attr("int", 0), "checks_interval": Attr("str", "")},
       doc="Slots layout: add the plaintext vector in row `row` of `plain` (repeated periodically; "
           "ciphertext c of a tensor takes row `row` + c, or the only row), encoded at the "
           "ciphertext's scale. checks_interval names a constant listing the slots (ciphertexts laid "
           "end to end) that hold the input of a polynomial activation mapped to [-1, 1].")
define("ckks.extract", 1, infer=_extract, attrs={"index": Attr("int")},
       doc="Slots layout: ciphertext `index` of a tensor of ciphertexts (no arithmetic).")
