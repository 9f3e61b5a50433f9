"""CKKS parameter facts shared by parameter selection, validation and the backends."""
from __future__ import annotations

import math

# HomomorphicEncryption.org standard, 128-bit classical security, ternary secret: the largest
# total coefficient-modulus size (all primes, the special prime included) for each ring degree.
MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
MAX_PRIME_BITS = 60
MARGIN_BITS = 3  # headroom over the calibrated max |value|: inputs may exceed the calibration set


def needed_bits(scale_bits: float, max_abs: float) -> float:
    """Bits a value needs below the modulus: scale, magnitude, sign and headroom."""
    magnitude = math.log2(max_abs) if max_abs and max_abs > 0 and math.isfinite(max_abs) else 0.0
    return scale_bits + max(magnitude, 0.0) + 1 + MARGIN_BITS


def min_prime_bits(poly_modulus_degree: int) -> int:
    """SEAL's primes are 1 mod 2N; a prime of fewer bits than this cannot exist."""
    return int(math.log2(2 * poly_modulus_degree)) + 2


def data_primes(chain: list[int]) -> list[int]:
    """The primes a fresh ciphertext has: all but the special (key-switching) prime, or the one
    prime of a chain that has no special prime (a program with no rotation or relinearization
    and no rescale needs none: SEAL then encrypts under its only prime)."""
    return list(chain[:-1]) if len(chain) > 1 else list(chain)


def modulus_bits_at(chain: list[int], level: int) -> int:
    """Total bits of the primes a ciphertext at ``level`` still has (special prime excluded).
    ``chain`` is SEAL's order: [q0, p_{D-1}, ..., p_0, special]; level l has dropped p_0..p_{l-1}."""
    data = data_primes(chain)
    return sum(data[: len(data) - level])
