"""The import table: ONNX (domain, op type) -> function building tensor IR.

This table is the single source of truth for what hecc supports; the README's op table is
generated from it. An importer gets the import context, its inputs (IR ``Value`` for data derived
from the encrypted input, numpy arrays for constants, None for absent optional inputs) and its
attributes, and returns one entry per ONNX output. It raises ``Unsupported`` with a reason when a
supported op is used in a way hecc cannot compile.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Value


class Unsupported(Exception):
    """This use of a supported op cannot be compiled; the message says why."""


IMPORTERS: dict[tuple[str, str], callable] = {}

# What to do instead, for unsupported ops people often bring.
HINTS = {
    "MaxPool": "max is not computable under CKKS: train with AveragePool instead, or convert the trained "
               "PyTorch model with hecc.torch.he_friendly",
    "GlobalMaxPool": "max is not computable under CKKS: train with GlobalAveragePool instead, or convert the "
                     "trained PyTorch model with hecc.torch.he_friendly",
    "ConvTranspose": "not supported yet",
    "If": "If is not supported: hecc compiles no control flow; export the model with the branch taken",
    "Loop": "Loop is not supported: hecc compiles no control flow; export the model with the loop unrolled",
    "Scan": "Scan is not supported: hecc compiles no control flow; export the model with the loop unrolled",
}
DOCS: dict[tuple[str, str], str] = {}


def importer(*op_types: str, domain: str = "", doc: str = ""):
    def register(fn):
        for op_type in op_types:
            IMPORTERS[(domain, op_type)] = fn
            DOCS[(domain, op_type)] = doc
        return fn
    return register


def _shape(x) -> tuple[int, ...]:
    return x.type.shape if isinstance(x, Value) else np.shape(x)


def _const(x, what: str) -> np.ndarray:
    if isinstance(x, Value):
        raise Unsupported(f"its {what} must be a constant, but it depends on the encrypted input")
    return np.asarray(x)


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _ints(x) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _opset(ctx) -> int:
    return ctx.opsets.get("", ctx.opsets.get("ai.onnx", 13))


def _legacy_broadcast(ctx, inputs, attrs):
    """Opsets 1 to 6 broadcast the second operand of arithmetic only with ``broadcast=1``, and
    then align its dimensions at ``axis`` of the first (not at the end, as numpy does): reshape
    it so that numpy broadcasting means the same."""
    if not attrs.get("broadcast", 0) or "axis" not in attrs or len(inputs) != 2:
        return inputs
    a, b = inputs
    rank_a, rank_b = len(_shape(a)), len(_shape(b))
    axis = int(attrs["axis"]) + (rank_a if int(attrs["axis"]) < 0 else 0)
    if not 0 <= axis <= rank_a - rank_b:
        raise Unsupported(f"broadcast axis {attrs['axis']} does not fit operands of rank {rank_a} and "
                          f"{rank_b}")
    shape = list(_shape(b)) + [1] * (rank_a - rank_b - axis)
    if isinstance(b, Value):
        return [a, _reshape_to(ctx, b, shape)]
    return [a, ctx.name_like(np.asarray(b).reshape(shape), b)]


# --- elementwise arithmetic -------------------------------------------------------------------

@importer("Add", "Sub", "Mul", doc="numpy broadcasting; operands may both be encrypted")
def _binary(ctx, inputs, attrs):
    name = {"Add": "tensor.add", "Sub": "tensor.sub", "Mul": "tensor.mul"}[ctx.node.op_type]
    return [ctx.emit(name, _legacy_broadcast(ctx, inputs, attrs))]


@importer("Div", doc="divisor must be a constant")
def _div(ctx, inputs, attrs):
    x, d = _legacy_broadcast(ctx, inputs, attrs)
    d = _const(d, "divisor")
    if np.any(d == 0):
        raise Unsupported("it divides by a constant that contains zeros")
    return [ctx.emit("tensor.mul", [x, 1.0 / d.astype(np.float64)])]


@importer("Neg")
def _neg(ctx, inputs, attrs):
    return [ctx.emit("tensor.neg", inputs)]


@importer("Sum", doc="any number of operands")
def _sum(ctx, inputs, attrs):
    acc = inputs[0]
    for x in inputs[1:]:
        acc = ctx.emit("tensor.add", [acc, x])
    return [acc]


def _power(ctx, x, n: int):
    return x if n == 1 else ctx.emit("tensor.pow", [x], {"exponent": n})


@importer("Pow", doc="exponent constant non-negative integers: one, or one per element (broadcast)")
def _pow(ctx, inputs, attrs):
    x, e = _legacy_broadcast(ctx, inputs, attrs)
    e = _const(e, "exponent")
    if e.size == 0:
        raise Unsupported("its exponent is an empty tensor")
    values = np.unique(e.astype(np.float64))
    bad = [v for v in values if not np.isfinite(v) or v != np.round(v)]
    if bad:
        raise Unsupported(f"exponent {bad[0]:g} is not an integer: x**{bad[0]:g} is not a polynomial, so "
                          "CKKS cannot compute it; only constant non-negative integer exponents are "
                          "supported")
    if values[0] < 0:
        raise Unsupported(f"exponent {int(values[0])} is negative: x**{int(values[0])} divides, which CKKS "
                          "cannot compute; only constant non-negative integer exponents are supported")
    try:
        out_shape = tuple(np.broadcast_shapes(_shape(x), e.shape))
    except ValueError:
        raise Unsupported(f"shapes {_shape(x)} and {e.shape} do not broadcast") from None
    if len(values) == 1 and values[0] != 0 and out_shape == tuple(_shape(x)):
        return [_power(ctx, x, int(values[0]))]
    # x**0 = 1 (0**0 too); other exponents: the sum over the distinct k of x**k on the elements of k
    y = np.broadcast_to((e == 0).astype(np.float64), out_shape).copy() if values[0] == 0 else None
    for k in values[values != 0]:
        mask = ctx.name_as((e == k).astype(np.float64), f"{ctx.node_label}.exponent_is_{int(k)}")
        term = ctx.emit("tensor.mul", [_power(ctx, x, int(k)), mask])
        y = term if y is None else ctx.emit("tensor.add", [term, y])
    return [y]


# --- linear layers ---------------------------------------------------------------------------

@importer("MatMul", doc="numpy.matmul semantics; two encrypted operands (attention's Q K^T and A V) in every layout")
def _matmul(ctx, inputs, attrs):
    return [ctx.emit("tensor.matmul", inputs)]


def _transpose2(ctx, x):
    if isinstance(x, Value):
        return ctx.emit("tensor.transpose", [x], {"perm": [1, 0]})
    return ctx.name_like(np.ascontiguousarray(np.asarray(x).T), x)


@importer("Gemm", doc="alpha, beta, transA, transB")
def _gemm(ctx, inputs, attrs):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if attrs.get("transA", 0):
        a = _transpose2(ctx, a)
    if attrs.get("transB", 0):
        b = _transpose2(ctx, b)
    if alpha != 1.0:
        if isinstance(b, Value) and not isinstance(a, Value):
            a = ctx.name_like(np.asarray(a, dtype=np.float64) * alpha, a)
        elif not isinstance(b, Value):
            b = ctx.name_like(np.asarray(b, dtype=np.float64) * alpha, b)
    y = ctx.emit("tensor.matmul", [a, b])
    if alpha != 1.0 and isinstance(a, Value) and isinstance(b, Value):
        y = ctx.emit("tensor.mul", [y, np.asarray(alpha)])
    if c is not None and beta != 0.0:
        if isinstance(c, Value):
            if beta != 1.0:
                c = ctx.emit("tensor.mul", [c, np.asarray(beta)])
        else:
            c = ctx.name_like(np.asarray(c, dtype=np.float64) * beta, c) if beta != 1.0 else c
        y = ctx.emit("tensor.add", [y, c])
    return [y]


def _conv_pads(attrs, in_hw, kernel, strides, dilations):
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        n = len(kernel)
        return [pads[i] for i in range(n)], [pads[n + i] for i in range(n)]
    if auto_pad == "VALID":
        return [0] * len(kernel), [0] * len(kernel)
    begins, ends = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else big)
        ends.append(big if auto_pad == "SAME_UPPER" else small)
    return begins, ends


@importer("Conv", doc="1-D or 2-D; strides, pads, auto_pad, dilations, group (depthwise too); constant weight")
def _conv(ctx, inputs, attrs):
    x, w = inputs[0], _const(inputs[1], "weight")
    b = _const(inputs[2], "bias") if len(inputs) > 2 and inputs[2] is not None else None
    rank = len(_shape(x))
    if rank not in (3, 4) or w.ndim != rank:
        raise Unsupported(f"only 1-D and 2-D convolutions are supported (input rank {rank})")
    kernel = list(w.shape[2:])
    strides = list(attrs.get("strides", [1] * len(kernel)))
    dilations = list(attrs.get("dilations", [1] * len(kernel)))
    begins, ends = _conv_pads(attrs, _shape(x)[2:], kernel, strides, dilations)
    if rank == 3:
        shape = _shape(x)
        x = ctx.emit("tensor.reshape", [x], {"shape": [shape[0], shape[1], 1, shape[2]]})
        w = w[:, :, None, :]
        strides, dilations, begins, ends = [1] + strides, [1] + dilations, [0] + begins, [0] + ends
    operands = [x, w] + ([b] if b is not None else [])
    y = ctx.emit("tensor.conv2d", operands, {
        "strides": strides, "dilations": dilations, "group": int(attrs.get("group", 1)),
        "pads": [begins[0], begins[1], ends[0], ends[1]]})
    if rank == 3:
        s = y.type.shape
        y = ctx.emit("tensor.reshape", [y], {"shape": [s[0], s[1], s[3]]})
    return [y]


@importer("BatchNormalization", doc="inference mode; folded into the preceding Conv/Gemm by canonicalize")
def _batchnorm(ctx, inputs, attrs):
    x = inputs[0]
    scale, bias, mean, var = (_const(v, n).astype(np.float64)
                              for v, n in zip(inputs[1:5], ("scale", "bias", "mean", "variance")))
    if attrs.get("training_mode", 0):
        raise Unsupported("training_mode=1; export the model in eval mode")
    if _opset(ctx) < 7 and not attrs.get("is_test", 0):
        raise Unsupported("is_test=0 (opsets 1 to 6: training mode, statistics of the batch); export "
                          "the model in eval mode")
    if len([o for o in ctx.node.output if o]) > 1:
        raise Unsupported("running statistics outputs are used; export the model in eval mode")
    rank = len(_shape(x))
    factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    shift = bias - mean * factor
    if factor.ndim == 1:  # per channel; opsets 1 to 8 with spatial=0 give (C, D1, ...) statistics
        trail = (1,) * (rank - 2)
        factor, shift = factor.reshape((-1,) + trail), shift.reshape((-1,) + trail)
    scale = ctx.name_as(factor, f"{ctx.node_label}.scale")
    shift = ctx.name_as(shift, f"{ctx.node_label}.shift")
    return [ctx.emit("tensor.add", [ctx.emit("tensor.mul", [x, scale]), shift])]


# --- pooling ---------------------------------------------------------------------------------

def _pool_window_pads(attrs, sizes, kernel, strides, dilations):
    """(begins, ends, output sizes) of a pool along each spatial axis; under ceil_mode the last
    window may run past the end padding (that part is never counted), but starts inside the input
    or the begin padding."""
    begins, ends = _conv_pads(attrs, sizes, kernel, strides, dilations)
    ceil = bool(attrs.get("ceil_mode", 0)) and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "")
    outs = []
    for size, k, s, d, pb, pe in zip(sizes, kernel, strides, dilations, begins, ends):
        span = (k - 1) * d + 1
        if size + pb + pe < span:
            raise Unsupported(f"a window of {span} does not fit an input of {size} padded by {pb}+{pe}")
        out = (-(-(size + pb + pe - span) // s) if ceil else (size + pb + pe - span) // s) + 1
        if ceil and (out - 1) * s >= size + pb:
            out -= 1
        outs.append(out)
    return begins, ends, outs


def _pool_matrix(size, out, k, s, d, pb, pe, include_pad) -> np.ndarray:
    """The (size, out) matrix averaging one axis: column o holds 1/count at the input positions
    of window o, count being the window's positions inside the input (and the padding, under
    count_include_pad; never past the end padding)."""
    matrix = np.zeros((size, out))
    lo, hi = (-pb, size + pe) if include_pad else (0, size)
    for o in range(out):
        taps = [o * s - pb + j * d for j in range(k)]
        counted = sum(lo <= t < hi for t in taps)
        if not counted:
            raise Unsupported(f"window {o} covers only padding, which count_include_pad=0 does not count")
        for t in taps:
            if 0 <= t < size:
                matrix[t, o] = 1.0 / counted
    return matrix


@importer("AveragePool", doc="1-D to 3-D; kernel_shape, strides, pads, auto_pad, dilations, ceil_mode, "
          "count_include_pad")
def _avgpool(ctx, inputs, attrs):
    x = inputs[0]
    kernel = [int(k) for k in attrs["kernel_shape"]]
    n, shape = len(kernel), _shape(x)
    if len(shape) != n + 2:
        raise Unsupported(f"kernel_shape {kernel} for an input of rank {len(shape)}; it needs rank {n + 2}")
    if n > 3:
        raise Unsupported(f"{n}-D average pooling (kernel_shape {kernel}); 1-D to 3-D pooling is "
                          "supported")
    strides = [int(v) for v in attrs.get("strides", [1] * n)]
    dilations = [int(v) for v in attrs.get("dilations", [1] * n)]
    begins, ends, outs = _pool_window_pads(attrs, shape[2:], kernel, strides, dilations)
    include = bool(attrs.get("count_include_pad", 0))
    tiles = all((size + pb + pe - k) // s + 1 == out
                for size, k, s, pb, pe, out in zip(shape[2:], kernel, strides, begins, ends, outs))
    if n == 2 and dilations == [1, 1] and tiles:
        return [ctx.emit("tensor.avgpool", [x], {
            "kernel": kernel, "strides": strides, "pads": [begins[0], begins[1], ends[0], ends[1]],
            "count_include_pad": include})]
    # otherwise one averaging matrix per axis (the count of a box is the product of its axes')
    y = x
    for axis in range(n):
        matrix = _pool_matrix(shape[2 + axis], outs[axis], kernel[axis], strides[axis], dilations[axis],
                              begins[axis], ends[axis], include)
        last = 2 + n - 1
        perm = list(range(last + 1))
        perm[2 + axis], perm[last] = perm[last], perm[2 + axis]
        if 2 + axis != last:
            y = ctx.emit("tensor.transpose", [y], {"perm": perm})
        y = ctx.emit("tensor.matmul", [y, ctx.name_as(matrix, f"{ctx.node_label}.pool_axis{axis}")])
        if 2 + axis != last:
            y = ctx.emit("tensor.transpose", [y], {"perm": perm})
    return [y]


@importer("GlobalAveragePool")
def _global_avgpool(ctx, inputs, attrs):
    rank = len(_shape(inputs[0]))
    return [ctx.emit("tensor.reduce", inputs, {"kind": "mean", "axes": list(range(2, rank))})]


def _reduce_axes(ctx, inputs, attrs, rank):
    if len(inputs) > 1 and inputs[1] is not None:
        axes = _ints(_const(inputs[1], "axes"))
    else:
        axes = attrs.get("axes")
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted(_axis(a, rank) for a in axes)


@importer("ReduceMean", "ReduceSum", doc="axes as attribute or input")
def _reduce(ctx, inputs, attrs):
    x = inputs[0]
    axes = _reduce_axes(ctx, inputs, attrs, len(_shape(x)))
    if axes is None:
        return [x]
    kind = "mean" if ctx.node.op_type == "ReduceMean" else "sum"
    return [ctx.emit("tensor.reduce", [x], {"kind": kind, "axes": axes,
                                            "keepdims": bool(attrs.get("keepdims", 1))})]


# --- shapes ----------------------------------------------------------------------------------

def _reshape_to(ctx, x, shape):
    shape = [int(d) for d in shape]
    if list(_shape(x)) == shape:
        return x
    return ctx.emit("tensor.reshape", [x], {"shape": shape})


@importer("Flatten", doc="any axis, negative too")
def _flatten(ctx, inputs, attrs):
    shape = _shape(inputs[0])
    rank, axis = len(shape), int(attrs.get("axis", 1)) if shape else 0
    if not -rank <= axis <= rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank} (Flatten takes -{rank} to {rank})")
    axis += rank if axis < 0 else 0
    return [_reshape_to(ctx, inputs[0], [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))])]


@importer("Reshape", doc="static target shape (0 and -1 resolved)")
def _reshape(ctx, inputs, attrs):
    x = inputs[0]
    if len(inputs) > 1:
        target = _ints(_const(inputs[1], "target shape"))
    elif "shape" in attrs:  # opsets 1 to 4
        target = [int(d) for d in attrs["shape"]]
    else:
        raise Unsupported("it has no target shape")
    shape = _shape(x)
    if not attrs.get("allowzero", 0):
        target = [shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1:
        raise Unsupported(f"target shape {target} has more than one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        target[target.index(-1)] = int(np.prod(shape)) // known if known else 0
    return [_reshape_to(ctx, x, target)]


def _squeeze_axes(inputs, attrs):
    if len(inputs) > 1 and inputs[1] is not None:
        return _ints(_const(inputs[1], "axes"))
    return attrs.get("axes")


@importer("Squeeze")
def _squeeze(ctx, inputs, attrs):
    shape = _shape(inputs[0])
    axes = _squeeze_axes(inputs, attrs)
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else [_axis(a, len(shape)) for a in axes]
    return [_reshape_to(ctx, inputs[0], [d for i, d in enumerate(shape) if i not in axes])]


@importer("Unsqueeze")
def _unsqueeze(ctx, inputs, attrs):
    shape = list(_shape(inputs[0]))
    axes = _squeeze_axes(inputs, attrs)
    rank = len(shape) + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        shape.insert(a, 1)
    return [_reshape_to(ctx, inputs[0], shape)]


@importer("Transpose")
def _transpose(ctx, inputs, attrs):
    rank = len(_shape(inputs[0]))
    perm = list(attrs.get("perm", range(rank - 1, -1, -1)))
    if perm == list(range(rank)):
        return [inputs[0]]
    return [ctx.emit("tensor.transpose", inputs, {"perm": perm})]


def _select(ctx, x, axis: int, index: list[int]):
    """Entries ``index`` of ``x`` along ``axis`` (not the batch axis), as a product by a constant
    selection matrix: an affine map in both layouts."""
    shape = _shape(x)
    rank = len(shape)
    if index == list(range(shape[axis])):
        return x
    if axis == 0:
        raise Unsupported("it selects along the batch axis")
    select = np.zeros((len(index), shape[axis]))
    select[np.arange(len(index)), index] = 1.0
    if axis == rank - 1:
        return ctx.emit("tensor.matmul", [x, select.T.copy()])
    if axis == rank - 2:
        return ctx.emit("tensor.matmul", [select, x])
    perm = [i for i in range(rank) if i != axis]
    perm.insert(rank - 2, axis)  # the axis next to last, selected, and moved back
    moved = ctx.emit("tensor.transpose", [x], {"perm": perm})
    back = [perm.index(i) for i in range(rank)]
    return ctx.emit("tensor.transpose", [ctx.emit("tensor.matmul", [select, moved])], {"perm": back})


@importer("Gather", doc="constant indices of an encrypted tensor (not along the batch axis)")
def _gather(ctx, inputs, attrs):
    x, indices = inputs[0], _const(inputs[1], "indices")
    shape = _shape(x)
    axis = _axis(int(attrs.get("axis", 0)), len(shape))
    if indices.dtype.kind not in "iu":
        raise Unsupported("its indices are not integers")
    flat = indices.astype(np.int64).reshape(-1)
    if flat.size == 0:
        raise Unsupported("its indices are empty: it selects nothing")
    if np.any(flat < -shape[axis]) or np.any(flat >= shape[axis]):
        raise Unsupported(f"an index is out of range for axis {axis} of size {shape[axis]}")
    y = _select(ctx, x, axis, [int(i) % shape[axis] for i in flat])
    out = tuple(shape[:axis]) + tuple(indices.shape) + tuple(shape[axis + 1:])
    return [y if tuple(_shape(y)) == out else ctx.emit("tensor.reshape", [y], {"shape": list(out)})]


@importer("Slice", doc="constant starts, ends, axes and steps of an encrypted tensor (not along the batch axis)")
def _slice(ctx, inputs, attrs):
    x = inputs[0]
    shape = _shape(x)
    if _opset(ctx) < 10:
        starts, ends = attrs.get("starts", []), attrs.get("ends", [])
        axes, steps = attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _ints(_const(inputs[1], "starts")), _ints(_const(inputs[2], "ends"))
        axes = (_ints(_const(inputs[3], "axes")) if len(inputs) > 3 and inputs[3] is not None
                else list(range(len(starts))))
        steps = (_ints(_const(inputs[4], "steps")) if len(inputs) > 4 and inputs[4] is not None
                 else [1] * len(starts))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise Unsupported("its starts, ends, axes and steps differ in length")
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(int(axis), len(shape))
        if step == 0:
            raise Unsupported("a step is 0")
        n = _shape(x)[axis]
        index = list(range(n))[slice(max(min(int(start), n), -n - 1), max(min(int(end), n), -n - 1), int(step))]
        if not index:
            raise Unsupported(f"it selects nothing along axis {axis}")
        x = _select(ctx, x, axis, index)
    return [x]


@importer("Concat")
def _concat(ctx, inputs, attrs):
    rank = len(_shape(inputs[0]))
    axis = attrs.get("axis", 1 if _opset(ctx) < 4 else None)  # opsets 1 to 3: axis 1 by default
    if axis is None:
        raise Unsupported("it has no axis attribute")
    return [ctx.emit("tensor.concat", [x for x in inputs if x is not None and 0 not in _shape(x)],
                     {"axis": _axis(axis, rank)})]


@importer("Pad", doc="mode constant; pads as attribute or input")
def _pad(ctx, inputs, attrs):
    x = inputs[0]
    rank = len(_shape(x))
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        raise Unsupported(f"mode {mode!r}; only constant padding is supported")
    if len(inputs) > 1 and inputs[1] is not None:
        pads = _ints(_const(inputs[1], "pads"))
        value = float(_const(inputs[2], "pad value").reshape(-1)[0]) if len(inputs) > 2 and inputs[2] is not None else 0.0
        axes = _ints(_const(inputs[3], "axes")) if len(inputs) > 3 and inputs[3] is not None else list(range(rank))
    else:  # opsets 1 (paddings) and 2 to 10 (pads): attributes
        pads = list(attrs.get("pads", attrs.get("paddings", [])))
        value, axes = float(attrs.get("value", 0.0)), list(range(rank))
    if len(pads) != 2 * len(axes):
        raise Unsupported(f"{len(pads)} pads for {len(axes)} axes; it needs {2 * len(axes)}")
    full = [0] * (2 * rank)
    for i, a in enumerate(_axis(a, rank) for a in axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    if min(full) < 0:
        raise Unsupported("negative pads (cropping) are not supported")
    if not any(full):
        return [x]
    return [ctx.emit("tensor.pad", [x], {"pads": full, "value": value})]


@importer("Identity", doc="removed")
def _identity(ctx, inputs, attrs):
    return [inputs[0]]


@importer("Dropout", doc="inference only (training_mode false, or ratio 0): removed; its mask is all ones")
def _dropout(ctx, inputs, attrs):
    x = inputs[0]
    if _opset(ctx) >= 12:
        ratio = inputs[1] if len(inputs) > 1 and inputs[1] is not None else np.asarray(0.5)
        ratio = float(_const(ratio, "ratio").reshape(-1)[0])
        mode = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.asarray(False)
        training = bool(_const(mode, "training_mode").reshape(-1)[0])
        what = "training_mode is true"
    else:  # opsets 7 to 11 only infer; 1 to 6 train unless is_test=1
        ratio = float(attrs.get("ratio", 0.5))
        training = _opset(ctx) < 7 and not attrs.get("is_test", 0)
        what = "is_test=0 (opsets 1 to 6: training mode)"
    if training and ratio != 0.0:
        raise Unsupported(f"{what} with ratio {ratio:g}: it would zero random elements; only inference "
                          "is supported (export the model in eval mode, training_mode false)")
    outputs = [x]
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        outputs.append(ctx.name_as(np.ones(_shape(x), dtype=bool), f"{ctx.node_label}.mask"))
    return outputs


_INT_TYPES = {"INT32": 6, "INT64": 7, "UINT32": 12, "UINT64": 13}
_FLOAT_TYPES = {"FLOAT": 1, "FLOAT16": 10, "DOUBLE": 11}


def _type_name(to) -> str:
    import onnx
    try:
        return onnx.TensorProto.DataType.Name(to)
    except ValueError:
        return f"element type {to}"


@importer("Cast", doc="to FLOAT, FLOAT16 or DOUBLE (kept in float64); class indices to an integer type")
def _cast(ctx, inputs, attrs):
    to, x = attrs["to"], inputs[0]
    if isinstance(to, str):  # opset 1 names the type
        to = {**_INT_TYPES, **_FLOAT_TYPES}.get(to.upper(), to)
    if to in _FLOAT_TYPES.values() and x.type.dtype == "f64":
        return [x]
    if to in _INT_TYPES.values() and x.type.dtype == "i64":
        return [x]
    name = to if isinstance(to, str) else _type_name(to)
    if x.type.dtype == "f64":
        raise Unsupported(f"it casts an encrypted value to {name}; only casts to FLOAT, FLOAT16 or DOUBLE "
                          "(kept in float64), or of class indices (ArgMax) to INT32, INT64, UINT32 or "
                          "UINT64, are supported")
    raise Unsupported(f"it casts class indices to {name}; only casts to INT32, INT64, UINT32 or UINT64 are "
                      "supported for them")


# --- activations -----------------------------------------------------------------------------

_ACTIVATIONS = {"Relu": ("relu", None, None), "LeakyRelu": ("leaky_relu", 0.01, None),
                "Sigmoid": ("sigmoid", None, None), "Tanh": ("tanh", None, None),
                "Softplus": ("softplus", None, None), "Elu": ("elu", 1.0, None),
                "HardSigmoid": ("hard_sigmoid", 0.2, 0.5), "Erf": ("erf", None, None)}


@importer(*_ACTIVATIONS, doc="replaced by a polynomial fitted on its calibrated range (approximate-activations)")
def _activation(ctx, inputs, attrs):
    kind, alpha, beta = _ACTIVATIONS[ctx.node.op_type]
    extra = {}
    if alpha is not None:
        extra["alpha"] = float(attrs.get("alpha", alpha))
    if beta is not None:
        extra["beta"] = float(attrs.get("beta", beta))
    return [ctx.emit("tensor.activation", inputs, {"kind": kind, **extra})]


@importer("Gelu", doc="approximate none or tanh; also the Erf pattern")
def _gelu(ctx, inputs, attrs):
    kind = "gelu_tanh" if attrs.get("approximate", "none") == "tanh" else "gelu"
    return [ctx.emit("tensor.activation", inputs, {"kind": kind})]


class Comparison:
    """``x > threshold`` on encrypted data: no value hecc can compute, only a pattern to match."""

    def __init__(self, x: Value, threshold: float, label: str):
        self.x, self.threshold, self.label = x, threshold, label


@importer("Greater", doc="only inside Where(x > t, x, Softplus(x)), as the dynamo exporter writes Softplus")
def _greater(ctx, inputs, attrs):
    x, t = inputs
    t = _const(t, "threshold")
    if not isinstance(x, Value) or t.size != 1:
        raise Unsupported("comparisons on encrypted data are not computable under CKKS")
    return [Comparison(x, float(t.reshape(-1)[0]), ctx.node_label)]


@importer("Where", doc="a constant condition; or Where(x > t, x, Softplus(x)) with t >= 15 (softplus(x) = x "
          "there to float precision)")
def _where(ctx, inputs, attrs):
    cond, then, other = inputs
    if (isinstance(cond, Comparison) and then is cond.x and cond.threshold >= 15.0
            and isinstance(other, Value) and other.producer is not None
            and other.producer.attrs.get("kind") == "softplus" and other.producer.operands[0] is then):
        return [other]
    if isinstance(cond, (Comparison, Value)):
        raise Unsupported("selecting on an encrypted condition is not computable under CKKS")
    # a constant condition: then * cond + other * (1 - cond), the constant parts computed here
    mask = np.asarray(cond).astype(bool)
    y = None
    for branch, keep in ((then, mask), (other, ~mask)):
        if isinstance(branch, Value):
            weight = ctx.name_as(keep.astype(np.float64), f"{ctx.node_label}.select")
            term = ctx.emit("tensor.mul", [branch, weight])
        else:
            term = ctx.name_as(np.where(keep, np.asarray(branch, dtype=np.float64), 0.0),
                               f"{ctx.node_label}.constant")
        y = term if y is None else ctx.emit("tensor.add", [y, term] if isinstance(y, Value) else [term, y])
    return [y]


@importer("PRelu", doc="constant slope")
def _prelu(ctx, inputs, attrs):
    x, slope = inputs[0], _const(inputs[1], "slope")
    shape = _shape(x)
    if slope.ndim == 1 and len(shape) > 2 and slope.size == shape[1] and ctx.opsets.get("", 13) < 7:
        slope = slope.reshape((-1,) + (1,) * (len(shape) - 2))  # opset < 7: one slope per channel
    return [ctx.emit("tensor.prelu", [x, slope])]


# --- client-side post-processing -------------------------------------------------------------

# a Softmax read by one of these is attention's (A V): computed on the server, approximated
INSIDE_READERS = {"MatMul", "Gemm", "Mul", "Einsum"}


@importer("Softmax", "LogSoftmax", doc="at the output (client-side); Softmax also inside the network when a "
          "MatMul, Gemm or Mul reads it (attention), approximated on its calibrated range")
def _softmax(ctx, inputs, attrs):
    rank = len(_shape(inputs[0]))
    default = -1 if ctx.opsets.get("", 13) >= 13 else 1
    axis = _axis(attrs.get("axis", default), rank)
    if ctx.opsets.get("", 13) < 13 and axis != rank - 1:
        raise Unsupported("softmax over several axes (opset < 13 with axis != last)")
    if ctx.node.op_type == "Softmax" and ctx.readers.get(ctx.node.output[0], set()) & INSIDE_READERS:
        if axis == 0:
            raise Unsupported("a softmax across the batch axis")
        return [ctx.emit("tensor.softmax_inside", inputs, {"axis": axis})]
    name = "tensor.softmax" if ctx.node.op_type == "Softmax" else "tensor.log_softmax"
    return [ctx.emit(name, inputs, {"axis": axis})]


@importer("LayerNormalization", doc="mean and variance as sums and a square, 1/sqrt(variance + epsilon) "
          "approximated on its calibrated range")
def _layer_norm(ctx, inputs, attrs):
    x = inputs[0]
    shape = _shape(x)
    axis = _axis(attrs.get("axis", -1), len(shape))
    axes = list(range(axis, len(shape)))
    if int(attrs.get("stash_type", 1)) != 1:
        raise Unsupported("stash_type other than float")
    if axis == 0:
        raise Unsupported("it normalizes across the batch axis")
    if any(ctx.node.output[1:]):
        raise Unsupported("its Mean and InvStdDev outputs are used; only Y is supported")
    mean = ctx.emit("tensor.reduce", [x], {"kind": "mean", "axes": axes, "keepdims": True})
    centered = ctx.emit("tensor.sub", [x, mean])
    variance = ctx.emit("tensor.reduce", [ctx.emit("tensor.mul", [centered, centered])],
                        {"kind": "mean", "axes": axes, "keepdims": True})
    shifted = ctx.emit("tensor.add", [variance, np.asarray(float(attrs.get("epsilon", 1e-5)))])
    y = ctx.emit("tensor.mul", [centered, ctx.emit("tensor.activation", [shifted], {"kind": "rsqrt"})])
    if len(inputs) > 1 and inputs[1] is not None:
        y = ctx.emit("tensor.mul", [y, inputs[1]])
    if len(inputs) > 2 and inputs[2] is not None:
        y = ctx.emit("tensor.add", [y, inputs[2]])
    return [y]


@importer("ArgMax", doc="at the output only (client-side)")
def _argmax(ctx, inputs, attrs):
    rank = len(_shape(inputs[0]))
    extra = {"select_last_index": True} if attrs.get("select_last_index", 0) else {}
    return [ctx.emit("tensor.argmax", inputs, {"axis": _axis(attrs.get("axis", 0), rank),
                                               "keepdims": bool(attrs.get("keepdims", 1)), **extra})]


# --- ai.onnx.ml (scikit-learn through skl2onnx) -----------------------------------------------

def _linear_scores(ctx, x, coefficients, intercepts, rows):
    coef = np.asarray(coefficients, dtype=np.float64).reshape(rows, -1)
    if coef.shape[1] != _shape(x)[-1]:
        raise Unsupported(f"{coef.shape[1]} coefficients per row for {_shape(x)[-1]} features")
    y = ctx.emit("tensor.matmul", [x, ctx.name_as(coef.T.copy(), f"{ctx.node_label}.coefficients")])
    if intercepts:
        bias = ctx.name_as(np.asarray(intercepts, dtype=np.float64), f"{ctx.node_label}.intercepts")
        y = ctx.emit("tensor.add", [y, bias])
    return y


@importer("LinearClassifier", domain="ai.onnx.ml", doc="post_transform NONE, LOGISTIC or SOFTMAX")
def _linear_classifier(ctx, inputs, attrs):
    labels = list(attrs.get("classlabels_ints") or attrs.get("classlabels_strings") or [])
    coefficients = attrs["coefficients"]
    rows = len(attrs.get("intercepts") or []) or max(len(labels), 1)
    scores = _linear_scores(ctx, inputs[0], coefficients, attrs.get("intercepts"), rows)
    transform = attrs.get("post_transform", "NONE")
    if transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise Unsupported(f"post_transform {transform}")
    binary = rows == 1 and len(labels) == 2
    if binary:
        # one score z for two classes: the label is labels[z > 0]; onnxruntime reports the
        # scores as sigmoid([-z, z]) under LOGISTIC and as [1 - z, z] otherwise (SOFTMAX too)
        z = scores
        scores = ctx.emit("tensor.concat", [ctx.emit("tensor.neg", [z]), z], {"axis": 1})
    label = ctx.emit("tensor.argmax", [scores], {"axis": 1, "keepdims": False, "labels": labels})
    if binary and transform != "LOGISTIC":
        scores = ctx.emit("tensor.concat", [ctx.emit("tensor.sub", [np.ones(1), z]), z], {"axis": 1})
    elif transform == "LOGISTIC":
        scores = ctx.emit("tensor.activation", [scores], {"kind": "sigmoid"})
    elif transform == "SOFTMAX":
        scores = ctx.emit("tensor.softmax", [scores], {"axis": 1})
    return [label, scores]


@importer("LinearRegressor", domain="ai.onnx.ml", doc="post_transform NONE")
def _linear_regressor(ctx, inputs, attrs):
    if attrs.get("post_transform", "NONE") != "NONE":
        raise Unsupported(f"post_transform {attrs['post_transform']}")
    return [_linear_scores(ctx, inputs[0], attrs["coefficients"], attrs.get("intercepts"),
                           int(attrs.get("targets", 1)))]


@importer("Scaler", domain="ai.onnx.ml", doc="(x - offset) * scale")
def _scaler(ctx, inputs, attrs):
    offset = np.asarray(attrs.get("offset", [0.0]), dtype=np.float64)
    scale = np.asarray(attrs.get("scale", [1.0]), dtype=np.float64)
    return [ctx.emit("tensor.add", [ctx.emit("tensor.mul", [inputs[0], scale]), -offset * scale])]


@importer("Normalizer", domain="ai.onnx.ml", doc="MAX, L1, L2; at the output only (client-side)")
def _normalizer(ctx, inputs, attrs):
    if len(_shape(inputs[0])) != 2:
        raise Unsupported("only 2-D inputs can be normalized")
    return [ctx.emit("tensor.normalize", inputs, {"norm": attrs.get("norm", "MAX")})]


@importer("ZipMap", domain="ai.onnx.ml", doc="returns the probabilities as one array, not a list of maps")
def _zipmap(ctx, inputs, attrs):
    return [inputs[0]]


# --- shape-only ops: fold even when their input is encrypted ----------------------------------

def _shape_op(node, inputs):
    import onnx
    shape = list(_shape(inputs[0]))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return [np.asarray(shape[start:end], dtype=np.int64)]


SHAPE_ONLY = {
    "Shape": _shape_op,
    "Size": lambda node, inputs: [np.asarray(int(np.prod(_shape(inputs[0]))), dtype=np.int64)],
}


def supported_ops_markdown() -> str:
    """The README's table of supported ONNX ops, generated from ``IMPORTERS``."""
    rows = ["| domain | op | notes |", "| --- | --- | --- |"]
    for (domain, op_type) in sorted(IMPORTERS, key=lambda k: (k[0], k[1].lower())):
        rows.append(f"| {domain or 'ai.onnx'} | {op_type} | {DOCS[(domain, op_type)]} |")
    rows.append("| ai.onnx | Shape, Size, and any op whose inputs are all constants | folded at compile time |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m hecc.frontends.onnx_ops README.md: refresh the README's table
    import sys
    path = sys.argv[1]
    with open(path) as f:
        text = f.read()
    marker = "<!-- supported ops: generated"
    start = text.index("\n", text.index(marker)) + 1
    end = text.index("\n\n", start) + 1
    with open(path, "w") as f:
        f.write(text[:start] + supported_ops_markdown() + text[end:])
