"""Training-time reward wrappers: the over-speed and jerk terms and the reward scale, against values computed here."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import sb3_av  # noqa: F401  (registers the env ids)
from sb3_av.envs.wrappers import ClearancePenalty, HeadwayPenalty, JerkPenalty, OverspeedPenalty, ScaleReward, ScenarioCycle
from sb3_av.evaluation import EpisodeMetrics

FULL_THROTTLE = np.array([0.0, 1.0], dtype=np.float32)


def _lite(**kwargs: object) -> gym.Env:
    return gym.make("LiteScenario0-v0", npc_vehicles=0, max_steps=400, **kwargs)


def test_overspeed_term_is_zero_up_to_the_tolerance_then_grows_and_the_terms_still_sum_to_the_reward() -> None:
    weight, tolerance = 0.7, 0.1
    env = OverspeedPenalty(_lite(), weight=weight, tolerance=tolerance)
    plain = _lite()
    env.reset(seed=5)
    plain.reset(seed=5)
    target = env.unwrapped.config.target_speed_ms
    assert target == 8.0
    seen_free, seen_charged = 0, 0
    for _ in range(300):
        _, reward, terminated, truncated, info = env.step(FULL_THROTTLE)
        _, plain_reward, *_ = plain.step(FULL_THROTTLE)  # same seed, same actions: same trajectory
        speed = info["speed_ms"]
        expected = -weight * min(max((speed - target) / target - tolerance, 0.0), 1.0)
        assert info["reward_terms"]["overspeed"] == pytest.approx(expected, abs=1e-12)
        assert reward == pytest.approx(plain_reward + expected, abs=1e-9)
        assert sum(info["reward_terms"].values()) == pytest.approx(reward, abs=1e-9)
        seen_free += speed <= target * (1 + tolerance)
        seen_charged += speed > target * (1 + tolerance)
        if terminated or truncated:
            break
    assert seen_free > 10 and seen_charged > 10  # the car accelerated through the target speed
    assert min(info["reward_terms"]["overspeed"], 0.0) < -0.1 * weight
    env.close()
    plain.close()


def test_overspeed_penalty_rejects_bad_arguments_and_non_driving_envs() -> None:
    for kwargs in ({"weight": -1.0}, {"weight": math.nan}, {"tolerance": -0.1}, {"weight": "1"}):
        with pytest.raises(ValueError, match=r"OverspeedPenalty \w+ must be a finite number >= 0"):
            OverspeedPenalty(_lite(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a driving env"):
        OverspeedPenalty(gym.make("Pendulum-v1"))


def test_scale_reward_multiplies_the_reward_and_rejects_bad_scales() -> None:
    env, plain = ScaleReward(gym.make("Pendulum-v1"), scale=0.1), gym.make("Pendulum-v1")
    env.reset(seed=1)
    plain.reset(seed=1)
    for _ in range(5):
        action = np.array([0.5], dtype=np.float32)
        assert env.step(action)[1] == pytest.approx(0.1 * float(plain.step(action)[1]), rel=1e-12)
    for scale in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="ScaleReward scale must be a finite number > 0"):
            ScaleReward(gym.make("Pendulum-v1"), scale=scale)


def test_jerk_term_charges_what_the_evaluation_reports() -> None:
    """Throttle/brake flips: each step's term is -weight * min(|jerk| / reference, 1), with the jerk from the
    speeds; the uncapped terms sum to what EpisodeMetrics reports as the episode's |jerk| sum."""
    weight, reference = 2.0, 500.0  # a large reference: no term is capped, so the sums compare exactly
    env = JerkPenalty(_lite(), weight=weight, reference_jerk_ms3=reference)
    plain = _lite()
    env.reset(seed=3)
    _, info = plain.reset(seed=3)
    metrics = EpisodeMetrics()
    metrics.start(info)
    terms, times, speeds = [], [info["sim_time_s"]], [info["speed_ms"]]
    for t in range(120):
        action = np.array([0.0, 0.8 if (t // 3) % 2 == 0 else -0.3], dtype=np.float32)
        _, reward, *_, info = env.step(action)
        _, plain_reward, *_, plain_info = plain.step(action)
        metrics.add(plain_info)
        terms.append(info["reward_terms"]["jerk"])
        times.append(info["sim_time_s"])
        speeds.append(info["speed_ms"])
        assert reward == pytest.approx(plain_reward + terms[-1], abs=1e-9)
        assert sum(info["reward_terms"].values()) == pytest.approx(reward, abs=1e-9)
    v, dt = np.array(speeds), np.diff(times)
    jerk = np.abs(np.diff(np.diff(v) / dt) / dt[1:])
    assert terms[0] == 0.0 and terms[1:] == pytest.approx(list(-weight * np.minimum(jerk / reference, 1.0)), abs=1e-9)
    assert jerk.max() > 50.0  # the flips are real jerks
    result = metrics.finish()
    assert -sum(terms) * reference / weight == pytest.approx(result["sum_abs_jerk"], rel=1e-9)


def test_jerk_term_is_capped() -> None:
    env = JerkPenalty(_lite(), weight=1.5, reference_jerk_ms3=1.0)
    env.reset(seed=0)
    terms = [env.step(np.array([0.0, 1.0 if t % 2 else -1.0], dtype=np.float32))[4]["reward_terms"]["jerk"] for t in range(40)]
    assert min(terms) == -1.5 and all(-1.5 <= term <= 0.0 for term in terms)


def test_penalties_are_charged_for_each_simulation_step_of_an_action_repeat() -> None:
    """With ``action_repeat: 2`` the env sums its own terms over the two simulation steps; a penalty is charged twice
    its per-step value too, so it keeps its weight against ``progress`` at any control rate."""
    weight, tolerance = 1.0, 0.1
    env = OverspeedPenalty(_lite(action_repeat=2), weight=weight, tolerance=tolerance)
    plain = _lite(action_repeat=2)
    assert env.steps_per_action == 2 and OverspeedPenalty(_lite(), weight=weight).steps_per_action == 1
    env.reset(seed=5)
    plain.reset(seed=5)
    charged = outweighed = 0
    for _ in range(150):
        _, reward, terminated, truncated, info = env.step(FULL_THROTTLE)
        _, plain_reward, *_ = plain.step(FULL_THROTTLE)
        per_step = -weight * min(max((info["speed_ms"] - 8.0) / 8.0 - tolerance, 0.0), 1.0)
        assert info["reward_terms"]["overspeed"] == pytest.approx(2 * per_step, abs=1e-12)
        assert reward == pytest.approx(plain_reward + 2 * per_step, abs=1e-9)
        charged += per_step < 0
        # 0.1 s of progress at 16 m/s (1.6 m) no longer outweighs the charge at 16 m/s (2 x 0.9), as it did once
        outweighed += info["speed_ms"] > 16.0 and info["reward_terms"]["progress"] < -info["reward_terms"]["overspeed"]
        if terminated or truncated:
            break
    assert charged > 20 and outweighed > 5


@pytest.mark.parametrize(
    "wrapper, kwargs, message",
    [
        (JerkPenalty, {"weight": -1.0}, "JerkPenalty weight must be a finite number >= 0"),
        (JerkPenalty, {"weight": math.nan}, "JerkPenalty weight"),
        (JerkPenalty, {"reference_jerk_ms3": 0.0}, "JerkPenalty reference_jerk_ms3 must be a finite number > 0"),
        (HeadwayPenalty, {"weight": -1.0}, "HeadwayPenalty weight must be a finite number >= 0"),
        (HeadwayPenalty, {"min_headway_s": 0.0}, "HeadwayPenalty min_headway_s must be a finite number > 0"),
        (HeadwayPenalty, {"min_headway_s": math.inf}, "HeadwayPenalty min_headway_s"),
        (ClearancePenalty, {"weight": math.inf}, "ClearancePenalty weight must be a finite number >= 0"),
        (ClearancePenalty, {"min_clearance_m": -1.0}, "ClearancePenalty min_clearance_m must be a finite number > 0"),
    ],
)
def test_bad_penalty_settings_are_clear_errors(wrapper: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wrapper(_lite(), **kwargs)


def test_headway_term_charges_following_closer_than_the_minimum_headway() -> None:
    """Full throttle into a slow leader: free while far, then -weight * (1 - gap / speed / min_headway) per step."""
    weight, min_headway = 0.8, 1.5
    make = lambda: gym.make("LiteScenario0-v0", npc_vehicles=1, slow_npcs_ahead=1, max_steps=400)  # noqa: E731
    env, plain = HeadwayPenalty(make(), weight=weight, min_headway_s=min_headway), make()
    env.reset(seed=2)
    plain.reset(seed=2)
    charged = free = 0
    for _ in range(200):
        _, reward, terminated, truncated, info = env.step(FULL_THROTTLE)
        _, plain_reward, *_, plain_info = plain.step(FULL_THROTTLE)
        gap, speed = plain_info["backend"]["lead_distance_m"], plain_info["speed_ms"]
        expected = 0.0 if gap is None or speed < 0.5 else -weight * min(max(1 - gap / speed / min_headway, 0.0), 1.0)
        assert info["reward_terms"]["headway"] == pytest.approx(expected, abs=1e-12)
        assert reward == pytest.approx(plain_reward + expected, abs=1e-9)
        assert sum(info["reward_terms"].values()) == pytest.approx(reward, abs=1e-9)
        charged += expected < 0
        free += expected == 0
        if terminated or truncated:
            break
    assert charged > 10 and free > 10


class _NoLeaderInfo(gym.Wrapper):
    """A backend that does not report the gap (as the CARLA backend)."""

    def step(self, action: np.ndarray) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["backend"] = {k: v for k, v in info["backend"].items() if k != "lead_distance_m"}
        return obs, reward, terminated, truncated, info


def test_headway_term_on_a_backend_without_the_gap_is_a_clear_error() -> None:
    env = HeadwayPenalty(_NoLeaderInfo(_lite()))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="needs the gap to the vehicle ahead"):
        env.step(FULL_THROTTLE)


def test_clearance_term_charges_near_misses_and_contact() -> None:
    """A weaving drive through LiteScenario2's traffic: the term is -weight * (1 - clearance / min_clearance) below
    the minimum clearance (the backend's ``clearance_m``, from the plain env on the same episode), 0 beyond it or with
    no NPC near, and -weight at the collision."""
    weight, min_clearance = 0.6, 1.0
    make = lambda: gym.make("LiteScenario2-v0", max_steps=600)  # noqa: E731
    env, plain = ClearancePenalty(make(), weight=weight, min_clearance_m=min_clearance), make()
    env.reset(seed=1)
    plain.reset(seed=1)
    charged = free = 0
    for t in range(600):
        action = np.array([0.05 * math.sin(t / 20), 0.4], dtype=np.float32)
        _, reward, terminated, truncated, info = env.step(action)
        _, plain_reward, *_, plain_info = plain.step(action)
        clearance = plain_info["backend"]["clearance_m"]
        expected = 0.0 if clearance is None else -weight * min(max(1 - clearance / min_clearance, 0.0), 1.0)
        assert info["reward_terms"]["clearance"] == pytest.approx(expected, abs=1e-12)
        assert reward == pytest.approx(plain_reward + expected, abs=1e-9)
        assert sum(info["reward_terms"].values()) == pytest.approx(reward, abs=1e-9)
        charged += -weight < expected < 0
        free += expected == 0
        if terminated or truncated:
            break
    assert info["termination"] == "collision" and info["reward_terms"]["clearance"] == -weight
    assert charged >= 2 and free > 100


def test_clearance_term_on_a_backend_without_the_clearance_is_a_clear_error() -> None:
    class _NoClearance(gym.Wrapper):
        def step(self, action: np.ndarray) -> tuple:
            obs, reward, terminated, truncated, info = self.env.step(action)
            info["backend"] = {k: v for k, v in info["backend"].items() if k != "clearance_m"}
            return obs, reward, terminated, truncated, info

    env = ClearancePenalty(_NoClearance(_lite()))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="needs the distance to the nearest NPC"):
        env.step(FULL_THROTTLE)


def test_scenario_cycle_takes_the_scenarios_in_turn_reproducibly() -> None:
    """Each reset moves to the next scenario (NPC count tells them apart); seeded, two runs see the same traffic."""

    def episodes() -> list[tuple[int, float]]:
        env = ScenarioCycle(gym.make("LiteScenario0-v0"), ["LiteScenario1-v0", "LiteScenario2-v0"], {"action_repeat": 2})
        seen = []
        for k in range(5):
            env.reset(seed=7 if k == 0 else None)
            backend = env.unwrapped.backend
            seen.append((len(backend.npcs), float(sum(npc.position[0] for npc in backend.npcs))))
            assert env.env_index == k % 3
        assert env.unwrapped.config.action_repeat == 2  # the kwargs reach the other scenarios
        env.close()
        return seen

    first = episodes()
    assert [n for n, _ in first] == [20, 50, 100, 20, 50]
    assert first[0][1] != first[3][1]  # scenario 0's second episode is new traffic
    assert episodes() == first
    plain = gym.make("LiteScenario0-v0")
    plain.reset(seed=7)
    assert sum(npc.position[0] for npc in plain.unwrapped.backend.npcs) == first[0][1]  # env 0 keeps its seed


def test_scenario_cycle_entries_with_their_own_kwargs() -> None:
    """An entry's own env kwargs go on top of the shared ones: the same scenario on another route lane."""
    lanes = [{"env_id": "LiteScenario2-v0", "env_kwargs": {"route_lane": lane}} for lane in (0, 2)]
    env = ScenarioCycle(gym.make("LiteScenario2-v0", action_repeat=2), lanes, {"action_repeat": 2})
    seen = []
    for k in range(3):
        env.reset(seed=3 if k == 0 else None)
        seen.append((env.unwrapped.backend.route_lane, env.unwrapped.config.action_repeat))
    env.close()
    assert seen == [(1, 2), (0, 2), (2, 2)]


def test_scenario_cycle_rejects_bad_ids_and_other_spaces() -> None:
    with pytest.raises(ValueError, match="non-empty list of env ids"):
        ScenarioCycle(_lite(), [])
    with pytest.raises(ValueError, match="other spaces"):
        ScenarioCycle(_lite(), ["LiteScenario1-v0"], {"frame_stack": 2})
    with pytest.raises(ValueError, match="other spaces"):
        ScenarioCycle(_lite(), [{"env_id": "LiteScenario1-v0", "env_kwargs": {"camera_size": 64}}])
    for entry in (3, {"id": "LiteScenario1-v0"}, {"env_id": "LiteScenario1-v0", "env_kwargs": [1]}):
        with pytest.raises(ValueError, match="entries must be an env id or"):
            ScenarioCycle(_lite(), [entry])  # type: ignore[list-item]


def test_scenario_cycle_curriculum_keeps_the_first_env_for_its_steps() -> None:
    """``first_env_steps``: episodes stay on ``env`` until that many steps were taken, then the cycle starts at env 1."""
    env = ScenarioCycle(gym.make("LiteScenario0-v0", max_steps=5), ["LiteScenario1-v0"], {"max_steps": 5}, 12)
    seen = []
    for k in range(6):
        env.reset(seed=1 if k == 0 else None)
        seen.append((env.env_index, len(env.unwrapped.backend.npcs), env.steps))
        truncated = False
        while not truncated:  # 5 steps an episode (no collision that early on an empty start)
            *_, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
            truncated = truncated or terminated
    env.close()
    # steps before each reset: 0, 5, 10 (< 12: still env 0), 15 (the cycle starts at env 1), 20, 25
    assert seen == [(0, 20, 0), (0, 20, 5), (0, 20, 10), (1, 50, 15), (0, 20, 20), (1, 50, 25)]
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="first_env_steps must be an integer >= 0"):
            ScenarioCycle(_lite(), ["LiteScenario1-v0"], first_env_steps=bad)  # type: ignore[arg-type]
