"""``action_smoothing``: the TD3 policy's action is (1 - beta) * actor output + beta * the observation's previous
action, in prediction, in the training heads and after save/load; checked against the actor head computed here."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th

import sb3_av  # noqa: F401  (registers the env ids)
from sb3_av.td3 import ClippedTD3

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")


def _model(beta: float | list[float], shared: bool = True, steps: int = 120) -> ClippedTD3:
    env = gym.make("LiteScenario0-v0", max_steps=100)
    policy_kwargs = {
        "net_arch": [16],
        "features_extractor_kwargs": {"cnn_output_dim": 16, "vector_output_dim": 8},
        "share_features_extractor": shared,
        "action_smoothing": beta,
    }
    model = ClippedTD3(
        "MultiInputPolicy", env, policy_kwargs=policy_kwargs, learning_starts=60, batch_size=16, buffer_size=300, seed=0
    )
    model.learn(steps)
    return model


def _obs_with_previous_action(model: ClippedTD3, previous: list[float]) -> dict[str, np.ndarray]:
    obs, _ = model.get_env().envs[0].unwrapped.reset(seed=4)  # type: ignore[union-attr]
    obs["vector"][3:5] = previous
    return obs


def _head_output(model: ClippedTD3, obs: dict[str, np.ndarray]) -> np.ndarray:
    actor = model.policy.actor
    tensor_obs, _ = model.policy.obs_to_tensor(obs)
    with th.no_grad():
        return actor.mu(actor.extract_features(tensor_obs, actor.features_extractor)).numpy()[0]


@pytest.mark.parametrize(
    "beta, shared",
    [(0.6, True), (0.6, False), ([0.3, 0.9], True)],  # a list: one beta per control, here the throttle harder
)
def test_action_is_the_blend_of_the_actor_output_and_the_previous_action(
    beta: float | list[float], shared: bool, tmp_path: Path
) -> None:
    previous = np.array([0.5, -0.8])
    model = _model(beta, shared)
    obs = _obs_with_previous_action(model, previous.tolist())
    betas = np.asarray(beta)
    expected = (1 - betas) * _head_output(model, obs) + betas * previous
    action, _ = model.predict(obs, deterministic=True)
    assert action == pytest.approx(expected, abs=1e-6)
    model.save(tmp_path / "model.zip")
    loaded = ClippedTD3.load(tmp_path / "model.zip")
    saved = tuple(beta) if isinstance(beta, list) else beta
    assert loaded.policy.actor.action_smoothing == saved and loaded.policy.actor_target.action_smoothing == saved
    assert loaded.predict(obs, deterministic=True)[0] == pytest.approx(action, abs=1e-6)


def test_training_heads_use_the_smoothed_action() -> None:
    """The actions the critic targets and the actor loss use are the smoothed ones, with gradient to the head."""
    beta = 0.5
    model = _model(beta)
    batch = model.replay_buffer.sample(8, env=model._vec_normalize_env)
    heads = model.policy.heads()
    encoded = heads.encode(batch.observations)
    actions = heads.actions(encoded)
    with th.no_grad():
        raw = model.policy.actor.mu(encoded.features)
    previous = batch.observations["vector"][:, 3:5].clamp(-1, 1)
    assert th.allclose(actions, (1 - beta) * raw + beta * previous, atol=1e-6)
    assert th.allclose(actions, model.policy.actor(batch.observations), atol=1e-5)  # the forward path agrees
    heads.actor_pass(encoded).q_values.mean().backward()
    assert model.policy.actor.mu[0].weight.grad is not None and model.policy.actor.mu[0].weight.grad.abs().sum() > 0


def test_zero_smoothing_is_the_plain_policy() -> None:
    plain, zero = _model(0.0), _model(0.0)
    obs = _obs_with_previous_action(plain, [0.9, 0.9])
    assert plain.predict(obs, deterministic=True)[0] == pytest.approx(_head_output(plain, obs), abs=1e-6)
    assert zero.predict(obs, deterministic=True)[0] == pytest.approx(plain.predict(obs, deterministic=True)[0], abs=1e-6)


@pytest.mark.parametrize("beta", [-0.1, 1.0, "0.5", True, [0.5], [0.5, 0.5, 0.5], [0.5, 1.2]])
def test_bad_smoothing_is_a_clear_error(beta: object) -> None:
    with pytest.raises(ValueError, match=r"action_smoothing must be a number in \[0, 1\) or a list of 2"):
        ClippedTD3("MultiInputPolicy", gym.make("LiteScenario0-v0"), policy_kwargs={"action_smoothing": beta}, buffer_size=10)


def test_smoothing_needs_the_driving_observation() -> None:
    env = gym.make("Pendulum-v1")
    with pytest.raises(TypeError):  # SB3's MlpPolicy has no such parameter: it stays SB3's
        ClippedTD3("MlpPolicy", env, policy_kwargs={"action_smoothing": 0.5}, buffer_size=10)
    from gymnasium import spaces

    from sb3_av.td3.policies import MultiInputPolicy

    space = spaces.Dict({"state": spaces.Box(-1, 1, (3,))})
    with pytest.raises(ValueError, match="reads the previous action from the driving observation"):
        MultiInputPolicy(space, env.action_space, lambda _: 1e-3, action_smoothing=0.5)
