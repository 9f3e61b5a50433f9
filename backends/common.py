"""What every CKKS backend shares: reading the program, batching inputs into slots, running the
client-side tail after decryption, and counting primitive operations."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import HeccError
from ..ir import CipherType, Graph, Op
from ..params import data_primes

SERVER_OPS = {"ckks.linear", "ckks.mul", "ckks.matmul", "ckks.square", "ckks.add", "ckks.sub", "ckks.relinearize",
              "ckks.rescale", "ckks.modswitch", "ckks.concat", "ckks.rotate", "ckks.mul_plain",
              "ckks.add_plain", "ckks.extract"}
SLOTS_CHUNK = 256  # inputs the simulator runs at once in the slots layout


@dataclass
class Params:
    poly_modulus_degree: int
    coeff_modulus_bits: list[int]

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        return len(data_primes(self.coeff_modulus_bits)) - 1


@dataclass
class RunStats:
    batches: int = 0
    seconds: dict = field(default_factory=lambda: {"keygen": 0.0, "encrypt": 0.0, "eval": 0.0,
                                                   "decrypt": 0.0})
    eval_key_bytes: int = 0
    eval_wall_seconds: float = 0.0
    workers: int = 1


def is_slots(graph: Graph) -> bool:
    return any(op.attrs.get("layout") for op in graph.inputs())


def inputs_per_ciphertext(graph: Graph) -> int:
    """A slots-layout program's inputs per ciphertext (``ckks.params``), interleaved: input r of
    a ciphertext holds slot u of its one-input layout at slot u * K + r. 1 otherwise."""
    for op in graph.ops:
        if op.name == "ckks.params":
            return int(op.attrs.get("inputs_per_ciphertext", 1))
    return 1


def inputs_per_batch(graph: Graph) -> int:
    """Inputs one batch of ciphertexts holds: N/2 in the batch layout; in the slots layout, the
    inputs per ciphertext."""
    if is_slots(graph):
        return inputs_per_ciphertext(graph)
    return program_params(graph).slots


def plain_rows(graph: Graph, op: Op, slots: int, count: int = 1, per_ct: int | None = None,
               encode=None) -> np.ndarray:
    """The plaintext vectors a mul_plain / add_plain uses, repeated periodically to ``slots``:
    (count, slots), one row per ciphertext of the operand (a one-row table serves them all);
    with K inputs per ciphertext (``per_ct``, else looked up) each slot of the one-input vector
    is repeated K times. ``encode`` maps one period of the rows (count, P x K) before they are
    repeated."""
    table = graph.constants[op.attrs["plain"]]
    if table.shape[0] == 1:
        rows = np.repeat(table, count, axis=0)
    else:
        rows = table[op.attrs.get("row", 0): op.attrs.get("row", 0) + count]
    k = inputs_per_ciphertext(graph) if per_ct is None else per_ct
    if k > 1:
        rows = np.repeat(rows, k, axis=1)
    if encode is not None:
        rows = encode(rows)
    return np.tile(rows, (1, slots // rows.shape[1]))


def interleaved(graph: Graph, pos: np.ndarray, slots: int) -> np.ndarray:
    """One-input slot numbers (ciphertexts of slots / K laid end to end) as the slots of each
    of the K inputs of a ciphertext: (K, n), ciphertexts of ``slots`` laid end to end."""
    k = inputs_per_ciphertext(graph)
    width = slots // k
    pos = np.asarray(pos, dtype=np.int64)
    base = (pos // width) * slots + (pos % width) * k
    return base[None, :] + np.arange(k)[:, None]


def slot_outputs(graph: Graph, op: Op, slots: np.ndarray, runs: int | None = None,
                 full: int | None = None) -> np.ndarray:
    """A slots-layout decryption's tensor from the decoded slots (C, B, slots) of its
    ciphertexts (B batches of ciphertexts): (runs, *shape), read at the slots of the ``layout``
    constant (without one, the first slots of the first ciphertext); with K inputs per
    ciphertext, batch b holds inputs b*K .. b*K + K - 1. ``full``: the ciphertexts' slots, when
    ``slots`` holds only a period of them (``slot_period``)."""
    batches = slots.shape[1]
    runs = batches * inputs_per_ciphertext(graph) if runs is None else runs
    shape = op.result.type.shape
    flat = np.transpose(slots, (1, 0, 2)).reshape(batches, -1)
    pos = graph.constants[op.attrs["layout"]] if op.attrs.get("layout") else np.arange(op.result.type.size)
    at = interleaved(graph, pos, full or slots.shape[2])
    if full:
        at = fold_slots(at, full, slots.shape[2])
    values = flat[:, at]  # (B, K, n)
    return values.reshape((-1,) + tuple(shape))[:runs]


def slot_inputs(graph: Graph, op: Op, x: np.ndarray, period: int | None = None) -> np.ndarray:
    """Inputs (R, *shape) laid out in the slots of ``op``'s ciphertexts: (C, B, slots), K
    inputs (``inputs_per_ciphertext``) interleaved per batch of ciphertexts; with ``period``,
    only the first ``period`` slots of each (a period of the layout: see ``slot_period``)."""
    layout = graph.constants[op.attrs["layout"]]
    k = inputs_per_ciphertext(graph)
    if period is not None:
        layout = layout[:, : period // k]
    flat = x.reshape(x.shape[0], -1).astype(np.float64, copy=False)
    if flat.shape[0] % k:
        # copies of the last input, not zeros, which may lie outside the calibrated ranges
        flat = np.concatenate([flat, np.repeat(flat[-1:], k - flat.shape[0] % k, axis=0)])
    # (C, R, width), contiguous and in double: every op of a simulation keeps its operand's
    # memory order and type (a product with the inputs innermost took 4x as long)
    c, width = layout.shape
    slots = flat[np.arange(flat.shape[0])[None, :, None], np.maximum(layout, 0)[:, None, :]]
    np.copyto(slots, 0.0, where=layout[:, None, :] < 0)
    if k > 1:
        r = flat.shape[0]
        slots = np.ascontiguousarray(slots.reshape(c, r // k, k, width).transpose(0, 1, 3, 2)).reshape(
            c, r // k, width * k)
    return slots


def slot_period(graph: Graph, slots: int) -> int:
    """The smallest power of two P (at most ``slots``) such that every input layout and every
    plaintext vector of a slots-layout program repeats with period P in the ciphertext's slots.
    Rotations, sums and products keep a period, so every value of the program then repeats with
    P, and slot j of a ciphertext holds what slot j mod P holds: a model smaller than the ring's
    slots has its values replicated (a rotation must find the next period's slots filled)."""
    k = inputs_per_ciphertext(graph)
    period = k
    for op in graph.ops:
        if op.name == "hecc.input" and op.attrs.get("layout"):
            layout = graph.constants[op.attrs["layout"]]
            width = layout.shape[1]
            p = max(1, period // k)
            while p < width and not np.array_equal(layout, np.tile(layout[:, :p], (1, width // p))):
                p *= 2
            period = max(period, p * k)
        elif op.attrs.get("plain") and op.name in ("ckks.mul_plain", "ckks.add_plain"):
            period = max(period, graph.constants[op.attrs["plain"]].shape[1] * k)
    return min(period, slots)


def fold_slots(positions: np.ndarray, slots: int, period: int) -> np.ndarray:
    """Slot numbers of ciphertexts of ``slots`` laid end to end, as the same slots of
    ciphertexts kept as their first ``period`` slots (``slot_period``)."""
    return (positions // slots) * period + (positions % slots) % period


def program_params(graph: Graph) -> Params:
    ops = [op for op in graph.ops if op.name == "ckks.params"]
    if not ops:
        raise HeccError("the program has no ckks.params op; it was not compiled for encryption")
    return Params(ops[0].attrs["poly_modulus_degree"], list(ops[0].attrs["coeff_modulus_bits"]))


def split_program(graph: Graph):
    """(inputs, server ops in order, decrypt ops, client ops in order, outputs)."""
    inputs = [op for op in graph.ops if op.name == "hecc.input"]
    server = [op for op in graph.ops if op.name in SERVER_OPS]
    decrypts = [op for op in graph.ops if op.name == "ckks.decrypt"]
    client = [op for op in graph.ops if op.name not in SERVER_OPS and op.name not in
              ("hecc.input", "ckks.params", "ckks.decrypt", "hecc.output")]
    outputs = [op for op in graph.ops if op.name == "hecc.output"]
    for op in graph.ops:  # by name: a membership test in the lists was quadratic (0.8 s for the ViT)
        if op.name.startswith("ckks.") and op.name not in SERVER_OPS and op.name not in ("ckks.decrypt",
                                                                                          "ckks.params"):
            raise HeccError(f"no backend implementation of {op.name}")
    return inputs, server, decrypts, client, outputs


def batches(runs: int, slots: int) -> list[tuple[int, int]]:
    return [(start, min(start + slots, runs)) for start in range(0, runs, slots)]


def run_client_tail(graph: Graph, client: list[Op], env: dict) -> None:
    """Client-side ops (after decryption) on plaintext arrays with the leading run axis."""
    from .reference import apply_op
    for op in client:
        if op.name == "tensor.constant":
            env[op.result] = np.asarray(graph.constants[op.attrs["name"]], dtype=np.float64)[None]
        else:
            env[op.result] = apply_op(op, [env[v] for v in op.operands])


def op_counts(graph: Graph, batch_count: int) -> dict[str, int]:
    """Primitive CKKS operations the program performs, over all batches."""
    counts: dict[str, int] = {}

    def add(name, n):
        counts[name] = counts.get(name, 0) + int(n) * batch_count
    for op in graph.ops:
        if op.name == "ckks.linear":
            weights = LinearWeights(graph, op)
            nnz = weights.nnz
            add("multiply_plain", weights.products(op))
            add("add", nnz - weights.row_count())
            if op.attrs.get("bias"):
                add("add_plain", np.count_nonzero(graph.constants[op.attrs["bias"]]))
            if op.attrs.get("rescale_terms"):
                add("rescale", nnz)
        elif op.name in SERVER_OPS and op.name != "ckks.concat":
            add(op.name.split(".")[1], op.result.type.count)
        elif op.name == "hecc.input" and isinstance(op.result.type, CipherType):
            add("encrypt", op.result.type.count)
        elif op.name == "ckks.decrypt":
            add("decrypt", op.operands[0].type.count)
    return dict(sorted(counts.items()))


def quantized(matrix: np.ndarray, weight_scale_bits: int) -> np.ndarray:
    """The weights as CKKS encodes them at scale 2^weight_scale_bits (rounded to its grid)."""
    step = 2.0 ** weight_scale_bits
    return np.round(matrix * step) / step


def multiplied(values, weight_scale: int, rescale_terms: bool = False) -> int:
    """How many of a linear map's weights ``values`` (zeros aside) cost a product: at weight scale
    2^0 a weight of 1 or -1 is an addition or a subtraction (how the TenSEAL backend runs it),
    except in the eager-rescale baseline, which rescales every term."""
    values = np.asarray(values)
    nonzero = values[values != 0]
    if weight_scale != 0 or rescale_terms:
        return int(nonzero.size)
    return int(np.count_nonzero(np.abs(nonzero) != 1.0))


class LinearWeights:
    """A ``ckks.linear``'s weights as coordinate lists, whatever their storage: a dense matrix, a
    vector (a diagonal map) or a sparse one (``matrix`` the values, ``index`` their rows and
    columns); ``quantized`` to the weight scale, zeros dropped, sorted by row then column."""

    __slots__ = ("rows", "cols", "vals", "shape")

    def __init__(self, graph: Graph, op: Op, exact: bool = False):
        stored = np.asarray(graph.constants[op.attrs["matrix"]], dtype=np.float64)
        values = stored if exact else quantized(stored, op.attrs["weight_scale"])
        out, inp = op.result.type.count, op.operands[0].type.count
        if op.attrs.get("index"):
            index = graph.constants[op.attrs["index"]]
            rows, cols = index[0], index[1]
        elif values.ndim == 1:
            rows = cols = np.arange(values.size)
        else:
            rows, cols = np.nonzero(values)
            values = values[rows, cols]
        keep = values != 0
        self.rows, self.cols = np.asarray(rows, dtype=np.int64)[keep], np.asarray(cols, dtype=np.int64)[keep]
        self.vals, self.shape = values[keep], (out, inp)

    @property
    def nnz(self) -> int:
        return int(self.vals.size)

    def products(self, op: Op) -> int:
        """The weights ``op`` multiplies by (``multiplied``)."""
        return multiplied(self.vals, op.attrs["weight_scale"], bool(op.attrs.get("rescale_terms")))

    def row_count(self) -> int:
        """Rows with at least one weight."""
        return int(np.unique(self.rows).size)

    def is_diagonal(self) -> bool:
        return self.shape[0] == self.shape[1] and bool(np.all(self.rows == self.cols))

    def apply(self, x: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
        """matrix @ x for x (inputs, ...), in pieces of at most ``chunk`` entries: a dense
        block of rows at a time (BLAS) when at least DENSE_FRACTION of the matrix is non-zero,
        else the products of a run of non-zero weights, summed per row."""
        out = np.zeros((self.shape[0],) + x.shape[1:])
        order = np.argsort(self.rows, kind="stable")
        rows, cols, vals = self.rows[order], self.cols[order], self.vals[order]
        if rows.size >= DENSE_FRACTION * self.shape[0] * self.shape[1]:
            flat = x.reshape(x.shape[0], -1)
            rows_per = max(1, chunk // max(1, self.shape[1]))
            bounds = np.searchsorted(rows, np.arange(0, self.shape[0] + rows_per, rows_per))
            for start, (lo, hi) in zip(range(0, self.shape[0], rows_per), zip(bounds[:-1], bounds[1:])):
                if hi == lo:
                    continue
                block = np.zeros((min(rows_per, self.shape[0] - start), self.shape[1]))
                np.add.at(block, (rows[lo:hi] - start, cols[lo:hi]), vals[lo:hi])
                out[start:start + block.shape[0]] = (block @ flat).reshape((block.shape[0],) + x.shape[1:])
            return out
        per = max(1, chunk // max(1, int(np.prod(x.shape[1:], dtype=np.int64))))
        shape = (-1,) + (1,) * (x.ndim - 1)
        for lo in range(0, rows.size, per):
            r = rows[lo:lo + per]
            terms = x[cols[lo:lo + per]] * vals[lo:lo + per].reshape(shape)
            starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
            out[r[starts]] += np.add.reduceat(terms, starts, axis=0)  # rows are distinct within a run
        return out


DENSE_FRACTION = 1 / 16  # the share of non-zero weights from which a dense product is faster


def ciphertext_bytes(n: int, primes: int, size: int = 2) -> int:
    """Bytes of one ciphertext in memory: ``size`` polynomials of N coefficients per prime."""
    return size * n * primes * 8


def predicted_peak_bytes(graph: Graph, streams: bool = True) -> int:
    """Peak bytes of ciphertext memory while one batch (or input) is evaluated by SEAL, in the
    order the backend evaluates (``segments.plan``). Every value lives from its definition to its
    last use, at its level's prime count; a value made and read inside one segment (``segments``)
    only for the rows evaluated at once; a stream's tail sums from the stream's start. SEAL keeps
    freed ciphertext memory in a pool per allocation size for reuse and does not give it back, so
    the prediction is the sum over sizes (primes x components) of each size's own peak, not the
    peak of the sum (within 1.2x of the measured resident memory on the examples). Plus the
    encoded weight vectors the backend keeps for reuse (``plain_bytes``). ``streams``: as the
    backend built with it evaluates (the Ray cluster's evaluates without)."""
    from .segments import memory_plan
    params = program_params(graph)
    n, primes = params.poly_modulus_degree, len(data_primes(params.coeff_modulus_bits))
    server = [op for op in graph.ops if op.name in SERVER_OPS]
    order, part, early = memory_plan(graph, server, is_slots(graph), streams)
    planned = iter(order)
    ops = [next(planned) if op.name in SERVER_OPS else op for op in graph.ops]
    born = {}
    for op in ops:
        for v in op.results:
            born.setdefault(id(early.get(v, op)), []).append(v)
    last_use = {}
    for index, op in enumerate(ops):
        for v in op.operands:
            last_use[v] = index
    live: dict = {}  # size class -> {value: bytes}
    peaks: dict = {}
    for index, op in enumerate(ops):
        for v in born.get(id(op), ()):
            if isinstance(v.type, CipherType):
                words = (primes - v.type.level) * v.type.size
                live.setdefault(words, {})[v] = part.get(v, 1.0) * v.type.count * ciphertext_bytes(
                    n, primes - v.type.level, v.type.size)
                peaks[words] = max(peaks.get(words, 0.0), sum(live[words].values()))
        for v in op.operands:
            if last_use.get(v) == index and isinstance(v.type, CipherType):
                live.get((primes - v.type.level) * v.type.size, {}).pop(v, None)
    return int(sum(peaks.values())) + plain_bytes(graph)


def evaluation_keys(graph: Graph) -> tuple[list[int], bool]:
    """The evaluation keys the program needs: its rotation steps, and whether it relinearizes."""
    steps = next(op.attrs.get("galois_steps", []) for op in graph.ops if op.name == "ckks.params")
    return list(steps), any(op.name == "ckks.relinearize" for op in graph.ops)


def key_memory_bytes(graph: Graph) -> int:
    """Bytes the evaluation keys take in a SEAL process: each key-switching key as SEAL holds it
    (per data prime, two polynomials over every prime, the special one included), plus the
    seeded serialization kept beside them (per data prime, one polynomial at the primes' own
    widths: the other is regenerated from a seed)."""
    params = program_params(graph)
    n, bits = params.poly_modulus_degree, params.coeff_modulus_bits
    data = len(data_primes(bits))
    steps, relin = evaluation_keys(graph)
    keys = len(steps) + int(relin)
    return keys * data * n * (2 * len(bits) * 8 + sum(bits) // 8)


def plain_bytes(graph: Graph) -> int:
    """Bytes of the encoded plaintexts a SEAL backend keeps for reuse: one per ciphertext that a
    mul_plain / add_plain reads (N coefficients per prime of its level); the slots layout's
    weight diagonals, mostly."""
    params = program_params(graph)
    n, primes = params.poly_modulus_degree, len(data_primes(params.coeff_modulus_bits))
    seen, total = set(), 0
    for op in graph.ops:
        if op.name in ("ckks.mul_plain", "ckks.add_plain"):
            v = op.operands[0]
            key = (op.attrs["plain"], op.attrs.get("row", 0), v.type.level)
            if key not in seen:
                seen.add(key)
                total += v.type.count * n * (primes - v.type.level) * 8
    return total
