"""The Python API: ``hecc.compile`` and ``Program``.

    prog = hecc.compile("model.onnx")
    y = prog.run(x, backend="reference")     # dict: output name -> array
    prog.save("model.hecc"); prog = hecc.load("model.hecc")
"""
from __future__ import annotations

import os
from typing import TextIO

import numpy as np

from . import artifact
from .errors import InputError, UserError
from .ir import Graph, print_graph
from .pipeline import PipelineResult, run_passes
from .runtime import input_specs, output_specs, stack_inputs, unstack_outputs


class Program:
    """A compiled model: its IR at every stage and the constants; runs on a chosen backend."""

    def __init__(self, art: artifact.Artifact, timings: PipelineResult | None = None):
        self.artifact = art
        self.timings = timings.timings if timings else []

    @property
    def graph(self) -> Graph:
        return self.artifact.graph()

    @property
    def stages(self) -> list[str]:
        return list(self.artifact.stages)

    @property
    def inputs(self) -> list[tuple[str, tuple[int, ...]]]:
        return input_specs(self.graph)

    @property
    def outputs(self) -> list[tuple[str, tuple[int, ...]]]:
        return output_specs(self.graph)

    def ir(self, stage: str = "final") -> str:
        """The IR text of ``stage`` ('final' is the last stage)."""
        if stage == "final":
            stage = self.artifact.final_stage
        if stage not in self.artifact.stages:
            raise UserError(f"this program has no {stage!r} stage; it has {', '.join(self.stages)} "
                            "(the CKKS stages come with the CKKS lowering)")
        return self.artifact.stages[stage]

    def run(self, inputs, backend: str = "reference") -> dict[str, np.ndarray]:
        """Run on plaintext ``inputs`` (an array for a one-input model, or a dict by input name),
        each with a leading batch dimension; returns every output by name."""
        if not isinstance(inputs, dict):
            names = [n for n, _ in self.inputs]
            if len(names) != 1:
                raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}); pass a dict")
            inputs = {names[0]: inputs}
        stacked, _ = stack_inputs(self.graph, inputs)
        if backend == "reference":
            from .backends.reference import evaluate
            results = evaluate(self.graph, stacked)
        elif backend in ("sim", "tenseal"):
            raise UserError(f"the {backend} backend needs the CKKS lowering, which this version of "
                            "hecc does not have yet; use --backend reference")
        else:
            raise UserError(f"unknown backend {backend!r}; choose reference, sim or tenseal")
        return unstack_outputs(self.graph, results)

    def save(self, path: str) -> None:
        artifact.save(self.artifact, os.fspath(path))


def compile(model, *, print_after_all: TextIO | None = None, progress=None) -> Program:
    """Compile an ONNX model (path, bytes or onnx.ModelProto) into a ``Program``."""
    from .frontends.onnx import import_model
    from .passes import TENSOR_PIPELINE
    graph = import_model(model)
    result = run_passes(graph, TENSOR_PIPELINE, print_after_all=print_after_all, progress=progress)
    stages = {"tensor": print_graph(result.graph)}
    return Program(artifact.build(stages, result.graph), result)


def load(path) -> Program:
    """Load a ``.hecc`` artifact, checking its integrity."""
    return Program(artifact.load(os.fspath(path)))
