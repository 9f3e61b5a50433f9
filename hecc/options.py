"""Compile options: one typed object with the defaults and the checks, shared by the CLI and the
Python API (the CLI only parses; ``CompileOptions.checked`` says what is wrong for both).

Every option is checked for type, finiteness and range, and the message gives the allowed range.
The passes read the options as a dict (``as_dict``), the form ``hecc opt`` also gives them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import UserError

LAYOUTS = ("auto", "batch", "slots", "packed")
OBJECTIVES = ("time", "operations")


class OptionError(UserError):
    """A compile option out of its allowed range."""


@dataclass(frozen=True)
class CompileOptions:
    layout: str = "auto"
    scale_bits: int | None = None  # batch: 26; slots: 22 with merged levels, else 26
    weight_scale_bits: int | None = None  # batch: 14; eager baseline: scale_bits; slots: see api._slots_variants
    rescale: str = "lazy"
    max_rotation_keys: int | None = None
    activation_degree: int | None = None
    approx_error: float = 0.01
    activation_margin: float = 0.1
    objective: str = "time"

    RANGES = {"scale_bits": (16, 60), "weight_scale_bits": (8, 60), "max_rotation_keys": (1, 1 << 15),
              "activation_degree": (1, 31)}

    def checked(self) -> "CompileOptions":
        """This object, or OptionError naming the first option out of range."""
        if self.layout not in LAYOUTS:
            raise OptionError(f"layout {self.layout!r}: choose auto, batch, slots or packed")
        if self.objective not in OBJECTIVES:
            raise OptionError(f"objective {self.objective!r}: choose time (this machine's costs) or operations "
                              "(every product and rotation counted alike)")
        if self.rescale not in ("lazy", "eager"):
            raise OptionError(f"rescale {self.rescale!r}: choose lazy or eager")
        for name, (lo, hi) in self.RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise OptionError(f"{name.replace('_', '-')} must be an integer from {lo} to {hi}, got {value!r}")
        if not _real(self.approx_error) or not 0 < self.approx_error <= 1:
            raise OptionError(f"approx-error must be a number in (0, 1] (a fraction of the activation's "
                              f"range), got {self.approx_error!r}")
        if not _real(self.activation_margin) or not 0 <= self.activation_margin <= 1:
            raise OptionError(f"activation-margin must be a number from 0 to 1 (a fraction of the "
                              f"calibrated interval's width), got {self.activation_margin!r}")
        return self

    def as_dict(self) -> dict:
        """The options as the passes read them."""
        d = asdict(self)
        d["margin"] = d.pop("activation_margin")
        return d


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
