"""IR value types. Frozen dataclasses that compare by value and print in one text form.

- ``TensorType``: a tensor of one input (dimension 0 is the model's batch dimension), either
  ``secret`` (derived from encrypted data) or ``public`` (weights the server knows).
- ``CipherType`` / ``PlainType``: a tensor of CKKS ciphertexts / encoded plaintexts at a level of
  the modulus chain with a scale (stored as log2) and a number of slots.
"""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("f64", "i64", "str")


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    secret: bool
    dtype: str = "f64"

    def __post_init__(self):
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise ValueError(f"tensor dimensions must be non-negative integers, got {self.shape}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(int(d) for d in shape), self.secret, self.dtype)

    def __str__(self) -> str:
        parts = ["x".join(str(d) for d in self.shape)] if self.shape else []
        parts.append("secret" if self.secret else "public")
        if self.dtype != "f64":
            parts.append(self.dtype)
        return f"tensor<{', '.join(parts)}>"


def format_scale(scale_bits: float) -> str:
    """``2^26`` for whole powers, else the shortest float text that reads back exactly."""
    if float(scale_bits).is_integer():
        return f"2^{int(scale_bits)}"
    return f"2^{float(scale_bits)!r}"


def _shape_prefix(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) + ", " if shape else ""


@dataclass(frozen=True)
class CipherType:
    """A tensor of CKKS ciphertexts, one per element (``shape`` () for a single one).

    ``level`` counts the primes dropped since encryption (0 = fresh; each rescale or modswitch adds
    one), so passes can work before the modulus chain is chosen. ``scale_bits`` is log2 of the
    nominal scale, ``slots`` the slot count (0 until parameters are selected) and ``size`` the
    number of polynomials (3 after a ciphertext multiplication, until relinearized).
    """

    shape: tuple[int, ...]
    level: int
    scale_bits: float
    slots: int
    size: int = 2

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def but(self, shape=None, level=None, scale_bits=None, slots=None, size=None) -> "CipherType":
        """This type with the given fields changed (the others kept). Built directly: type
        inference calls it about two million times per ViT compile, and ``dataclasses.replace``
        took 8 s of them."""
        return CipherType(self.shape if shape is None else shape, self.level if level is None else level,
                          self.scale_bits if scale_bits is None else scale_bits,
                          self.slots if slots is None else slots, self.size if size is None else size)

    def __str__(self) -> str:
        size = f", size={self.size}" if self.size != 2 else ""
        return (f"cipher<{_shape_prefix(self.shape)}level={self.level}, "
                f"scale={format_scale(self.scale_bits)}, slots={self.slots}{size}>")


@dataclass(frozen=True)
class PlainType:
    """A tensor of encoded CKKS plaintexts (same fields as ``CipherType``, no size)."""

    shape: tuple[int, ...]
    level: int
    scale_bits: float
    slots: int

    def __str__(self) -> str:
        return (f"plain<{_shape_prefix(self.shape)}level={self.level}, "
                f"scale={format_scale(self.scale_bits)}, slots={self.slots}>")


Type = TensorType | CipherType | PlainType
