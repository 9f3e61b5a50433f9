"""approximate-activations: replaces each non-polynomial activation by a polynomial (tensor.poly)
fitted on the interval of values it really sees.

The fit is Chebyshev interpolation (at the Chebyshev points of the first kind) on the calibrated
input interval widened by ``margin`` of its width on each side; near-minimax and numerically sound
at any degree. The degree is ``activation_degree`` if given, else the smallest of 2..max_degree
whose maximum error on the interval is at most ``approx_error`` times the activation's output
range there. Products and integer powers (x*x, Pow) are polynomials already and stay untouched.

Assumes: tensor IR; ``graph.meta["intervals"]`` maps tensor values to calibrated (min, max).
Guarantees: no tensor.activation remains; each tensor.poly records the activation's kind and its
interval; ``graph.meta["approximations"]`` lists per activation its interval, degree, depth and
max error on the interval (for the report).
Options: activation_degree (auto), approx_error (0.01), margin (0.1), max_degree (15).
"""
from __future__ import annotations

import math

import numpy as np

from hecc.backends.reference import ACTIVATIONS
from hecc.errors import PassError
from hecc.ir import Graph, Op

NAME = "approximate-activations"
EXACT = False  # changes the program's values (within the reported approximation error)
GRID = 2001


def activation_function(op: Op):
    alpha, beta = op.attrs.get("alpha", 0.0), op.attrs.get("beta", 0.0)
    return lambda x: ACTIVATIONS[op.attrs["kind"]](np.asarray(x, dtype=np.float64), alpha, beta)


def fit(f, lo: float, hi: float, degree: int) -> tuple[list[float], float]:
    """Chebyshev interpolant of f on [lo, hi]: (coefficients, max error on a dense grid)."""
    coefficients = np.polynomial.chebyshev.chebinterpolate(lambda t: f(lo + (t + 1) * (hi - lo) / 2), degree)
    t = np.linspace(-1, 1, GRID)
    coefficients[np.abs(coefficients) < 1e-12 * np.max(np.abs(coefficients))] = 0.0  # exact zeros of symmetry
    error = float(np.max(np.abs(np.polynomial.chebyshev.chebval(t, coefficients) - f(lo + (t + 1) * (hi - lo) / 2))))
    return [float(c) for c in coefficients], error


def choose(f, lo, hi, degree, target, max_degree):
    if degree:
        return degree, *fit(f, lo, hi, degree)
    span = np.ptp(f(np.linspace(lo, hi, GRID))) or 1.0
    best = None
    for d in range(2, max_degree + 1):
        coefficients, error = fit(f, lo, hi, d)
        best = (d, coefficients, error)
        if error <= target * span:
            break
    return best


def run(graph: Graph, options: dict | None = None) -> Graph:
    options = dict(options or {})
    degree = options.get("activation_degree")
    if degree is not None and not 1 <= int(degree) <= 31:
        raise PassError(f"activation degree must be 1..31, got {degree}")
    target = float(options.get("approx_error", 0.01))
    margin = float(options.get("margin", 0.1))
    max_degree = int(options.get("max_degree", 15))
    intervals = graph.meta.get("intervals", {})
    report = graph.meta.setdefault("approximations", [])
    for op in graph.ops:
        if op.name != "tensor.activation":
            continue
        x = op.operands[0]
        lo, hi = intervals.get(x, (-1.0, 1.0))
        width = max(hi - lo, 1e-6)
        lo, hi = lo - margin * width, hi + margin * width
        d, coefficients, error = choose(activation_function(op), lo, hi, degree, target, max_degree)
        report.append({"kind": op.attrs["kind"], "interval": [lo, hi], "degree": d,
                       "depth": math.ceil(math.log2(d)) if d > 1 else 0, "max_error": error})
        op.name = "tensor.poly"
        op.attrs = {"coefficients": coefficients, "interval": [lo, hi], "kind": op.attrs["kind"]}
    return graph
