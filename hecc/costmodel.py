"""A model of SEAL's primitive costs for parameter sets not measured yet: seconds per primitive
at each level of a chain, from the ring degree N and the primes left at that level.

Fitted on this project's machine (2-core Xeon, SEAL 4.1 through TenSEAL 0.3.18, 2026-12-02) from
``measure_primitives`` at N=8192, 16384 and 32768 with chains of 3 to 10 primes: the cost of every
primitive grows with N log N and with L, the data primes left (key switching, rotations and
relinearizations, also with L^2). Within 1.5x of the measured on those chains; the compiler uses
it to choose between programs, and the report and ``run --layout auto`` use it until
``hecc calibrate`` (or a first TenSEAL run) has measured the real costs.
"""
from __future__ import annotations

import math

from .params import data_primes

# seconds at N=16384 for L data primes left: a * L + b * L^2 + c
MODEL = {
    "rotate": (2.24e-3, 0.16e-3, 0.0),
    "relinearize": (2.24e-3, 0.16e-3, 0.0),
    "multiply_vector": (0.17e-3, 0.0, 0.0),
    "multiply_plain": (0.17e-3, 0.0, 0.0),
    "add": (0.048e-3, 0.0, 0.0),
    "add_plain": (0.045e-3, 0.0, 0.0),
    "square": (0.29e-3, 0.0, 0.0),
    "rescale": (0.72e-3, 0.0, 0.0),
    "modswitch": (0.012e-3, 0.0, 0.0),
    "encrypt": (1.55e-3, 0.0, 1.65e-3),
    "decrypt": (1.2e-3, 0.0, 0.1e-3),
}


def modeled_costs(n: int, chain: list[int]) -> dict[str, list[float]]:
    """Predicted seconds per primitive at each level of ``chain`` (index = level), in the form
    ``measure_primitives`` returns."""
    ring = n * math.log2(n) / (16384 * 14)
    data = len(data_primes(chain))
    out = {}
    for name, (a, b, c) in MODEL.items():
        costs = []
        for level in range(data):
            primes = data - level
            costs.append(ring * (a * primes + b * primes * primes + c))
        if name in ("rescale", "modswitch"):
            costs[-1] = 0.0  # nothing below the last level
        out[name] = costs
    return out
