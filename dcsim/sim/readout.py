"""Stopping scores read from the running output sums S_t.

A readout turns S_t (float32 [n, K], the sum of output-layer currents over the steps run so
far) into a score in [0, 1]; a sample stops at the first step whose score is strictly greater
than the threshold th_c (or at T).

- ``max_softmax`` (the paper): P_t = max softmax(S_t / (alpha * tau)).
- ``entropy``: 1 - H(softmax(S_t / (alpha * tau))) / log K.
- ``margin``: top-1 minus top-2 softmax probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

READOUT_KINDS: dict[str, int] = {"max_softmax": 0, "entropy": 1, "margin": 2}
"""Readout names and their codes in the native kernels (csrc/dcsim_math.h)."""

OFFICIAL_DEMO_ALPHA = 30.0
"""The official Dynamic Confidence demo divides S_t by 30 (with T = 27) and uses no tau."""


@dataclass(frozen=True)
class Readout:
    """Scoring rule: ``kind`` with logits S_t / (alpha * tau).

    alpha: scale regulating saturation (paper: 2^b - 1 for QFFS, T for QCFS), > 0.
    tau:   temperature fitted on the ANN by temperature scaling, > 0.
    """

    kind: str = "max_softmax"
    alpha: float = 1.0
    tau: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in READOUT_KINDS:
            raise ValueError(f"readout kind must be one of {sorted(READOUT_KINDS)}, got {self.kind!r}")
        for name in ("alpha", "tau"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"readout {name} must be a finite number > 0, got {value!r}")

    @property
    def code(self) -> int:
        """Integer code of ``kind`` for the native kernels."""
        return READOUT_KINDS[self.kind]

    @property
    def scale(self) -> float:
        """Multiplier applied to S_t before the softmax: 1 / (alpha * tau)."""
        return 1.0 / (self.alpha * self.tau)

    @classmethod
    def paper(cls, method: str, bits: int | None, steps: int, tau: float = 1.0, kind: str = "max_softmax") -> Readout:
        """The paper's alpha: 2^bits - 1 for QFFS, the simulation length T for QCFS (bits unused: may be None)."""
        if method == "qffs":
            if bits is None:
                raise ValueError("QFFS's paper alpha 2^bits - 1 needs the activations' bit width, got bits=None")
            alpha = float(2**bits - 1)
        elif method == "qcfs":
            alpha = float(steps)
        else:
            raise ValueError(f"method must be 'qcfs' or 'qffs', got {method!r}")
        return cls(kind=kind, alpha=alpha, tau=tau)

    def to_dict(self) -> dict[str, str | float]:
        return {"kind": self.kind, "alpha": self.alpha, "tau": self.tau}
