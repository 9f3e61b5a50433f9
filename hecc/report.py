"""The compile report: what the compiler did to the model and what running it will cost.

Predicted times come from a cost model: seconds per CKKS primitive at each level of the program's
own chain, measured with SEAL on this machine (``hecc calibrate`` stores them; the report measures
them when none are stored), multiplied by how often the program performs each primitive at each
level.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .ir import CipherType
from .params import data_primes

COSTS_PATH = os.environ.get("HECC_COSTS", os.path.join(os.path.expanduser("~"), ".cache", "hecc", "costs.json"))
WORKER_SPEEDUP = 1.7  # measured: one batch split over two workers runs 1.7x faster (CryptoNets)
WORKERS = 2
MEASURE_REPEATS = 5  # per primitive and level: a few seconds for the largest chains
PRIMITIVES = ("multiply_plain", "add", "square", "relinearize", "rescale", "modswitch", "encrypt",
              "decrypt", "rotate", "multiply_vector", "add_plain", "encode")


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
    entry = stored.get(_key(params))
    complete = isinstance(entry, dict) and all(
        isinstance(entry.get(k), list) and entry[k] and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 1e3 for t in entry[k])
        for k in PRIMITIVES)  # a damaged cache entry is measured again
    if not refresh and (complete or not measure):
        return entry if complete else None
    from .backends.tenseal import measure_primitives
    n, chain = params["poly_modulus_degree"], params["coeff_modulus_bits"]
    # said even under -q: it takes seconds, once per parameter set and machine
    sys.stderr.write(f"hecc: measuring this machine's CKKS primitives for N={n} with {len(chain)} primes "
                     f"(once; stored in {COSTS_PATH})\n")
    start = time.perf_counter()
    costs = measure_primitives(n, chain, repeats=MEASURE_REPEATS)
    sys.stderr.write(f"hecc: measured in {time.perf_counter() - start:.1f} s\n")
    stored[_key(params)] = costs
    from .errors import UserError
    from .outputs import write_bytes
    try:
        os.makedirs(os.path.dirname(COSTS_PATH), exist_ok=True)
        write_bytes(COSTS_PATH, json.dumps(stored).encode())
    except (OSError, UserError):
        pass  # a read-only home: the report still has this run's measurement
    return costs


def level_counts(graph) -> dict[str, dict[int, int]]:
    """How often the program performs each primitive, by the level it runs at (one batch)."""
    from .backends.common import LinearWeights
    counts: dict[str, dict[int, int]] = {}

    def add(name, level, n):
        counts.setdefault(name, {})
        counts[name][level] = counts[name].get(level, 0) + int(n)
    for op in graph.ops:
        if op.name == "ckks.linear":
            level = op.operands[0].type.level
            weights = LinearWeights(graph, op)
            nnz = weights.nnz
            add("multiply_plain", level, weights.products(op))
            add("add", level, nnz)
            if op.attrs.get("rescale_terms"):
                add("rescale", level, nnz)
        elif op.name in ("ckks.square", "ckks.mul"):
            add("square", op.operands[0].type.level, op.result.type.count)
        elif op.name == "ckks.matmul":  # k products and k - 1 sums per result
            k = op.operands[0].type.shape[-1]
            add("square", op.operands[0].type.level, op.result.type.count * k)
            add("add", op.operands[0].type.level, op.result.type.count * (k - 1))
        elif op.name in ("ckks.add", "ckks.sub"):
            add("add", op.operands[0].type.level, op.result.type.count)
        elif op.name in ("ckks.relinearize", "ckks.rescale", "ckks.modswitch"):
            add(op.name.split(".")[1], op.operands[0].type.level, op.result.type.count)
        elif op.name in ("ckks.rotate", "ckks.add_plain"):
            add(op.name.split(".")[1], op.operands[0].type.level, op.result.type.count)
        elif op.name == "ckks.mul_plain":
            add("multiply_vector", op.operands[0].type.level, op.result.type.count)
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


def estimate_run(graph, runs: int, costs) -> dict:
    """Predicted wall seconds for ``runs`` inputs on WORKERS cores: the batch layout runs
    ceil(runs / slots) batches (a lone batch splits its layers over the workers), the slots layout
    one ciphertext's inputs (one, or K interleaved) per worker at a time."""
    per = predict_seconds(graph, costs)
    params = next(op.attrs for op in graph.ops if op.name == "ckks.params")
    if params.get("layout") == "slots":
        rounds = -(-(-(-runs // params.get("inputs_per_ciphertext", 1))) // WORKERS)
        phases = {k: v * rounds for k, v in per.items()}
        phases["eval"] += encoding_seconds(graph, costs)  # each worker's, side by side
    else:
        count = -(-runs // (params["poly_modulus_degree"] // 2))
        rounds = -(-count // WORKERS) if count > 1 else 1
        phases = {k: v * rounds for k, v in per.items()}
        if count == 1:
            phases["eval"] = per["eval"] / WORKER_SPEEDUP
    phases["total"] = sum(phases.values())
    return phases


def encoding_seconds(graph, costs) -> float:
    """The slots layout's one-time cost per run: every worker encodes each weight vector the
    program multiplies or adds (a row of a plaintext table at a level) once, then reuses it."""
    rows = set()
    for op in graph.ops:
        if op.name in ("ckks.mul_plain", "ckks.add_plain"):
            for c in range(op.result.type.count):
                rows.add((op.attrs["plain"], op.attrs.get("row", 0) + c, op.operands[0].type.level))
    per_level = costs.get("encode", [0.0])
    return sum(per_level[min(level, len(per_level) - 1)] for _, _, level in rows)


def ciphertext_bytes(graph) -> tuple[int, int]:
    """Bytes of the ciphertexts sent to and returned by the server, for one batch."""
    n = next(op.attrs["poly_modulus_degree"] for op in graph.ops if op.name == "ckks.params")
    chain = next(op.attrs["coeff_modulus_bits"] for op in graph.ops if op.name == "ckks.params")
    data = len(data_primes(chain))

    def size(t):
        return t.count * 2 * n * (data - t.level) * 8
    sent = sum(size(op.result.type) for op in graph.ops if op.name == "hecc.input")
    returned = sum(size(op.operands[0].type) for op in graph.ops if op.name == "ckks.decrypt")
    return sent, returned


def program_seal(graph):
    """A SEAL context and key set made here for the program's parameters and evaluation keys (the
    keys themselves are generated when first exported)."""
    from .backends.common import evaluation_keys, program_params
    from .backends.tenseal import _Seal
    params = program_params(graph)
    steps, relin = evaluation_keys(graph)
    return _Seal(params.poly_modulus_degree, params.coeff_modulus_bits, relin, galois_steps=steps)


def encrypted_input_bytes(graph, s=None) -> int:
    """Bytes of one batch's (or input's) encrypted inputs as the client sends them: seeded
    ciphertexts in SEAL's compressed serialization, one encrypted with SEAL for the program's
    parameters (``s``, default ``program_seal(graph)``) and measured."""
    import tenseal.sealapi as seal

    from .backends.common import program_params
    from .backends.seal_bytes import to_bytes
    params = program_params(graph)
    s = program_seal(graph) if s is None else s
    total = 0
    for op in graph.ops:
        if op.name == "hecc.input":
            t = op.result.type
            plain = seal.Plaintext()
            s.encoder.encode([0.0] * (params.poly_modulus_degree // 2), 2.0 ** t.scale_bits, plain)
            total += t.count * len(to_bytes(s.encryptor.encrypt_symmetric(plain)))
    return total


def eval_key_bytes(graph, s=None) -> tuple[int, int]:
    """(bytes, key count) of the evaluation keys, as hecc keygen saves them (seeded): generated
    with SEAL for the program's parameters (``s``, default ``program_seal(graph)``) and measured."""
    from .backends.common import evaluation_keys
    steps, relin = evaluation_keys(graph)
    return (program_seal(graph) if s is None else s).eval_key_bytes(), len(steps) + int(relin)


def refinement_text(a: dict) -> str:
    """What follows an approximation's polynomial: squarings (exp) and Newton steps."""
    text = f", squared {a['squarings']} times" if a.get("squarings") else ""
    return text + (f", then {a['newton_steps']} Newton steps" if a.get("newton_steps") else "")


def model_weights(program) -> int | None:
    """How many weights the model has: the elements of the float constants its tensor stage uses
    (after the frontend's folding: a batch norm folded into its layer counts once)."""
    if "tensor" not in program.artifact.stages:
        return None
    graph = program.artifact.graph("tensor")
    names = {op.attrs["name"] for op in graph.ops if op.name == "tensor.constant"}
    return int(sum(np.asarray(graph.constants[n]).size for n in names
                   if n in graph.constants and np.asarray(graph.constants[n]).dtype.kind == "f"))


def render(program, measure: bool = True) -> str:
    lines = []
    lines.append("passes".ljust(28) + "seconds")
    for t in program.timings:
        lines.append(f"  {t.name:<26}{t.seconds:.3f}")
    lines.append("")
    weights = model_weights(program)
    if weights is not None:
        lines.append(f"model: {weights:,} weights (the float constants of its tensor stage)")
    if not program.layouts:
        why = program.artifact.manifest.get("not_encrypted_because", "")
        lines.append(f"not compiled for encryption: {why}")
        return "\n".join(lines) + "\n"
    for a in program.artifact.manifest.get("approximations", []):
        err = a.get("max_error_on_calibration")
        lines.append(f"activation {a['kind']}: degree {a['degree']}{refinement_text(a)} on [{a['interval'][0]:.4g}, "
                     f"{a['interval'][1]:.4g}], depth {a['depth']}"
                     + (f", max error {err:.3g} on the calibration data" if err is not None else ""))
    estimates = {}
    for layout in program.layouts:
        lines.append("")
        estimates[layout] = _render_layout(program.with_layout(layout), lines, measure)
    for layout, why in program.artifact.manifest.get("layout_unavailable", {}).items():
        lines.append(f"\nno {layout} layout: {why}")
    if len(estimates) >= 2 and all(estimates.values()):
        lines.append("")
        for runs in (1, 64, 4096):
            every = {k: v(runs) for k, v in estimates.items()}
            pick = min(every, key=every.get)
            lines.append(f"{runs} input(s): " + ", ".join(f"{k} {t:.2f} s" for k, t in every.items())
                         + f" predicted -> `hecc run --layout auto` picks {pick}")
    return "\n".join(lines) + "\n"


def _render_layout(program, lines: list[str], measure: bool):
    """The report of one layout's program; returns runs -> predicted seconds (None without costs)."""
    params = program.parameters
    graph = program.graph
    layout = params.get("layout", "batch")
    n, chain = params["poly_modulus_degree"], params["coeff_modulus_bits"]
    depth = len(data_primes(chain)) - 1
    per_ct = params.get("inputs_per_ciphertext", 1)
    unit = "input" if layout == "slots" and per_ct == 1 else "batch"
    lines.append(f"{program.layout} layout: CKKS N={n}, coefficient modulus {chain} ({sum(chain)} bits; the "
                 f"HomomorphicEncryption.org table allows {_table(n)} at 128-bit security), "
                 + (f"{n // 2} inputs per batch" if layout == "batch" else
                    "one input per ciphertext" if per_ct == 1 else f"{per_ct} inputs per ciphertext, interleaved"))
    lines.append(f"  multiplicative depth: {depth} levels")
    counts = level_counts(graph)
    lines.append(f"  operations per {unit}: " + ", ".join(
        f"{k} {sum(v.values())}" for k, v in sorted(counts.items())))
    seal = program_seal(graph)  # one key set measures the keys and the input ciphertexts
    key_bytes, key_count = eval_key_bytes(graph, seal)
    steps = params.get("galois_steps", [])
    if layout == "batch":
        lines.append("  rotations: 0, Galois keys: none")
    else:
        info = program.artifact.manifest.get("rotation_keys", {}) if program.layout == "slots" else {}
        lines.append(f"  rotations per {unit}: {sum(counts.get('rotate', {}).values())}, Galois keys: "
                     f"{len(steps)} (steps {', '.join(map(str, steps))})")
        zero = zero_block_counts(program)
        if zero is not None:
            products, rotations, dense_products, dense_rotations = zero
            lines.append(f"  zero weights skipped: {dense_products - products} products and "
                         f"{dense_rotations - rotations} rotations fewer than the same maps with no zero "
                         f"weights ({products} and {rotations} instead of {dense_products} and "
                         f"{dense_rotations})")
    _, returned = ciphertext_bytes(graph)
    sent = encrypted_input_bytes(graph, seal)
    per_unit = 1 if unit == "input" else (n // 2 if layout == "batch" else per_ct)
    # an input's values: its tensor shape (slots layout: the attribute; batch: the type's shape)
    values = per_unit * sum(int(np.prod(op.attrs.get("shape") or op.result.type.shape))
                            for op in graph.ops if op.name == "hecc.input")
    lines.append(f"  evaluation keys: {key_bytes / 1e6:.1f} MB ({key_count} keys, seeded); encrypted input: "
                 f"{_bytes(sent)} per {unit} (seeded, compressed; {sent / max(values, 1):.1f} bytes per input "
                 f"value{' when the batch is full' if per_unit > 1 else ''}), {returned / 1e6:.2f} MB out")
    from .backends.common import key_memory_bytes, predicted_peak_bytes
    live = predicted_peak_bytes(graph)
    lines.append(f"  predicted memory while one {unit} is evaluated: {live / 1e6:.0f} MB of ciphertexts and "
                 f"encoded weights (SEAL keeps each ciphertext size's peak; each worker process holds "
                 f"its own) and {key_memory_bytes(graph) / 1e6:.0f} MB of evaluation keys")
    precision = program.artifact.manifest.get("predicted_precision", {})
    precision = precision.get(program.layout) if isinstance(precision, dict) else precision
    if precision is not None:
        lines.append(f"  predicted precision: max CKKS error {precision:.2g} x the largest output "
                     "(simulator noise model on the calibration data)")
    costs = primitive_costs(params, measure)
    if costs is None:
        lines.append("  predicted time: run `hecc calibrate` to measure this machine's primitives")
        return None
    t = predict_seconds(graph, costs)
    if layout == "batch":
        two = t["eval"] / WORKER_SPEEDUP
        lines.append(f"  predicted time per batch on this machine: encrypt {t['encrypt']:.2f} s, server "
                     f"evaluation {t['eval']:.2f} s on one core ({two:.2f} s on two), decrypt "
                     f"{t['decrypt']:.3f} s")
        lines.append(f"  predicted throughput: {n // 2 / (t['eval'] / 2) * 3600:,.0f} predictions/hour "
                     f"with full batches on two cores; latency for one input {two:.2f} s")
    else:
        what = "input" if per_ct == 1 else f"ciphertext of {per_ct} inputs"
        lines.append(f"  predicted time per {what} on this machine: encrypt {t['encrypt'] * 1e3:.0f} ms, "
                     f"server evaluation {t['eval'] * 1e3:.0f} ms (one core), decrypt "
                     f"{t['decrypt'] * 1e3:.1f} ms; throughput {WORKERS * per_ct * 3600 / t['eval']:,.0f} "
                     "predictions/hour on two cores")
        extra = info.get("rotations", 0) - info.get("rotations_without_budget", 0)
        if extra:
            rotate = float(np.mean(costs["rotate"]))
            lines.append(f"  key budget: {len(steps)} keys instead of {len(info.get('steps_used', []))}; "
                         f"{info['rotations']} rotations instead of {info['rotations_without_budget']} "
                         f"(+{extra * rotate * 1e3:.0f} ms per input predicted)")
    return lambda runs: estimate_run(graph, runs, costs)["total"]


def zero_block_counts(program) -> list[int] | None:
    """[products, rotations, products without zeros, rotations without zeros] of a slots or
    packed program whose weights have zeros (recorded by the lowering: products by plaintext
    vectors and rotations of the program as lowered, and of the same maps with every zero weight
    made non-zero); None when it has none (or the record is malformed)."""
    from .passes.lower_to_ckks import ZERO_BLOCKS
    prefix = "packed." if program.layout == "packed" else ""  # the packed program's constant_prefix
    counts = program.artifact.constants.get(prefix + ZERO_BLOCKS)
    if counts is None:
        return None
    counts = np.asarray(counts)
    if counts.shape != (4,) or counts.dtype.kind not in "iu" or np.any(counts < 0):
        return None
    return [int(c) for c in counts]


def _bytes(count: int) -> str:
    return f"{count / 1e3:.1f} KB" if count < 1e6 else f"{count / 1e6:.1f} MB"


def _table(n):
    from .params import MAX_MODULUS_BITS_128
    return MAX_MODULUS_BITS_128.get(n, "?")
