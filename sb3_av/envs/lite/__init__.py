"""The embedded backend: driving without a CARLA server (highway-env road and vehicles, pygame camera).

``gym.make("LiteScenario0-v0")`` (after ``import sb3_av``) calls :func:`make_lite_env`. highway-env and
pygame are imported only when an env is made.
"""

from __future__ import annotations

from typing import Any

from sb3_av.envs.core import DrivingEnv, make_driving_env
from sb3_av.envs.scenarios import get_scenario

__all__ = ["LITE_DEFAULTS", "SCENARIO_TRAFFIC", "make_lite_env"]

#: Every backend key of the Lite envs with its default (see :class:`~sb3_av.envs.lite.backend.LiteBackend`).
LITE_DEFAULTS: dict[str, Any] = {
    "n_lanes": 4,  # parallel lanes, 0 = leftmost
    "lane_width_m": 4.0,  # [m]
    "route_lane": 1,  # the lane the route follows
    "route_length_m": 250.0,  # [m]
    "turn_radius_m": 20.0,  # [m] innermost lane of the 90 deg left turn
    "pixels_per_m": 2.0,  # camera scale [px/m]: 84 px = 42 m
    "npc_speed_range_ms": (7.0, 11.0),  # [m/s] NPC desired speeds
    "npc_lane_changes": False,  # NPCs change lanes by MOBIL (highway-env's rule)
    "slow_npcs_ahead": 0,  # NPCs (of npc_vehicles) placed ahead of the ego on its lane, slower than its target
    "slow_npc_speed_range_ms": (6.0, 7.0),  # [m/s] their desired speeds (the ego's target: 8 m/s)
    "max_steer_rad": 0.5,  # [rad] wheel angle at steer = 1
    "max_accel_ms2": 3.5,  # [m/s^2] at throttle = 1
    "max_brake_ms2": 8.0,  # [m/s^2] at brake = 1
}


#: What makes the Lite scenarios three levels of difficulty beyond the NPC count: in scenario 0 the traffic
#: keeps its lanes and hardly meets the ego (the PID baseline drives as on an empty road); in 1 it changes lanes
#: (MOBIL: cut-ins ahead of the ego) and one slow NPC is on the ego's lane ahead; in 2 two slow NPCs.
#: These are defaults: env kwargs override them (``npc_lane_changes=False`` gives back the earlier traffic).
SCENARIO_TRAFFIC: dict[str, dict[str, Any]] = {
    "LiteScenario0": {},
    "LiteScenario1": {"npc_lane_changes": True, "slow_npcs_ahead": 1},
    "LiteScenario2": {"npc_lane_changes": True, "slow_npcs_ahead": 2},
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
    name = get_scenario(scenario).name
    return make_driving_env(scenario, _backend_factory, {**LITE_DEFAULTS, **SCENARIO_TRAFFIC[name]}, **kwargs)
