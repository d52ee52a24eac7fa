"""Type checks shared by the config validators (env contract, CARLA backend, trainer YAML)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["is_finite_number", "is_int", "non_negative_number", "positive_number"]


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A finite real number (Python or numpy int/float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive_number(label: str, value: Any) -> float:
    """``value`` as a float; ``ValueError("<label> must be a finite number > 0, got ...")`` otherwise."""
    if not is_finite_number(value) or not value > 0:
        raise ValueError(f"{label} must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative_number(label: str, value: Any) -> float:
    """``value`` as a float; ``ValueError("<label> must be a finite number >= 0, got ...")`` otherwise."""
    if not is_finite_number(value) or value < 0:
        raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
    return float(value)
