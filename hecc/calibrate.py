"""Value ranges from calibration inputs: the largest magnitude each tensor takes, which parameter
selection needs to keep value x scale inside the modulus."""
from __future__ import annotations

import warnings

import numpy as np

from .errors import HeccWarning
from .ir import Graph, TensorType, Value
from .runtime import stack_inputs

RANDOM_INPUTS = 64


def value_ranges(graph: Graph, inputs: dict[str, np.ndarray] | None) -> dict[Value, float]:
    """max |value| of every tensor value of ``graph`` over ``inputs`` (by input name). Without
    inputs, uses random inputs uniform in [-1, 1] and warns that the ranges are guesses."""
    from .backends.reference import evaluate
    if inputs is None:
        rng = np.random.default_rng(0)
        inputs = {op.attrs["name"]: rng.uniform(-1, 1, (RANDOM_INPUTS * op.result.type.shape[0],)
                                                + op.result.type.shape[1:]) for op in graph.inputs()}
        warnings.warn("no calibration data; value ranges are estimated from random inputs in [-1, 1]. "
                      "Pass --calibration X.npy (representative inputs) so the encryption parameters "
                      "fit the values your model really sees", HeccWarning, stacklevel=3)
    stacked, _ = stack_inputs(graph, inputs)
    trace: dict[Value, np.ndarray] = {}
    evaluate(graph, stacked, trace)
    return {v: float(np.max(np.abs(a))) if a.size else 0.0 for v, a in trace.items()
            if isinstance(v.type, TensorType) and a.dtype.kind == "f"}
