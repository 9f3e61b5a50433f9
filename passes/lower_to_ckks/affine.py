"""Secret tensors as affine forms over ciphertext tensors, the lowering's working representation
(see the package docstring): sum_b A_b @ base_b + bias. An elementwise form keeps each A_b as a
vector (``Diagonal``), so activations and products of large tensors cost memory and time linear
in their size; structured maps (convolutions, pooling, products by constant matrices) keep a
``Sparse`` matrix; other forms keep a dense matrix, bounded by MAX_MATRIX_ENTRIES.
"""
from __future__ import annotations

import numpy as np

from hecc.ir import Value

from .sparse import Sparse

MAX_MATRIX_ENTRIES = 20_000_000  # 160 MB of float64 per fused linear map
MAX_SPARSE_ENTRIES = 50_000_000  # non-zero weights of one fused linear map


def element_count(base: Value) -> int:
    """Elements of a base: its ciphertexts in the batch layout; in the slots layout (where a
    ciphertext value keeps the shape of the tensor it holds until the end of the lowering) the
    same, the tensor's elements."""
    return base.type.count


class Diagonal:
    """The linear part of an elementwise form, sum_b diag(v_b) @ base_b: one vector per base, each
    as long as the form (and its base)."""

    __slots__ = ("vectors",)

    def __init__(self, vectors):
        self.vectors = [np.asarray(v, dtype=np.float64) for v in vectors]


class Affine:
    """A secret tensor as sum_b A_b @ base_b + bias over ciphertext tensors. ``matrix`` is None
    (the identity), a dense 2-D array over the concatenated bases, a ``Diagonal`` or a
    ``Sparse`` matrix over the concatenated bases. ``geometry`` (the slots layout's, or None)
    says where the form's elements lie on its bases' grid (see ``slots.Geometry``). ``alt`` (the
    slots layout's, or None) is the same tensor as another form, over bases some of which are
    yet to be computed (see ``pooling``): the lowering may emit either."""

    __slots__ = ("bases", "matrix", "bias", "shape", "geometry", "alt")

    def __init__(self, bases: list[Value], matrix, bias, shape, geometry=None):
        self.bases = list(bases)
        self.matrix, self.bias, self.shape = matrix, bias, tuple(shape)
        self.geometry = geometry
        self.alt = None

    @classmethod
    def of(cls, base: Value) -> "Affine":
        return cls([base], None, None, base.type.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def width(self) -> int:
        return sum(element_count(b) for b in self.bases)

    @property
    def is_base(self) -> bool:
        return (len(self.bases) == 1 and self.matrix is None and self.bias is None
                and self.shape == self.bases[0].type.shape)

    @property
    def elementwise(self) -> bool:
        """Whether the form is a sum of its bases scaled elementwise (plus a bias)."""
        return isinstance(self.matrix, Diagonal) or (
            self.matrix is None and len(self.bases) == 1 and element_count(self.bases[0]) == self.size)

    def diagonals(self) -> list[np.ndarray]:
        """An elementwise form's vector per base."""
        if isinstance(self.matrix, Diagonal):
            return self.matrix.vectors
        return [np.ones(self.size)]

    def bias_vector(self) -> np.ndarray:
        return np.zeros(self.size) if self.bias is None else self.bias

    def scaled(self, alpha: float, beta: float) -> "Affine":
        """alpha * form + beta, keeping its structure."""
        if self.elementwise:
            matrix = Diagonal([alpha * v for v in self.diagonals()])
        elif isinstance(self.matrix, Sparse):
            matrix = self.matrix.scaled(alpha)
        else:
            matrix = self.dense()[0] * alpha
        out = Affine(self.bases, matrix, self.bias_vector() * alpha + beta, self.shape, self.geometry)
        out.alt = None if self.alt is None else self.alt.scaled(alpha, beta)
        return out

    def sparse(self) -> Sparse:
        """The linear part over the concatenated bases, as a sparse matrix."""
        if isinstance(self.matrix, Sparse):
            return self.matrix
        if self.elementwise:
            parts = [Sparse.diagonal(v).widen(offset, self.width) for v, offset
                     in zip(self.diagonals(), self.offsets()[:-1])]
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            return total
        if self.matrix is None:
            return Sparse.identity(self.width)
        return Sparse.from_dense(self.matrix)

    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [element_count(b) for b in self.bases])

    def dense(self):
        if isinstance(self.matrix, Diagonal):
            if self.size * self.width > MAX_MATRIX_ENTRIES:
                raise TooLarge(f"{self.size} x {self.width}")
            matrix = np.hstack([np.diag(v) for v in self.matrix.vectors])
        elif isinstance(self.matrix, Sparse):
            if self.size * self.width > MAX_MATRIX_ENTRIES:
                raise TooLarge(f"{self.size} x {self.width}")
            matrix = self.matrix.dense()
        else:
            matrix = np.eye(self.width) if self.matrix is None else self.matrix
        return matrix, self.bias_vector()

    def over(self, bases: list[Value]) -> np.ndarray:
        """The linear part with one column block per entry of ``bases`` (a superset of ours)."""
        matrix, _ = self.dense()
        offsets = np.cumsum([0] + [element_count(b) for b in bases])
        out = np.zeros((matrix.shape[0], offsets[-1]))
        col = 0
        for base in self.bases:
            i = next(i for i, b in enumerate(bases) if b is base)
            out[:, offsets[i]:offsets[i + 1]] = matrix[:, col:col + element_count(base)]
            col += element_count(base)
        return out

    def sparse_over(self, bases: list[Value]) -> Sparse:
        """``over`` as a sparse matrix."""
        return Sparse(*self.entries_over(bases), (self.size, int(sum(element_count(b) for b in bases))))

    def entries_over(self, bases: list[Value]):
        """(rows, cols, vals) of ``sparse_over``, not summed or sorted."""
        mine = self.sparse()
        offsets = np.cumsum([0] + [element_count(b) for b in bases])
        mine_offsets = self.offsets()
        shift = np.zeros(len(self.bases), dtype=np.int64)
        for k, base in enumerate(self.bases):
            shift[k] = offsets[next(i for i, b in enumerate(bases) if b is base)] - mine_offsets[k]
        which = np.searchsorted(mine_offsets[1:], mine.cols, side="right")
        return mine.rows, mine.cols + shift[which], mine.vals

    def parts(self):
        """(base, its block of the linear part) for each base; an elementwise form's blocks are
        1-D (the diagonal), a sparse form's are ``Sparse``."""
        if self.elementwise:
            yield from zip(self.bases, self.diagonals())
            return
        if isinstance(self.matrix, Sparse):
            for base, lo, hi in zip(self.bases, self.offsets()[:-1], self.offsets()[1:]):
                yield base, self.matrix.columns(int(lo), int(hi))
            return
        matrix, _ = self.dense()
        col = 0
        for base in self.bases:
            yield base, matrix[:, col:col + element_count(base)]
            col += element_count(base)


def block_entries(block):
    """(rows, cols, values) of a block of ``Affine.parts``: a diagonal vector, a dense matrix or
    a ``Sparse`` one."""
    if isinstance(block, Sparse):
        return block.rows, block.cols, block.vals
    block = np.asarray(block)
    if block.ndim == 1:
        rows = np.flatnonzero(block)
        return rows, rows, block[rows]
    rows, cols = np.nonzero(block)
    return rows, cols, block[rows, cols]


def elementwise_sum(parts, constant, shape) -> Affine:
    """sum of c * form + constant over elementwise forms of ``shape`` (c and constant scalars or
    arrays of that shape): an elementwise form over the union of their bases, built in time and
    memory linear in the size."""
    bases = union_bases([form for _, form in parts])
    size = int(np.prod(shape, dtype=np.int64))
    vectors = [np.zeros(size) for _ in bases]
    bias = np.broadcast_to(np.asarray(constant, dtype=np.float64), shape).reshape(-1).copy()
    for c, form in parts:
        c = np.broadcast_to(np.asarray(c, dtype=np.float64), shape).reshape(-1)
        for base, vector in zip(form.bases, form.diagonals()):
            vectors[next(i for i, b in enumerate(bases) if b is base)] += c * vector
        bias += c * form.bias_vector()
    return Affine(bases, Diagonal(vectors), bias, shape, common_geometry([form for _, form in parts]))


def sparse_sum(parts, constant, shape) -> Affine:
    """sum of c * form + constant (c and constant scalars or arrays of ``shape``) over forms of
    ``shape``, as a sparse form over the union of their bases."""
    bases = union_bases([form for _, form in parts])
    bias = np.broadcast_to(np.asarray(constant, dtype=np.float64), shape).reshape(-1).copy()
    rows, cols, vals = [], [], []
    for c, form in parts:
        c = np.broadcast_to(np.asarray(c, dtype=np.float64), shape).reshape(-1)
        r, k, v = form.entries_over(bases)
        rows.append(r)
        cols.append(k)
        vals.append(v * c[r])
        bias += c * form.bias_vector()
    size = int(np.prod(shape, dtype=np.int64))
    total = Sparse(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals),
                   (size, int(sum(element_count(b) for b in bases))))
    if total.nnz > MAX_SPARSE_ENTRIES:
        raise TooLarge(f"{total.nnz} weights")
    return Affine(bases, total, bias, shape, common_geometry([form for _, form in parts]))


def common_geometry(forms):
    """The geometry all ``forms`` share, or None."""
    geometries = [form.geometry for form in forms]
    first = geometries[0]
    return first if first is not None and all(g == first for g in geometries) else None


def union_bases(forms) -> list[Value]:
    bases: list[Value] = []
    for form in forms:
        for b in form.bases:
            if not any(b is c for c in bases):
                bases.append(b)
    return bases


class TooLarge(Exception):
    pass
