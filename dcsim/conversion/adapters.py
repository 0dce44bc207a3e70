"""Quantizer adapters: how :func:`dcsim.convert` reads an activation module it did not define.

An adapter is a function ``fn(module) -> Quantization`` that reads one activation module and
returns its step s, its highest level Qp and its rounding. The converter turns every module an
adapter claims into integrate-and-fire neurons with threshold th = Qp * s. Recognition is
explicit: ``dcsim.convert(model, quantizers=...)`` takes either a mapping ``{ModuleClass: fn}``
(isinstance match) or a sequence of ``(ModuleClass_or_predicate, fn)`` pairs, where a predicate
is a callable ``predicate(module) -> bool``. Entries are tried in order, before the built-ins
(:data:`BUILTIN`: dcsim's own :class:`~dcsim.models.lsq.LSQActivation` and
:class:`~dcsim.conversion.thresholds.ClipReLU`); attribute names are never guessed.

Adapters for activation kinds trained elsewhere (pass them for the user's class):

- :func:`official_lsq`: the official Dynamic Confidence code's ``LsqActivation`` (parameter
  ``scale`` [1], attribute ``constraint`` = bits): s = scale, Qp = 2^bits - 1, rounding
  ``torch.round`` = half to even.
- :func:`clip_floor_shift`: QCFS-style ``theta/L * clip(floor(x L / theta + 0.5), 0, L)``
  (attributes ``thresh`` and ``L`` in the QCFS code, names configurable): s = theta / L,
  Qp = L, rounding half up.

Exactness. With u0 = th/2, an IF neuron driven by a constant current x for T = Qp steps fires
exactly floor(x/s + 0.5) clipped to [0, Qp] times, so its mean output current equals the
half-up quantized activation s * clip(floor(x/s + 0.5), 0, Qp) exactly. Half-to-even rounding
differs from that only at exact ties x/s = k + 0.5 with k even (k < Qp): the ANN gives k, the
SNN gives k + 1, one level (one spike) more; everywhere else both are equal. The converter
converts half-to-even layers anyway and says so with a :class:`RoundingWarning`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..checks import check_int

ROUNDINGS = ("half_up", "half_even")


class RoundingWarning(UserWarning):
    """A converted layer rounds half to even; its IF neurons round half up (one level more at even ties)."""


@dataclass(frozen=True)
class Quantization:
    """What the converter needs to know about one activation layer.

    step:     s > 0, the value of one level (same unit as the activation's input).
    levels:   Qp >= 1, the highest level (outputs s * {0..Qp}); None for an unquantized
              clip min(max(x, 0), step) (thresholds from data, see dcsim.conversion.thresholds),
              whose SNN resolution is set by the simulation length T instead.
    rounding: "half_up" (floor(v + 0.5), what IF neurons with u0 = th/2 reproduce exactly)
              or "half_even" (torch.round; differs only at ties, see the module doc).
    """

    step: float
    levels: int | None
    rounding: str = "half_up"

    def __post_init__(self) -> None:
        if (
            isinstance(self.step, bool)
            or not isinstance(self.step, (int, float))
            or not math.isfinite(self.step)
            or not self.step > 0
        ):
            raise ValueError(f"the step must be a finite number > 0, got {self.step!r}")
        if self.levels is not None:
            check_int(self.levels, "the levels Qp (None for an unquantized clip)")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"the rounding must be one of {ROUNDINGS}, got {self.rounding!r}")

    @property
    def threshold(self) -> float:
        """The IF threshold th = Qp * s (s itself for an unquantized clip)."""
        return self.step * (self.levels or 1)

    @property
    def bits(self) -> int | None:
        """b when Qp = 2^b - 1, else None."""
        if self.levels is None:
            return None
        b = (self.levels + 1).bit_length() - 1
        return b if 2**b == self.levels + 1 else None


Adapter = Callable[[nn.Module], Quantization]
Matcher = type | Callable[[nn.Module], bool]
Quantizers = Mapping[type, Adapter] | Sequence[tuple[Matcher, Adapter]] | None


def _scalar(module: nn.Module, attribute: str) -> float:
    """The one-element tensor or number ``module.<attribute>`` as a float."""
    if not hasattr(module, attribute):
        raise ValueError(f"it has no attribute {attribute!r}")
    value = getattr(module, attribute)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"its {attribute!r} must hold one value, got shape {list(value.shape)}")
        return float(value.detach().float().reshape(()))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"its {attribute!r} must be a number or a one-element tensor, got {type(value).__name__}")


def _integer(module: nn.Module, attribute: str) -> int:
    value = _scalar(module, attribute)
    if value != int(value):
        raise ValueError(f"its {attribute!r} must be an integer, got {value}")
    return int(value)


def dcsim_lsq(module: nn.Module) -> Quantization:
    """dcsim's :class:`~dcsim.models.lsq.LSQActivation`: s = step, Qp = 2^bits - 1, half up."""
    from ..models.lsq import LSQActivation

    if not isinstance(module, LSQActivation):
        raise ValueError(f"it is a {type(module).__name__}, not a dcsim LSQActivation")
    if not module.quantize:
        raise ValueError(
            "it is in float (ReLU) mode; enable quantization first (dcsim.models.lsq.set_quantization(model, True)) "
            "or clip it at thresholds from data with dcsim.conversion.thresholds.clip_relus"
        )
    return Quantization(float(module.step.detach()), module.qp, "half_up")


def official_lsq(module: nn.Module) -> Quantization:
    """The official Dynamic Confidence ``LsqActivation``: s = ``scale``, Qp = 2^``constraint`` - 1, half to even."""
    return Quantization(_scalar(module, "scale"), 2 ** _integer(module, "constraint") - 1, "half_even")


def clip_floor_shift(threshold: str = "thresh", levels: str = "L") -> Adapter:
    """Adapter for a QCFS clip-floor-shift activation theta/L * clip(floor(x L / theta + 0.5), 0, L).

    threshold, levels: the module's attribute names of theta (a number or one-element tensor)
    and L (an integer); the defaults are those of the QCFS code. Returns s = theta / L, Qp = L,
    rounding half up.
    """

    def adapter(module: nn.Module) -> Quantization:
        theta, L = _scalar(module, threshold), _integer(module, levels)
        if L < 1:
            raise ValueError(f"its level count {levels!r} must be >= 1, got {L}")
        return Quantization(theta / L, L, "half_up")

    adapter.__name__ = f"clip_floor_shift({threshold!r}, {levels!r})"
    return adapter


def clip_relu(module: nn.Module) -> Quantization:
    """dcsim's :class:`~dcsim.conversion.thresholds.ClipReLU`: an unquantized clip at its threshold."""
    from .thresholds import ClipReLU

    if not isinstance(module, ClipReLU):
        raise ValueError(f"it is a {type(module).__name__}, not a dcsim ClipReLU")
    return Quantization(float(module.threshold), None, "half_up")


def _builtin() -> list[tuple[Matcher, Adapter]]:
    from ..models.lsq import LSQActivation
    from .thresholds import ClipReLU

    return [(LSQActivation, dcsim_lsq), (ClipReLU, clip_relu)]


def registry(quantizers: Quantizers = None) -> list[tuple[Matcher, Adapter]]:
    """The ordered (matcher, adapter) list for ``quantizers`` followed by the built-ins.

    Raises TypeError naming ``quantizers`` when an entry is not a class or predicate with a
    callable adapter.
    """
    if quantizers is None:
        entries: list[tuple[Matcher, Adapter]] = []
    elif isinstance(quantizers, Mapping):
        entries = list(quantizers.items())
    elif isinstance(quantizers, Sequence) and not isinstance(quantizers, (str, bytes)):
        entries = list(quantizers)
    else:
        raise TypeError(
            f"quantizers must be a dict {{ModuleClass: fn}} or a list of (class or predicate, fn) pairs, "
            f"got {type(quantizers).__name__}"
        )
    for i, entry in enumerate(entries):
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise TypeError(f"quantizers entry {i} must be a (class or predicate, fn) pair, got {entry!r}")
        matcher, fn = entry
        if not (isinstance(matcher, type) or callable(matcher)):
            raise TypeError(f"quantizers entry {i}: {matcher!r} is neither a module class nor a predicate")
        if not callable(fn):
            raise TypeError(f"quantizers entry {i}: the adapter {fn!r} is not callable")
    return entries + _builtin()


def find_adapter(module: nn.Module, entries: list[tuple[Matcher, Adapter]]) -> Adapter | None:
    """The first adapter whose class (isinstance) or predicate matches ``module``, else None."""
    for matcher, fn in entries:
        if isinstance(matcher, type):
            if isinstance(module, matcher):
                return fn
        elif matcher(module):
            return fn
    return None


def quantize_reference(x: torch.Tensor, q: Quantization) -> torch.Tensor:
    """The ANN activation a quantized layer computes: s * clip(round(x / s), 0, Qp) with q's rounding.

    For an unquantized clip (levels None) min(max(x, 0), s). x: any float tensor; same shape out.
    """
    if q.levels is None:
        return x.clamp(0, q.step)
    v = (x / q.step).clamp(0, q.levels)
    return (torch.floor(v + 0.5) if q.rounding == "half_up" else torch.round(v)) * q.step
