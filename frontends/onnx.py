"""ONNX -> tensor IR.

Loads and checks the model, fixes a symbolic batch dimension to 1, reports every unsupported op at
once, folds everything computable from constants (with ONNX's own reference evaluator, so shape
arithmetic such as Shape -> Gather -> Concat -> Reshape disappears), and imports the rest through
the table in ``onnx_ops.IMPORTERS``. Result types come from the op table's inference, so the graph
is typed by construction and verified at the end.

A model is hostile input, so nothing is allocated before its size is known and bounded: the file
(``MAX_MODEL_BYTES``), every tensor against the data it carries (``onnx_limits``), external data
against the model's folder and hecc's key files (``onnx_external``), every fold before it runs
(``onnx_fold_sizes``), and every IR tensor the import makes (``MAX_ENCRYPTED_ELEMENTS`` per
encrypted tensor, ``MAX_ENCRYPTED_TOTAL`` for them all).
"""
from __future__ import annotations

import math
import os
import stat
import warnings

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx.reference import ReferenceEvaluator

from ..errors import HeccWarning, ModelError, UnsupportedOpError, VerifyError
from ..ir import OPS, Graph, TensorType, Value, verify
from .onnx_external import plan_external_data, read_external_data
from .onnx_fold_sizes import check_fold
from .onnx_limits import (MAX_ENCRYPTED_ELEMENTS, MAX_ENCRYPTED_TOTAL, MAX_FOLDED_ELEMENTS, MAX_MODEL_BYTES,
                          MAX_TENSOR_ELEMENTS, OVER_BOUND, check_model_tensors, sparse_to_array,
                          tensor_to_array)
from .onnx_ops import HINTS, IMPORTERS, SHAPE_ONLY, Comparison, Unsupported

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
TESTED_OPSETS = (13, 21)  # the ai.onnx opsets hecc's importers are tested with


def _read_model_file(path) -> bytes:
    """The bytes of a model file, refusing anything but a regular file of at most MAX_MODEL_BYTES."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelError(f"{path}: not a regular file; give the path of an .onnx file")
    if info.st_size > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: {info.st_size:,} bytes, more than an ONNX file can hold "
                         f"({MAX_MODEL_BYTES:,}); keep large weights in external data")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: more than {MAX_MODEL_BYTES:,} bytes, more than an ONNX file can hold")
    return data


def load_model(source) -> onnx.ModelProto:
    """Read an ONNX model from a path, bytes or a ModelProto, check that every tensor holds the
    data its declared size calls for (within ``MAX_TENSOR_ELEMENTS``), read external data under
    ``onnx_external``'s rules (from a path only), and run the ONNX checker. A ModelProto given
    is not modified."""
    label = source if isinstance(source, (str, os.PathLike)) else "the model"
    path = None
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) > MAX_MODEL_BYTES:
                raise ModelError(f"{label}: {len(data):,} bytes, more than an ONNX model can hold")
        else:
            path = os.fspath(source)
            data = _read_model_file(path)
        try:
            model = onnx.load_model_from_string(data)
        except (DecodeError, RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"{label}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
                             "export it again with torch.onnx.export or skl2onnx") from None
        del data
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{label}: the ONNX model has an empty graph (is this really an ONNX file?)")
    check_model_tensors(model)
    plans = plan_external_data(model, path)
    if plans:
        read_external_data(plans)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{label}: the ONNX checker rejects the model: {first}") from None
    except ValueError as exc:  # a model too large to serialize for the checker
        raise ModelError(f"{label}: the ONNX checker cannot read the model: {exc}") from None
    return model


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {(o.domain or ""): o.version for o in model.opset_import}


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _input_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise ModelError(f"input {vi.name!r} is not a tensor; hecc takes float tensors only")
    if t.elem_type not in FLOAT_TYPES:
        name = onnx.TensorProto.DataType.Name(t.elem_type)
        raise ModelError(f"input {vi.name!r} has element type {name}; hecc encrypts float tensors only")
    if not t.HasField("shape"):
        raise ModelError(f"input {vi.name!r} has no shape; export the model with a static input shape")
    if not t.shape.dim:
        raise ModelError(f"input {vi.name!r} is a scalar (rank 0); hecc encrypts tensors whose first "
                         "dimension is the batch: export the input with a leading batch dimension")
    shape = []
    for axis, dim in enumerate(t.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif dim.HasField("dim_value") and dim.dim_value == 0:
            raise ModelError(f"input {vi.name!r} has size 0 at axis {axis}: an empty tensor holds "
                             "nothing to encrypt; give every dimension a size of at least 1")
        elif axis == 0:
            shape.append(1)
        else:
            label = dim.dim_param or "?"
            raise ModelError(f"input {vi.name!r} has a dynamic dimension {label!r} at axis {axis}; "
                             "only the first (batch) dimension may be dynamic: export the model "
                             "with fixed sizes for the other dimensions")
    count = int(np.prod(shape, dtype=object))
    if count > MAX_ENCRYPTED_ELEMENTS:
        raise ModelError(f"input {vi.name!r} has shape {shape} = {count:,} elements, more than hecc's "
                         f"bound of MAX_ENCRYPTED_ELEMENTS = {MAX_ENCRYPTED_ELEMENTS:,} per encrypted tensor")
    return tuple(shape)


class ImportContext:
    """State of one import: ONNX names -> IR values or numpy constants, and the graph built."""

    def __init__(self, opsets: dict[str, int]):
        self.graph = Graph()
        self.opsets = opsets
        self.env: dict[str, Value | np.ndarray] = {}
        self.const_names: dict[int, str] = {}
        self.onnx_names: dict[int, str] = {}
        self.keep_alive: list = []  # arrays keyed by id() must outlive the import
        self.client_producer: dict[Value, str] = {}
        self.readers: dict[str, set[str]] = {}  # ONNX value name -> op types of the nodes reading it
        self.node = None
        self.node_label = ""
        self.folded = 0  # elements computed by constant folding so far (MAX_FOLDED_ELEMENTS)
        self.encrypted = 0  # elements of the encrypted tensors made so far (MAX_ENCRYPTED_TOTAL)

    def const(self, array: np.ndarray, hint: str) -> Value:
        """A ``tensor.constant`` for ``array`` (stored once per array object)."""
        key = id(array)
        if key not in self.const_names:
            stored = np.asarray(array)
            if stored.dtype.kind in "iub":
                stored = stored.astype(np.float64)
            name = self.graph.unique_constant_name(self.onnx_names.get(key, hint))
            self.graph.constants[name] = stored
            self.const_names[key] = name
            self.keep_alive.append(array)
        name = self.const_names[key]
        shape = self.graph.constants[name].shape
        return self.graph.append("tensor.constant", [], [TensorType(shape, False)],
                                 {"name": name}).result

    def name_like(self, derived: np.ndarray, source, suffix: str = "") -> np.ndarray:
        """Name the constant ``derived`` after the one it was computed from (``source``)."""
        base = self.onnx_names.get(id(source))
        if base is not None:
            self.onnx_names[id(derived)] = base + suffix
            self.keep_alive.append(derived)
        return derived

    def name_as(self, array: np.ndarray, name: str) -> np.ndarray:
        """Give a constant computed by an importer a readable name."""
        self.onnx_names[id(array)] = name
        self.keep_alive.append(array)
        return array

    def value(self, x, hint: str = "const") -> Value:
        if isinstance(x, Value):
            return x
        return self.const(x, f"{self.node_label}.{hint}")

    def _check_sizes(self, types) -> None:
        """Refuse results over MAX_TENSOR_ELEMENTS (MAX_ENCRYPTED_ELEMENTS if encrypted), and
        encrypted tensors that together exceed MAX_ENCRYPTED_TOTAL."""
        for t in types:
            count = math.prod(getattr(t, "shape", ()))
            secret = getattr(t, "secret", False)
            bound, name = ((MAX_ENCRYPTED_ELEMENTS, "MAX_ENCRYPTED_ELEMENTS") if secret else
                           (MAX_TENSOR_ELEMENTS, "MAX_TENSOR_ELEMENTS"))
            if count > bound:
                raise ModelError(f"node {self.node_label!r} ({self.node.op_type}) would make "
                                 f"{'an encrypted tensor' if secret else 'a tensor'} of shape "
                                 f"{list(t.shape)} = {count:,} elements, more than hecc's bound of "
                                 f"{name} = {bound:,}")
            self.encrypted += count if secret else 0
        if self.encrypted > MAX_ENCRYPTED_TOTAL:
            raise ModelError(f"node {self.node_label!r} ({self.node.op_type}) brings the elements of "
                             f"the model's encrypted tensors to {self.encrypted:,}, more than hecc's "
                             f"bound of MAX_ENCRYPTED_TOTAL = {MAX_ENCRYPTED_TOTAL:,} per input sample")

    def emit(self, name: str, operands, attrs: dict | None = None) -> Value:
        """Append op ``name``; numpy operands become constants; the result type is inferred."""
        values = [self.value(x, f"arg{i}") for i, x in enumerate(operands)]
        opdef = OPS[name]
        attrs = dict(attrs or {})
        for v in values:
            if v in self.client_producer and not opdef.client_side:
                raise Unsupported(f"it uses the result of {self.client_producer[v]}, which hecc only "
                                  "supports at the model's output (client-side, after decryption) or, for a "
                                  "Softmax, read directly by a MatMul, Gemm or Mul (attention)")
        full = {k: opdef.attr(attrs, k) for k in opdef.attrs}
        try:
            types = opdef.infer([v.type for v in values], full)
        except ValueError as exc:
            raise Unsupported(str(exc)) from None
        self._check_sizes(types)
        result = self.graph.append(name, values, types, attrs).result
        if opdef.client_side:
            self.client_producer[result] = f"{self.node.op_type} node {self.node_label!r}"
        return result


def import_model(source) -> Graph:
    """ONNX model (path, bytes or ModelProto) -> verified tensor-IR graph."""
    model = load_model(source)
    opsets = _opsets(model)
    _warn_untested_opset(opsets)
    g = model.graph
    # load_model checked every tensor of the model (check_model_tensors)
    initializers = {t.name: tensor_to_array(t, f"initializer {t.name!r}", checked=True) for t in g.initializer}
    initializers.update({sp.values.name: sparse_to_array(sp, f"sparse initializer {sp.values.name!r}")
                         for sp in g.sparse_initializer})
    model_inputs = [vi for vi in g.input if vi.name not in initializers]
    if not model_inputs:
        raise ModelError("the model has no input (every value it computes is a constant): hecc "
                         "compiles models of encrypted float inputs; give the model an input")
    ctx = ImportContext(opsets)
    ctx.env.update(initializers)
    ctx.onnx_names.update({id(a): name for name, a in initializers.items()})
    for vi in model_inputs:
        shape = _input_shape(vi)
        ctx.env[vi.name] = ctx.graph.append("hecc.input", [], [TensorType(shape, True)],
                                            {"name": vi.name}).result
    _check_supported(g, set(initializers))
    for node in g.node:
        for name in node.input:
            ctx.readers.setdefault(name, set()).add(node.op_type)
    for index, node in enumerate(g.node):
        _import_node(ctx, node, index)
    for vi in g.output:
        if vi.name not in ctx.env:
            raise ModelError(f"output {vi.name!r} is not produced by any node")
        if isinstance(ctx.env[vi.name], Comparison):
            raise UnsupportedOpError({"Greater": [ctx.env[vi.name].label]}, {
                "Greater": f"output {vi.name!r} is a comparison of encrypted values, which CKKS "
                           "cannot compute (Greater is supported only inside Where(x > t, x, Softplus(x)))"})
        value = ctx.value(ctx.env[vi.name], "output")
        ctx.graph.append("hecc.output", [value], [], {"name": vi.name})
    try:
        verify(ctx.graph)
    except VerifyError as exc:
        raise AssertionError(f"the ONNX frontend built invalid IR: {exc}") from None
    return ctx.graph


def _warn_untested_opset(opsets: dict[str, int]) -> None:
    """Warn about an ai.onnx opset outside ``TESTED_OPSETS``. The importers read every op as those
    opsets define it, and the older forms whose meaning differs as they were meant, or refuse them
    (see ``onnx_ops``)."""
    version = opsets.get("", opsets.get("ai.onnx"))
    low, high = TESTED_OPSETS
    if version is not None and not low <= version <= high:
        warnings.warn(f"the model imports ai.onnx opset {version}; hecc is tested with opsets {low} to "
                      f"{high}: check its results on the reference backend against onnxruntime, or "
                      f"export the model with an opset from {low} to {high}", HeccWarning, stacklevel=4)


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names the subgraphs of ``node`` (If branches, Loop and Scan bodies) read from outside."""
    reads: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                    list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            defined = {vi.name for vi in sub.input} | {t.name for t in sub.initializer} | \
                      {sp.values.name for sp in sub.sparse_initializer}
            for inner in sub.node:
                reads.update(i for i in list(inner.input) + sorted(_outer_reads(inner))
                             if i and i not in defined)
                defined.update(inner.output)
    return reads


def _check_supported(g: onnx.GraphProto, constants: set[str]) -> None:
    """Raise one ``UnsupportedOpError`` listing every op that neither folds nor imports. A node
    whose subgraphs read a value computed from the encrypted input does not fold either."""
    constant = set(constants)
    missing: dict[str, list[str]] = {}
    details: dict[str, str] = {}
    for index, node in enumerate(g.node):
        ins = [i for i in node.input if i]
        outer = _outer_reads(node)
        if (all(i in constant for i in ins) and outer <= constant) or node.op_type in SHAPE_ONLY:
            constant.update(o for o in node.output if o)
            continue
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if (node.domain or "", node.op_type) not in IMPORTERS:
            missing.setdefault(key, []).append(_node_label(node, index))
            if outer - constant and all(i in constant for i in ins):
                details[key] = (f"{node.op_type} is not supported: its subgraphs read "
                                f"{', '.join(repr(n) for n in sorted(outer - constant)[:3])}, computed "
                                "from the encrypted input, and hecc compiles no control flow; export "
                                "the model with the branch or loop unrolled")
    if missing:
        raise UnsupportedOpError(missing, {**{k: HINTS[k] for k in missing if k in HINTS}, **details})


def _import_node(ctx: ImportContext, node: onnx.NodeProto, index: int) -> None:
    ctx.node, ctx.node_label = node, _node_label(node, index)
    for name in node.input:
        if name and name not in ctx.env:
            raise ModelError(f"node {ctx.node_label!r} uses {name!r}, which nothing defines")
    inputs = [ctx.env[i] if i else None for i in node.input]
    if all(x is None or isinstance(x, np.ndarray) for x in inputs) or node.op_type in SHAPE_ONLY:
        outputs = _fold(ctx, node, inputs)
    elif any(isinstance(x, Comparison) for x in inputs) and node.op_type != "Where":
        raise UnsupportedOpError({node.op_type: [ctx.node_label]}, {
            node.op_type: "it uses a comparison of encrypted values, which CKKS cannot compute"})
    else:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else
                     [x.decode() if isinstance(x, bytes) else x for x in v] if isinstance(v, list) else v)
                 for k, v in attrs.items()}
        try:
            outputs = IMPORTERS[(node.domain or "", node.op_type)](ctx, inputs, attrs)
        except Unsupported as exc:
            raise UnsupportedOpError({node.op_type: [ctx.node_label]}, {node.op_type: str(exc)}) from None
    for name, value in zip(node.output, outputs):
        if name:
            ctx.env[name] = value


def _constant(node: onnx.NodeProto, label: str) -> np.ndarray:
    """The value of a Constant node, its tensor checked before conversion."""
    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return tensor_to_array(attrs["value"].t, f"attribute 'value' of node {label!r}")
    if "sparse_value" in attrs:
        return sparse_to_array(attrs["sparse_value"].sparse_tensor, f"attribute 'sparse_value' of node {label!r}")
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64), ("value_string", np.str_), ("value_strings", np.str_)):
        if key in attrs:
            value = onnx.helper.get_attribute_value(attrs[key])
            if dtype is np.str_:
                value = [v.decode(errors="replace") for v in value] if isinstance(value, list) else \
                    value.decode(errors="replace")
            return np.asarray(value, dtype=dtype)
    raise ModelError(f"Constant node {label!r} has no value attribute")


def _fold(ctx: ImportContext, node: onnx.NodeProto, inputs) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants (or that only reads static shapes), after
    ``check_fold`` has bounded what it computes."""
    if node.op_type in SHAPE_ONLY:
        return SHAPE_ONLY[node.op_type](node, inputs)
    if node.op_type == "Constant" and (node.domain or "") in ("", "ai.onnx"):
        return [_constant(node, ctx.node_label)]
    ctx.folded += check_fold(node, ctx.node_label, inputs, ctx.opsets)
    if ctx.folded > MAX_FOLDED_ELEMENTS:
        raise ModelError(f"constant node {ctx.node_label!r} ({node.op_type}) brings the elements "
                         f"computed by constant folding to {ctx.folded:,}, more than hecc's bound of "
                         f"MAX_FOLDED_ELEMENTS = 2**28 = {MAX_FOLDED_ELEMENTS:,} per model")
    feeds = {name: x for name, x in zip(node.input, inputs) if name}
    try:
        evaluator = ReferenceEvaluator(node, opsets=ctx.opsets)
        outputs = [np.asarray(x) for x in evaluator.run(None, feeds)]
    except Exception as exc:  # the evaluator raises many types; any failure means we cannot fold
        raise ModelError(f"cannot evaluate constant node {ctx.node_label!r} ({node.op_type}): "
                         f"{type(exc).__name__}: {exc}") from None
    for x in outputs:
        if x.size > MAX_TENSOR_ELEMENTS:  # the size was told before; this guards the telling
            raise ModelError(f"constant node {ctx.node_label!r} computed {x.size:,} elements, "
                             f"{OVER_BOUND}")
    return outputs
