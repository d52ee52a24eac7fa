"""The PID + pure-pursuit baseline: its parts, and that it drives LiteScenario0 to the goal."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from sb3_av.baselines import PID, PIDPurePursuit
from sb3_av.envs import register_envs

register_envs()


def _obs(speed_ratio: float, points: list[tuple[float, float]]) -> dict[str, np.ndarray]:
    vector = np.concatenate(([speed_ratio, 0.0, 0.0, 0.0, 0.0], np.asarray(points, dtype=float).reshape(-1) / 50.0))
    return {"image": np.zeros((4, 84, 84), np.uint8), "vector": vector.astype(np.float32)}


def test_pid_proportional_integral_and_anti_windup() -> None:
    pid = PID(kp=2.0, ki=1.0, integral_limit=0.5)
    assert pid(1.0, 0.1) == pytest.approx(2.0 + 0.1)
    for _ in range(100):
        out = pid(1.0, 0.1)
    assert out == pytest.approx(2.0 + 0.5)  # the integral is clamped
    pid.reset()
    assert pid(0.0, 0.1) == 0.0
    derivative = PID(kp=0.0, kd=1.0)
    derivative(0.0, 0.1)
    assert derivative(1.0, 0.1) == pytest.approx(10.0)


def test_pure_pursuit_steers_towards_the_route() -> None:
    ctl = PIDPurePursuit(target_speed_ms=8.0)
    straight = [(5.0 * k, 0.0) for k in range(1, 11)]
    left = [(5.0 * k, 0.3 * (5.0 * k) ** 1.5 / 5) for k in range(1, 11)]
    right = [(x, -y) for x, y in left]
    assert ctl.act(_obs(1.0, straight))[0] == pytest.approx(0.0, abs=1e-6)
    steer_left, steer_right = ctl.act(_obs(1.0, left))[0], ctl.act(_obs(1.0, right))[0]
    assert steer_left > 0.05 and steer_right == pytest.approx(-steer_left, rel=1e-5)
    # Geometry: a target 5 m ahead and 1 m left on a 5 m wheelbase: curvature 2*sin(a)/d, wheel angle atan(L*k).
    ctl = PIDPurePursuit(target_speed_ms=8.0, lookahead_gain=0.0, lookahead_min_m=float(np.hypot(5, 1)))
    steer = ctl.act(_obs(0.0, [(5.0, 1.0)] * 10))[0]
    d = np.hypot(5.0, 1.0)
    assert steer == pytest.approx(np.arctan(5.0 * 2 * (1.0 / d) / d) / 0.5, rel=1e-5)


def test_speed_control_and_following() -> None:
    ctl = PIDPurePursuit(target_speed_ms=8.0)
    route = [(5.0 * k, 0.0) for k in range(1, 11)]
    assert ctl.act(_obs(0.0, route))[1] > 0.9  # at rest: full throttle
    ctl.reset()
    assert ctl.act(_obs(1.5, route))[1] < -0.9  # far too fast: brake
    ctl.reset()
    cruise = ctl.act(_obs(0.5, route), {"backend": {"lead_distance_m": 50.0, "lead_speed_ms": 8.0}})[1]
    ctl.reset()
    close = ctl.act(_obs(0.5, route), {"backend": {"lead_distance_m": 8.0, "lead_speed_ms": 2.0}})[1]
    ctl.reset()
    stop = ctl.act(_obs(0.5, route), {"backend": {"lead_distance_m": 1.0, "lead_speed_ms": 0.0}})[1]
    assert cruise > 0.5 and close < 0 and stop == -1.0


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="> 0"):
        PIDPurePursuit(target_speed_ms=0.0)


def test_baseline_completes_lite_scenario0_in_most_seeds() -> None:
    env = gym.make("LiteScenario0-v0")
    ctl = PIDPurePursuit.from_env(env)
    assert ctl.target_speed_ms == 8.0 and ctl.max_steer_rad == 0.5 and ctl.dt == 0.05
    successes = 0
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        ctl.reset()
        while True:
            obs, _, terminated, truncated, info = env.step(ctl.act(obs, info))
            assert abs(info["lateral_offset_m"]) < 2.0
            if terminated or truncated:
                break
        successes += int(info["is_success"])
    assert successes >= 4


def test_from_env_controls_at_the_agent_period_of_an_action_repeat() -> None:
    env = gym.make("LiteScenario0-v0", action_repeat=3)
    assert PIDPurePursuit.from_env(env).dt == pytest.approx(0.15)  # one step() = 3 simulation steps of 0.05 s
    assert PIDPurePursuit.from_env(env, dt=0.05).dt == 0.05  # an explicit dt wins
