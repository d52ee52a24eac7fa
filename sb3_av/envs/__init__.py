"""Driving envs: the env contract (:class:`DrivingEnv`), the scenario table and env registration.

Importing this package imports neither ``highway_env``/``pygame`` nor ``carla``: each backend imports its
simulator lazily when an env is made.
"""

from __future__ import annotations

import gymnasium as gym

from sb3_av.envs.backend import DrivingBackend, Frame, RouteSpec
from sb3_av.envs.core import DrivingEnv, EnvConfig, make_driving_env, vector_feature_names
from sb3_av.envs.scenarios import SCENARIOS, RewardWeights, Scenario, get_scenario, scenario_ids

__all__ = [
    "ENTRY_POINTS",
    "SCENARIOS",
    "DrivingBackend",
    "DrivingEnv",
    "EnvConfig",
    "Frame",
    "RewardWeights",
    "RouteSpec",
    "Scenario",
    "get_scenario",
    "make_driving_env",
    "register_envs",
    "scenario_ids",
    "vector_feature_names",
]

#: The entry point of each backend (``module:function``, called with ``scenario=<name>`` and the env kwargs).
ENTRY_POINTS: dict[str, str] = {
    "lite": "sb3_av.envs.lite:make_lite_env",
    "carla": "sb3_av.envs.carla:make_carla_env",
}


def register_envs() -> list[str]:
    """Register every scenario of the table with gymnasium; idempotent (ids already registered are kept).

    Episodes are truncated by :class:`DrivingEnv` itself at the scenario's ``max_steps``, so no
    ``TimeLimit`` wrapper is added (``max_episode_steps=None``).

    :return: the ids registered by this call (empty when all were registered already).
    """
    added: list[str] = []
    for scenario in SCENARIOS.values():
        if scenario.env_id in gym.registry:
            continue
        gym.register(
            id=scenario.env_id,
            entry_point=ENTRY_POINTS[scenario.backend],
            kwargs={"scenario": scenario.name},
            max_episode_steps=None,
        )
        added.append(scenario.env_id)
    return added
