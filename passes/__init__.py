"""The pass registry: one module per pass, registered under its kebab-case name, which equals
the module's file name with dashes (a test checks it). Each module has ``NAME`` and
``run(graph, options) -> graph`` and states what it assumes and guarantees in its docstring."""
from __future__ import annotations

from . import canonicalize, eliminate_dead_code

PASSES = {module.NAME: module for module in (canonicalize, eliminate_dead_code)}

# The passes `hecc compile` runs on tensor IR, in order.
TENSOR_PIPELINE = ["canonicalize", "eliminate-dead-code"]
