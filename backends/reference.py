"""The reference backend: runs tensor IR with numpy in float64; the ground truth for the frontend.

Every array carries one extra leading axis, the run axis: a secret value of IR shape S is an array
of shape (R, *S) holding R independent inputs; a public constant is (1, *S) and broadcasts. So the
implementations below see axis ``a`` of the IR as axis ``a + 1``.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import HeccError
from ..ir import Graph, Op

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(np.float64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


ACTIVATIONS = {
    "relu": lambda x, a, b: np.maximum(x, 0.0),
    "leaky_relu": lambda x, a, b: np.where(x >= 0, x, a * x),
    "sigmoid": lambda x, a, b: sigmoid(x),
    "tanh": lambda x, a, b: np.tanh(x),
    "softplus": lambda x, a, b: np.logaddexp(0.0, x),
    "elu": lambda x, a, b: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0))),
    "hard_sigmoid": lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
    "gelu": lambda x, a, b: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x, a, b: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "erf": lambda x, a, b: erf(x),
    "silu": lambda x, a, b: x * sigmoid(x),
    "abs": lambda x, a, b: np.abs(x),
    # pieces of Softmax inside the network and of LayerNormalization (see frontends/onnx_ops.py)
    "exp": lambda x, a, b: np.exp(np.minimum(x, 700.0)),
    "reciprocal": lambda x, a, b: 1.0 / x,
    "rsqrt": lambda x, a, b: 1.0 / np.sqrt(x),
}


def _windows(x, kernel, strides, pads, dilations=(1, 1), value=0.0):
    """(B, C, H, W) -> (B, C, OH, OW, kh, kw) views of the padded input."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilations, strides
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def _merge_runs(x):
    return x.reshape((-1,) + x.shape[2:]), x.shape[:2]


CONV_CHUNK_ENTRIES = 1 << 24  # im2col entries built at once (128 MB of float64)


def conv2d(op: Op, x, w, b=None):
    """im2col and one matrix product per group (BLAS), a chunk of runs at a time."""
    xs, lead = _merge_runs(x)
    w = w[0]
    group = op.attrs.get("group", 1)
    kh, kw = w.shape[2:]
    cg, og = w.shape[1], w.shape[0] // group
    win = _windows(xs, (kh, kw), op.attrs["strides"], op.attrs["pads"], op.attrs["dilations"])
    n, c, oh, ow = win.shape[:4]
    out = np.empty((n, w.shape[0], oh, ow))
    chunk = max(1, CONV_CHUNK_ENTRIES // max(1, oh * ow * cg * kh * kw))
    for lo in range(0, n, chunk):
        part = win[lo:lo + chunk]
        m = part.shape[0]
        for g in range(group):
            cols = part[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(m * oh * ow, cg * kh * kw)
            y = cols @ w[g * og:(g + 1) * og].reshape(og, -1).T
            out[lo:lo + m, g * og:(g + 1) * og] = y.reshape(m, oh, ow, og).transpose(0, 3, 1, 2)
    if b is not None:
        out = out + b[0][None, :, None, None]
    return out.reshape(lead + out.shape[1:])


def avgpool(op: Op, x):
    xs, lead = _merge_runs(x)
    kernel, strides, pads = op.attrs["kernel"], op.attrs["strides"], op.attrs["pads"]
    total = _windows(xs, kernel, strides, pads).sum(axis=(-2, -1))
    if op.attrs.get("count_include_pad", False):
        out = total / (kernel[0] * kernel[1])
    else:
        ones = np.ones((1, 1) + xs.shape[2:])
        out = total / _windows(ones, kernel, strides, pads).sum(axis=(-2, -1))
    return out.reshape(lead + out.shape[1:])


def _shift(axes):
    return tuple(a + 1 for a in axes)


def _argmax(op: Op, x):
    axis = op.attrs["axis"] + 1
    if op.attrs.get("select_last_index", False):
        idx = x.shape[axis] - 1 - np.argmax(np.flip(x, axis=axis), axis=axis)
    else:
        idx = np.argmax(x, axis=axis)
    if op.attrs.get("keepdims", True):
        idx = np.expand_dims(idx, axis)
    labels = op.attrs.get("labels", [])
    return np.asarray(labels)[idx] if labels else idx.astype(np.int64)


def _aligned(op: Op, args):
    """Operands with the run axis first and their IR axes right-aligned, so numpy broadcasts IR
    axes against IR axes (a rank-1 operand would otherwise meet the run axis)."""
    rank = max(v.type.rank for v in op.operands)
    return [a.reshape(a.shape[:1] + (1,) * (rank - v.type.rank) + a.shape[1:])
            for a, v in zip(args, op.operands)]


def _broadcasting(fn):
    return lambda op, *args: fn(*_aligned(op, args))


def _matmul(op: Op, a, b):
    """numpy.matmul on IR axes: rank-1 operands are promoted and their axis dropped again."""
    ra, rb = (v.type.rank for v in op.operands)
    if ra == 1:
        a = a[:, None, :]
    if rb == 1:
        b = b[..., None]
    lead = max(ra, 2) - 2, max(rb, 2) - 2
    if b.shape[0] == 1 and lead[1] == 0:  # a constant matrix: one BLAS product over every run and row
        y = (a.reshape(-1, a.shape[-1]) @ b[0]).reshape(a.shape[:-1] + (b.shape[-1],))
        if rb == 1:
            y = y[..., 0]
        if ra == 1:
            y = y[..., 0, :] if rb != 1 else y[..., 0]
        return y
    batch = max(lead)
    a = a.reshape(a.shape[:1] + (1,) * (batch - lead[0]) + a.shape[1:])
    b = b.reshape(b.shape[:1] + (1,) * (batch - lead[1]) + b.shape[1:])
    y = np.matmul(a, b)
    if rb == 1:
        y = y[..., 0]
    if ra == 1:
        y = y[..., 0, :] if rb != 1 else y[..., 0]
    return y


def _concat(op: Op, *xs):
    runs = max(x.shape[0] for x in xs)
    xs = [np.broadcast_to(x, (runs,) + x.shape[1:]) for x in xs]
    return np.concatenate(xs, axis=op.attrs["axis"] + 1)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _normalize(op: Op, x):
    norm = op.attrs["norm"]
    if norm == "MAX":
        d = x.max(axis=-1, keepdims=True)
    elif norm == "L1":
        d = np.abs(x).sum(axis=-1, keepdims=True)
    else:
        d = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.where(d == 0, 1.0, d)


def chebyshev(coefficients, interval, x):
    lo, hi = interval
    t = (2.0 * x - (lo + hi)) / (hi - lo)
    return np.polynomial.chebyshev.chebval(t, np.asarray(coefficients, dtype=np.float64))


def _reduce(op: Op, x):
    fn = np.sum if op.attrs["kind"] == "sum" else np.mean
    return fn(x, axis=_shift(op.attrs["axes"]), keepdims=op.attrs.get("keepdims", True))


IMPLS = {
    "tensor.add": _broadcasting(lambda a, b: a + b),
    "tensor.sub": _broadcasting(lambda a, b: a - b),
    "tensor.mul": _broadcasting(lambda a, b: a * b),
    "tensor.neg": lambda op, a: -a,
    "tensor.matmul": _matmul,
    "tensor.conv2d": conv2d,
    "tensor.avgpool": avgpool,
    "tensor.reshape": lambda op, x: x.reshape((x.shape[0],) + tuple(op.attrs["shape"])),
    "tensor.transpose": lambda op, x: x.transpose((0,) + _shift(op.attrs["perm"])),
    "tensor.concat": _concat,
    "tensor.pad": lambda op, x: np.pad(
        x, [(0, 0)] + [(op.attrs["pads"][i], op.attrs["pads"][i + x.ndim - 1]) for i in range(x.ndim - 1)],
        constant_values=op.attrs.get("value", 0.0)),
    "tensor.reduce": _reduce,
    "tensor.pow": lambda op, x: x ** op.attrs["exponent"],
    "tensor.activation": lambda op, x: ACTIVATIONS[op.attrs["kind"]](
        x, op.attrs.get("alpha", 0.0), op.attrs.get("beta", 0.0)),
    "tensor.poly": lambda op, x: chebyshev(op.attrs["coefficients"], op.attrs["interval"], x),
    "tensor.prelu": _broadcasting(lambda x, s: np.where(x >= 0, x, s * x)),
    "tensor.softmax": lambda op, x: _softmax(x, op.attrs["axis"] + 1),
    "tensor.softmax_inside": lambda op, x: _softmax(x, op.attrs["axis"] + 1),
    "tensor.log_softmax": lambda op, x: _log_softmax(x, op.attrs["axis"] + 1),
    "tensor.normalize": _normalize,
    "tensor.argmax": _argmax,
}


def evaluate(graph: Graph, inputs: list[np.ndarray], trace: dict | None = None) -> list[np.ndarray]:
    """Run ``graph`` on ``inputs`` (one array of shape (R, *S) per ``hecc.input``, in order) and
    return one (R, *S) array per ``hecc.output``, in order. ``trace``, if given, receives every
    value's array."""
    env = {} if trace is None else trace
    feed = iter(inputs)
    outputs = []
    for op in graph.ops:
        if op.name == "hecc.input":
            env[op.result] = np.asarray(next(feed), dtype=np.float64)
        elif op.name == "tensor.constant":
            env[op.result] = np.asarray(graph.constants[op.attrs["name"]])[None]
        elif op.name == "hecc.output":
            outputs.append(env[op.operands[0]])
        else:
            impl = IMPLS.get(op.name)
            if impl is None:
                raise HeccError(f"the reference backend cannot run {op.name}")
            args = [env[v] if env[v].dtype.kind in "US" else env[v].astype(np.float64, copy=False)
                    for v in op.operands]
            env[op.result] = impl(op, *args)
    return outputs


def apply_op(op: Op, args: list[np.ndarray]) -> np.ndarray:
    """Apply one tensor op to arrays that carry the leading run axis."""
    return IMPLS[op.name](op, *[np.asarray(a, dtype=np.float64) for a in args])
