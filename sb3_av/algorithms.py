"""Algorithm names -> this project's clipped algorithms: the ``--algo`` table of ``train.py``, ``enjoy.py`` and
``sb3-av evaluate`` (an explicit dict, never a module path built from a string; imports happen on first use)."""

from __future__ import annotations

from collections.abc import Callable

from stable_baselines3.common.base_class import BaseAlgorithm

__all__ = ["ALGO_NAMES", "get_algorithm"]


def _td3() -> type[BaseAlgorithm]:
    from sb3_av.td3 import ClippedTD3

    return ClippedTD3


def _ddpg() -> type[BaseAlgorithm]:
    from sb3_av.td3 import ClippedDDPG

    return ClippedDDPG


def _sac() -> type[BaseAlgorithm]:
    from sb3_av.sac import ClippedSAC

    return ClippedSAC


def _tqc() -> type[BaseAlgorithm]:
    from sb3_av.tqc import ClippedTQC

    return ClippedTQC


_LOADERS: dict[str, Callable[[], type[BaseAlgorithm]]] = {"td3": _td3, "ddpg": _ddpg, "sac": _sac, "tqc": _tqc}

#: The values ``--algo`` accepts.
ALGO_NAMES: tuple[str, ...] = tuple(_LOADERS)


def get_algorithm(name: str) -> type[BaseAlgorithm]:
    """The algorithm class of an ``--algo`` name.

    :param name: one of :data:`ALGO_NAMES`.
    :raises KeyError: for another name.
    """
    if name not in _LOADERS:
        raise KeyError(f"unknown algorithm {name!r}; choose one of {list(ALGO_NAMES)}")
    return _LOADERS[name]()
