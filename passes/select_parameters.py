"""select-parameters: chooses N and the coefficient-modulus chain for the program.

One prime per level transition, of the size the rescales at that level divide by (modswitch-only
levels get a waterline-sized prime); q0, the prime left at the bottom, just large enough for every
value at its level (scale + calibrated magnitude + sign + 3 bits of headroom, see hecc.params); a
special prime as large as the largest data prime (none for a program with one data prime that neither
rotates nor relinearizes: SEAL then encrypts under that prime alone, and a small linear model
fits N=2048). N is the smallest ring degree whose 128-bit
bound (HomomorphicEncryption.org: 8192 -> 218, 16384 -> 438, 32768 -> 881 bits, all primes
counted) holds the chain. There is no insecure fallback.

Assumes: ckks IR with rescales, relinearizations and level alignment done; ``graph.meta["max_abs"]``.
In the slots layout the lowering already fixed the slot count, so N is 2 x slots (SlotsMismatch
when the chain needs a larger ring: lower again), and a program that rotates gets a 60-bit special
prime as large as the 128-bit bound allows, up to 60 bits (it divides the key-switching error of
rotations at the waterline scale).

Guarantees: a ``ckks.params`` op first; every ciphertext type's ``slots`` is N/2; raises
ParameterError naming the depth and modulus needed and the most available when nothing fits.
Options: scale_bits (26), inputs_per_ciphertext (slots layout: the ring holds that many of the
lowering's slot counts, one per input, interleaved; 1).
"""
from __future__ import annotations

import math

from hecc.errors import ParameterError
from hecc.ir import CipherType, Graph, Op
from hecc.params import MAX_MODULUS_BITS_128, MAX_PRIME_BITS, data_primes, min_prime_bits, needed_bits
from hecc.rewrite import is_slots_layout, retype

NAME = "select-parameters"


def _transition_bits(graph: Graph, depth: int, waterline: int) -> list[int]:
    bits: dict[int, set[int]] = {}
    for op in graph.ops:
        if op.name == "ckks.rescale":
            bits.setdefault(op.operands[0].type.level, set()).add(op.attrs["bits"])
        elif op.name == "ckks.linear" and op.attrs.get("rescale_terms"):
            bits.setdefault(op.operands[0].type.level, set()).add(op.attrs["weight_scale"])
    out = []
    for level in range(depth):
        sizes = bits.get(level, {waterline})
        if len(sizes) > 1:
            raise ParameterError(f"rescales from level {level} divide by primes of different sizes "
                                 f"({sorted(sizes)} bits); use one scale for the whole program")
        out.append(sizes.pop())
    return out


def choose_chain(graph: Graph, waterline: int) -> tuple[int, list[int]]:
    ciphers = [v for op in graph.ops for v in op.results if isinstance(v.type, CipherType)]
    if not ciphers:
        raise ParameterError("the program has no encrypted values")
    depth = max(v.type.level for v in ciphers)
    primes = _transition_bits(graph, depth, waterline)
    max_abs = graph.meta.get("max_abs", {})
    q0 = 20
    for v in ciphers:
        above = sum(primes[v.type.level:])
        q0 = max(q0, math.ceil(needed_bits(v.type.scale_bits, max_abs.get(v, float("nan"))) - above))
    if q0 > MAX_PRIME_BITS:
        raise ParameterError(f"the values at the last level need a {q0}-bit bottom prime, more than "
                             f"{MAX_PRIME_BITS}; lower --weight-scale-bits or --scale-bits")
    data = [q0] + primes[::-1]
    # the special prime divides the key-switching error: relinearization happens at a high scale,
    # where one the size of the data primes suffices, but a rotation may act on a value at the
    # waterline
    rotates = any(op.name == "ckks.rotate" for op in graph.ops)
    keyless = not rotates and not any(op.name == "ckks.relinearize" for op in graph.ops)
    # one prime and no key switching: SEAL encrypts under that prime alone, and the 128-bit bound
    # counts no special prime (a small linear model's ring then halves: N=2048 holds 54 bits)
    chain = data if keyless and len(data) == 1 else data + [max(data)]
    total = sum(chain)
    for n, limit in sorted(MAX_MODULUS_BITS_128.items()):
        if total <= limit and min(chain) >= min_prime_bits(n) and n >= 2048:
            if rotates:  # as large as the security bound allows
                chain[-1] = max(chain[-1], min(MAX_PRIME_BITS, limit - sum(data)))
            return n, chain
    most = max(MAX_MODULUS_BITS_128.values())
    shown = f" ({chain})" if len(chain) <= 12 else ""
    if total <= most:  # the bits fit; the primes are too small for a ring that holds them
        n = min(n for n, limit in MAX_MODULUS_BITS_128.items() if total <= limit and n >= 2048)
        raise ParameterError(f"the program rescales by {min(chain)}-bit primes{shown}, but N={n} needs "
                             f"primes of at least {min_prime_bits(n)} bits (a prime must be 1 modulo "
                             "2N); raise --weight-scale-bits or --scale-bits")
    raise ParameterError(f"the program needs multiplicative depth {depth} and a {total}-bit modulus"
                         f"{shown}; the most any 128-bit-secure parameter set offers is {most} bits "
                         f"(N={max(MAX_MODULUS_BITS_128)}). Use fewer multiplications (lower-degree "
                         "activations, fewer layers) or smaller scales")


def smallest_ring(chain: list[int]) -> int | None:
    """The smallest ring degree whose 128-bit bound holds ``chain``'s data primes with a special
    prime as large as the largest of them, and whose primes can all exist (None: none)."""
    data = data_primes(chain)
    needed = data + [max(data)]
    for n, limit in sorted(MAX_MODULUS_BITS_128.items()):
        if n >= 2048 and sum(needed) <= limit and min(needed) >= min_prime_bits(n):
            return n
    return None


class SlotsMismatch(ParameterError):
    """The program was laid out for fewer slots than the parameters it needs give."""

    def __init__(self, n: int, slots: int, per_ciphertext: int = 1):
        super().__init__(f"the program was laid out for {slots} slots but needs N={n} "
                         f"({n // 2} slots); lower it again with slots={n // 2 // per_ciphertext}")
        self.n = n


def run(graph: Graph, options: dict | None = None) -> Graph:
    options = dict(options or {})
    waterline = int(options.get("scale_bits", 26))
    n, chain = choose_chain(graph, waterline)
    slots_layout = is_slots_layout(graph)
    per_ct = int(options.get("inputs_per_ciphertext", 1)) if slots_layout else 1
    if slots_layout:
        laid_out = graph.inputs()[0].result.type.slots * per_ct
        if n // 2 > laid_out:
            raise SlotsMismatch(n, laid_out // per_ct, per_ct)
        n = 2 * laid_out  # a larger ring only adds security
    graph.ops = [op for op in graph.ops if op.name != "ckks.params"]
    attrs = {"poly_modulus_degree": n, "coeff_modulus_bits": chain, "security": 128,
             "layout": "slots" if slots_layout else "batch"}
    if per_ct > 1:
        attrs["inputs_per_ciphertext"] = per_ct
    params = Op("ckks.params", [], [], attrs)
    graph.ops.insert(0, params)
    for op in graph.ops:
        if op.name == "hecc.input" and isinstance(op.result.type, CipherType):
            op.result.type = op.result.type.but(slots=n // 2)
    retype(graph)
    return graph
