"""The pass registry: one module per pass, registered under its kebab-case name, which equals
the module's file name with dashes (a test checks it). Each module has ``NAME`` and
``run(graph, options) -> graph`` and states what it assumes and guarantees in its docstring."""
from __future__ import annotations

from . import (align_levels, approximate_activations, canonicalize, eliminate_dead_code,
               insert_relinearize, insert_rescale, lower_to_ckks, minimize_rotation_keys, pack_inputs,
               schedule_for_memory, select_parameters, validate)

PASSES = {module.NAME: module for module in (
    canonicalize, eliminate_dead_code, approximate_activations, lower_to_ckks, insert_rescale,
    insert_relinearize, align_levels, select_parameters, pack_inputs, minimize_rotation_keys,
    schedule_for_memory, validate)}

# The passes `hecc compile` runs on tensor IR, in order.
TENSOR_PIPELINE = ["canonicalize", "eliminate-dead-code"]
# Non-polynomial activations -> polynomials on their calibrated intervals.
APPROXIMATION_PIPELINE = ["approximate-activations"]
# The tensor -> ckks lowering (the "ckks" stage is the IR right after lower-to-ckks).
CKKS_PIPELINE = ["lower-to-ckks"]
# The passes that make the ckks program executable (the "final" stage).
FINAL_PIPELINE = ["insert-rescale", "insert-relinearize", "align-levels", "select-parameters", "pack-inputs",
                  "minimize-rotation-keys", "schedule-for-memory", "validate"]
