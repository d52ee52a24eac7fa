"""A controller drives the first steps of the Clipped off-policy algorithms (sb3_av.warmup)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.noise import ActionNoise

from sb3_av.baselines import PIDPurePursuit
from sb3_av.sac import ClippedSAC
from sb3_av.td3 import ClippedTD3
from tests.image_vector_env import ImageVectorEnv


def _tiny() -> dict[str, Any]:
    """Tiny nets (a new dict each time: SB3 writes into policy_kwargs)."""
    return {
        "batch_size": 8,
        "buffer_size": 200,
        "policy_kwargs": {"net_arch": [8], "features_extractor_kwargs": {"cnn_output_dim": 8, "vector_output_dim": 4}},
        "seed": 0,
        "device": "cpu",
    }


class StepInfo(gym.Wrapper):
    """Puts the step count of the episode into ``info``."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self.count = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.count += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "step": self.count}


class TowardOrigin:
    """Moves the point to the origin, and records what it was given and what it answered."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, dict | None, np.ndarray]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def act(self, observation: dict[str, np.ndarray], info: dict | None = None) -> np.ndarray:
        action = np.clip(-2.0 * observation["vector"][:2], -1, 1).astype(np.float32)
        self.calls.append((observation["vector"].copy(), info, action))
        return action


class ConstantNoise(ActionNoise):
    def __call__(self) -> np.ndarray:
        return np.array([0.5, -0.25])


def _env(episode_length: int = 20) -> gym.Env:
    return StepInfo(ImageVectorEnv(episode_length=episode_length))


def test_the_controller_chooses_the_first_steps_actions_and_then_the_policy() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), learning_starts=10, **_tiny())
    given = TowardOrigin()
    model.set_warmup_controller(given, 30)
    model.learn(50)
    controller = model._warmup.controllers[0]  # type: ignore[union-attr]
    assert given.calls == [] and len(controller.calls) == 30  # a copy drives, for exactly the warm-up steps
    buffer = model.replay_buffer
    answered = np.stack([action for _, _, action in controller.calls])
    np.testing.assert_allclose(buffer.actions[:30, 0], answered, atol=1e-6)  # as taken (no noise given)
    np.testing.assert_array_equal(buffer.observations["vector"][:30, 0], np.stack([obs for obs, _, _ in controller.calls]))
    policy_steps = buffer.actions[30:50, 0]
    expected_by_controller = np.clip(-2.0 * buffer.observations["vector"][30:50, 0, :2], -1, 1)
    assert not np.allclose(policy_steps, expected_by_controller)  # the policy (an untrained one) drives after
    assert model._n_updates > 0  # training started at learning_starts, inside the warm-up


def test_the_controller_sees_the_last_info_and_is_reset_at_each_episode_end() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(episode_length=20), learning_starts=100, **_tiny())
    model.set_warmup_controller(TowardOrigin(), 45)
    model.learn(45)
    controller = model._warmup.controllers[0]  # type: ignore[union-attr]
    infos = [info for _, info, _ in controller.calls]
    dones = model.replay_buffer.dones[:45, 0]
    ends = np.flatnonzero(dones)
    assert infos[0] is None
    for k in range(1, 45):
        if dones[k - 1]:  # a new episode: no step info yet, the controller was reset
            assert infos[k] is None
        else:
            assert infos[k]["step"] == (infos[k - 1] or {}).get("step", 0) + 1
    assert len(ends) >= 2 and controller.resets == 1 + len(ends)  # at set_warmup_controller, then per episode end


def test_action_noise_is_added_to_the_controllers_action_and_clipped() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), learning_starts=100, action_noise=ConstantNoise(), **_tiny())
    model.set_warmup_controller(TowardOrigin(), 40)
    model.learn(40)
    answered = np.stack([action for _, _, action in model._warmup.controllers[0].calls])  # type: ignore[union-attr]
    np.testing.assert_allclose(
        model.replay_buffer.actions[:40, 0], np.clip(answered + np.array([0.5, -0.25]), -1, 1), atol=1e-6
    )


def test_sac_takes_a_warmup_controller_too() -> None:
    model = ClippedSAC("MultiInputPolicy", _env(), learning_starts=5, **_tiny())
    model.set_warmup_controller(TowardOrigin(), 15)
    model.learn(15)
    answered = np.stack([action for _, _, action in model._warmup.controllers[0].calls])  # type: ignore[union-attr]
    np.testing.assert_allclose(model.replay_buffer.actions[:15, 0], answered, atol=1e-6)


@pytest.mark.parametrize("steps", [-1, 2.5, True, "10"])
def test_bad_warmup_steps_are_refused(steps: Any) -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), **_tiny())
    with pytest.raises(ValueError, match="warm-up steps must be an integer >= 0"):
        model.set_warmup_controller(TowardOrigin(), steps)


def test_a_controller_without_act_and_reset_is_refused() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), **_tiny())
    with pytest.raises(TypeError, match=r"act\(observation, info\) and reset\(\)"):
        model.set_warmup_controller(object(), 10)  # type: ignore[arg-type]


def test_the_warmup_is_not_saved_and_none_removes_it(tmp_path) -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), learning_starts=100, **_tiny())
    model.set_warmup_controller(TowardOrigin(), 10)
    model.save(tmp_path / "model")
    loaded = ClippedTD3.load(tmp_path / "model", env=_env())
    assert loaded._warmup is None and loaded.warmup_steps == 0
    model.set_warmup_controller(None, 10)
    assert model._warmup is None and model.warmup_steps == 0
    model.set_warmup_controller(TowardOrigin(), 0)  # no steps: no warm-up
    assert model._warmup is None and model.warmup_steps == 0


def test_a_pid_warmup_drives_lite_where_random_actions_hardly_move() -> None:
    """The reason for the warm-up: SB3's uniform random actions hardly move the car (throttle and brake cancel out);
    the PID drives the route."""

    def first_steps(controller: PIDPurePursuit | None) -> tuple[np.ndarray, np.ndarray]:
        env = gym.make("LiteScenario1-v0")
        model = ClippedTD3("MultiInputPolicy", env, learning_starts=200, **_tiny())
        if controller is not None:
            model.set_warmup_controller(controller, 200)
        model.learn(200)
        return model.replay_buffer.rewards[:200, 0], model.replay_buffer.dones[:200, 0]

    pid_rewards, pid_dones = first_steps(PIDPurePursuit.from_env(gym.make("LiteScenario1-v0")))
    random_rewards, _ = first_steps(None)
    assert pid_dones.sum() == 0
    assert pid_rewards.mean() > random_rewards.mean() + 0.5
