"""The scenario table: one row per env id, shared by the CARLA and the embedded (Lite) backend.

A scenario fixes what the env contract needs to be reproducible: the NPC count, the episode length, the
simulation step, the target speed and the reward weights. Every value can be overridden through env
kwargs (see :func:`sb3_av.envs.core.make_driving_env`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["SCENARIOS", "RewardWeights", "Scenario", "get_scenario", "scenario_ids"]


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the named reward terms (see ENV_CONTRACT.md); the reward is the sum of weight * term.

    :param progress: per metre advanced along the route's arc length (term in m, signed).
    :param speed: per step; term = clip(v * cos(heading error) / target speed, -1, 1).
    :param lane: per step; term = -min(|lateral offset| / half lane width, 2).
    :param comfort: per step; term = -(|d steer| + |d throttle_brake|) / 4, in [-1, 0].
    :param idle: per step; term = -1 while speed < 0.5 m/s after the first second, else 0.
    :param collision: once, at a collision; term = -1.
    :param off_road: once, when leaving the lane or the road; term = -1.
    :param goal: once, when the route is completed without a collision; term = +1.
    """

    progress: float = 1.0
    speed: float = 0.1
    lane: float = 0.2
    comfort: float = 0.1
    idle: float = 0.5
    collision: float = 50.0
    off_road: float = 50.0
    goal: float = 50.0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The term names, in the order they appear in ``info["reward_terms"]``."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Scenario:
    """One row of the scenario table.

    :param name: the scenario name, e.g. ``"LiteScenario0"``; the gymnasium id is ``name + "-v0"``.
    :param backend: ``"lite"`` (embedded highway-env simulator) or ``"carla"``.
    :param npc_vehicles: number of NPC vehicles spawned each episode.
    :param max_steps: step limit of an episode (truncation, never terminal).
    :param dt: simulation step (s); 0.05 s = 20 Hz.
    :param target_speed_ms: the speed (m/s) the reward's speed term and the observation normalise by.
    :param reward: reward weights.
    """

    name: str
    backend: str
    npc_vehicles: int
    max_steps: int = 1000
    dt: float = 0.05
    target_speed_ms: float = 8.0
    reward: RewardWeights = field(default_factory=RewardWeights)

    @property
    def env_id(self) -> str:
        """The gymnasium id, e.g. ``"LiteScenario0-v0"``."""
        return f"{self.name}-v0"


def _table() -> dict[str, Scenario]:
    rows: list[Scenario] = []
    for i, npc in enumerate((20, 50, 100)):
        rows.append(
            Scenario(
                name=f"LiteScenario{i}",
                backend="lite",
                npc_vehicles=npc,  # embedded highway-env road, ~250 m route with a 90 deg left turn, IDM vehicles
            )
        )
        rows.append(
            Scenario(
                name=f"CarlaScenario{i}",
                backend="carla",
                npc_vehicles=npc,  # CARLA Town01, fixed ~250 m route with a turn, Traffic Manager vehicles
            )
        )
    return {s.name: s for s in rows}


#: Every scenario, keyed by name (``"LiteScenario0"``, ``"CarlaScenario2"``, ...).
SCENARIOS: dict[str, Scenario] = _table()


def scenario_ids(backend: str | None = None) -> list[str]:
    """The gymnasium ids of the scenarios, optionally only those of one backend.

    :param backend: ``"lite"``, ``"carla"`` or None for all.
    """
    return [s.env_id for s in SCENARIOS.values() if backend is None or s.backend == backend]


def get_scenario(name: str) -> Scenario:
    """Look a scenario up by name or gymnasium id (``"LiteScenario0"`` or ``"LiteScenario0-v0"``).

    :param name: scenario name or env id.
    :raises ValueError: unknown scenario; the message lists the known ones.
    """
    key = name.split(":")[-1]
    key = key[: -len("-v0")] if key.endswith("-v0") else key
    if key not in SCENARIOS:
        raise ValueError(f"Unknown scenario {name!r}; known scenarios: {', '.join(SCENARIOS)}")
    return SCENARIOS[key]
