"""The client's gathered input for a first convolution (or pooling) whose output is a grid: the
server then needs a few rotations by whole output rows and no other.

An expanded input (``SlotsLowering.expanded_map``) holds, at each output's slot, the pixel of one
tap: as many ciphertexts as the kernel has taps (25 for a 5x5 kernel, each encrypted and sent by
the client). A convolution of stride s anchors output row oy at input row s * oy, so the tap of
kernel row ty for output row oy reads the same input row as the tap of row ty - s * m for output
row oy + m. A gathered ciphertext G(r, tx) holds, at the slot of output (oy, ox), the input pixel
(s * oy + r, s * ox + tx) for one residue r < s of the tap rows and one tap column tx; the
server multiplies it by the weights of taps r + s * m and rotates those products by m output rows
(Horner: one Galois key). LeNet-5's first convolution (5x5, stride 2) then takes 10 ciphertexts
and 2 rotations instead of 25 ciphertexts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .placement import Geometry, Placement


@dataclass
class GatherPlan:
    """The gathered input: ``layout`` (ciphertexts x slots, the input element of each slot or
    -1), and per product (ciphertext, rotation in output rows, weight row over the slots)."""

    layout: np.ndarray
    products: list[tuple[int, int, np.ndarray]]
    row_step: int  # slots per output row

    @property
    def rotations(self) -> int:
        return len({m for _, m, _ in self.products}) - 1


def gathered_taps(geometry: Geometry, in_shape, out_shape, rows, cols):
    """Per weight entry (rows: output elements, cols: input elements) of a window op on the
    input's grid: the row shift its tap needs (in output rows) and the gathered ciphertext it is
    read from (one per input channel, tap row residue and tap column)."""
    _, c_in, h_in, w_in = in_shape
    _, c_out, h_out, w_out = out_shape
    sy, sx = geometry.sy, geometry.sx
    channel, y, x = np.unravel_index(cols, (c_in, h_in, w_in))
    _, oy, ox = np.unravel_index(rows, (c_out, h_out, w_out))
    ty, tx = y - sy * oy, x - sx * ox
    base = int(ty.min())
    shift, residue = (ty - base) // sy, (ty - base) % sy
    columns = tx - int(tx.min())
    return shift, (channel * sy + residue) * (int(columns.max()) + 1) + columns


def gather_plan(geometry: Geometry | None, in_shape, out_shape, out: Placement, rows, cols, vals,
                slots: int) -> GatherPlan | None:
    """The plan for weights (rows: output elements, cols: input elements) from an input of
    ``in_shape`` (1, C, H, W) to ``out`` (a grid placement of ``out_shape``); None when the map
    is not a window op on the input's grid or its taps would not line up (then the
    expanded or periodic layouts serve)."""
    if (geometry is None or out.grid is None or out.cts != 1 or out.period != slots or len(in_shape) != 4
            or len(out_shape) != 4 or geometry.y0 or geometry.x0 or not rows.size):
        return None
    shift, gathered = gathered_taps(geometry, in_shape, out_shape, rows, cols)
    row_step = out.grid.ys
    slot = out.pos[rows] + shift * row_step
    if slot.max() >= slots:
        return None
    # every gathered ciphertext holds one input element per slot: the shifted taps must agree
    key = gathered * slots + slot
    order = np.argsort(key, kind="stable")
    key, element = key[order], cols[order]
    same = key[1:] == key[:-1]
    if np.any(element[1:][same] != element[:-1][same]):
        return None
    count = int(gathered.max()) + 1
    layout = np.full((count, slots), -1, dtype=np.int64)
    layout[gathered, slot] = cols
    products = []
    for m in np.unique(shift).tolist():
        for g in np.unique(gathered[shift == m]).tolist():
            mine = (shift == m) & (gathered == g)
            weights = np.zeros(slots)
            np.add.at(weights, slot[mine], vals[mine])
            products.append((int(g), int(m), weights))
    return GatherPlan(layout, products, int(row_step))
