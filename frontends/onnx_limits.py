"""Bounds on what an ONNX model can make hecc allocate, checked before anything is allocated.

A model is hostile input: a few hundred bytes can declare a tensor of 10**12 elements. Every
tensor a model holds (initializers, sparse initializers, tensor attributes such as a Constant's
value; in the main graph, in subgraphs, in training graphs and in functions) must carry exactly
the bytes its dims and element type call for, and at most ``MAX_TENSOR_ELEMENTS`` elements; only
then is it converted to numpy (``tensor_to_array``, ``sparse_to_array``). Tensors whose data lives
in an external file are checked by ``onnx_external`` when that file is read.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError

MAX_MODEL_BYTES = 2**31 - 1  # protobuf cannot hold a larger message anyway
MAX_TENSOR_ELEMENTS = 2**27  # one tensor: 1 GiB of float64
MAX_EXTERNAL_BYTES = 2**31 - 1  # a model's external data, together (the checker's limit too)
MAX_FOLDED_ELEMENTS = 2**28  # everything constant folding computes for one model, together
# tensors computed from the encrypted inputs, per input sample: one of them, and all together
MAX_ENCRYPTED_ELEMENTS = 2**22
MAX_ENCRYPTED_TOTAL = 2**24

# element types stored packed below one byte per element: bits per element
_PACKED_BITS = {getattr(TensorProto, name): bits for name, bits in
                [("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                 ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)] if hasattr(TensorProto, name)}
_COMPLEX = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}


OVER_BOUND = (f"more than hecc's bound of MAX_TENSOR_ELEMENTS = 2**27 = {MAX_TENSOR_ELEMENTS:,} "
              "elements per tensor")


def element_count(dims, what: str) -> int:
    """The product of ``dims`` (a Python int, never overflowing); refuses negative dims."""
    dims = [int(d) for d in dims]
    if any(d < 0 for d in dims):
        raise ModelError(f"{what} has negative dimensions {dims}")
    return math.prod(dims)


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"unknown element type {data_type}"


def item_bits(data_type: int, what: str) -> int:
    """Bits one element of ``data_type`` takes in ``raw_data``."""
    if data_type in _PACKED_BITS:
        return _PACKED_BITS[data_type]
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize * 8
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{what} has element type {_type_name(data_type)}, which ONNX does not "
                         "define") from None


def raw_bytes(data_type: int, count: int, what: str) -> int:
    """The length ``raw_data`` (or an external-data region) must have for ``count`` elements."""
    if data_type == TensorProto.STRING:
        raise ModelError(f"{what}: a STRING tensor cannot keep its data as raw bytes")
    return (count * item_bits(data_type, what) + 7) // 8


def _typed_entries(data_type: int, count: int) -> int:
    """How many entries of the typed field (float_data, int32_data, ...) hold ``count`` elements."""
    bits = _PACKED_BITS.get(data_type)
    if bits in (2, 4):  # several elements packed in one int32_data entry
        per_entry = 8 // bits
        return (count + per_entry - 1) // per_entry
    return 2 * count if data_type in _COMPLEX else count


def check_tensor(tensor: TensorProto, what: str) -> int:
    """Refuse a tensor whose declared size is over the bound or differs from the data it carries
    (external data is checked where it is read). Returns the element count."""
    if tensor.HasField("segment"):
        raise ModelError(f"{what} is stored in segments, which hecc does not read; save the model "
                         "again without segments")
    count = element_count(tensor.dims, what)
    if count > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{what} declares dims {list(tensor.dims)} = {count:,} elements, "
                         f"{OVER_BOUND}")
    if tensor.data_type == TensorProto.UNDEFINED:
        raise ModelError(f"{what} has no element type")
    if tensor.data_location == TensorProto.EXTERNAL:
        return count
    if tensor.HasField("raw_data"):
        need = raw_bytes(tensor.data_type, count, what)
        if len(tensor.raw_data) != need:
            raise ModelError(f"{what} carries {len(tensor.raw_data):,} bytes of data, but its dims "
                             f"{list(tensor.dims)} and type {_type_name(tensor.data_type)} need "
                             f"{need:,}: the model is corrupted or forged")
        return count
    item_bits(tensor.data_type, what)  # refuses element types ONNX does not define
    field = helper.tensor_dtype_to_field(tensor.data_type)
    have, need = len(getattr(tensor, field)), _typed_entries(tensor.data_type, count)
    if have != need:
        raise ModelError(f"{what} carries {have:,} values in {field}, but its dims "
                         f"{list(tensor.dims)} and type {_type_name(tensor.data_type)} need "
                         f"{need:,}: the model is corrupted or forged")
    return count


def tensor_to_array(tensor: TensorProto, what: str, checked: bool = False) -> np.ndarray:
    """``numpy_helper.to_array`` after ``check_tensor`` (unless ``checked`` already, as
    ``check_model_tensors`` does for the whole model); any failure is a ``ModelError``."""
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ModelError(f"{what} keeps its data in an external file that was not loaded")
    if not checked:
        check_tensor(tensor, what)
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ModelError(f"{what} cannot be read: {type(exc).__name__}: {exc}") from None


def sparse_to_array(sparse: onnx.SparseTensorProto, what: str) -> np.ndarray:
    """The dense array of a sparse tensor, after checking its dense size and its indices."""
    count = element_count(sparse.dims, what)
    if count > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{what} declares dense dims {list(sparse.dims)} = {count:,} elements, "
                         f"{OVER_BOUND}")
    values = tensor_to_array(sparse.values, f"{what} (values)")
    indices = tensor_to_array(sparse.indices, f"{what} (indices)")
    rank, nnz = len(sparse.dims), values.size
    if values.ndim != 1 or indices.dtype != np.int64 or indices.shape not in ((nnz,), (nnz, rank)):
        raise ModelError(f"{what}: values of shape {values.shape} and int64 indices of shape "
                         f"{indices.shape} do not describe a sparse tensor of rank {rank}")
    if indices.ndim == 2:
        if np.any(indices < 0) or np.any(indices >= np.asarray(sparse.dims, dtype=np.int64)):
            raise ModelError(f"{what} has indices outside its dims {list(sparse.dims)}")
        indices = np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims)) if rank else indices[:, 0]
    if np.any(indices < 0) or np.any(indices >= count):
        raise ModelError(f"{what} has indices outside its {count:,} elements")
    dense = np.zeros(count, dtype=values.dtype)
    dense[indices] = values
    return dense.reshape(tuple(sparse.dims))


def _node_tensors(node: onnx.NodeProto, where: str):
    """(proto, description) for each tensor attribute of ``node``, and its subgraphs."""
    label = f"node {node.name or node.op_type!r}{where}"
    graphs = []
    for attr in node.attribute:
        what = f"attribute {attr.name!r} of {label}"
        if attr.HasField("t"):
            yield attr.t, what
        for i, t in enumerate(attr.tensors):
            yield t, f"{what} (tensor {i})"
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor, what
        for i, t in enumerate(attr.sparse_tensors):
            yield t, f"{what} (sparse tensor {i})"
        if attr.HasField("g"):
            graphs.append(attr.g)
        graphs.extend(attr.graphs)
    for g in graphs:
        yield from _graph_tensors(g, f" in subgraph {g.name!r} of {label}")


def _graph_tensors(graph: onnx.GraphProto, where: str = ""):
    for t in graph.initializer:
        yield t, f"initializer {t.name!r}{where}"
    for s in graph.sparse_initializer:
        yield s, f"sparse initializer {s.values.name!r}{where}"
    for node in graph.node:
        yield from _node_tensors(node, where)


def model_tensors(model: onnx.ModelProto) -> Iterator[tuple]:
    """Every ``TensorProto`` and ``SparseTensorProto`` in the model, with a description naming
    it; a sparse tensor is followed by its values and indices tensors."""
    sources = [_graph_tensors(model.graph)]
    for i, info in enumerate(model.training_info):
        sources.append(_graph_tensors(info.initialization, f" in training graph {i}"))
        sources.append(_graph_tensors(info.algorithm, f" in training graph {i}"))
    for f in model.functions:
        for node in f.node:
            sources.append(_node_tensors(node, f" in function {f.name!r}"))
    for source in sources:
        for proto, what in source:
            yield proto, what
            if isinstance(proto, onnx.SparseTensorProto):
                yield proto.values, f"{what} (values)"
                yield proto.indices, f"{what} (indices)"


def check_model_tensors(model: onnx.ModelProto) -> None:
    """``check_tensor`` on every tensor of the model, and the dense size of every sparse one."""
    for proto, what in model_tensors(model):
        if isinstance(proto, onnx.SparseTensorProto):
            count = element_count(proto.dims, what)
            if count > MAX_TENSOR_ELEMENTS:
                raise ModelError(f"{what} declares dense dims {list(proto.dims)} = {count:,} "
                                 f"elements, {OVER_BOUND}")
        else:
            check_tensor(proto, what)
