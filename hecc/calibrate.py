"""Value ranges from calibration inputs: the interval each tensor's values fall in, which activation
approximation fits its polynomials on and parameter selection sizes the modulus by."""
from __future__ import annotations

import warnings

import numpy as np

from .errors import HeccWarning, InputError
from .ir import Graph, TensorType, Value
from .runtime import stack_inputs

RANDOM_INPUTS = 64


def random_inputs(graph: Graph) -> dict[str, np.ndarray]:
    """Stand-in calibration data when the user gives none (uniform in [-1, 1]), with a warning."""
    for op in graph.inputs():
        if not op.result.type.shape:
            raise InputError(f"input {op.attrs['name']!r} is a scalar; hecc needs a leading batch "
                             "dimension")
    warnings.warn("no calibration data; value ranges are estimated from random inputs in [-1, 1]. "
                  "Pass --calibration X.npy (representative inputs) so the encryption parameters "
                  "fit the values your model really sees", HeccWarning, stacklevel=3)
    rng = np.random.default_rng(0)
    return {op.attrs["name"]: rng.uniform(-1, 1, (RANDOM_INPUTS * op.result.type.shape[0],)
                                          + op.result.type.shape[1:]) for op in graph.inputs()}


def calibration_trace(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[Value, np.ndarray]:
    """Every value of ``graph`` on the calibration ``inputs`` (by input name), computed once for
    the intervals, the activation samples and the approximation report."""
    from .backends.reference import evaluate
    stacked, _ = stack_inputs(graph, inputs)
    trace: dict[Value, np.ndarray] = {}
    evaluate(graph, stacked, trace)
    return trace


def value_intervals(graph: Graph, inputs: dict[str, np.ndarray], trace: dict | None = None) -> dict[Value, tuple[float, float]]:
    """(min, max) of every float tensor value of ``graph`` over ``inputs`` (by input name)."""
    trace = calibration_trace(graph, inputs) if trace is None else trace
    return {v: (float(a.min()), float(a.max())) if a.size else (0.0, 0.0) for v, a in trace.items()
            if isinstance(v.type, TensorType) and a.dtype.kind == "f"}


def activation_samples(graph: Graph, inputs, count: int = 20000, seed: int = 0,
                       trace: dict | None = None) -> dict[Value, np.ndarray]:
    """Up to ``count`` calibration values of each activation's input; by the result of a softmax
    inside the network, a pair: its input minus the row mean, and the row sums of exp of that."""
    trace = calibration_trace(graph, inputs) if trace is None else trace
    rng = np.random.default_rng(seed)
    out = {}
    for op in graph.ops:
        if op.name == "tensor.activation":
            values = trace[op.operands[0]].reshape(-1)
            out[op.operands[0]] = values if values.size <= count else rng.choice(values, count, replace=False)
        if op.name == "tensor.softmax_inside":
            # by its result: x minus its row mean, then the row sums of exp of that (each with its
            # extremes kept, which the approximation's intervals come from)
            axis = op.attrs["axis"] + 1
            x = trace[op.operands[0]]
            centered = x - x.mean(axis=axis, keepdims=True)
            sums = np.exp(np.minimum(centered, 700.0)).sum(axis=axis)
            out[op.result] = tuple(_with_extremes(v.reshape(-1), count, rng) for v in (centered, sums))
    return out


def _with_extremes(values: np.ndarray, count: int, rng) -> np.ndarray:
    if values.size <= count:
        return values
    return np.concatenate([rng.choice(values, count - 2, replace=False), [values.min(), values.max()]])


def max_abs(intervals: dict[Value, tuple[float, float]]) -> dict[Value, float]:
    return {v: max(abs(lo), abs(hi)) for v, (lo, hi) in intervals.items()}
