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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .affine import MAX_MATRIX_ENTRIES, TooLarge
from .placement import Placement, next_pow2

# Relative costs (ms at N=8192, three primes, measured with SEAL on this machine) used only to
# choose between equivalent plans; the compile report uses the measured cost model.
# A rotation step no earlier map used costs a Galois key: about as many bytes as two ciphertexts of
# the chain for every client, once; weighted here as four rotations.
PLAN_COSTS = {"rotate": 1.9, "multiply_plain": 0.14, "add": 0.05, "encrypt": 2.0, "key": 7.6}
MAX_INPUT_CIPHERTEXTS = 64


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
        inputs, cos, ks, us, values = [], [], [], [], []
        self.inputs: list[tuple[int, int]] = []  # (part index, ciphertext)
        shift = slots.bit_length() - 1  # slots, periods and q are powers of two
        for index, part in enumerate(parts):
            p = part.placement.period
            sj = part.placement.pos[part.cols]
            si = out.pos[part.rows]
            d = (sj - si) & (p - 1)
            if q < p:
                k = d & (q - 1)
                us.append((si & (slots - 1)) + d - k)
            else:
                k = d
                us.append(si & (slots - 1))
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
            steps += [(a - b) * g for a, b in zip(down, down[1:])] + ([down[-1] * g] if down[-1] else [])
        block = self.span // 2
        while block >= self.gather:
            steps += [block] * len(self.giants(g))
            block //= 2
        return steps

    def cost(self, known_steps: set, g: int | None = None, client=frozenset()) -> float:
        """Relative cost: rotations, products, each rotation step no earlier map used (a new
        Galois key the client must make and send), and the client's rotated inputs."""
        steps = self.steps(g, client)
        c = PLAN_COSTS
        encrypted = sum(len(b) for i, b in self.babies(g).items() if i in client)
        return (len(steps) * c["rotate"] + self.products.size * (c["multiply_plain"] + c["add"])
                + len(set(steps) - known_steps) * c["key"] + encrypted * c["encrypt"])

    def client_step(self, known_steps: set, client) -> tuple[int, float]:
        """(baby step, cost) cheapest when the inputs in ``client`` arrive rotated by the client."""
        best = None
        g = 1
        while g <= self.length:
            cost = self.cost(known_steps, g, client)
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
