"""The pass driver: runs named passes in order and verifies the IR they produce.

The IR is verified once after the last pass, and after every pass when ``verify_each`` is set
(the test suite sets it through HECC_VERIFY_EACH=1, and printing after every pass implies it): as
in LLVM and MLIR, verifying after each pass is a debugging aid that costs a compile of LeNet-5
several seconds. Optionally prints the IR after every pass (``print_after_all``) and records
each pass's time.
"""
from __future__ import annotations

import os
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
               progress: Callable[[str], None] | None = None, verify_each: bool | None = None) -> PipelineResult:
    result = PipelineResult(graph)
    names = parse_pipeline(names)
    if verify_each is None:
        verify_each = print_after_all is not None or os.environ.get("HECC_VERIFY_EACH") == "1"
    for index, name in enumerate(names):
        start = time.perf_counter()
        result.graph = PASSES[name].run(result.graph, dict(options or {}))
        result.timings.append(PassTiming(name, time.perf_counter() - start))
        if verify_each or index == len(names) - 1:
            try:
                verify(result.graph, check_constants=check_constants)
            except VerifyError as exc:
                what = f"pass {name}" if verify_each else f"one of the passes {', '.join(names)}"
                raise AssertionError(f"{what} produced invalid IR: {exc}") from None
        if print_after_all is not None:
            print_after_all.write(f"// ----- IR after {name} -----\n{print_graph(result.graph)}")
        if progress:
            progress(name)
    return result


def stderr_progress(name: str) -> None:
    sys.stderr.write(f"hecc: ran {name}\n")
