"""approximate-activations: replaces each non-polynomial activation by a polynomial (tensor.poly)
fitted on the interval of values it really sees.

The fit is in the Chebyshev basis (numerically sound at any degree) on the calibrated input
interval widened by ``margin`` of its width on each side. With calibration samples of the
activation's input it is a least-squares fit weighted by where the values really fall (most lie near
the middle, where an error costs accuracy), plus a lighter uniform grid that keeps the polynomial
bounded over the whole interval; without samples, Chebyshev interpolation (near-minimax). The
degree is ``activation_degree`` if given, else the smallest of 2..max_degree whose RMS error on
the samples (max error on the interval without samples) is at most ``approx_error`` times the
activation's output range. Products and integer powers (x*x, Pow) are polynomials already and stay untouched.

Assumes: tensor IR; ``graph.meta["intervals"]`` maps tensor values to calibrated (min, max) and
``graph.meta["samples"]`` (optional) activation inputs to a sample of their calibration values.
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
GRID_NODES = 200
GRID_WEIGHT = 0.05  # share of the fit's weight on the uniform grid


def activation_function(op: Op):
    alpha, beta = op.attrs.get("alpha", 0.0), op.attrs.get("beta", 0.0)
    return lambda x: ACTIVATIONS[op.attrs["kind"]](np.asarray(x, dtype=np.float64), alpha, beta)


def fit(f, lo: float, hi: float, degree: int, samples=None) -> tuple[list[float], float, float]:
    """Chebyshev-basis fit of f on [lo, hi]: (coefficients, max error on the interval, error
    measure used to choose the degree)."""
    def mapped(t):
        return f(lo + (t + 1) * (hi - lo) / 2)
    grid = np.linspace(-1, 1, GRID)
    if samples is not None and len(samples):
        ts = np.clip((2 * np.asarray(samples) - lo - hi) / (hi - lo), -1, 1)
        nodes = np.cos(np.pi * (np.arange(GRID_NODES) + 0.5) / GRID_NODES)
        t = np.concatenate([ts, nodes])
        weights = np.concatenate([np.ones(len(ts)), np.full(GRID_NODES, GRID_WEIGHT * len(ts) / GRID_NODES)])
        coefficients = np.polynomial.chebyshev.chebfit(t, mapped(t), degree, w=np.sqrt(weights))
        measure = float(np.sqrt(np.mean((np.polynomial.chebyshev.chebval(ts, coefficients) - mapped(ts)) ** 2)))
    else:
        coefficients = np.polynomial.chebyshev.chebinterpolate(mapped, degree)
        measure = None
    coefficients[np.abs(coefficients) < 1e-12 * np.max(np.abs(coefficients))] = 0.0  # exact zeros of symmetry
    error = float(np.max(np.abs(np.polynomial.chebyshev.chebval(grid, coefficients) - mapped(grid))))
    return [float(c) for c in coefficients], error, error if measure is None else measure


def choose(f, lo, hi, degree, target, max_degree, samples=None):
    if degree:
        return (degree, *fit(f, lo, hi, degree, samples))
    span = np.ptp(f(np.linspace(lo, hi, GRID))) or 1.0
    best = None
    for d in range(2, max_degree + 1):
        best = (d, *fit(f, lo, hi, d, samples))
        if best[3] <= target * span:
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
    samples = graph.meta.get("samples", {})
    report = graph.meta.setdefault("approximations", [])
    for op in graph.ops:
        if op.name != "tensor.activation":
            continue
        x = op.operands[0]
        lo, hi = intervals.get(x, (-1.0, 1.0))
        width = max(hi - lo, 1e-6)
        lo, hi = lo - margin * width, hi + margin * width
        d, coefficients, error, _ = choose(activation_function(op), lo, hi, degree, target, max_degree,
                                           samples.get(x))
        report.append({"kind": op.attrs["kind"], "interval": [lo, hi], "degree": d,
                       "depth": math.ceil(math.log2(d)) if d > 1 else 0, "max_error": error})
        op.name = "tensor.poly"
        op.attrs = {"coefficients": coefficients, "interval": [lo, hi], "kind": op.attrs["kind"]}
    return graph
