"""The generalized diagonal method's arithmetic for the slots layout, between placements (see
``placement``): which diagonals a linear map has from its inputs' ciphertexts to its output's,
the baby-step size that needs the fewest rotations, and what a plan costs. Pure functions of
numpy arrays; ``matvec`` emits the plan as IR.

A weight (i, j) reads input element j at slot s_j of its ciphertext and adds to output element i
at slot s_i of its own. With input period p (the slots, for a value over several ciphertexts) and
output period q, it belongs to diagonal k = (s_j - s_i) mod p, reduced mod q when q < p (then it
lands in the block of q slots d - k after s_i, and a rotate-and-sum over the p / q blocks adds the
blocks up). Diagonal vectors are P = max(p, q) slots long, repeated over the ciphertext; for a
spanned output (``placement.spanned``) they are the whole ciphertext long, each span of p slots
gathering its own outputs.

The rotate-and-sum adds the p / q blocks in log2(p / q) doublings. When the output promises no
repetition every q slots (``placement.spanned``, ``placement.gathered``), it need only add the
blocks that hold products (``block_sums``): the pruned LeNet-5's classifier, reading 84 values
of a 4,096-slot period into blocks of 16, adds the window of 8 blocks that holds its products, not all 256.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hecc.errors import PassError

from .affine import MAX_MATRIX_ENTRIES, TooLarge
from .placement import Placement, next_pow2

# Relative costs (ms at N=8192, three primes, measured with SEAL on this machine) used only to
# choose between equivalent plans; the compile report uses the measured cost model.
# A rotation step no earlier map used costs a Galois key: about as many bytes as two ciphertexts of
# the chain for every client, once; weighted here as four rotations.
PLAN_COSTS = {"rotate": 1.9, "multiply_plain": 0.14, "add": 0.05, "encrypt": 2.0, "key": 7.6}
# The "operations" objective: every product by a plaintext vector and every rotation counts one (the
# HE operations papers count); a ciphertext the client encrypts (a rotated input copy, which saves
# the server a rotation) counts half, a new Galois key a quarter, so that neither comes for free.
OPERATION_COSTS = {"rotate": 1.0, "multiply_plain": 1.0, "add": 0.0, "encrypt": 0.5, "key": 0.25}


MAX_INPUT_CIPHERTEXTS = 64


class Unfit(ValueError):
    """An output placement whose spans cannot gather the map's inputs (see ``fits``)."""


def fits(parts: list, out: Placement) -> bool:
    """Whether ``out`` can be the output placement of a map of ``parts``. An output whose spans
    gather their own elements (``out.span``) reads each weight's input inside its span, and, if it
    repeats every span, needs inputs that repeat within it; a placement chosen for other inputs
    may not (a product's second factor, given the first factor's placement)."""
    if not out.span:
        return True
    for part in parts:
        p = part.placement.period
        d = (part.placement.pos[part.cols] - out.pos[part.rows]) & (p - 1)
        if not _gathers(out, p, d):
            return False
    return True


def _gathers(out: Placement, p: int, d: np.ndarray) -> bool:
    """Whether spanned ``out`` gathers weights of offsets ``d`` from an input of period ``p``."""
    q = out.gather
    if out.period == out.span and p > out.span:
        return False
    return not (q < p and d.size and int((d - (d & (q - 1))).max()) >= out.span)


def plan_costs(objective: str | None) -> dict:
    """The relative costs plans are chosen by, for the compile option ``objective`` (None: time)."""
    if objective not in (None, "time", "operations"):
        raise PassError(f"objective must be time or operations, got {objective!r}")
    return OPERATION_COSTS if objective == "operations" else PLAN_COSTS


@dataclass
class Part:
    """One input of a linear map: its placement and its weights (output element, input element,
    value)."""

    key: object  # the base value
    placement: Placement
    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray


class Plan:
    """The diagonal method for ``parts`` into placement ``out`` over ciphertexts of ``slots``:
    the non-zero diagonals per (input ciphertext, output ciphertext), the baby step, and the
    rotation steps it takes."""

    def __init__(self, parts: list[Part], out: Placement, slots: int, g: int | None = None):
        self.parts, self.out, self.slots = parts, out, slots
        q = self.gather = out.gather
        # the rotate-and-sum gathers blocks of q slots from spans this long; diagonals are one
        # span long, or the whole ciphertext when its spans gather different elements
        self.span = out.span or max([q] + [part.placement.period for part in parts])
        self.length = out.period if out.span else self.span
        inputs, cos, ks, us, values, blocks = [], [], [], [], [], []
        self.inputs: list[tuple[int, int]] = []  # (part index, ciphertext)
        shift = slots.bit_length() - 1  # slots, periods and q are powers of two
        for index, part in enumerate(parts):
            p = part.placement.period
            sj = part.placement.pos[part.cols]
            si = out.pos[part.rows]
            d = (sj - si) & (p - 1)
            if out.span and not _gathers(out, p, d):
                raise Unfit(f"spans of {out.span} slots cannot gather inputs of period {p}")
            if q < p:
                k = d & (q - 1)
                us.append((si & (slots - 1)) + d - k)
                blocks.append((d - k) // q)
            else:
                k = d
                us.append(si & (slots - 1))
                blocks.append(np.zeros(1, dtype=np.int64))
            first = len(self.inputs)
            if part.placement.cts == 1:
                self.inputs.append((index, 0))
                inputs.append(np.full(sj.size, first, dtype=np.int64))
            else:
                ci = sj >> shift
                cts = np.flatnonzero(np.bincount(ci))
                self.inputs += [(index, int(c)) for c in cts]
                inputs.append(first + np.searchsorted(cts, ci))
            cos.append(si >> shift if out.cts > 1 else np.zeros(si.size, dtype=np.int64))
            ks.append(k)
            values.append(part.vals)
        cat = (lambda arrays: np.concatenate(arrays) if len(arrays) != 1 else arrays[0])
        self.input_of, self.co, self.k, self.u = (cat(a) for a in (inputs, cos, ks, us))
        self.values = cat(values)
        # the rotate-and-sum: a shift by ``shift`` blocks (joined to the last giant step), then
        # doublings by ``sum_blocks`` blocks (of q slots)
        count = self.span // q if q < self.span else 1
        self.shift, self.sum_blocks = 0, doublings(count)
        used = np.unique(np.concatenate(blocks)) if blocks else np.zeros(0, dtype=np.int64)
        if out.span and used.size and count > 1:
            self.shift, self.sum_blocks = block_sums(used, count, cyclic=self.length == self.span)
        present = np.bincount(self.k, minlength=1) if self.k.size else np.zeros(0)
        keys = np.flatnonzero(present)
        self.g = g or (baby_step(keys.tolist()) if keys.size else 1)
        # distinct (input, output ciphertext, diagonal): one product each (counted, not sorted:
        # the keys are few and dense)
        triple = (self.input_of * (out.cts + 1) + self.co) * self.length + self.k
        used = np.zeros(len(self.inputs) * (out.cts + 1) * self.length + 1, dtype=bool)
        used[triple] = True
        self.products = np.flatnonzero(used)
        index = np.cumsum(used) - 1
        self.product_of = index[triple]
        if self.products.size * self.length > MAX_MATRIX_ENTRIES:
            raise TooLarge(f"{self.products.size} diagonals of {self.length} slots")

    def babies(self, g: int | None = None) -> dict[int, list[int]]:
        """Per input ciphertext, the baby steps (k mod g) its diagonals use, 0 included."""
        g = g or self.g
        inputs, ks, _ = self._product_fields()
        out: dict[int, set] = {}
        for i, k in zip(inputs.tolist(), (ks % g).tolist()):
            out.setdefault(i, {0}).add(k)
        return {i: sorted(b) for i, b in out.items()}

    def giants(self, g: int | None = None) -> dict[int, list[int]]:
        """Per output ciphertext, the giant steps (k // g) its diagonals use."""
        g = g or self.g
        _, ks, cos = self._product_fields()
        out: dict[int, set] = {}
        for co, j in zip(cos.tolist(), (ks // g).tolist()):
            out.setdefault(co, set()).add(j)
        return {c: sorted(j) for c, j in out.items()}

    def _product_fields(self):
        """(input ciphertext, diagonal, output ciphertext) of each product."""
        p = self.products
        k = p % self.length
        rest = p // self.length
        return rest // (self.out.cts + 1), k, rest % (self.out.cts + 1)

    def steps(self, g: int | None = None, client=frozenset()) -> list[int]:
        """Every rotation the plan performs, by step (with repeats); the baby steps of the input
        ciphertexts in ``client`` are the client's (encrypted rotated)."""
        g = g or self.g
        steps = []
        for index, babies in self.babies(g).items():
            if index not in client:
                steps += [b - a for a, b in zip(babies, babies[1:])]
        for giants in self.giants(g).values():
            down = sorted(giants, reverse=True)
            last = self.last_step(down[-1], g)
            steps += [(a - b) * g for a, b in zip(down, down[1:])] + ([last] if last else [])
            steps += self.sum_steps()
        return steps

    def last_step(self, giant: int, g: int) -> int:
        """The rotation after the Horner sum (the smallest giant step ``giant``, and the
        rotate-and-sum's shift), 0 for none."""
        return (giant * g + self.shift * self.gather) % self.length

    def sum_steps(self) -> list[int]:
        """The rotate-and-sum's rotations (in slots) per output ciphertext."""
        return [b * self.gather for b in self.sum_blocks]

    def cost(self, known_steps: set, g: int | None = None, client=frozenset(),
             costs: dict = PLAN_COSTS) -> float:
        """Relative cost (by ``costs``): rotations, products, each rotation step no earlier map used
        (a new Galois key the client must make and send), and the client's rotated inputs."""
        steps = self.steps(g, client)
        c = costs
        encrypted = sum(len(b) for i, b in self.babies(g).items() if i in client)
        return (len(steps) * c["rotate"] + self.products.size * (c["multiply_plain"] + c["add"])
                + len(set(steps) - known_steps) * c["key"] + encrypted * c["encrypt"])

    def client_step(self, known_steps: set, client, costs: dict = PLAN_COSTS) -> tuple[int, float]:
        """(baby step, cost) cheapest when the inputs in ``client`` arrive rotated by the client."""
        best = None
        g = 1
        while g <= self.length:
            cost = self.cost(known_steps, g, client, costs)
            if best is None or cost < best[1]:
                best = (g, cost)
            g *= 2
        return best

    def diagonal_rows(self, order: np.ndarray | None = None, g: int | None = None) -> np.ndarray:
        """One row of ``length`` slots per product (in ``products`` order); with ``order`` (a
        product per row, or -1 for a row of zeros) in that order, each product's row rotated by
        its giant step (k // g) * g, which the map applies after the product. One pass over the
        weights: a ViT's maps have 10,000 rows of 2,048 slots, and copies of them cost seconds."""
        n, length = self.products.size, self.length
        if order is None:
            return np.bincount(self.product_of * length + self.u, weights=self.values,
                               minlength=n * length).reshape(n, length)
        g = g or self.g
        row = np.full(n, -1, dtype=np.int64)
        taken = order >= 0
        row[order[taken]] = np.flatnonzero(taken)
        _, ks, _ = self._product_fields()
        shift = (ks // g) * g
        at = (self.u + shift[self.product_of]) % length
        flat = np.bincount(row[self.product_of] * length + at, weights=self.values, minlength=order.size * length)
        return flat.reshape(order.size, length)


def baby_step(nonzero: list[int]) -> int:
    """The baby-step size g (a power of two) that needs the fewest rotations for diagonals
    ``nonzero``: one rotation of the input per distinct k mod g, one per giant step (Horner)."""
    best = None
    top = next_pow2(max(nonzero) + 1)
    g = 1
    while g <= top:
        babies = len({k % g for k in nonzero} - {0})
        giants = sorted({k // g for k in nonzero})
        cost = babies + len(giants) - 1 + (giants[0] > 0)
        if best is None or cost < best[0]:
            best = (cost, g)
        g *= 2
    return best[1]


def doublings(count: int) -> list[int]:
    """The steps (in blocks, largest first) of a rotate-and-sum over ``count`` blocks, a power of
    two: count / 2, ..., 1."""
    return [count >> i for i in range(1, count.bit_length())]


def block_sums(blocks: np.ndarray, count: int, cyclic: bool) -> tuple[int, list[int]]:
    """(shift, doublings) of a rotate-and-sum that adds the blocks ``blocks`` (distinct, of
    ``count``, a power of two) into block 0 with the fewest rotations: after a rotation by
    ``shift`` blocks, z + rot(z, t) for each t of the doublings adds the blocks at shift + any sum
    of a subset of them, which must be distinct and (not ``cyclic``) inside 0 .. count - 1: then
    every block added holds terms of the output it is added to or zeros. Tried: the smallest
    window that holds the blocks (a power of two long), and greedy splits of the blocks into two
    copies t apart (``_cover``); at worst, every block (log2(count))."""
    full = (0, doublings(count))
    found = _cover(sorted(int(b) for b in blocks), count, cyclic, count.bit_length() - 1)
    return full if found is None or len(found[1]) >= len(full[1]) else found


def _cover(blocks: list[int], count: int, cyclic: bool, depth: int):
    """The window of ``blocks``, or of what remains after greedy splits into two copies t apart
    (first the three t most pairs share, then the best each time), whichever needs fewer
    doublings; None if none is valid."""
    best = _window(blocks, count, cyclic)
    if not _valid(best[0], best[1], set(blocks), count, cyclic):
        best = None
    if len(blocks) > 64:
        return best
    for first in range(3):
        current, prefix = blocks, []
        while len(current) > 1 and len(prefix) < depth:
            ranked = _differences(current, count, cyclic)
            choice = first if not prefix else 0
            if choice >= len(ranked):
                break
            t = ranked[choice]
            covered, base = set(), []
            for b in current:
                if b not in covered:
                    base.append(b)
                    covered |= {b, (b + t) % count if cyclic else b + t}
            if len(base) == len(current):
                break
            prefix, current = prefix + [t], base
            shift, steps = _window(current, count, cyclic)
            steps = steps + prefix
            if (best is None or len(steps) < len(best[1])) and _valid(shift, steps, set(blocks), count, cyclic):
                best = (shift, steps)
    return best


def _differences(blocks: list[int], count: int, cyclic: bool) -> list[int]:
    """The differences between blocks, the most frequent first."""
    pairs: dict[int, int] = {}
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            t = b - a
            pairs[t] = pairs.get(t, 0) + 1
            if cyclic:
                pairs[count - t] = pairs.get(count - t, 0) + 1
    return [t for t, _ in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]


def _window(blocks: list[int], count: int, cyclic: bool):
    """The smallest power-of-two window that holds ``blocks`` as (shift, doublings)."""
    if len(blocks) == 1:
        return blocks[0], []
    if cyclic:
        gaps = [(blocks[(i + 1) % len(blocks)] - b) % count for i, b in enumerate(blocks)]
        i = max(range(len(gaps)), key=lambda j: gaps[j])
        start = blocks[(i + 1) % len(blocks)]
        width = count - gaps[i] + 1
    else:
        start, width = blocks[0], blocks[-1] - blocks[0] + 1
    size = next_pow2(width)
    if not cyclic:
        start = min(start, count - size)
    return start % count, doublings(size)


def _valid(shift: int, steps: list[int], blocks: set, count: int, cyclic: bool) -> bool:
    sums = [shift]
    for t in steps:
        sums += [s + t for s in sums]
    if cyclic:
        sums = [s % count for s in sums]
    elif min(sums) < 0 or max(sums) >= count:
        return False
    return len(set(sums)) == len(sums) and blocks <= set(sums)
