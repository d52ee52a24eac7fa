"""Type checks shared by the config validators (env contract, CARLA backend, trainer YAML)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["is_finite_number", "is_int"]


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A finite real number (Python or numpy int/float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
