"""The ``hecc`` (program boundary) and ``tensor`` (one input's tensors) dialects.

Dimension 0 of a secret tensor is the model's batch dimension; every op acts on each input
independently, so a backend may run many inputs at once along an extra leading axis.
"""
from __future__ import annotations

import numpy as np

from .ops import Attr, define
from .types import TensorType

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "softplus", "elu", "hard_sigmoid",
               "gelu", "gelu_tanh", "erf", "silu", "abs", "exp", "reciprocal", "rsqrt")


def _tensor(t) -> TensorType:
    if not isinstance(t, TensorType):
        raise ValueError(f"expected a tensor operand, got {t}")
    return t


def _secret(types) -> bool:
    return any(_tensor(t).secret for t in types)


def broadcast_shape(shapes) -> tuple[int, ...]:
    """numpy's broadcasting of ``shapes`` (ValueError if they do not broadcast); in plain Python,
    as it runs once per imported op."""
    rank = max(len(s) for s in shapes)
    out = [1] * rank
    for shape in shapes:
        for i, d in enumerate(shape, rank - len(shape)):
            if d != out[i] and d != 1:
                if out[i] != 1:
                    raise ValueError(f"shapes {' and '.join(map(str, shapes))} do not broadcast")
                out[i] = d
    return tuple(out)


def _broadcast(types, attrs):
    shapes = [_tensor(t).shape for t in types]
    return [TensorType(broadcast_shape(shapes), _secret(types))]


def _same(types, attrs):
    t = _tensor(types[0])
    return [TensorType(t.shape, t.secret)]


def _matmul(types, attrs):
    a, b = (_tensor(t) for t in types)
    if a.rank < 1 or b.rank < 1:
        raise ValueError("matmul operands must have rank >= 1")
    sa = (1,) + a.shape if a.rank == 1 else a.shape
    sb = b.shape + (1,) if b.rank == 1 else b.shape
    if sa[-1] != sb[-2]:
        raise ValueError(f"matmul inner dimensions differ: {a.shape} @ {b.shape}")
    try:
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(f"matmul batch dimensions do not broadcast: {a.shape} @ {b.shape}") from None
    shape = tuple(batch) + (sa[-2], sb[-1])
    if a.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if b.rank == 1:
        shape = shape[:-1]
    return [TensorType(shape, a.secret or b.secret)]


def _window_out(size, kernel, stride, pad_begin, pad_end, dilation=1):
    span = dilation * (kernel - 1) + 1
    out = (size + pad_begin + pad_end - span) // stride + 1
    if out < 1:
        raise ValueError(f"window of {span} does not fit an input of {size} padded by "
                         f"{pad_begin}+{pad_end}")
    return out


def _conv2d(types, attrs):
    x, w = _tensor(types[0]), _tensor(types[1])
    if x.rank != 4 or w.rank != 4:
        raise ValueError(f"conv2d needs NCHW input and OIHW weight, got {x.shape} and {w.shape}")
    group = attrs.get("group", 1)
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = attrs["strides"], attrs["dilations"], attrs["pads"]
    if x.shape[1] != w.shape[1] * group or w.shape[0] % group:
        raise ValueError(f"conv2d channels: input {x.shape[1]}, weight {w.shape} and group {group} "
                         "do not agree")
    if len(types) == 3 and _tensor(types[2]).shape != (w.shape[0],):
        raise ValueError(f"conv2d bias must have shape ({w.shape[0]},), got {types[2].shape}")
    oh = _window_out(x.shape[2], w.shape[2], sh, pt, pb, dh)
    ow = _window_out(x.shape[3], w.shape[3], sw, pl, pr, dw)
    return [TensorType((x.shape[0], w.shape[0], oh, ow), _secret(types))]


def _avgpool(types, attrs):
    x = _tensor(types[0])
    if x.rank != 4:
        raise ValueError(f"avgpool needs an NCHW input, got {x.shape}")
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = attrs["kernel"], attrs["strides"], attrs["pads"]
    return [x.with_shape((x.shape[0], x.shape[1], _window_out(x.shape[2], kh, sh, pt, pb),
                          _window_out(x.shape[3], kw, sw, pl, pr)))]


def _reshape(types, attrs):
    x = _tensor(types[0])
    shape = tuple(attrs["shape"])
    if int(np.prod(shape)) != x.size:
        raise ValueError(f"cannot reshape {x.shape} ({x.size} elements) to {shape}")
    return [x.with_shape(shape)]


def _transpose(types, attrs):
    x = _tensor(types[0])
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"perm {perm} is not a permutation of {x.rank} axes")
    return [x.with_shape(tuple(x.shape[p] for p in perm))]


def _axis(attrs, rank, name="axis"):
    axis = attrs[name]
    if not 0 <= axis < rank:
        raise ValueError(f"{name} {axis} out of range for rank {rank} (axes are stored non-negative)")
    return axis


def _concat(types, attrs):
    ts = [_tensor(t) for t in types]
    axis = _axis(attrs, ts[0].rank)
    for t in ts[1:]:
        if t.rank != ts[0].rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, ts[0].shape))
                                       if i != axis):
            raise ValueError(f"concat shapes {[t.shape for t in ts]} differ off axis {axis}")
    shape = list(ts[0].shape)
    shape[axis] = sum(t.shape[axis] for t in ts)
    return [TensorType(tuple(shape), _secret(ts))]


def _pad(types, attrs):
    x = _tensor(types[0])
    pads = attrs["pads"]
    if len(pads) != 2 * x.rank or min(pads) < 0:
        raise ValueError(f"pad needs {2 * x.rank} non-negative pads, got {pads}")
    return [x.with_shape(tuple(d + pads[i] + pads[i + x.rank] for i, d in enumerate(x.shape)))]


def _reduce(types, attrs):
    x = _tensor(types[0])
    axes = attrs["axes"]
    if any(not 0 <= a < x.rank for a in axes):
        raise ValueError(f"reduce axes {axes} out of range for rank {x.rank}")
    if attrs.get("keepdims", True):
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [x.with_shape(shape)]


def _argmax(types, attrs):
    x = _tensor(types[0])
    axis = _axis(attrs, x.rank)
    keep = attrs.get("keepdims", True)
    shape = tuple((1 if keep else None) if i == axis else d for i, d in enumerate(x.shape))
    labels = attrs.get("labels", [])
    dtype = "str" if labels and isinstance(labels[0], str) else "i64"
    return [TensorType(tuple(d for d in shape if d is not None), x.secret, dtype)]


def _softmax_like(types, attrs):
    x = _tensor(types[0])
    _axis(attrs, x.rank)
    return [TensorType(x.shape, x.secret)]


_WINDOW = {"strides": Attr("ints"), "pads": Attr("ints")}

define("hecc.input", 0, attrs={"name": Attr("str"), "shape": Attr("ints", []), "layout": Attr("str", "")},
       doc="An encrypted model input; inputs are numbered in program order. In the slots layout "
           "`layout` names an int array (ciphertexts x slots) giving the flat index of the element "
           "of the input tensor (of shape `shape`) that each slot holds, -1 for zero.")
define("hecc.output", 1, 0, attrs={"name": Attr("str")},
       doc="A model output; the operand is what the client receives.")
define("tensor.constant", 0, attrs={"name": Attr("str")},
       doc="A public array from the constant store, referenced by name.")
for _name in ("add", "sub", "mul"):
    define(f"tensor.{_name}", 2, infer=_broadcast, doc=f"Elementwise {_name} with numpy broadcasting.")
define("tensor.neg", 1, infer=_same, doc="Elementwise negation.")
define("tensor.matmul", 2, infer=_matmul, doc="numpy.matmul semantics.")
define("tensor.conv2d", (2, 3), infer=_conv2d,
       attrs={**_WINDOW, "dilations": Attr("ints"), "group": Attr("int", 1)},
       doc="2-D convolution, NCHW input, OIHW weight, optional bias; pads = [top, left, bottom, right].")
define("tensor.avgpool", 1, infer=_avgpool,
       attrs={**_WINDOW, "kernel": Attr("ints"), "count_include_pad": Attr("bool", False)},
       doc="2-D average pooling over NCHW; pads = [top, left, bottom, right].")
define("tensor.reshape", 1, infer=_reshape, attrs={"shape": Attr("ints")},
       doc="Row-major reshape to a fully static shape.")
define("tensor.transpose", 1, infer=_transpose, attrs={"perm": Attr("ints")}, doc="Axis permutation.")
define("tensor.concat", (1, None), infer=_concat, attrs={"axis": Attr("int")},
       doc="Concatenation along a (non-negative) axis.")
define("tensor.pad", 1, infer=_pad, attrs={"pads": Attr("ints"), "value": Attr("float", 0.0)},
       doc="Constant padding; pads = begins of every axis, then ends (ONNX order).")
define("tensor.reduce", 1, infer=_reduce,
       attrs={"kind": Attr("str", choices=("sum", "mean")), "axes": Attr("ints"),
              "keepdims": Attr("bool", True)},
       doc="Sum or mean over axes.")
define("tensor.pow", 1, infer=_same, attrs={"exponent": Attr("int")},
       doc="Elementwise integer power (exponent >= 0).")
define("tensor.activation", 1, infer=_same,
       attrs={"kind": Attr("str", choices=ACTIVATIONS), "alpha": Attr("float", 0.0),
              "beta": Attr("float", 0.0)},
       doc="A named non-polynomial activation; alpha/beta as in the ONNX op of that name.")
define("tensor.prelu", 2, infer=_broadcast, doc="x if x >= 0 else slope * x, slope broadcast.")
define("tensor.poly", 1, infer=_same,
       attrs={"coefficients": Attr("floats"), "interval": Attr("floats"), "kind": Attr("str", "")},
       doc="sum_k coefficients[k] * T_k(t), t = (2x - lo - hi) / (hi - lo) for interval [lo, hi]: a "
           "polynomial in the Chebyshev basis, accurate inside the interval only (kind: the "
           "activation it approximates).")
define("tensor.softmax", 1, infer=_softmax_like, attrs={"axis": Attr("int")}, client_side=True,
       doc="Softmax along an axis (client-side, after decryption).")
define("tensor.softmax_inside", 1, infer=_softmax_like, attrs={"axis": Attr("int")},
       doc="Softmax along an axis whose result the network uses further (server-side, on encrypted "
           "values): approximate-activations replaces it by exp, a sum and a reciprocal fitted on the "
           "calibrated ranges.")
define("tensor.log_softmax", 1, infer=_softmax_like, attrs={"axis": Attr("int")}, client_side=True,
       doc="Log-softmax along an axis (client-side, after decryption).")
define("tensor.normalize", 1, infer=_same, attrs={"norm": Attr("str", choices=("MAX", "L1", "L2"))},
       client_side=True, doc="Row normalization of a 2-D tensor (client-side, after decryption).")
define("tensor.argmax", 1, infer=_argmax,
       attrs={"axis": Attr("int"), "keepdims": Attr("bool", True), "labels": Attr("list", []),
              "select_last_index": Attr("bool", False)},
       client_side=True,
       doc="Index of the largest value (the first on ties, the last under select_last_index), "
           "mapped through labels when given (client-side, after decryption).")
