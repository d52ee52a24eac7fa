"""The CARLA 0.9.16 backend of the driving envs (``CarlaScenario{0,1,2}-v0``).

Importing this package neither imports ``carla`` nor connects to anything; :func:`make_carla_env` does, from a
worker process of the env's own (:mod:`sb3_av.envs.carla.worker`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sb3_av.envs.carla.config import TM_PORT_OFFSET, CarlaConfig, parse_server, server_for_rank
from sb3_av.envs.carla.errors import (
    CarlaBackendError,
    CarlaConnectionError,
    CarlaError,
    CarlaRouteError,
    CarlaSensorTimeout,
    CarlaServerRestarted,
    CarlaVersionError,
    how_to_start_carla,
)

if TYPE_CHECKING:
    from sb3_av.envs.backend import DrivingBackend
    from sb3_av.envs.carla.backend import CarlaBackend
    from sb3_av.envs.core import DrivingEnv

__all__ = [
    "TM_PORT_OFFSET",
    "CarlaBackend",
    "CarlaBackendError",
    "CarlaConfig",
    "CarlaConnectionError",
    "CarlaError",
    "CarlaRouteError",
    "CarlaSensorTimeout",
    "CarlaServerRestarted",
    "CarlaVersionError",
    "how_to_start_carla",
    "make_carla_env",
    "parse_server",
    "server_for_rank",
]


def make_carla_env(
    scenario: str,
    *,
    client_factory: Callable[..., Any] | None = None,
    carla_module: Any = None,
    **kwargs: Any,
) -> DrivingEnv:
    """Build the :class:`~sb3_av.envs.core.DrivingEnv` of a CARLA scenario (the gymnasium entry point).

    Env kwargs are the env-contract keys (``max_steps``, ``frame_stack``, ``camera_size``, ``npc_vehicles``,
    ``seed``, ...) and the keys of :class:`CarlaConfig` (``host``, ``port``, ``tm_port``, ``servers``,
    ``rank``, ``town``, ``timeout_s``, ``connect_timeout_s``, ``max_reconnects``, ``server_wait_s``,
    ``worker_timeout_s``, ``share_server``, ``worker``, ...).

    :param scenario: ``"CarlaScenario0"`` (or its env id).
    By default the CARLA client runs in a worker process of this env's own (:mod:`sb3_av.envs.carla.worker`,
    env kwarg ``worker``); ``client_factory`` or ``carla_module`` (objects, which stay in this process) or
    ``worker=False`` keep it in this process.

    :param client_factory: ``(host, port) -> carla.Client``; default ``carla.Client`` (tests pass a stand-in).
    :param carla_module: the module whose CARLA types are used; default the installed ``carla``.
    :param kwargs: env kwargs.
    :raises ValueError: an unknown kwarg (the message lists the valid ones) or a bad value.
    :raises CarlaConnectionError: no CARLA server answered within ``connect_timeout_s``.
    """
    from sb3_av.envs.core import make_driving_env

    def factory(values: dict[str, Any]) -> DrivingBackend:
        config = CarlaConfig.from_dict(values)
        if config.worker and client_factory is None and carla_module is None:
            from sb3_av.envs.carla.worker import WorkerBackend

            return WorkerBackend(config)
        from sb3_av.envs.carla.backend import CarlaBackend

        return CarlaBackend(config, client_factory=client_factory, carla_module=carla_module)

    return make_driving_env(scenario, factory, CarlaConfig.defaults(), **kwargs)


def __getattr__(name: str) -> Any:
    if name == "CarlaBackend":  # lazy: the backend module imports carla only when a backend is built
        from sb3_av.envs.carla.backend import CarlaBackend

        return CarlaBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
