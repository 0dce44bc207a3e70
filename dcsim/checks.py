"""Shared argument checks of the library: integers, reals and confidence thresholds, with errors that name the argument."""

from __future__ import annotations

import math
import numbers


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools refused); a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(
    value: object, name: str, low: float | None = None, high: float | None = None, low_allowed: bool = True
) -> float:
    """``value`` as a finite float in [low, high] (``low_allowed`` False: above low); bools refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    x = float(value)
    below = low is not None and (x < low or (x == low and not low_allowed))
    if below or (high is not None and x > high):
        bounds = (
            f"{'[' if low_allowed else '('}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        )
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return x


def check_threshold(value: object, name: str = "threshold") -> float:
    """``value`` as a float in [0, 1] (a confidence threshold); bools and NaN refused, a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)
