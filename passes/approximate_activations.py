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
Softmax inside the network (``tensor.softmax_inside``) becomes its row mean subtracted, exp by
squaring a polynomial, the row sums and their reciprocal; a reciprocal or 1/sqrt (LayerNorm's) is a
low-degree first guess refined by Newton steps (``_newton``).
Guarantees: no tensor.activation or tensor.softmax_inside remains; each tensor.poly records the
activation's kind and its interval; ``graph.meta["approximations"]`` lists per activation its
interval, degree, depth and max error on the interval (for the report), and by ``_source`` and
``_output`` the value the activation computed and the one computing its approximation now.
Options: activation_degree (auto), approx_error (0.01), margin (0.1), max_degree (15).
"""
from __future__ import annotations

import math

import numpy as np

from hecc.backends.reference import ACTIVATIONS
from hecc.errors import PassError
from hecc.ir import Graph, Op, TensorType, Value

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


NEWTON_KINDS = ("reciprocal", "rsqrt")
NEWTON_DEGREES = (2, 4, 8)  # initial guesses tried (depths 1, 2, 3)
MAX_NEWTON_STEPS = 6


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
    ops, graph.ops = graph.ops, []
    renamed: dict[Value, Value] = {}  # results now computed by ops appended after their op
    for op in ops:
        op.operands = [renamed.get(v, v) for v in op.operands]
        graph.ops.append(op)
        if op.name == "tensor.softmax_inside":
            renamed[op.result] = _softmax(graph, op, intervals, samples, target, margin, max_degree, report)
            continue
        if op.name != "tensor.activation":
            continue
        x = op.operands[0]
        lo, hi = intervals.get(x, (-1.0, 1.0))
        if op.attrs["kind"] in NEWTON_KINDS:
            renamed[op.result] = _newton(graph, op, lo, hi, samples.get(x), target, margin, report)
            continue
        width = max(hi - lo, 1e-6)
        lo, hi = lo - margin * width, hi + margin * width
        d, coefficients, error, _ = choose(activation_function(op), lo, hi, degree, target, max_degree,
                                           samples.get(x))
        report.append({"kind": op.attrs["kind"], "interval": [lo, hi], "degree": d,
                       "depth": math.ceil(math.log2(d)) if d > 1 else 0, "max_error": error,
                       "_source": op.result, "_output": op.result})
        op.name = "tensor.poly"
        op.attrs = {"coefficients": coefficients, "interval": [lo, hi], "kind": op.attrs["kind"]}
    return graph


def _emit(graph: Graph, name: str, operands, like) -> Value:
    """Append op ``name`` with a result typed like value ``like`` (same shape, secret)."""
    return graph.append(name, operands, [like.type]).result


def _scalar(graph: Graph, value: float, stem: str) -> Value:
    name = graph.unique_constant_name(stem)
    graph.constants[name] = np.asarray(float(value))
    return graph.append("tensor.constant", [], [TensorType((), False)], {"name": name}).result


def _newton_values(kind: str, x: np.ndarray, y: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        y = 2 * y - x * y * y if kind == "reciprocal" else 1.5 * y - 0.5 * (y * y) * (x * y)
    return y


def _newton(graph: Graph, op: Op, lo: float, hi: float, sample, target: float, margin: float,
            report: list) -> Value:
    """1/x or 1/sqrt(x) on the calibrated interval (x > 0): a low-degree polynomial first guess,
    then Newton steps (y' = 2y - x y^2, or y' = 1.5y - 0.5 (y y)(x y): two levels each), the
    shallowest pair whose largest relative error on the calibration samples is within ``target``.
    ``op`` (a tensor.activation, appended last) becomes the first guess; returns the value
    holding the result."""
    kind = op.attrs["kind"]
    if lo <= 0:
        raise PassError(f"{kind} of values that reach {lo:.3g} on the calibration data; it needs positive "
                        "values")
    lo, hi = lo / (1 + margin), hi * (1 + margin)  # widened by ratios: the interval stays positive
    f = activation_function(op)
    # the samples and a geometric grid: a subsample may miss the interval's ends, where the first
    # guess is worst and Newton's steps need it most
    grid = np.geomspace(lo, hi, 512)
    xs = np.concatenate([np.clip(np.asarray(sample if sample is not None else [], dtype=np.float64), lo, hi), grid])
    grid_t, t = ((2 * v - lo - hi) / (hi - lo) for v in (grid, xs))
    best = None
    for degree in NEWTON_DEGREES:
        # least squares of the relative error (Newton's steps square it), on a geometric grid
        coefficients = np.polynomial.chebyshev.chebfit(grid_t, f(grid), degree, w=1.0 / np.abs(f(grid)))
        guess = np.polynomial.chebyshev.chebval(t, coefficients)
        for steps in range(MAX_NEWTON_STEPS + 1):
            error = float(np.max(np.abs(_newton_values(kind, xs, guess, steps) / f(xs) - 1)))
            depth = math.ceil(math.log2(degree)) + 2 * steps
            if error <= target:
                if best is None or depth < best[0]:
                    best = (depth, degree, coefficients, steps, error)
                break
    if best is None:
        raise PassError(f"{kind} on [{lo:.3g}, {hi:.3g}] (calibrated) cannot be approximated within "
                        f"{target:.0%}: the interval spans too many orders of magnitude")
    depth, degree, coefficients, steps, error = best
    x = op.operands[0]
    op.name = "tensor.poly"
    op.attrs = {"coefficients": [float(c) for c in coefficients], "interval": [lo, hi], "kind": kind}
    y = op.result
    if steps:
        two, three_halves, half = ((_scalar(graph, 2.0, "newton.two"), None, None) if kind == "reciprocal" else
                                   (None, _scalar(graph, 1.5, "newton.three_halves"), _scalar(graph, 0.5, "newton.half")))
    for _ in range(steps):
        square = _emit(graph, "tensor.mul", [y, y], y)
        if kind == "reciprocal":  # 2y - x y^2
            correction = _emit(graph, "tensor.mul", [x, square], y)
            y = _emit(graph, "tensor.sub", [_emit(graph, "tensor.mul", [y, two], y), correction], y)
        else:  # 1.5y - 0.5 (y y)(x y)
            cube = _emit(graph, "tensor.mul", [square, _emit(graph, "tensor.mul", [x, y], y)], y)
            y = _emit(graph, "tensor.sub", [_emit(graph, "tensor.mul", [y, three_halves], y),
                                            _emit(graph, "tensor.mul", [cube, half], y)], y)
    report.append({"kind": kind, "interval": [lo, hi], "degree": degree, "depth": depth,
                   "newton_steps": steps, "max_error": error * float(np.max(np.abs(f(xs)))),
                   "_source": op.result, "_output": y})
    return y


def _exp_by_squaring(lo: float, hi: float, target: float, max_degree: int):
    """exp on [lo, hi] as (exp(z / 2^k))^(2^k): a polynomial of exp(z / 2^k) on an interval of
    width at most 2 (where a low degree is accurate relative to the value), squared k times (each
    squaring doubles the relative error). Returns (k, degree, coefficients, max relative error),
    the degree the smallest within ``target`` / 4 after the squarings."""
    squarings = max(0, math.ceil(math.log2(max(hi - lo, 1e-9) / 2)))
    scale = 2.0 ** squarings
    grid = np.linspace(lo, hi, GRID)
    t = (2 * grid - lo - hi) / (hi - lo)
    for degree in range(2, max(max_degree, 2) + 1):
        coefficients = np.polynomial.chebyshev.chebinterpolate(
            lambda u: np.exp((lo + (u + 1) * (hi - lo) / 2) / scale), degree)
        error = float(np.max(np.abs(np.polynomial.chebyshev.chebval(t, coefficients) ** scale / np.exp(grid) - 1)))
        if error <= target / 4:
            break
    return squarings, degree, [float(c) for c in coefficients], error


def _softmax(graph: Graph, op: Op, intervals: dict, samples: dict, target: float, margin: float,
             max_degree: int, report: list) -> Value:
    """Softmax inside the network: z = x minus its row mean (the usual subtraction of the row's
    maximum, which CKKS cannot compute, replaced by a linear one: softmax is the same for any
    shift), exp(z) on z's calibrated interval (``_exp_by_squaring``), the row sums (at least the row
    length, since the mean of z is 0), their reciprocal (``_newton`` on the calibrated range of
    the sums) and the product. ``op`` (appended last) becomes the row mean; returns the product."""
    x = op.operands[0]
    axis = op.attrs["axis"]
    old = op.result
    z_sample, sums = samples.get(old, (None, None))
    n = x.type.shape[axis]
    if z_sample is None:  # no calibration samples: the input's interval bounds the deviation
        lo, hi = intervals.get(x, (-1.0, 1.0))
        z_sample, sums = np.array([lo - hi, hi - lo]), np.array([float(n), n * math.exp(hi - lo)])
    lo, hi = float(np.min(z_sample)), float(np.max(z_sample))
    width = max(hi - lo, 1e-6)
    lo, hi = lo - margin * width, hi + margin * width
    squarings, degree, coefficients, error = _exp_by_squaring(lo, hi, target, max_degree)
    exp_depth = (math.ceil(math.log2(degree)) if degree > 1 else 0) + squarings
    summary = {"kind": "softmax", "interval": [lo, hi], "degree": degree, "squarings": squarings, "_source": op.result}
    report.append(summary)
    row = tuple(1 if i == axis else k for i, k in enumerate(x.type.shape))
    op.name, op.attrs = "tensor.reduce", {"kind": "mean", "axes": [axis], "keepdims": True}
    op.results[0].type = TensorType(row, True)
    z = _emit(graph, "tensor.sub", [x, op.result], x)
    e = graph.append("tensor.poly", [z], [x.type], {"coefficients": coefficients, "interval": [lo, hi],
                                                     "kind": "exp"}).result
    for _ in range(squarings):
        e = _emit(graph, "tensor.mul", [e, e], x)
    total = graph.append("tensor.reduce", [e], [TensorType(row, True)],
                         {"kind": "sum", "axes": [axis], "keepdims": True}).result
    reciprocal = graph.append("tensor.activation", [total], [total.type], {"kind": "reciprocal"})
    r = _newton(graph, reciprocal, float(np.min(sums)), float(np.max(sums)), sums, target, margin, report)
    part = report[-1]
    part["kind"] = "reciprocal (softmax)"
    del part["_source"], part["_output"]  # no value of the exact network to compare with
    y = _emit(graph, "tensor.mul", [e, r], x)
    summary.update(depth=exp_depth + part["depth"] + 1, newton_steps=part["newton_steps"], _output=y)
    return y
