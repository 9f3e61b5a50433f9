"""Secret tensors as affine forms over ciphertext tensors, the lowering's working representation
(see the package docstring): sum_b A_b @ base_b + bias. An elementwise form keeps each A_b as a
vector (``Diagonal``), so activations and products of large tensors cost memory and time linear
in their size; other forms keep a dense matrix, bounded by MAX_MATRIX_ENTRIES.
"""
from __future__ import annotations

import numpy as np

from hecc.ir import Value

MAX_MATRIX_ENTRIES = 20_000_000  # 160 MB of float64 per fused linear map


def element_count(base: Value) -> int:
    """Elements of a base: its ciphertexts in the batch layout; in the slots layout (where a
    ciphertext value keeps the shape of the tensor it holds until the end of the lowering) the
    same, the tensor's elements."""
    return base.type.count


class Affine:
    """A secret tensor as sum_b A_b @ base_b + bias over ciphertext tensors (A None: identity)."""

    __slots__ = ("bases", "matrix", "bias", "shape")

    def __init__(self, bases: list[Value], matrix, bias, shape):
        self.bases = list(bases)
        self.matrix, self.bias, self.shape = matrix, bias, tuple(shape)

    @classmethod
    def of(cls, base: Value) -> "Affine":
        return cls([base], None, None, base.type.shape)

    @property
    def width(self) -> int:
        return sum(element_count(b) for b in self.bases)

    @property
    def is_base(self) -> bool:
        return (len(self.bases) == 1 and self.matrix is None and self.bias is None
                and self.shape == self.bases[0].type.shape)

    def dense(self):
        matrix = np.eye(self.width) if self.matrix is None else self.matrix
        bias = np.zeros(matrix.shape[0]) if self.bias is None else self.bias
        return matrix, bias

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

    def parts(self):
        """(base, its block of the linear part) for each base."""
        matrix, _ = self.dense()
        col = 0
        for base in self.bases:
            yield base, matrix[:, col:col + element_count(base)]
            col += element_count(base)


def union_bases(forms) -> list[Value]:
    bases: list[Value] = []
    for form in forms:
        for b in form.bases:
            if not any(b is c for c in bases):
                bases.append(b)
    return bases


class TooLarge(Exception):
    pass


