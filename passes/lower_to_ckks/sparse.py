"""Sparse linear maps for the affine forms: coordinate lists and the matrices of the structured
tensor ops (convolution, average pooling, products by constant matrices, transposes, padding),
built by index arithmetic in time and memory linear in their non-zeros. A convolution's matrix
never exists densely: LeNet-5's second convolution (32 -> 64 channels, 5x5 on 14x14) is 2.5
million weights here, where its dense matrix (3,136 x 6,272) took 22 s to build by running the
convolution on every unit vector.
"""
from __future__ import annotations

import numpy as np

from hecc.ir import Op


DENSE_ACCUMULATE = 1 << 25  # entries of a product summed densely (256 MB of float64) at most
BLAS_FLOPS_PER_PRODUCT = 1000  # a dense product (BLAS) is faster while its multiply-adds are at
#   most this many per partial product of the sparse one (about 0.02 ns against 150 ns each)


class Sparse:
    """An m x n matrix as coordinate lists, canonical: sorted by (row, column), no duplicate
    coordinates, no zeros."""

    __slots__ = ("rows", "cols", "vals", "shape")

    def __init__(self, rows, cols, vals, shape, canonical: bool = False):
        rows = np.asarray(rows, dtype=np.int64).ravel()
        cols = np.asarray(cols, dtype=np.int64).ravel()
        vals = np.asarray(vals, dtype=np.float64).ravel()
        self.shape = (int(shape[0]), int(shape[1]))
        if not canonical and rows.size:
            key = rows * self.shape[1] + cols
            if not np.all(key[1:] > key[:-1]):
                order = np.argsort(key, kind="stable")
                rows, cols, vals, key = rows[order], cols[order], vals[order], key[order]
                first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
                vals = np.add.reduceat(vals, first)
                rows, cols = rows[first], cols[first]
        keep = vals != 0
        self.rows, self.cols, self.vals = rows[keep], cols[keep], vals[keep]

    @classmethod
    def identity(cls, n: int) -> "Sparse":
        index = np.arange(n)
        return cls(index, index, np.ones(n), (n, n), canonical=True)

    @classmethod
    def diagonal(cls, vector) -> "Sparse":
        vector = np.asarray(vector, dtype=np.float64)
        index = np.arange(vector.size)
        return cls(index, index, vector, (vector.size, vector.size), canonical=True)

    @classmethod
    def from_dense(cls, matrix) -> "Sparse":
        matrix = np.asarray(matrix, dtype=np.float64)
        rows, cols = np.nonzero(matrix)
        return cls(rows, cols, matrix[rows, cols], matrix.shape, canonical=True)

    @property
    def nnz(self) -> int:
        return int(self.vals.size)

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape)
        out[self.rows, self.cols] = self.vals
        return out

    def scale_rows(self, factors) -> "Sparse":
        factors = np.asarray(factors, dtype=np.float64).ravel()
        return Sparse(self.rows, self.cols, self.vals * factors[self.rows], self.shape, canonical=True)

    def scaled(self, alpha: float) -> "Sparse":
        return Sparse(self.rows, self.cols, self.vals * alpha, self.shape, canonical=True)

    def columns(self, lo: int, hi: int) -> "Sparse":
        """Columns lo..hi-1, renumbered from 0."""
        keep = (self.cols >= lo) & (self.cols < hi)
        return Sparse(self.rows[keep], self.cols[keep] - lo, self.vals[keep], (self.shape[0], hi - lo),
                      canonical=True)

    def permute_rows(self, source) -> "Sparse":
        """The matrix whose row r is row source[r] of this one (source[r] < 0: a zero row)."""
        source = np.asarray(source, dtype=np.int64)
        valid = np.flatnonzero(source >= 0)
        target = np.full(self.shape[0], -1, dtype=np.int64)
        target[source[valid]] = valid
        rows = target[self.rows]
        keep = rows >= 0
        return Sparse(rows[keep], self.cols[keep], self.vals[keep], (source.size, self.shape[1]))

    def widen(self, offset: int, width: int) -> "Sparse":
        """The same entries as columns offset..offset+n-1 of a matrix ``width`` columns wide."""
        return Sparse(self.rows, self.cols + offset, self.vals, (self.shape[0], width), canonical=True)

    def row_sums_abs(self) -> np.ndarray:
        return np.bincount(self.rows, weights=np.abs(self.vals), minlength=self.shape[0])

    def __matmul__(self, other: "Sparse") -> "Sparse":
        """This (m x n) times ``other`` (n x w)."""
        if self.shape[1] != other.shape[0]:
            raise ValueError(f"cannot compose {self.shape} with {other.shape}")
        start = np.searchsorted(other.rows, np.arange(other.shape[0] + 1))
        counts = start[self.cols + 1] - start[self.cols]
        total = int(counts.sum())
        shape = (self.shape[0], other.shape[1])
        size = shape[0] * shape[1]
        if (self.shape[0] * self.shape[1] + other.shape[0] * other.shape[1] + size <= DENSE_ACCUMULATE
                and self.shape[0] * self.shape[1] * other.shape[1] <= BLAS_FLOPS_PER_PRODUCT * total):
            # a dense product: the ViT's attention maps (816 x 1632 by 1632 x 3232, 7 million
            # partial products) take 0.09 s instead of 1-2 s summed by position
            return Sparse.from_dense(self.dense() @ other.dense())
        left = np.repeat(np.arange(self.nnz), counts)
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        right = start[self.cols][left] + within
        if size <= min(max(total, 1 << 20), DENSE_ACCUMULATE):
            # summed into a dense array by position, linear time (sorting the partial products
            # took 0.8 s per map of the ViT's attention, 7 million of them)
            acc = np.bincount(self.rows[left] * shape[1] + other.cols[right],
                              weights=self.vals[left] * other.vals[right], minlength=size)
            at = np.flatnonzero(acc)
            return Sparse(at // shape[1], at % shape[1], acc[at], shape, canonical=True)
        return Sparse(self.rows[left], other.cols[right], self.vals[left] * other.vals[right], shape)

    def __add__(self, other: "Sparse") -> "Sparse":
        if self.shape != other.shape:
            raise ValueError(f"cannot add {self.shape} and {other.shape}")
        return Sparse(np.r_[self.rows, other.rows], np.r_[self.cols, other.cols],
                      np.r_[self.vals, other.vals], self.shape)


def _window_entries(shape_in, kernel, strides, pads, dilations):
    """For a window op on (C, H, W): per output position (oy, ox) and tap (i, j), the input
    position, as arrays over (OH, OW, kh, kw), and which of them lie inside the input."""
    _, h, w = shape_in
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, strides, pads, dilations
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    oy, ox, i, j = np.meshgrid(np.arange(oh), np.arange(ow), np.arange(kh), np.arange(kw), indexing="ij")
    y, x = oy * sh - pt + i * dh, ox * sw - pl + j * dw
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    return (oh, ow), oy, ox, i, j, y, x, inside


def _per_image(matrix: Sparse, images: int) -> Sparse:
    """A (n, ...) tensor's matrix from one image's: the same map on each image."""
    if images == 1:
        return matrix
    m, k = matrix.shape
    offsets = np.arange(images)[:, None]
    return Sparse((matrix.rows[None] + offsets * m).ravel(), (matrix.cols[None] + offsets * k).ravel(),
                  np.tile(matrix.vals, images), (m * images, k * images), canonical=True)


def conv2d_matrix(op: Op, weight: np.ndarray, in_shape) -> tuple[Sparse, tuple]:
    """The matrix of a convolution (group included) from an (n, C, H, W) input, without bias,
    and the output shape."""
    matrix, shape = _conv2d_image(op, weight, in_shape)
    return _per_image(matrix, in_shape[0]), (in_shape[0],) + shape[1:]


def _conv2d_image(op: Op, weight: np.ndarray, in_shape) -> tuple[Sparse, tuple]:
    _, c, h, w = in_shape
    group = op.attrs.get("group", 1)
    out_channels, per_group = weight.shape[0], weight.shape[1]
    (oh, ow), oy, ox, i, j, y, x, inside = _window_entries(
        (c, h, w), weight.shape[2:], op.attrs["strides"], op.attrs["pads"], op.attrs["dilations"])
    # entries ordered by (output channel, output position, input channel, tap): by row, then
    # by column, so the matrix needs no sorting
    position = (oy * ow + ox)[inside]
    i, j, y, x = (a[inside] for a in (i, j, y, x))
    local = np.arange(per_group)
    order = np.lexsort((np.tile(np.arange(position.size), per_group), np.repeat(local, position.size),
                        np.tile(position, per_group)))
    entry, cl = np.tile(np.arange(position.size), per_group)[order], np.repeat(local, position.size)[order]
    o = np.arange(out_channels)[:, None]
    channel = (o // (out_channels // group)) * per_group + cl[None, :]
    rows = o * (oh * ow) + position[entry][None, :]
    cols = (channel * h + y[entry][None, :]) * w + x[entry][None, :]
    vals = weight[o, cl[None, :], i[entry][None, :], j[entry][None, :]]
    rows = np.broadcast_to(rows, vals.shape)
    shape = (1, out_channels, oh, ow)
    return Sparse(rows, cols, vals, (out_channels * oh * ow, c * h * w)), shape


def avgpool_matrix(op: Op, in_shape) -> tuple[Sparse, tuple]:
    matrix, shape = _avgpool_image(op, in_shape)
    return _per_image(matrix, in_shape[0]), (in_shape[0],) + shape[1:]


def _avgpool_image(op: Op, in_shape) -> tuple[Sparse, tuple]:
    _, c, h, w = in_shape
    (oh, ow), oy, ox, i, j, y, x, inside = _window_entries(
        (c, h, w), op.attrs["kernel"], op.attrs["strides"], op.attrs["pads"], (1, 1))
    kh, kw = op.attrs["kernel"]
    if op.attrs.get("count_include_pad", False):
        weight = np.full(inside.shape, 1.0 / (kh * kw))
    else:
        weight = np.broadcast_to(1.0 / inside.sum(axis=(2, 3), keepdims=True), inside.shape)
    oy, ox, y, x, weight = (a[inside] for a in (oy, ox, y, x, weight))
    ch = np.arange(c)[:, None]
    rows = (ch * oh + oy[None]) * ow + ox[None]
    cols = (ch * h + y[None]) * w + x[None]
    vals = np.broadcast_to(weight[None], rows.shape)
    return Sparse(rows, cols, vals, (c * oh * ow, c * h * w)), (1, c, oh, ow)


def matmul_matrix(weight: np.ndarray, in_shape) -> Sparse | None:
    """x @ W for x of shape (..., n) and a constant W (n, m): W^T for each leading index."""
    if weight.ndim != 2 or not in_shape or in_shape[-1] != weight.shape[0]:
        return None
    block = Sparse.from_dense(weight.T)
    return _per_image(block, int(np.prod(in_shape[:-1], dtype=np.int64)))


def left_matmul_matrix(weight: np.ndarray, in_shape) -> Sparse | None:
    """W @ x for a constant W (m, n) and x of shape (..., n, d): out[..., i, c] = sum_j W[i, j]
    x[..., j, c], for each leading index."""
    if weight.ndim != 2 or len(in_shape) < 2 or in_shape[-2] != weight.shape[1]:
        return None
    d = int(in_shape[-1])
    i, j = np.nonzero(weight)
    c = np.arange(d)
    rows = (i[:, None] * d + c[None, :]).ravel()
    cols = (j[:, None] * d + c[None, :]).ravel()
    vals = np.repeat(weight[i, j], d)
    block = Sparse(rows, cols, vals, (weight.shape[0] * d, weight.shape[1] * d))
    return _per_image(block, int(np.prod(in_shape[:-2], dtype=np.int64)))


def transpose_rows(perm, in_shape) -> np.ndarray:
    """For a transpose, the input element each output element reads."""
    index = np.arange(int(np.prod(in_shape, dtype=np.int64))).reshape(in_shape)
    return np.transpose(index, perm).ravel()


def pad_rows(pads, in_shape) -> tuple[np.ndarray, tuple]:
    """For a zero padding ([begin..., end...] per axis), the input element each output element
    reads (-1: a padding zero), and the output shape."""
    rank = len(in_shape)
    begin, end = pads[:rank], pads[rank:]
    index = np.arange(int(np.prod(in_shape, dtype=np.int64))).reshape(in_shape)
    out = np.pad(index, list(zip(begin, end)), constant_values=-1)
    return out.ravel(), out.shape
