"""DrivingEnv (the env contract), route geometry, make_driving_env and registration, on a scripted backend."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from sb3_av.envs import ENTRY_POINTS, SCENARIOS, register_envs, scenario_ids
from sb3_av.envs.backend import DrivingBackend, Frame, RouteSpec
from sb3_av.envs.core import BACKEND_SHARED_KEYS, DrivingEnv, EnvConfig, make_driving_env, vector_feature_names
from sb3_av.envs.route import Route, wrap_angle
from sb3_av.envs.scenarios import RewardWeights, get_scenario


def _l_route() -> np.ndarray:
    """50 m east, then 50 m north (a sharp left corner at (50, 0))."""
    east = [(x, 0.0) for x in np.arange(0.0, 50.0, 1.0)]
    north = [(50.0, y) for y in np.arange(0.0, 51.0, 1.0)]
    return np.array(east + north)


class ScriptedBackend(DrivingBackend):
    """A point-mass car on a given route: speed from throttle/brake, yaw rate from steer; events scripted."""

    def __init__(self, config: dict[str, Any] | None = None, points: np.ndarray | None = None) -> None:
        config = config or {}
        self.config = config
        self.dt = float(config.get("dt", 0.05))
        self.size = int(config.get("camera_size", 84))
        self.points = _l_route() if points is None else points
        self.collide_at_step: int | None = config.get("collide_at_step")
        self.off_lane_at_step: int | None = config.get("off_lane_at_step")
        self.start_speed = float(config.get("start_speed", 0.0))
        self.controls: list[tuple[float, float, float]] = []
        self.reset_seeds: list[int | None] = []
        self.closed = 0

    @property
    def route(self) -> RouteSpec:
        return RouteSpec(self.points, 2.0)

    def _frame(self, collision: bool = False, on_lane: bool = True) -> Frame:
        rows = np.arange(self.size)[:, None]
        image = ((rows * 3 + self.x * 10 + self.y * 7) % 256).astype(np.uint8) * np.ones((1, self.size), np.uint8)
        return Frame(image, self.x, self.y, self.yaw, self.speed, self.steps * self.dt, collision, on_lane, {"k": 1})

    def reset(self, seed: int | None = None) -> Frame:
        self.reset_seeds.append(seed)
        self.x, self.y = float(self.points[0, 0]), float(self.points[0, 1])
        d = self.points[1] - self.points[0]
        self.yaw = math.atan2(d[1], d[0])
        self.speed = self.start_speed
        self.steps = 0
        return self._frame()

    def step(self, steer: float, throttle: float, brake: float) -> Frame:
        self.controls.append((steer, throttle, brake))
        self.steps += 1
        self.speed = max(self.speed + (4.0 * throttle - 8.0 * brake) * self.dt, 0.0)
        self.yaw += steer * 1.0 * self.dt
        self.x += self.speed * math.cos(self.yaw) * self.dt
        self.y += self.speed * math.sin(self.yaw) * self.dt
        return self._frame(self.steps == self.collide_at_step, self.steps != self.off_lane_at_step)

    def close(self) -> None:
        self.closed += 1


def _env(**kwargs: Any) -> DrivingEnv:
    backend_keys = {"collide_at_step": None, "off_lane_at_step": None, "start_speed": 0.0}
    return make_driving_env("LiteScenario0", ScriptedBackend, backend_keys, **kwargs)


# ---------------------------------------------------------------------- route geometry
def test_route_projection_lateral_sign_heading_and_lookahead() -> None:
    route = Route(_l_route(), 2.0)
    assert route.length_m == pytest.approx(100.0)
    p = route.project(10.0, 1.5)  # 1.5 m left of an eastward route
    assert (p.s, p.lateral, p.tangent_yaw) == pytest.approx((10.0, 1.5, 0.0))
    p = route.project(51.0, 20.0)  # 1 m right of the northward leg
    assert (p.s, p.lateral, p.tangent_yaw) == pytest.approx((70.0, -1.0, math.pi / 2))
    # Look-ahead in the ego frame at (45, 0) heading east: 5 m ahead is the corner, then points turn left.
    pts = route.lookahead_ego(45.0, 0.0, 0.0, 45.0, n_points=4, spacing_m=5.0)
    np.testing.assert_allclose(pts, [[5.0, 0.0], [5.0, 5.0], [5.0, 10.0], [5.0, 15.0]], atol=1e-9)
    # Past the end, the last point repeats.
    pts = route.lookahead_ego(50.0, 45.0, math.pi / 2, 95.0, n_points=3, spacing_m=5.0)
    np.testing.assert_allclose(pts, [[5.0, 0.0], [5.0, 0.0], [5.0, 0.0]], atol=1e-9)
    assert wrap_angle(3 * math.pi / 2) == pytest.approx(-math.pi / 2)


def test_route_window_prevents_shortcuts() -> None:
    # A hairpin: out 30 m east, back 30 m west 4 m to the north. A point near the start of the return leg
    # is closest to the outbound leg when searched globally, but the window around s_hint keeps continuity.
    out = [(x, 0.0) for x in np.arange(0.0, 30.0, 1.0)]
    back = [(x, 4.0) for x in np.arange(30.0, -1.0, -1.0)]
    route = Route(np.array([*out, (30.0, 2.0), *back]), 2.0)
    assert route.project(5.0, 1.5).s == pytest.approx(5.0)
    assert route.project(5.0, 2.5, s_hint=55.0).s == pytest.approx(29.0 + math.sqrt(5.0) + 2.0 + 25.0)


@pytest.mark.parametrize(
    "points",
    [np.zeros((1, 2)), np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [np.nan, 1.0]]), np.zeros((3, 3))],
)
def test_route_rejects_bad_points(points: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"(?i)route"):
        Route(points, 2.0)


# ---------------------------------------------------------------------- factory and config
def test_make_driving_env_splits_kwargs_and_passes_shared_keys() -> None:
    seen: dict[str, Any] = {}

    def factory(config: dict[str, Any]) -> DrivingBackend:
        seen.update(config)
        return ScriptedBackend(config)

    env = make_driving_env(
        "LiteScenario1-v0", factory, {"host": "localhost", "camera_size": 64}, host="h", max_steps=7, seed=3
    )
    assert set(seen) == {"host", *BACKEND_SHARED_KEYS}
    assert seen == {"host": "h", "camera_size": 84, "npc_vehicles": 50, "seed": 3, "dt": 0.05}
    assert env.config.max_steps == 7 and env.config.npc_vehicles == 50
    assert "host" not in EnvConfig.keys()


def test_unknown_kwarg_lists_every_valid_key() -> None:
    with pytest.raises(ValueError, match="Unknown env kwarg") as err:
        make_driving_env("LiteScenario0", ScriptedBackend, {"town": "Town01"}, nmp_vehicles=3)
    message = str(err.value)
    assert "nmp_vehicles" in message
    for key in ("town", "npc_vehicles", "max_steps", "frame_stack", "reward_progress", "seed"):
        assert key in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_steps": 0},
        {"frame_stack": 1.5},
        {"camera_size": 8},
        {"npc_vehicles": -1},
        {"seed": -2},
        {"dt": 0.0},
        {"reward_goal": -1.0},
        {"target_speed_ms": float("nan")},
        {"render_mode": "human"},
        {"max_steps": True},
    ],
)
def test_bad_values_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        _env(**kwargs)


def test_unknown_scenario() -> None:
    with pytest.raises(ValueError, match="LiteScenario0"):
        get_scenario("LiteScenario9")


def test_scenario_table() -> None:
    assert [SCENARIOS[f"LiteScenario{i}"].npc_vehicles for i in range(3)] == [20, 50, 100]
    assert [SCENARIOS[f"CarlaScenario{i}"].npc_vehicles for i in range(3)] == [20, 50, 100]
    assert all(s.max_steps == 1000 and s.dt == 0.05 for s in SCENARIOS.values())
    assert scenario_ids("lite") == ["LiteScenario0-v0", "LiteScenario1-v0", "LiteScenario2-v0"]


# ---------------------------------------------------------------------- the contract
def test_spaces_reset_and_frame_stack() -> None:
    env = _env(frame_stack=3, n_route_points=4, start_speed=4.0)
    assert env.observation_space["image"].shape == (3, 84, 84)
    assert env.observation_space["vector"].shape == (5 + 8,)
    assert len(vector_feature_names(4)) == 13
    obs, info = env.reset(seed=0)
    assert obs["image"].dtype == np.uint8
    for k in range(3):  # the stack is filled with the first frame, not zeros
        np.testing.assert_array_equal(obs["image"][k], obs["image"][0])
    assert obs["image"].std() > 0
    # speed / 8, lateral 0, heading error 0, previous action 0, then points 5, 10, 15, 20 m ahead / 50.
    np.testing.assert_allclose(obs["vector"][:5], [0.5, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(obs["vector"][5:].reshape(4, 2), [[0.1, 0], [0.2, 0], [0.3, 0], [0.4, 0]], atol=1e-6)
    assert info["termination"] is None and set(info["reward_terms"]) == set(RewardWeights.names())
    first = obs["image"][-1].copy()
    obs, *_ = env.step(np.array([0.0, 1.0]))
    np.testing.assert_array_equal(obs["image"][1], first)  # shifted: the newest frame is last
    assert not np.array_equal(obs["image"][-1], first)
    np.testing.assert_allclose(obs["vector"][3:5], [0.0, 1.0])  # previous action


def test_reward_terms_sum_to_reward_and_progress_is_arc_length() -> None:
    env = _env(start_speed=8.0)
    env.reset(seed=1)
    total_progress = 0.0
    for t in range(200):
        steer = 0.0 if t < 100 else 0.3
        _, reward, terminated, truncated, info = env.step(np.array([steer, 0.2 * math.sin(t / 5)]))
        assert reward == pytest.approx(sum(info["reward_terms"].values()), abs=1e-9)
        total_progress += info["reward_terms"]["progress"]
        if terminated or truncated:
            break
    route = env.route
    assert route is not None
    s_now = route.project(env.backend.x, env.backend.y).s  # type: ignore[attr-defined]
    assert total_progress == pytest.approx(s_now, abs=1e-6)


def test_actions_clipped_and_non_finite_rejected() -> None:
    env = _env()
    env.reset(seed=0)
    env.step(np.array([3.0, -7.0]))
    assert env.backend.controls[-1] == (1.0, 0.0, 1.0)  # type: ignore[attr-defined]
    env.step(np.array([-0.5, 0.25]))
    assert env.backend.controls[-1] == (-0.5, 0.25, 0.0)  # type: ignore[attr-defined]
    n = len(env.backend.controls)  # type: ignore[attr-defined]
    for bad in ([np.nan, 0.0], [0.0, np.inf]):
        with pytest.raises(ValueError, match="Non-finite"):
            env.step(np.array(bad))
    with pytest.raises(ValueError, match="2 values"):
        env.step(np.zeros(3))
    assert len(env.backend.controls) == n  # type: ignore[attr-defined]  # never sent to the simulator


def test_truncation_is_not_termination() -> None:
    env = _env(max_steps=10, start_speed=2.0)
    env.reset(seed=0)
    for t in range(1, 11):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.0]))
        assert not terminated
        assert truncated == (t == 10)
    assert info["termination"] == "time_limit" and not info["is_success"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_action_repeat_sums_simulation_steps_and_stacks_agent_steps() -> None:
    """action_repeat=3 equals three plain steps with the same action: summed terms, last frame stacked once."""
    actions = [np.array([0.1 * k, 0.5 - 0.2 * k]) for k in range(5)]
    plain, repeated = _env(start_speed=4.0), _env(start_speed=4.0, action_repeat=3)
    plain.reset(seed=3)
    obs_r, _ = repeated.reset(seed=3)
    first = obs_r["image"][-1].copy()
    for action in actions:
        plain_terms, plain_reward = dict.fromkeys(RewardWeights.names(), 0.0), 0.0
        for _ in range(3):
            obs_p, reward_p, *_, info_p = plain.step(action)
            plain_reward += reward_p
            for k, v in info_p["reward_terms"].items():
                plain_terms[k] += v
        obs_r, reward_r, terminated, truncated, info_r = repeated.step(action)
        assert not (terminated or truncated)
        assert reward_r == pytest.approx(plain_reward, abs=1e-9)
        assert info_r["reward_terms"] == pytest.approx(plain_terms, abs=1e-9)
        assert info_r["sim_time_s"] == pytest.approx(info_p["sim_time_s"])
        np.testing.assert_array_equal(obs_r["image"][-1], obs_p["image"][-1])
        np.testing.assert_allclose(obs_r["vector"], obs_p["vector"], atol=1e-6)
    # One frame per agent step: the stack holds the frames of sim steps 6, 9, 12, 15 (not 12..15 as the plain env).
    assert len(repeated.backend.controls) == 15  # type: ignore[attr-defined]
    np.testing.assert_array_equal(obs_r["image"][-2], obs_p["image"][-4])
    assert not np.array_equal(obs_r["image"][0], first)


def test_action_repeat_stops_at_the_ending_simulation_step() -> None:
    env = _env(collide_at_step=5, start_speed=5.0, action_repeat=4)
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(np.zeros(2))
    assert not terminated
    _, reward, terminated, truncated, info = env.step(np.zeros(2))
    assert terminated and not truncated and info["termination"] == "collision" and info["collision"]
    assert len(env.backend.controls) == 5  # type: ignore[attr-defined]  # steps 6-8 were never simulated
    assert info["reward_terms"]["collision"] == -50.0 and reward == pytest.approx(sum(info["reward_terms"].values()))
    env = _env(max_steps=10, start_speed=2.0, action_repeat=4)  # the time limit counts simulation steps
    env.reset(seed=0)
    ends = [env.step(np.zeros(2))[3] for _ in range(3)]
    assert ends == [False, False, True] and len(env.backend.controls) == 10  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="action_repeat"):
        _env(action_repeat=0)


def test_collision_terminates_once_with_penalty() -> None:
    env = _env(collide_at_step=5, start_speed=5.0, reward_collision=30.0)
    env.reset(seed=0)
    for _ in range(4):
        _, _, terminated, _, info = env.step(np.array([0.0, 0.0]))
        assert not terminated and info["reward_terms"]["collision"] == 0.0
    _, _, terminated, truncated, info = env.step(np.array([0.0, 0.0]))
    assert terminated and not truncated
    assert info["collision"] and info["termination"] == "collision" and not info["is_success"]
    assert info["reward_terms"]["collision"] == -30.0 and info["reward_terms"]["goal"] == 0.0


def test_off_road_by_backend_flag_and_by_lateral_offset() -> None:
    env = _env(off_lane_at_step=3, start_speed=5.0)
    env.reset(seed=0)
    for _ in range(3):
        _, _, terminated, _, info = env.step(np.array([0.0, 0.0]))
    assert terminated and info["off_road"] and info["termination"] == "off_road"
    env = _env(start_speed=8.0, off_road_margin_m=0.5)
    env.reset(seed=0)
    while True:  # steer left until |lateral| > 2 + 0.5 m
        _, _, terminated, truncated, info = env.step(np.array([1.0, 0.0]))
        if terminated or truncated:
            break
    assert info["termination"] == "off_road" and info["lateral_offset_m"] > 2.5
    assert info["reward_terms"]["off_road"] == -50.0


def test_stationary_policy_is_penalised_then_stuck() -> None:
    env = _env(stuck_time_s=2.0)
    env.reset(seed=0)
    idle = []
    while True:
        _, _, terminated, truncated, info = env.step(np.array([0.0, -1.0]))
        idle.append(info["reward_terms"]["idle"])
        if terminated or truncated:
            break
    assert info["termination"] == "stuck" and terminated and not truncated
    assert info["sim_time_s"] == pytest.approx(2.0)
    assert idle[:20] == [0.0] * 20 and idle[-1] == -0.5  # grace of 1 s, then -weight per step


def test_goal_completes_route_once() -> None:
    env = _env(start_speed=3.0)
    obs, _ = env.reset(seed=0)
    goals = []
    while True:
        obs, _, terminated, truncated, info = env.step(_follow(obs))
        goals.append(info["reward_terms"]["goal"])
        if terminated or truncated:
            break
    assert info["termination"] == "route_completed" and info["is_success"]
    assert info["route_completion"] == 1.0 and goals.count(50.0) == 1 and goals[-1] == 50.0
    assert 95.0 < info["distance_m"] < 110.0


def _follow(obs: dict[str, np.ndarray]) -> np.ndarray:
    x, y = obs["vector"][5:7] * 50
    return np.array([np.clip(3.0 * math.atan2(y, x), -1, 1), 0.0])


def test_seeding_is_reproducible_and_close_closes_backend() -> None:
    env = _env(seed=5)
    env.reset()
    env.reset()
    env.reset(seed=5)
    seeds = env.backend.reset_seeds  # type: ignore[attr-defined]
    assert seeds[0] == seeds[2] and seeds[0] != seeds[1]
    env.close()
    assert env.backend.closed == 1  # type: ignore[attr-defined]


def test_bad_backend_image_is_reported() -> None:
    env = make_driving_env("LiteScenario0", ScriptedBackend, {}, camera_size=84)
    env.backend.size = 32  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="camera_size"):
        env.reset()


# ---------------------------------------------------------------------- registration
def test_register_envs_is_idempotent_and_complete() -> None:
    register_envs()
    assert register_envs() == []
    for scenario in SCENARIOS.values():
        spec = gym.spec(scenario.env_id)
        assert spec.entry_point == ENTRY_POINTS[scenario.backend]
        assert spec.kwargs == {"scenario": scenario.name}
        assert spec.max_episode_steps is None


def test_importing_envs_does_not_import_simulators() -> None:
    code = (
        "import sys, sb3_av.envs as e; e.register_envs();"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('highway_env', 'pygame', 'carla')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_restart_truncates_without_reward() -> None:
    """A backend that lost its world mid-episode (CARLA reconnect) returns the first frame of a new episode."""
    env = _env(start_speed=5.0)
    env.reset(seed=0)
    for _ in range(20):
        env.step(np.array([0.0, 0.5]))
    backend = env.backend
    assert isinstance(backend, ScriptedBackend)
    original_step = backend.step

    def restarted_step(steer: float, throttle: float, brake: float) -> Frame:
        original_step(steer, throttle, brake)
        first = backend.reset(seed=None)
        return Frame(first.image, first.x, first.y, first.yaw, first.speed_ms, 0.0, extra={"episode_restarted": True})

    backend.step = restarted_step  # type: ignore[method-assign]
    last_obs = env._obs()
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5]))
    assert (terminated, truncated, reward) == (False, True, 0.0)
    assert info["termination"] == "backend_restarted" and not info["off_road"] and not info["collision"]
    assert all(value == 0.0 for value in info["reward_terms"].values())
    assert info["distance_m"] > 4.0 and info["route_completion"] > 0.0  # the episode that ended
    assert info["backend"]["episode_restarted"]
    # the terminal observation is the ended episode's last one, never the new episode's first
    assert all(np.array_equal(obs[key], last_obs[key]) for key in obs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    backend.step = original_step  # type: ignore[method-assign]
    obs, info = env.reset()
    assert obs["vector"][1] == pytest.approx(0.0, abs=1e-6) and info["distance_m"] == 0.0  # a clean new episode
