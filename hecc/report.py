"""The compile report: what the compiler did to the model and what running it will cost.

Predicted times come from a cost model: seconds per CKKS primitive at each level of the program's
own chain, measured with SEAL on this machine (``hecc calibrate`` stores them; the report measures
them when none are stored), multiplied by how often the program performs each primitive at each
level.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .ir import CipherType

COSTS_PATH = os.environ.get("HECC_COSTS", os.path.join(os.path.expanduser("~"), ".cache", "hecc", "costs.json"))
WORKER_SPEEDUP = 1.7  # measured: one batch split over two workers runs 1.7x faster (CryptoNets)


def _key(params) -> str:
    return f"{params['poly_modulus_degree']}:{','.join(map(str, params['coeff_modulus_bits']))}"


def _stored_costs() -> dict:
    try:
        with open(COSTS_PATH) as f:
            stored = json.load(f)
        return stored if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        return {}


def primitive_costs(params, measure: bool = True, refresh: bool = False) -> dict | None:
    """Stored costs for these parameters; else (or with ``refresh``) measured now and stored."""
    stored = _stored_costs()
    if not refresh and (_key(params) in stored or not measure):
        return stored.get(_key(params))
    from .backends.tenseal import measure_primitives
    costs = measure_primitives(params["poly_modulus_degree"], params["coeff_modulus_bits"])
    stored[_key(params)] = costs
    try:
        os.makedirs(os.path.dirname(COSTS_PATH), exist_ok=True)
        with open(COSTS_PATH, "w") as f:
            json.dump(stored, f)
    except OSError:
        pass  # a read-only home: the report still has this run's measurement
    return costs


def level_counts(graph) -> dict[str, dict[int, int]]:
    """How often the program performs each primitive, by the level it runs at (one batch)."""
    from .backends.common import quantized
    counts: dict[str, dict[int, int]] = {}

    def add(name, level, n):
        counts.setdefault(name, {})
        counts[name][level] = counts[name].get(level, 0) + int(n)
    for op in graph.ops:
        if op.name == "ckks.linear":
            level = op.operands[0].type.level
            nnz = int(np.count_nonzero(quantized(graph.constants[op.attrs["matrix"]], op.attrs["weight_scale"])))
            add("multiply_plain", level, nnz)
            add("add", level, nnz)
            if op.attrs.get("rescale_terms"):
                add("rescale", level, nnz)
        elif op.name in ("ckks.square", "ckks.mul"):
            add("square", op.operands[0].type.level, op.result.type.count)
        elif op.name in ("ckks.add", "ckks.sub"):
            add("add", op.operands[0].type.level, op.result.type.count)
        elif op.name in ("ckks.relinearize", "ckks.rescale", "ckks.modswitch"):
            add(op.name.split(".")[1], op.operands[0].type.level, op.result.type.count)
        elif op.name == "hecc.input" and isinstance(op.result.type, CipherType):
            add("encrypt", 0, op.result.type.count)
        elif op.name == "ckks.decrypt":
            add("decrypt", op.operands[0].type.level, op.operands[0].type.count)
    return counts


def predict_seconds(graph, costs) -> dict[str, float]:
    counts = level_counts(graph)
    total = {"encrypt": 0.0, "eval": 0.0, "decrypt": 0.0}
    for name, by_level in counts.items():
        phase = name if name in ("encrypt", "decrypt") else "eval"
        for level, n in by_level.items():
            total[phase] += n * costs[name][min(level, len(costs[name]) - 1)]
    return total


def ciphertext_bytes(graph) -> tuple[int, int]:
    """Bytes of the ciphertexts sent to and returned by the server, for one batch."""
    n = next(op.attrs["poly_modulus_degree"] for op in graph.ops if op.name == "ckks.params")
    chain = next(op.attrs["coeff_modulus_bits"] for op in graph.ops if op.name == "ckks.params")
    data = len(chain) - 1

    def size(t):
        return t.count * 2 * n * (data - t.level) * 8
    sent = sum(size(op.result.type) for op in graph.ops if op.name == "hecc.input")
    returned = sum(size(op.operands[0].type) for op in graph.ops if op.name == "ckks.decrypt")
    return sent, returned


def eval_key_bytes(params) -> int:
    """Relinearization keys: one key-switching key of (data primes) x 2 polynomials over the
    full modulus (data primes + special)."""
    n, chain = params["poly_modulus_degree"], params["coeff_modulus_bits"]
    data = len(chain) - 1
    return data * 2 * n * len(chain) * 8


def render(program, measure: bool = True) -> str:
    lines = []
    params = program.parameters
    lines.append("passes".ljust(28) + "seconds")
    for t in program.timings:
        lines.append(f"  {t.name:<26}{t.seconds:.3f}")
    lines.append("")
    if params is None:
        why = program.artifact.manifest.get("not_encrypted_because", "")
        lines.append(f"not compiled for encryption: {why}")
        return "\n".join(lines) + "\n"
    graph = program.graph
    n, chain = params["poly_modulus_degree"], params["coeff_modulus_bits"]
    depth = len(chain) - 2
    lines.append(f"parameters: CKKS N={n}, coefficient modulus {chain} ({sum(chain)} bits; the "
                 f"HomomorphicEncryption.org table allows {_table(n)} at 128-bit security), "
                 f"{n // 2} inputs per batch")
    lines.append(f"multiplicative depth: {depth} levels")
    counts = level_counts(graph)
    lines.append("operations per batch: " + ", ".join(
        f"{k} {sum(v.values())}" for k, v in sorted(counts.items())))
    lines.append("rotations: 0 (batch layout), Galois keys: none")
    sent, returned = ciphertext_bytes(graph)
    lines.append(f"evaluation keys: {eval_key_bytes(params) / 1e6:.1f} MB (relinearization); ciphertexts "
                 f"per batch: {sent / 1e6:.1f} MB in, {returned / 1e6:.2f} MB out")
    for a in program.artifact.manifest.get("approximations", []):
        err = a.get("max_error_on_calibration")
        lines.append(f"activation {a['kind']}: degree {a['degree']} on [{a['interval'][0]:.4g}, "
                     f"{a['interval'][1]:.4g}], depth {a['depth']}"
                     + (f", max error {err:.3g} on the calibration data" if err is not None else ""))
    precision = program.artifact.manifest.get("predicted_precision")
    if precision is not None:
        lines.append(f"predicted precision: max CKKS error {precision:.2g} x the largest output "
                     "(simulator noise model on the calibration data)")
    costs = primitive_costs(params, measure)
    if costs is None:
        lines.append("predicted time: run `hecc calibrate` to measure this machine's primitives")
    else:
        t = predict_seconds(graph, costs)
        two = t["eval"] / WORKER_SPEEDUP
        lines.append(f"predicted time per batch on this machine: encrypt {t['encrypt']:.2f} s, server "
                     f"evaluation {t['eval']:.2f} s on one core ({two:.2f} s on two), decrypt "
                     f"{t['decrypt']:.3f} s")
        lines.append(f"predicted throughput: {n // 2 / (t['eval'] / 2) * 3600:,.0f} predictions/hour "
                     f"with full batches on two cores; latency for one input {two:.2f} s")
    return "\n".join(lines) + "\n"


def _table(n):
    from .params import MAX_MODULUS_BITS_128
    return MAX_MODULUS_BITS_128.get(n, "?")
