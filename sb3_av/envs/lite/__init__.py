"""The embedded backend: driving without a CARLA server (highway-env road and vehicles, pygame camera).

``gym.make("LiteScenario0-v0")`` (after ``import sb3_av``) calls :func:`make_lite_env`. highway-env and
pygame are imported only when an env is made.
"""

from __future__ import annotations

from typing import Any

from sb3_av.envs.core import DrivingEnv, make_driving_env
from sb3_av.envs.scenarios import get_scenario

__all__ = ["LITE_DEFAULTS", "make_lite_env"]

#: Every backend key of the Lite envs with its default (see :class:`~sb3_av.envs.lite.backend.LiteBackend`).
LITE_DEFAULTS: dict[str, Any] = {
    "n_lanes": 4,  # parallel lanes, 0 = leftmost
    "lane_width_m": 4.0,  # [m]
    "route_lane": 1,  # the lane the route follows
    "route_length_m": 250.0,  # [m]
    "turn_radius_m": 20.0,  # [m] innermost lane of the 90 deg left turn
    "pixels_per_m": 2.0,  # camera scale [px/m]: 84 px = 42 m
    "npc_speed_range_ms": (7.0, 11.0),  # [m/s] NPC desired speeds
    "max_steer_rad": 0.5,  # [rad] wheel angle at steer = 1
    "max_accel_ms2": 3.5,  # [m/s^2] at throttle = 1
    "max_brake_ms2": 8.0,  # [m/s^2] at brake = 1
}


def _backend_factory(config: dict[str, Any]) -> Any:
    try:
        from sb3_av.envs.lite.backend import LiteBackend
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"The Lite envs need highway-env and pygame ({exc}); install them with `pip install highway-env==1.12.1`"
        ) from exc
    return LiteBackend(**config)


def make_lite_env(scenario: str = "LiteScenario0", **kwargs: Any) -> DrivingEnv:
    """Make a Lite driving env (the gymnasium entry point of ``LiteScenario{0,1,2}-v0``).

    :param scenario: scenario name (``"LiteScenario0"``) or id.
    :param kwargs: env kwargs: env-contract keys (:class:`~sb3_av.envs.core.EnvConfig`) and :data:`LITE_DEFAULTS` keys.
    :raises ValueError: an unknown key (the message lists the valid ones), a bad value, or a non-Lite scenario.
    """
    if get_scenario(scenario).backend != "lite":
        raise ValueError(f"make_lite_env() needs a LiteScenarioN scenario, got {scenario!r}")
    return make_driving_env(scenario, _backend_factory, LITE_DEFAULTS, **kwargs)
