"""Between user arrays and a program's runs.

A program is compiled for one input of the model's declared shape (batch dimension b, 1 when
the batch was symbolic). Users pass arrays of shape (B, *rest) with B any multiple of b; they run
as R = B / b independent runs, stacked along a leading run axis, and outputs are unstacked the
same way.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .ir import Graph


def input_specs(graph: Graph) -> list[tuple[str, tuple[int, ...]]]:
    """(name, tensor shape) of each input; a slots-layout input states its shape (its type is the
    shape of its ciphertext tensor)."""
    return [(op.attrs["name"], tuple(op.attrs["shape"]) if op.attrs.get("layout") else op.result.type.shape)
            for op in graph.inputs()]


def output_specs(graph: Graph) -> list[tuple[str, tuple[int, ...]]]:
    return [(op.attrs["name"], op.operands[0].type.shape) for op in graph.outputs()]


def stack_inputs(graph: Graph, arrays: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Check user arrays against the program's inputs; return them as (R, *shape) and R."""
    specs = input_specs(graph)
    names = [n for n, _ in specs]
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(unknown)}; the model's inputs are "
                         f"{', '.join(names)}")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"missing input(s) {', '.join(missing)}; give each as NAME=FILE.npy")
    stacked, runs = [], None
    for name, shape in specs:
        x = np.asarray(arrays[name])
        if x.dtype.kind not in "fiu":
            raise InputError(f"input {name!r} has dtype {x.dtype}; expected a float array")
        want = "x".join(["B"] + [str(d) for d in shape[1:]]) if shape else "scalar"
        if len(shape) == 0:
            raise InputError(f"input {name!r} is a scalar; hecc needs a batch dimension")
        if x.ndim != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:]):
            raise InputError(f"input {name!r} has shape {'x'.join(map(str, x.shape))}; expected "
                             f"{want} (B inputs in a leading batch dimension)")
        if x.shape[0] == 0 or x.shape[0] % shape[0]:
            raise InputError(f"input {name!r} has a batch of {x.shape[0]}; the model was exported "
                             f"for batches of {shape[0]}, so give a positive multiple of {shape[0]}")
        if not np.all(np.isfinite(x)):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise InputError(f"input {name!r} contains {bad} NaN or infinite value(s)")
        r = x.shape[0] // shape[0]
        if runs is not None and r != runs:
            raise InputError("inputs have different batch sizes")
        runs = r
        stacked.append(x.astype(np.float64).reshape((r,) + tuple(shape)))
    return stacked, runs or 1


def unstack_outputs(graph: Graph, results: list[np.ndarray]) -> dict[str, np.ndarray]:
    """(R, *shape) per output -> (R * shape[0], *shape[1:]) by output name; a scalar output is a
    scalar for one run, as the model declares it, and (R,) for R runs."""
    out = {}
    for (name, shape), y in zip(output_specs(graph), results):
        runs = y.shape[0]
        if shape:
            out[name] = y.reshape((runs * shape[0],) + tuple(shape[1:]))
        else:
            out[name] = y.reshape(runs if runs > 1 else ())
    return out
