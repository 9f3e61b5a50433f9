"""What a loaded artifact may say: the manifest's schema and the checks a CKKS program from
outside must pass before keys are made for it or it runs.

An artifact can come from someone else (a client receives it from the server), and its hashes
only prove it was not damaged, not that its author meant well. ``manifest_problem`` checks every
manifest field's type and range (and refuses fields hecc does not write); ``check_program`` runs
the validate pass on a final CKKS program and checks its parameters: a power-of-two ring, prime
sizes SEAL can make, and rotation keys that are exactly the steps the program rotates by, each
in range (so an edited artifact cannot make keygen produce hundreds of unused keys).
"""
from __future__ import annotations

import math
import re

import numpy as np

from .errors import ParameterError
from .ir import Graph

STAGE_ORDER = ("tensor", "ckks", "final", "ckks-slots", "final-slots", "ckks-packed", "final-packed")
FINAL_STAGES = {"final": "batch", "final-slots": "slots", "final-packed": "packed"}
HEX = re.compile(r"[0-9a-f]{64}\Z")


def _is_int(x, lo=0, hi=1 << 40) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _interval(x) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(map(_is_num, x)) and x[0] <= x[1]


def _specs(x) -> bool:
    return isinstance(x, list) and all(
        isinstance(s, dict) and set(s) == {"name", "shape"} and isinstance(s["name"], str)
        and isinstance(s["shape"], list) and all(_is_int(d) for d in s["shape"]) for s in x)


def _str_dict(x, check) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and check(v) for k, v in x.items())


def _approximation(a) -> bool:
    return (isinstance(a, dict) and isinstance(a.get("kind"), str) and _interval(a.get("interval"))
            and _is_int(a.get("degree"), 0, 1 << 10) and _is_int(a.get("depth"), 0, 64)
            and set(a) <= {"kind", "interval", "degree", "depth", "max_error_on_calibration", "newton_steps",
                           "squarings"}
            and all(_is_int(a[k], 0, 64) for k in ("newton_steps", "squarings") if k in a)
            and ("max_error_on_calibration" not in a or _is_num(a["max_error_on_calibration"])))


FIELDS = {
    "format": lambda x: isinstance(x, str),
    "format_version": _is_int,
    "hecc_version": lambda x: isinstance(x, str),
    "inputs": _specs,
    "outputs": _specs,
    "stages": lambda x: isinstance(x, list) and bool(x) and all(isinstance(s, str) for s in x)
    and len(set(x)) == len(x) and x[0] == "tensor" and all(s in STAGE_ORDER for s in x),
    "members": lambda x: _str_dict(x, lambda v: isinstance(v, str) and bool(HEX.match(v))),
    "layouts": lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x)
    and len(set(x)) == len(x) and all(v in ("batch", "slots", "packed") for v in x),
    "options": lambda x: _str_dict(x, lambda v: v is None or isinstance(v, str) or _is_num(v)),
    "input_ranges": lambda x: _str_dict(x, _interval),
    "approximations": lambda x: isinstance(x, list) and all(map(_approximation, x)),
    "predicted_precision": lambda x: _str_dict(x, lambda v: v is None or _is_num(v)),
    "rotation_keys": lambda x: _str_dict(x, lambda v: _is_int(v) or (
        isinstance(v, list) and all(_is_int(s) for s in v))),
    "not_encrypted_because": lambda x: isinstance(x, str),
    "layout_unavailable": lambda x: _str_dict(x, lambda v: isinstance(v, str)),
    "scales": lambda x: _str_dict(x, lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(b, 0, 60) for b in v)),
    "weight_aliases": lambda x: _str_dict(x, lambda v: isinstance(v, str)),
    "pass_seconds": lambda x: isinstance(x, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _is_num(p[1]) for p in x),
}
REQUIRED = ("format", "format_version", "hecc_version", "inputs", "outputs", "stages", "members")


def manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a manifest (None: nothing)."""
    unknown = sorted(set(manifest) - set(FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    bad = [k for k, check in FIELDS.items() if k in manifest and not check(manifest[k])]
    if bad:
        return f"invalid field(s) {', '.join(bad)}"
    stages = manifest["stages"]
    if [s for s in STAGE_ORDER if s in stages] != stages:
        return f"stages {stages} are not in compile order"
    for layout in manifest.get("layouts", []):
        if not any(FINAL_STAGES[s] == layout for s in stages if s in FINAL_STAGES):
            return f"layout {layout} has no program among the stages"
    wanted = {f"ir/{s}.hir" for s in stages} | {"weights.npz"}
    if set(manifest["members"]) != wanted:
        return "members do not match the stages"
    return None


MIN_DEGREE, MAX_DEGREE = 1024, 32768


def check_program(graph: Graph) -> None:
    """A final CKKS program from outside: the validate pass, sane parameters and rotation keys
    that are exactly the program's rotation steps (ParameterError otherwise)."""
    from .passes import validate
    params = [op for op in graph.ops if op.name == "ckks.params"]
    if len(params) != 1:
        raise ParameterError("a CKKS program needs exactly one ckks.params op")
    attrs = params[0].attrs
    n, chain = attrs["poly_modulus_degree"], attrs["coeff_modulus_bits"]
    if not (MIN_DEGREE <= n <= MAX_DEGREE and n & (n - 1) == 0):
        raise ParameterError(f"ring degree N={n} is not a power of two in [{MIN_DEGREE}, {MAX_DEGREE}]")
    if not 1 <= len(chain) <= 64 or not all(_is_int(b, 10, 60) for b in chain):
        raise ParameterError(f"coefficient modulus {chain}: 1 to 64 primes of 10 to 60 bits each")
    if len(chain) == 1 and (any(op.name == "ckks.relinearize" for op in graph.ops) or attrs.get("galois_steps")):
        raise ParameterError(f"coefficient modulus {chain} has no special prime, which a program that "
                             "rotates or relinearizes needs")
    steps = attrs.get("galois_steps", [])
    used = {op.attrs["step"] for op in graph.ops if op.name == "ckks.rotate"}
    if len(set(steps)) != len(steps) or not all(_is_int(s, 1, n // 2 - 1) for s in steps):
        raise ParameterError(f"rotation steps must be distinct and between 1 and {n // 2 - 1}")
    if steps and set(steps) != used:
        raise ParameterError(f"the program lists {len(steps)} rotation keys but rotates by "
                             f"{len(used)} distinct steps; keys must be exactly the steps it uses")
    if used and not steps:
        raise ParameterError("the program rotates but lists no rotation keys")
    for op in graph.ops:
        if op.name == "hecc.input":
            per_ct = attrs.get("inputs_per_ciphertext", 1)
            if not _is_int(per_ct, 1, n // 2) or (n // 2) % per_ct:
                raise ParameterError(f"inputs_per_ciphertext {per_ct!r} must divide the {n // 2} slots")
            _check_input(graph, op, n // 2 // per_ct)
        if op.name in ("ckks.mul_plain", "ckks.add_plain") and op.attrs.get("row", 0) < 0:
            raise ParameterError(f"{op.name} reads row {op.attrs['row']} of its plaintext table")
    validate.run(graph)


def _check_input(graph: Graph, op, slots: int) -> None:
    """A slots-layout input: its declared tensor shape, and its layout table of slot sources
    (-1 or an element index), one row per ciphertext of ``slots`` entries."""
    shape = op.attrs.get("shape")
    if shape is None and not op.attrs.get("layout"):
        return
    if not isinstance(shape, list) or not shape or not all(_is_int(d, 1, 1 << 31) for d in shape):
        raise ParameterError(f"input {op.attrs.get('name')!r} declares shape {shape!r}; its dimensions must be positive")
    table = graph.constants.get(op.attrs.get("layout"))
    size = math.prod(shape)
    if (table is None or table.dtype.kind != "i" or table.shape != (op.result.type.count, slots)
            or (table.size and (int(table.min()) < -1 or int(table.max()) >= size))):
        raise ParameterError(f"input {op.attrs.get('name')!r}: its layout {op.attrs.get('layout')!r} must be an "
                             f"integer table of {op.result.type.count} x {slots} entries from -1 to {size - 1}")


def check_tensor_stage(graph: Graph) -> None:
    """The tensor stage runs on the reference backend: tensor ops only, finite weights."""
    for op in graph.ops:
        if not op.name.startswith(("tensor.", "hecc.")):
            raise ParameterError(f"the tensor stage holds {op.name}, which is not a tensor op")
    for name, array in graph.constants.items():
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ParameterError(f"weight {name!r} holds NaN or infinite values")
