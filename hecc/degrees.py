"""Activation degrees chosen for the whole program, not one activation at a time.

The automatic degree of each activation is the smallest whose error on the calibration data is
within ``approx_error`` of the activation's range. That can pick degree 9 or 10 (4 levels each)
where degree 8 (3 levels) is nearly as good, and two such activations push the program into the
next ring (N=32768: twice the time and memory for every operation). So when an automatic choice
goes past a depth of 3, the same approximation with degrees capped at 8 (then 4) is tried, the
network run on the calibration data (reference backend) with each, and the cheaper one kept when
its outputs are as good: argmax agreement with the exact network within one point (for
outputs with classes), and an RMS error on the outputs at most twice the uncapped one's.
"""
from __future__ import annotations

import numpy as np

from .ir import Graph

DEPTH_CAPS = (8, 4)  # the largest degrees of depths 3 and 2
AGREEMENT_SLACK = 0.01  # one point: what the capped LeNet-5 costs (0.6), for 3 levels fewer
ERROR_FACTOR = 2.0


def output_quality(exact: list[np.ndarray], approximate: list[np.ndarray]) -> tuple[float, float]:
    """(argmax agreement, RMS error relative to the exact output's range) of the first float
    output; agreement is 1.0 for outputs without classes."""
    pairs = [(a, b) for a, b in zip(exact, approximate) if np.asarray(a).dtype.kind == "f"]
    if not pairs:
        return 1.0, 0.0
    a, b = (np.asarray(v, dtype=np.float64) for v in pairs[0])
    span = float(np.ptp(a)) or 1.0
    error = float(np.sqrt(np.mean((a - b) ** 2))) / span
    agreement = float(np.mean(a.argmax(-1) == b.argmax(-1))) if a.ndim >= 2 and a.shape[-1] > 1 else 1.0
    return agreement, error


def choose_degrees(tensor: Graph, approximate, stacked) -> tuple:
    """``approximate(max_degree)`` -> (approximated graph, pass result); returns the pair whose
    degrees the whole program affords (see the module docstring)."""
    from .backends.reference import evaluate
    best = approximate(None)
    degrees = [len(op.attrs["coefficients"]) - 1 for op in best[0].ops if op.name == "tensor.poly"]
    if not degrees or max(degrees) <= DEPTH_CAPS[0]:
        return best
    exact = evaluate(tensor, stacked)
    agreement, error = output_quality(exact, evaluate(best[0], stacked))
    for cap in DEPTH_CAPS:
        candidate = approximate(cap)
        cap_agreement, cap_error = output_quality(exact, evaluate(candidate[0], stacked))
        if cap_agreement < agreement - AGREEMENT_SLACK or cap_error > ERROR_FACTOR * error + 1e-12:
            break
        best = candidate
    return best
