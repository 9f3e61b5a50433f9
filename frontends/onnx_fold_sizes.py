"""How many elements folding a constant node would compute, told before evaluating it.

The importer folds every node whose inputs are all constants with ONNX's reference evaluator.
Constant inputs can ask for a huge result: ConstantOfShape([10**5, 10**5]), a Pad of 10**6 per
side, Tile, Expand, Range(0, 10**12, 1), a Resize by 1000x. ``fold_sizes`` tells each output's
element count from the inputs' shapes and the values of small inputs, allocating nothing: by
ONNX's own shape inference (``infer_node_outputs``, given those values for data propagation) and
by the rules in ``RULES`` (exact counts for the ops that grow from their input values, upper
bounds for the ``UPPER_BOUNDS`` ops that never grow); where both answer, the larger count holds
(the smaller for an upper bound). It also tells the largest temporary the evaluator builds for
padded or dilated convolutions and pools (``work``).

``check_fold`` refuses, with a ``ModelError`` naming the node, a fold whose output or temporary
exceeds ``MAX_TENSOR_ELEMENTS``, one whose output size cannot be told (evaluating it would be a
gamble), and control flow (its subgraphs could compute anything).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper, shape_inference

from ..errors import ModelError
from .onnx_limits import MAX_TENSOR_ELEMENTS, OVER_BOUND

MAX_PROPAGATED = 4096  # inputs up to this size are given to shape inference by value


def _count(dims) -> int:
    return math.prod(max(int(d), 0) for d in dims)


def _ints(x, limit: int = MAX_PROPAGATED) -> list[int] | None:
    """The values of a small integer-valued constant; None if absent, too large or not finite."""
    if x is None or x.size > limit or x.dtype.kind not in "iuf":
        return None
    values = x.reshape(-1).tolist()
    if not all(math.isfinite(v) for v in values):
        return None
    return [int(v) for v in values]


def _scalar(x) -> float | None:
    if x is None or x.size != 1 or x.dtype.kind not in "iufb":
        return None
    v = x.reshape(-1)[0].item()
    return v if math.isfinite(v) else None


def _broadcast(shapes) -> int:
    """Elements of the multidirectional broadcast of ``shapes`` (an upper bound if they clash)."""
    rank = max((len(s) for s in shapes), default=0)
    dims = []
    for axis in range(rank):
        ds = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        dims.append(0 if 0 in ds else max(ds))
    return _count(dims)


def _opt(inputs, i):
    return inputs[i] if len(inputs) > i else None


# --- rules: (attributes, inputs, opset) -> element count of every output (int), or one count
# --- per output (list), or None when the rule cannot tell --------------------------------------

def _constant_of_shape(attrs, inputs, opset):
    shape = _ints(inputs[0])
    return None if shape is None else _count(shape)


def _expand(attrs, inputs, opset):
    shape = _ints(inputs[1])
    return None if shape is None else _broadcast([inputs[0].shape, shape])


def _tile(attrs, inputs, opset):
    repeats = _ints(inputs[1])
    if repeats is None:
        return None
    shape = list(inputs[0].shape)
    rank = max(len(shape), len(repeats))
    shape, repeats = [1] * (rank - len(shape)) + shape, [1] * (rank - len(repeats)) + repeats
    return _count(d * r for d, r in zip(shape, repeats))


def _pad(attrs, inputs, opset):
    dims = list(inputs[0].shape)
    rank = len(dims)
    if opset < 11:
        pads, axes = attrs.get("pads", attrs.get("paddings")), list(range(rank))
    else:
        pads = _ints(_opt(inputs, 1))
        axes = _ints(_opt(inputs, 3)) if _opt(inputs, 3) is not None else list(range(rank))
    if pads is None or axes is None or len(pads) != 2 * len(axes) or any(not -rank <= a < rank for a in axes):
        return None
    for i, a in enumerate(axes):
        dims[a % rank] += pads[i] + pads[i + len(axes)]
    return _count(dims)


def _scaled(x, axes, scales, sizes, attrs):
    """Elements of ``x`` resized to ``sizes`` (if given) or by ``scales`` along ``axes``."""
    dims = list(x.shape)
    if sizes is not None and sizes.size:
        wanted = _ints(sizes)
        if wanted is None or len(wanted) != len(axes):
            return None
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            ratio = max(w / max(dims[a], 1) for a, w in zip(axes, wanted))  # an upper bound
            wanted = [math.ceil(ratio * dims[a]) + 1 for a in axes]
        for a, w in zip(axes, wanted):
            dims[a] = w
        return _count(dims)
    if scales is None:
        return None
    factors = list(scales) if isinstance(scales, list) else scales.reshape(-1).tolist()
    if len(factors) != len(axes) or not all(math.isfinite(f) and abs(f) < 2**62 for f in factors):
        return None
    for a, f in zip(axes, factors):
        dims[a] = math.floor(dims[a] * f)
    return _count(dims)


def _resize(attrs, inputs, opset):
    x = inputs[0]
    axes = [a % x.ndim for a in attrs.get("axes", range(x.ndim))]
    if opset < 11:
        return _scaled(x, axes, _opt(inputs, 1), None, attrs)
    return _scaled(x, axes, _opt(inputs, 2), _opt(inputs, 3), attrs)


def _upsample(attrs, inputs, opset):
    scales = attrs.get("scales") if opset < 9 else _opt(inputs, 1)
    return _scaled(inputs[0], list(range(inputs[0].ndim)), scales, None, attrs)


def _range(attrs, inputs, opset):
    start, limit, delta = (_scalar(x) for x in inputs[:3])
    if start is None or limit is None or not delta:
        return None
    return max(math.ceil((limit - start) / delta), 0)


def _one_hot(attrs, inputs, opset):
    depth = _scalar(inputs[1])
    return None if depth is None else inputs[0].size * max(int(depth), 0)


def _random(attrs, inputs, opset):
    return _count(attrs["shape"]) if "shape" in attrs else None


def _window(attrs, inputs, opset):
    size = _scalar(inputs[0])
    return None if size is None else max(int(size), 0)


def _mel_weight_matrix(attrs, inputs, opset):
    bins, dft = _scalar(inputs[0]), _scalar(inputs[1])
    return None if bins is None or dft is None else _count([int(dft) // 2 + 1, int(bins)])


def _center_crop_pad(attrs, inputs, opset):
    dims, shape, rank = list(inputs[0].shape), _ints(inputs[1]), inputs[0].ndim
    axes = list(attrs.get("axes", range(rank)))
    if shape is None or len(shape) != len(axes) or any(not -rank <= a < rank for a in axes):
        return None
    for a, s in zip(axes, shape):
        dims[a % rank] = s
    return _count(dims)


def _col2im(attrs, inputs, opset):
    image = _ints(inputs[1])
    x = inputs[0]
    return None if image is None or x.ndim < 2 else _count([x.shape[0], x.shape[1]] + image)


def _affine_grid(attrs, inputs, opset):
    size = _ints(inputs[1])
    return None if size is None or len(size) < 3 else _count([size[0]] + size[2:] + [len(size) - 2])


def _constant(attrs, inputs, opset):
    for key in ("value", "sparse_value"):
        if key in attrs:
            return _count(attrs[key].dims)
    for key in ("value_floats", "value_ints", "value_strings"):
        if key in attrs:
            return len(attrs[key])
    return 1


def _gather(attrs, inputs, opset):
    data, indices = inputs[0], inputs[1]
    if data.ndim == 0 or not -data.ndim <= attrs.get("axis", 0) < data.ndim:
        return None
    return indices.size * (data.size // max(data.shape[attrs.get("axis", 0)], 1))


def _first_input(attrs, inputs, opset):
    return inputs[0].size


def _all_inputs(attrs, inputs, opset):
    return _broadcast([x.shape for x in inputs if x is not None])


def _concat(attrs, inputs, opset):
    return sum(x.size for x in inputs if x is not None)


def _non_zero(attrs, inputs, opset):
    return max(inputs[0].ndim, 1) * inputs[0].size


# outputs no larger than the first input (elementwise, reordering, selecting, reducing)
NOT_GROWING = (
    "Abs Acos Acosh ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization Bernoulli BitwiseNot "
    "Cast CastLike Ceil Celu Clip Compress Cos Cosh CumSum DepthToSpace DequantizeLinear Det "
    "Dropout DynamicQuantizeLinear Elu Erf Exp EyeLike Flatten Floor Gelu GlobalAveragePool "
    "GlobalLpPool GlobalMaxPool GroupNormalization HardSigmoid HardSwish Hardmax Identity "
    "InstanceNormalization IsInf IsNaN LRN LayerNormalization LeakyRelu Log LogSoftmax "
    "LpNormalization MeanVarianceNormalization Mish Neg Not QuantizeLinear RandomNormalLike "
    "RandomUniformLike Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax "
    "ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape ReverseSequence Round "
    "Scatter ScatterElements ScatterND Selu Shrink Sigmoid Sign Sin Sinh Slice Softmax Softplus "
    "Softsign SpaceToDepth Split Sqrt Squeeze Swish Tan Tanh ThresholdedRelu TopK Transpose Trilu "
    "Unique Unsqueeze").split()
# outputs of the broadcast shape of all inputs
BROADCASTING = ("Add And BitShift BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual "
                "Less LessOrEqual Max Mean Min Mod Mul Or PRelu Pow Sub Sum Where Xor").split()

RULES = {
    "ConstantOfShape": _constant_of_shape, "Expand": _expand, "Tile": _tile, "Pad": _pad,
    "Resize": _resize, "Upsample": _upsample, "Range": _range, "OneHot": _one_hot,
    "RandomNormal": _random, "RandomUniform": _random, "HannWindow": _window,
    "HammingWindow": _window, "BlackmanWindow": _window, "MelWeightMatrix": _mel_weight_matrix,
    "CenterCropPad": _center_crop_pad, "Col2Im": _col2im, "AffineGrid": _affine_grid,
    "Constant": _constant, "Gather": _gather, "Concat": _concat,
    "NonZero": _non_zero,
    "Shape": lambda attrs, inputs, opset: inputs[0].ndim, "Size": lambda attrs, inputs, opset: 1,
    **{op: _first_input for op in NOT_GROWING}, **{op: _all_inputs for op in BROADCASTING},
}
# rules that give an upper bound, not the exact count: shape inference's count is preferred
UPPER_BOUNDS = set(NOT_GROWING) | {"NonZero"}


# --- temporaries of the reference evaluator ---------------------------------------------------

def _work(node_op: str, attrs, inputs) -> int:
    """Elements of the largest temporary the reference evaluator builds beyond the outputs: the
    padded input of a padded conv or pool, the dilated kernel and im2col matrix of a conv, the
    column matrix of a transposed conv."""
    x = inputs[0] if inputs else None
    if x is None or x.ndim < 3:
        return 0
    spatial = list(x.shape[2:])
    n = len(spatial)
    pads = list(attrs.get("pads", [0] * 2 * n))
    if len(pads) != 2 * n:
        return 0
    padded = [d + pads[i] + pads[i + n] for i, d in enumerate(spatial)]
    work = _count(list(x.shape[:2]) + padded) if any(pads) else 0
    w = _opt(inputs, 3 if node_op == "QLinearConv" else 1)
    if node_op not in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose") or w is None or w.ndim != n + 2:
        return work
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    dilations = list(attrs.get("dilations", [1] * n))
    strides = list(attrs.get("strides", [1] * n))
    if len(kernel) != n or len(dilations) != n or len(strides) != n or min(strides, default=1) < 1:
        return work
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if node_op == "ConvTranspose":
        return max(work, _count([x.shape[0], w.shape[1] * attrs.get("group", 1)] + kernel + spatial))
    if attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        padded = [d + k + s for d, k, s in zip(spatial, dilated, strides)]
    out = [max((p - k) // s + 1, 0) for p, k, s in zip(padded, dilated, strides)]
    return max(work, _count(list(w.shape[:2]) + dilated),
               _count([x.shape[0], x.shape[1]] + dilated + out))


# --- shape inference -----------------------------------------------------------------------------

def _inferred(node: onnx.NodeProto, inputs, opsets: dict[str, int]) -> list[int | None]:
    """Output element counts from ONNX shape inference; None where it gives no static shape."""
    unknown = [None] * len(node.output)
    domain = node.domain or ""
    try:
        schema = defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        types, data = {}, {}
        for name, x in zip(node.input, inputs):
            if not name or x is None:
                continue
            elem = helper.np_dtype_to_tensor_dtype(x.dtype)
            types[name] = helper.make_tensor_type_proto(elem, x.shape)
            if x.size <= MAX_PROPAGATED:
                data[name] = numpy_helper.from_array(x, name)
        imports = [helper.make_opsetid(d, v) for d, v in opsets.items()]
        out = shape_inference.infer_node_outputs(schema, node, types, data, opset_imports=imports)
    except Exception:  # no schema, an unknown dtype, an inference error: no answer
        return unknown
    counts = []
    for name in node.output:
        t = out.get(name)
        dims = t.tensor_type.shape.dim if t is not None and t.HasField("tensor_type") else None
        if dims is None or not t.tensor_type.HasField("shape") or \
                not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            counts.append(None)
        else:
            counts.append(_count(d.dim_value for d in dims))
    return counts


def fold_sizes(node: onnx.NodeProto, inputs, opsets: dict[str, int]) -> tuple[list[int | None], int]:
    """(element count of each output of ``node`` on the constant ``inputs``, None where it cannot
    be told; elements of the evaluator's largest temporary). Allocates nothing large."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    inputs = [None if x is None else np.asarray(x) for x in inputs]
    counts = _inferred(node, inputs, opsets)
    rule = RULES.get(node.op_type) if (node.domain or "") in ("", "ai.onnx") else None
    ruled = None
    if rule is not None:
        opset = opsets.get(node.domain or "", 1)
        try:
            ruled = rule(attrs, inputs, opset)
        except (IndexError, KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
            ruled = None  # malformed node: no answer from the rule
    if not isinstance(ruled, list):
        ruled = [ruled] * len(node.output)
    pick = min if node.op_type in UPPER_BOUNDS else max
    counts = [pick((c for c in pair if c is not None), default=None) for pair in zip(counts, ruled)]
    try:
        work = _work(node.op_type, attrs, inputs)
    except (IndexError, KeyError, TypeError, ValueError, ArithmeticError):
        work = 0
    return counts, work


def check_fold(node: onnx.NodeProto, label: str, inputs, opsets: dict[str, int]) -> int:
    """Refuse folding ``node`` (see the module docstring); else return its output element count."""
    what = f"constant node {label!r} ({node.op_type})"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        raise ModelError(f"{what} has subgraphs; hecc does not evaluate control flow at compile time. "
                         "Export the model with its control flow unrolled")
    counts, work = fold_sizes(node, inputs, opsets)
    for name, count in zip(node.output, counts):
        if name and count is None:
            raise ModelError(f"{what}: the size of its output {name!r} cannot be told before "
                             "computing it, so hecc does not compute it; export the model with "
                             "static shapes (or fold its constants with onnx-simplifier)")
        if name and count > MAX_TENSOR_ELEMENTS:
            raise ModelError(f"{what} would compute an output {name!r} of {count:,} elements, "
                             f"{OVER_BOUND}")
    if work > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{what} would need a temporary of {work:,} elements (padding, dilation or "
                         f"im2col) to compute, {OVER_BOUND}")
    return sum(c for name, c in zip(node.output, counts) if name)
