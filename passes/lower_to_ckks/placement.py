"""Where a slots-layout value's elements live: ``Placement`` (a slot per element over one or more
ciphertexts), the ``Grid`` of a (C, H, W) tensor's placement and the ``Geometry`` of an affine
form on its bases' grid, and the candidate placements a linear map's output may take.

A convolution or pooling of stride s reads, for output (oy, ox), input rows s * oy + taps. If its
output lives on its input's grid at rows s * oy (the grid's strides times s), every tap is the
same rotation for every output position, and the s^2 - 1 rows and columns in between hold other
output channels (multiplexed packing, as in Orion and in Lee et al.'s multiplexed parallel
convolutions): a strided convolution then needs (channel blocks x taps) products and no
repacking, where a compact output would need a diagonal per output position.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class Grid:
    """A (C, H, W) tensor's elements at slot c_off[c] + y * ys + x * xs (global slots: ciphertext
    slot // slots); ``block`` is the spacing of channel blocks, for channels beyond C."""

    c_off: tuple
    ys: int
    xs: int
    block: int
    shape: tuple  # (C, H, W)

    def positions(self) -> np.ndarray:
        c, h, w = self.shape
        return (np.asarray(self.c_off, dtype=np.int64)[:, None, None] + np.arange(h)[None, :, None] * self.ys
                + np.arange(w)[None, None, :] * self.xs).ravel()


@dataclass(frozen=True)
class Geometry:
    """Where an affine form's (1, C, H, W) elements lie on its bases' grid: element (c, oy, ox)
    is anchored at grid row y0 + oy * sy, column x0 + ox * sx (a convolution anchors an output
    at the input position of its stride, s * oy)."""

    grid: Grid
    sy: int
    sx: int
    y0: int
    x0: int

    def window(self, stride, pad_begin):
        """The geometry after a convolution or pooling with these strides; padding only shifts
        which input row a tap reads, not the anchor."""
        return Geometry(self.grid, self.sy * stride[0], self.sx * stride[1], self.y0, self.x0)

    def padded(self, top: int, left: int):
        return Geometry(self.grid, self.sy, self.sx, self.y0 - top * self.sy, self.x0 - left * self.sx)


class Placement:
    """Slot of each element of one input's tensor: element e in ciphertext pos[e] // slots at slot
    pos[e] % slots. A single ciphertext may hold its content periodically (``period``, a power of
    two dividing the slots: slots s and s + period hold the same value, and pos < period);
    several ciphertexts have period = slots. ``grid``: the (C, H, W) structure of ``pos``, if any."""

    __slots__ = ("pos", "period", "cts", "grid", "kind", "span", "gather")

    def __init__(self, pos, period: int, cts: int, grid: Grid | None = None, kind: str = "",
                 span: int = 0, gather: int = 0):
        self.pos = np.asarray(pos, dtype=np.int64)
        self.period, self.cts, self.grid, self.kind = int(period), int(cts), grid, kind
        # spanned: a linear map's input repeats every ``span`` slots, and each span of the one
        # ciphertext gathers other elements into its first ``gather`` slots (else: the period)
        self.span, self.gather = int(span), int(gather or period)

    def same(self, other: "Placement") -> bool:
        return (self.period == other.period and self.cts == other.cts and self.span == other.span
                and self.gather == other.gather and np.array_equal(self.pos, other.pos))

    def with_period(self, period: int) -> "Placement":
        return Placement(self.pos, period, self.cts, self.grid, self.kind)

    @property
    def extent(self) -> int:
        return int(self.pos.max()) + 1 if self.pos.size else 1


def spread(pos: np.ndarray, slots: int, grid: Grid | None, kind: str) -> Placement | None:
    """A placement for positions ``pos`` (distinct, >= 0): one ciphertext with the smallest period
    that holds them, or several of ``slots`` each; None if positions collide."""
    if pos.size and (pos.min() < 0 or np.unique(pos).size != pos.size):
        return None
    extent = int(pos.max()) + 1 if pos.size else 1
    if extent <= slots:
        return Placement(pos, next_pow2(extent), 1, grid, kind)
    return Placement(pos, slots, -(-extent // slots), grid, kind)


def compact(n: int, slots: int) -> Placement:
    """Element i at slot i."""
    return spread(np.arange(n), slots, None, "compact")


def blocked_grid(shape, slots: int) -> Placement | None:
    """A (1, C, H, W) tensor channel by channel, each channel's rows in a block of a power-of-two
    number of slots (so channel offsets wrap around a ciphertext's period); no channel straddles
    two ciphertexts."""
    if len(shape) != 4 or shape[0] != 1:
        return None
    c, h, w = shape[1:]
    block = next_pow2(h * w)
    if block > slots:
        return None
    # rows a power of two apart when that costs no slots: then a tap's row and column offsets
    # separate into giant and baby steps (powers of two)
    row = next_pow2(w) if next_pow2(h * next_pow2(w)) == block else w
    per = slots // block
    c_off = tuple(int((k // per) * slots + (k % per) * block) for k in range(c))
    grid = Grid(c_off, row, 1, block, (c, h, w))
    return spread(grid.positions(), slots, grid, "grid")


def multiplexed(geometry: Geometry, shape, slots: int) -> Placement | None:
    """The output of a convolution or pooling on its input's grid (see the module docstring): the
    sy x sx positions between strided rows and columns hold consecutive channels, then the
    input's channel blocks, then further blocks of the same spacing. None when that does not
    fit (positions would collide)."""
    if len(shape) != 4 or shape[0] != 1:
        return None
    grid = geometry.grid
    c, h, w = shape[1:]
    per_block = geometry.sy * geometry.sx
    k = np.arange(c)
    sub, blk = k % per_block, k // per_block
    a, b = sub // geometry.sx, sub % geometry.sx
    inputs = np.asarray(grid.c_off, dtype=np.int64)
    blocks = np.where(blk < inputs.size, inputs[np.minimum(blk, inputs.size - 1)], inputs[0] + blk * grid.block)
    c_off = blocks + a * grid.ys + b * grid.xs + geometry.y0 * grid.ys + geometry.x0 * grid.xs
    ys, xs = geometry.sy * grid.ys, geometry.sx * grid.xs
    shift = min(0, int(c_off.min()))
    c_off = c_off - shift
    out = Grid(tuple(int(v) for v in c_off), int(ys), int(xs), grid.block, (c, h, w))
    return spread(out.positions(), slots, out, "multiplexed")


def spanned(n: int, input_period: int, slots: int) -> Placement | None:
    """n elements over the spans of a ciphertext whose input repeats every ``input_period``
    slots: span r gathers elements r * q .. r * q + q - 1 into its first q slots, q the power of
    two that fits them all. A dense map then needs q diagonals, not the n of a compact output
    (LeNet-5's 3,136 -> 512 layer: 256 products instead of 512). None when it does not apply."""
    spans = slots // input_period
    if spans < 2:
        return None
    q = next_pow2(-(-n // spans))
    if q >= input_period:
        return None
    i = np.arange(n)
    return Placement((i // q) * input_period + i % q, slots, 1, None, "spanned", input_period, q)


def gathered(placement: Placement, period: int) -> Placement:
    """``placement``'s elements (one ciphertext, period q) in a ciphertext of a longer ``period``
    whose other q-slot blocks hold no copy of them: the map computing it then adds up only the
    blocks that hold its products (``diagonal.block_sums``), not all period / q of them. For a
    value the client decrypts, which no later map reads with the short period."""
    return Placement(placement.pos, period, 1, placement.grid, placement.kind, period, placement.period)


def rows(shape, stride: int, slots: int) -> Placement | None:
    """A tensor of shape (..., cols) as rows of ``stride`` slots (a power of two >= cols): element
    (r, c) of its rows at r * stride + c. Maps applied to every row alike (a transformer's
    per-token dense layers) then have the diagonals c_in - c_out between two such placements of
    one stride, whatever the number of rows. None when a row does not fit."""
    if len(shape) < 2 or not 2 <= shape[-1] <= stride:
        return None
    r, c = np.divmod(np.arange(int(np.prod(shape, dtype=np.int64))), int(shape[-1]))
    return spread(r * stride + c, slots, None, f"rows{stride}")


def row_stride(placement: Placement) -> int | None:
    """The stride of a ``rows`` placement, else None."""
    kind = placement.kind
    return int(kind[4:]) if kind.startswith("rows") and kind[4:].isdigit() else None
