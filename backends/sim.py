"""The simulator backend: runs ckks IR on float64 slot vectors with CKKS bookkeeping.

A ciphertext tensor is an array (ciphertexts, slots). Levels and scales come from the types; the
simulator checks at run time that every value x scale fits in the modulus left at its level and
names the op when it does not (that is where real CKKS would silently return garbage). With
``noise=True`` it adds the errors real CKKS makes, measured on SEAL (tools: benchmarks): each fresh
encryption and each rescale adds Gaussian error of std NOISE_PER_N * N / scale to every slot, and
plaintext weights are rounded to the scale they are encoded at; so it predicts TenSEAL's precision.
In the slots layout a ciphertext is kept as one period of its slots (``slot_period``): a model
smaller than the ring's slots is replicated over them, and one copy computes what every copy holds.
"""
from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np

from ..errors import HeccWarning, InputError
from ..ir import Graph, print_op, value_names
from ..params import modulus_bits_at
from .common import (SLOTS_CHUNK, LinearWeights, RunStats, batches, fold_slots, inputs_per_ciphertext, interleaved,
                     is_slots, plain_rows, program_params, quantized, run_client_tail, slot_inputs, slot_outputs,
                     slot_period, split_program)

NOISE_PER_N = 0.17  # SEAL, N = 8192 and 16384: std 1390 and 2750 per slot, times 1/scale
# A key switch (rotation, relinearization) adds the rounding of its division by the special prime P
# (about one fresh encryption's error) and the decomposition's error, which grows with the data
# primes q_j the ciphertext still has next to P: std sqrt(1 + KEYSWITCH^2 sum_j (q_j / P)^2) in
# units of the above. Measured with SEAL at N=16384 (two keys each): 1.0 for 26- and 40-bit primes
# under a 50- or 60-bit P; 4 to 12.2 per unit of sum (q_j / P)^2 for 50- and 60-bit primes under a
# prime of their size (17 to 21 x a fresh error at the top of [52, 60, 60, 60 | 60]); the largest.
KEYSWITCH_NOISE = 12.2


# ops whose result is a new array (the others may return an operand's array or a view of it);
# NOISY: new arrays only when the simulator adds noise
FRESH = {"ckks.mul_plain", "ckks.add_plain", "ckks.add", "ckks.sub", "ckks.mul", "ckks.square",
         "ckks.linear", "ckks.matmul", "ckks.rotate"}
NOISY = {"ckks.rescale", "ckks.relinearize"}


def _peak(array: np.ndarray) -> float:
    """max |array| without the temporary array of np.abs (0 for an empty array)."""
    return max(float(array.max()), -float(array.min())) if array.size else 0.0


def ckks_magnitudes(graph: Graph, stacked: list[np.ndarray]) -> dict:
    """max |value| of every ciphertext value of a (not yet parameterized) ckks program on inputs
    of shape (R, *S): parameter selection sizes the modulus by these."""
    return magnitudes_and_outputs(graph, stacked, 0)[0]


def magnitudes_and_outputs(graph: Graph, stacked: list[np.ndarray], count: int) -> tuple[dict, list]:
    """``ckks_magnitudes`` and the program's outputs on the first ``count`` inputs (exact: a
    noiseless simulation of the final program computes the same numbers). A large slots-layout
    run (thousands of ops on dozens of inputs: the ViT's takes 9 s) is split between two forked
    processes by inputs: the same maxima, to the bit (each input's slot vectors are computed
    alone; the batch layout's products by weight matrices are not: BLAS sums them in an order
    that depends on how many inputs there are), in half the time on two cores."""
    runs = stacked[0].shape[0] if stacked else 1
    if ((os.cpu_count() or 1) < 2 or runs < 2 or not is_slots(graph)
            or len(graph.ops) * runs < PARALLEL_MAGNITUDE_WORK):
        return _magnitudes(graph, stacked, count)
    from .workers import forked_map
    values = [v for op in graph.ops for v in op.results]

    def half(span):  # in a forked process: the peaks of inputs lo..hi-1 per value, in order
        lo, hi = span
        peaks, outputs = _magnitudes(graph, [x[lo:hi] for x in stacked], max(0, count - lo))
        return [peaks.get(v) for v in values], outputs  # None: not a ciphertext the run made
    halves = list(forked_map(half, [(0, runs // 2), (runs // 2, runs)], 2,
                             "It was simulating the program on the calibration inputs to measure its values."))
    peaks = {}
    for v, *found in zip(values, *(found for found, _ in halves)):
        found = [a for a in found if a is not None]
        if found:
            peaks[v] = max(found)
    found = [outs for _, outs in halves if outs]
    return peaks, [np.concatenate(parts)[:count] for parts in zip(*found)]


PARALLEL_MAGNITUDE_WORK = 1 << 19  # ops x inputs from which the magnitude run forks (about a second)


def _magnitudes(graph: Graph, stacked: list[np.ndarray], count: int = 0) -> tuple[dict, list]:
    sim = Simulator(graph, parameterized=False)
    runs = stacked[0].shape[0] if stacked else 1
    peaks: dict = {}
    pieces = []
    for lo, hi in batches(runs, SLOTS_CHUNK * inputs_per_ciphertext(graph) if sim.slots_layout else runs):
        trace: dict = {}
        for op, x in zip(sim.inputs, stacked):
            trace[op.result] = sim._load(op, x[lo:hi])
            sim._forget(op, trace, track=True)
        for op in sim.server:
            trace[op.result] = sim._apply(op, trace)
            sim._forget(op, trace, track=True)
        for v, a in sim.peaks.items():
            peaks[v] = max(peaks.get(v, 0.0), a)
        sim.peaks = {}
        if lo < count:
            pieces.append(sim._decrypted(trace, hi - lo))
    outputs = [np.concatenate([p[i] for p in pieces])[:count] for i in range(len(sim.outputs))] if pieces else []
    return peaks, outputs


class Simulator:
    def __init__(self, graph: Graph, noise: bool = False, seed: int = 0, parameterized: bool = True,
                 checks: bool = True):
        """``checks``: test every value against the modulus left at its level (off only where a
        run of the same program and inputs without noise has checked them)."""
        self.graph = graph
        self.checks = checks
        self.params = program_params(graph) if parameterized else None
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.inputs, self.server, self.decrypts, self.client, self.outputs = split_program(graph)
        self.outside = self.checked = self.filled = 0
        self.slots_layout = is_slots(graph)
        self.per_ct = inputs_per_ciphertext(graph)
        self.slots = self.params.slots if self.params else 0
        laid_out = [op for op in self.inputs if op.attrs.get("layout")]
        if self.slots_layout and laid_out:  # the slots an input is laid out over (K x one input's)
            self.slots = graph.constants[laid_out[0].attrs["layout"]].shape[1] * self.per_ct
        # the slots layout keeps a ciphertext as one period of its slots: a model smaller than
        # the ring's slots is replicated over them (the ViT's 2,048 slots four times over 8,192),
        # every value the same in each copy, and a slot's noise has the same law in every copy
        self.period = slot_period(graph, self.slots) if self.slots_layout and self.slots else self.slots
        self.peaks: dict = {}
        last_use: dict = {}
        for index, op in enumerate(self.server + self.decrypts):
            for v in op.operands:
                last_use[v] = index
        self.last_use = {v: self.server[i] if i < len(self.server) else None for v, i in last_use.items()}
        self.owned: set = set()  # values whose array no other value shares (see _sum)
        self.names = value_names(graph.ops)  # for error messages

    def _noise(self, shape, scale_bits: float) -> np.ndarray:
        std = NOISE_PER_N * self.params.poly_modulus_degree / 2.0 ** scale_bits
        # drawn in single precision (twice as fast); the values they perturb stay in double
        return self.rng.standard_normal(shape, dtype=np.float32) * std

    def _keyswitch(self, level: int) -> float:
        """A key switch's error at ``level``, in units of a fresh encryption's (KEYSWITCH_NOISE)."""
        chain = self.params.coeff_modulus_bits
        if len(chain) < 2:  # no special prime: the program switches no keys
            return 1.0
        data = chain[:-1][: len(chain) - 1 - level]
        return math.sqrt(1.0 + KEYSWITCH_NOISE ** 2 * sum(2.0 ** (2 * (b - chain[-1])) for b in data))

    def _check(self, op, value, array: np.ndarray) -> None:
        if not self.checks:
            return
        t = value.type
        peak = _peak(array)
        if peak == 0.0:
            return
        bits = math.log2(peak) + t.scale_bits + 1
        have = modulus_bits_at(self.params.coeff_modulus_bits, t.level)
        if bits > have:
            raise InputError(
                f"overflow in the encrypted program: a value of {peak:.4g} at scale 2^{t.scale_bits} "
                f"needs {bits:.1f} bits, but level {t.level} has only a {have}-bit modulus. Under "
                f"encryption this result would be garbage. The input lies outside the range the model "
                f"was compiled for: recompile with --calibration on inputs like these.\n  at "
                f"{print_op(op, dict(self.names))}")

    def _linear(self, op, x):
        if op.attrs.get("index"):  # sparse
            weights = LinearWeights(self.graph, op, exact=not self.noise)
            y = weights.apply(x)
            nnz = np.bincount(weights.rows, minlength=weights.shape[0])[:, None]
        else:
            matrix = self.graph.constants[op.attrs["matrix"]]
            if self.noise:
                matrix = quantized(matrix, op.attrs["weight_scale"])
            y = matrix[:, None] * x if matrix.ndim == 1 else matrix @ x  # 1-D: a diagonal map
            nnz = (matrix != 0)[:, None] if matrix.ndim == 1 else np.count_nonzero(matrix, axis=1)[:, None]
        if self.noise and op.attrs.get("rescale_terms"):
            y = y + self._noise(y.shape, op.result.type.scale_bits) * np.sqrt(nnz)
        if op.attrs.get("bias"):
            y = y + self.graph.constants[op.attrs["bias"]][:, None]
        if op.attrs.get("checks_interval") and self.params is not None:
            self.outside += int(np.count_nonzero(np.abs(y[:, : self.filled]) > 1.0))
            self.checked += y[:, : self.filled].size
        return y

    def _load(self, op, x: np.ndarray) -> np.ndarray:
        """Inputs (R, *shape) as the program's input ciphertexts: (ciphertexts, R) in the batch
        layout, (ciphertexts, R, slots) in the slots layout."""
        if self.slots_layout:
            return slot_inputs(self.graph, op, x, self.period)
        return x.reshape(x.shape[0], -1).T

    def _forget(self, op, env, track: bool = False) -> None:
        """Drop values no later server op reads in the slots layout (which keeps a whole slot
        vector per input, so a program's values do not all fit in memory); ``track`` remembers
        the peak |value| of the op's result first."""
        value = op.result
        if track:
            self.peaks[value] = max(self.peaks.get(value, 0.0), _peak(env[value]))
        for v in op.operands:
            if self.last_use.get(v, "kept") is op and v in env and self.slots_layout:
                del env[v]

    def _slot_op(self, op, args):
        name = op.name
        if name == "ckks.rotate":
            out = np.roll(args[0], -op.attrs["step"], axis=-1)
            if self.noise:
                out = out + self._noise(out.shape, op.result.type.scale_bits) * self._keyswitch(op.result.type.level)
            return out
        if name == "ckks.extract":
            return args[0][op.attrs["index"]: op.attrs["index"] + 1]
        encode = None
        if name == "ckks.mul_plain" and self.noise:
            encode = lambda rows: self._encoded(rows, op.attrs["weight_scale"])  # noqa: E731
        rows = plain_rows(self.graph, op, args[0].shape[-1], args[0].shape[0], self.per_ct, encode)[:, None, :]
        if name == "ckks.mul_plain":
            return args[0] * rows
        y = args[0] + rows  # add_plain
        if op.attrs.get("checks_interval") and self.params is not None:
            flat = np.transpose(y, (1, 0, 2)).reshape(y.shape[1], -1)
            at = fold_slots(interleaved(self.graph, self.graph.constants[op.attrs["checks_interval"]], self.slots),
                            self.slots, self.period)
            inside = flat[:, at].reshape(-1, at.shape[1])[: self.filled]
            self.outside += int(np.count_nonzero(np.abs(inside) > 1.0))
            self.checked += inside.size
        return y

    def _encoded(self, rows: np.ndarray, bits: int) -> np.ndarray:
        """Weight vectors (one period P of each, the slots' vectors repeat it) as CKKS encodes
        them at 2^bits: a constant vector is a constant polynomial, rounded to the scale's grid;
        a vector repeating with period P is a polynomial of 2P coefficients, whose rounding adds
        an error of std sqrt(2P / 12) / 2^bits to every slot (measured with SEAL), repeating
        with the same period."""
        rounded = quantized(rows, bits)
        varying = np.ptp(rows, axis=-1, keepdims=True) > 0
        std = math.sqrt(2 * rows.shape[-1] / 12.0) / 2.0 ** bits
        return np.where(varying, rows + self.rng.standard_normal(rows.shape, dtype=np.float32) * std, rounded)

    def _apply(self, op, env):
        result = self._compute(op, env)
        if op.name in FRESH or (self.noise and op.name in NOISY):
            self.owned.add(op.result)
        else:  # the result may be (a view of) an operand's array: neither may change in place
            self.owned.difference_update(op.operands)
        return result

    def _sum(self, op, a, b):
        """a + b or a - b, written over an operand's array when that operand's value is read by
        no later op and shares its array with no other value (a slots program's diagonal sums
        are 10,000 additions of arrays of megabytes: a new array each took twice as long)."""
        ufunc = np.add if op.name == "ckks.add" else np.subtract
        shape, dtype = np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b)
        for v, array in zip(op.operands, (a, b)):
            if (v in self.owned and self.last_use.get(v) is op and array.shape == shape
                    and array.dtype == dtype and op.operands.count(v) == 1):
                self.owned.discard(v)
                return ufunc(a, b, out=array)
        return ufunc(a, b)

    def _compute(self, op, env):
        args = [env[v] for v in op.operands]
        name = op.name
        if name in ("ckks.rotate", "ckks.extract", "ckks.mul_plain", "ckks.add_plain"):
            return self._slot_op(op, args)
        if name == "ckks.linear":
            return self._linear(op, args[0])
        if name == "ckks.square":
            return args[0] * args[0]
        if name == "ckks.mul":
            return args[0] * args[1]
        if name == "ckks.matmul":
            a = args[0].reshape(op.operands[0].type.shape + (-1,))
            b = args[1].reshape(op.operands[1].type.shape + (-1,))
            return np.einsum("...iks,...kjs->...ijs", a, b).reshape(op.result.type.count, -1)
        if name in ("ckks.add", "ckks.sub"):
            return self._sum(op, args[0], args[1])
        if name == "ckks.concat" and self.slots_layout:  # single ciphertexts into a tensor of them
            return np.concatenate(args, axis=0)
        if name == "ckks.concat":
            parts = [a.reshape(v.type.shape + (-1,)) for a, v in zip(args, op.operands)]
            return np.concatenate(parts, axis=op.attrs["axis"]).reshape(op.result.type.count, -1)
        if name == "ckks.rescale" and self.noise:
            return args[0] + self._noise(args[0].shape, op.result.type.scale_bits)
        if name == "ckks.relinearize" and self.noise:
            t = op.result.type
            return args[0] + self._noise(args[0].shape, t.scale_bits) * self._keyswitch(t.level)
        return args[0]  # relinearize, modswitch, noiseless rescale: bookkeeping only

    def _decrypted(self, env: dict, count: int) -> list[np.ndarray]:
        """The outputs of ``count`` inputs from the server's results in ``env``: decrypted (read
        at their slots) and through the client's ops."""
        for op in self.decrypts:
            ct = env[op.operands[0]]
            if self.slots_layout:
                env[op.result] = slot_outputs(self.graph, op, ct, count, self.slots)
            else:
                env[op.result] = ct.T.reshape((count,) + op.result.type.shape)
        run_client_tail(self.graph, self.client, env)
        return [env[op.operands[0]] for op in self.outputs]

    def run(self, stacked: list[np.ndarray], stats: RunStats | None = None) -> list[np.ndarray]:
        stats = stats or RunStats()
        runs = stacked[0].shape[0] if stacked else 1
        pieces = []
        k = self.per_ct
        for lo, hi in batches(runs, SLOTS_CHUNK * k if self.slots_layout else self.params.slots):
            stats.batches += 1 if not self.slots_layout else -(-(hi - lo) // k)
            self.filled = hi - lo
            env = {}
            start = time.perf_counter()
            for op, x in zip(self.inputs, stacked):
                slots = self._load(op, x[lo:hi])
                if self.noise:
                    slots = slots + self._noise(slots.shape, op.result.type.scale_bits)
                env[op.result] = slots
                self._check(op, op.result, slots)
            stats.seconds["encrypt"] += time.perf_counter() - start
            start = time.perf_counter()
            for op in self.server:
                env[op.result] = self._apply(op, env)
                self._check(op, op.result, env[op.result])
                self._forget(op, env)
            stats.seconds["eval"] += time.perf_counter() - start
            pieces.append(self._decrypted(env, hi - lo))
        stats.eval_wall_seconds = stats.seconds["eval"]
        if self.outside:
            warnings.warn(
                f"{self.outside} of {self.checked} activation inputs fell outside the interval their "
                "polynomial was fitted on; there the polynomial is far from the activation, and under "
                "encryption those results are silently wrong. Recompile with --calibration on inputs "
                "like these (or a larger --activation-margin)", HeccWarning, stacklevel=3)
        return [np.concatenate([p[i] for p in pieces]) for i in range(len(self.outputs))]
