"""The generalized diagonal method's arithmetic for the slots layout: which diagonals a matrix
has between an input of period p and an output of period q, and the baby-step size that needs
the fewest rotations. Pure functions of numpy arrays.
"""
from __future__ import annotations

import numpy as np

from .affine import MAX_MATRIX_ENTRIES, TooLarge

# Relative costs (ms at N=8192, three primes, measured with SEAL on this machine) used only to
# choose between equivalent plans; the compile report uses the measured cost model.
# A rotation step no earlier map used costs a Galois key: about as many bytes as two ciphertexts of
# the chain for every client, once; weighted here as four rotations.
PLAN_COSTS = {"rotate": 1.9, "multiply_plain": 0.14, "add": 0.05, "encrypt": 2.0, "key": 7.6}
MAX_INPUT_CIPHERTEXTS = 64


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def diagonal_entries(matrix: np.ndarray, p: int, q: int):
    """The generalized diagonals of ``matrix`` (m x n, or a vector: a diagonal map) between an input stored with period p
    (n <= p) and an output stored with period q (m <= q), as (k, u, value) arrays, one entry per
    non-zero weight: diagonal k (k < min(p, q)) is the vector over slots u < max(p, q) holding
    matrix[u mod q, (u + k) mod p]. Then sum_k D_k * rotate(x, k) holds the output with period q
    when q >= p; when q < p it holds partial sums whose p/q blocks of q slots add up to it."""
    if matrix.ndim == 1:  # a diagonal map
        rows = cols = np.flatnonzero(matrix)
        values = matrix[rows]
    else:
        rows, cols = np.nonzero(matrix)
        values = matrix[rows, cols]
    d = (cols - rows) % p
    if q >= p:
        return d, rows, values
    t = d // q
    return d - t * q, rows + t * q, values


def diagonals(matrix: np.ndarray, p: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """(the non-zero diagonal numbers k, ascending; their vectors, one row each)."""
    k, u, values = diagonal_entries(matrix, p, q)
    ks, index = np.unique(k, return_inverse=True)
    if ks.size * max(p, q) > MAX_MATRIX_ENTRIES:
        raise TooLarge(f"{ks.size} diagonals of {max(p, q)} slots")
    dense = np.zeros((ks.size, max(p, q)))
    dense[index, u] = values
    return ks, dense


def baby_step(nonzero: list[int]) -> int:
    """The baby-step size g (a power of two) that needs the fewest rotations for diagonals
    ``nonzero``: one rotation of the input per distinct k mod g, one per giant step (Horner)."""
    best = None
    top = next_pow2(max(nonzero) + 1)
    g = 1
    while g <= top:
        babies = len({k % g for k in nonzero} - {0})
        giants = sorted({k // g for k in nonzero})
        cost = babies + len(giants) - 1 + (giants[0] > 0)
        if best is None or cost < best[0]:
            best = (cost, g)
        g *= 2
    return best[1]


