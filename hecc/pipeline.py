"""The pass driver: runs named passes in order, verifying the IR after each one.

Optionally prints the IR after every pass (``print_after_all``) and records each pass's time.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from .errors import PassError, VerifyError
from .ir import Graph, print_graph, verify
from .passes import PASSES


@dataclass
class PassTiming:
    name: str
    seconds: float


@dataclass
class PipelineResult:
    graph: Graph
    timings: list[PassTiming] = field(default_factory=list)


def parse_pipeline(spec: str | list[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> checked list of pass names."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise PassError(f"unknown pass(es) {', '.join(unknown)}; available: {', '.join(sorted(PASSES))}")
    return names


def run_passes(graph: Graph, names: list[str], options: dict | None = None,
               print_after_all: TextIO | None = None, check_constants: bool = True,
               progress: Callable[[str], None] | None = None) -> PipelineResult:
    result = PipelineResult(graph)
    for name in parse_pipeline(names):
        start = time.perf_counter()
        result.graph = PASSES[name].run(result.graph, dict(options or {}))
        result.timings.append(PassTiming(name, time.perf_counter() - start))
        try:
            verify(result.graph, check_constants=check_constants)
        except VerifyError as exc:
            raise AssertionError(f"pass {name} produced invalid IR: {exc}") from None
        if print_after_all is not None:
            print_after_all.write(f"// ----- IR after {name} -----\n{print_graph(result.graph)}")
        if progress:
            progress(name)
    return result


def stderr_progress(name: str) -> None:
    sys.stderr.write(f"hecc: ran {name}\n")
