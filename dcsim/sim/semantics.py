"""How the image and the biases drive a spiking network over time: one value type for the whole package."""

from __future__ import annotations

from enum import Enum

import torch


class Semantics(str, Enum):
    """``CONSTANT``: the image and every bias drive the network at every step (QCFS; QFFS as the
    official code). ``SETTLE`` (QFFS only, its default): they drive the first ``drive_steps`` steps
    (the layers' Qp), then the network settles and negative spikes correct it.

    A ``str`` enum: it compares equal to, and writes to JSON as, its value ('constant' / 'settle').
    """

    CONSTANT = "constant"
    SETTLE = "settle"

    @classmethod
    def default(cls, method: str) -> Semantics:
        """The semantics of ``method`` when none is asked for: SETTLE for QFFS, CONSTANT for QCFS."""
        return cls.SETTLE if method == "qffs" else cls.CONSTANT

    @classmethod
    def resolve(cls, value: str | Semantics | None, method: str, name: str = "semantics") -> Semantics:
        """``value`` checked against ``method`` (None: the method's default); errors name ``name``."""
        if value is None:
            return cls.default(method)
        try:
            semantics = cls(value)
        except ValueError:
            raise ValueError(f"{name} must be one of {[s.value for s in cls]}, got {value!r}") from None
        if semantics is cls.SETTLE and method != "qffs":
            raise ValueError(
                f"{name} 'settle' applies to QFFS only (negative spikes correct the settling); "
                f"method {method!r} supports 'constant' only"
            )
        return semantics


def gated(v: torch.Tensor, drive: torch.Tensor | bool) -> torch.Tensor:
    """A drive term v [r, ...] (the image-fed values or a bias, per row) under ``drive``: True / False for every row,
    or float32 [r] of 0 and 1 per row: v itself, zeros, or v times the row's 0/1."""
    if drive is True:
        return v
    return torch.zeros_like(v) if drive is False else v * drive.reshape(-1, *([1] * (v.dim() - 1)))
