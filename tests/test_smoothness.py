"""ClippedTD3's ``smoothness_weight``: the actor loss's temporal smoothness term (the head's squared distance to the
previous action the observation carries), checked against a hand computation and in its effect on training."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th

import sb3_av  # noqa: F401  (registers the env ids)
from sb3_av.td3 import ClippedTD3
from sb3_av.td3.policies import PREVIOUS_ACTION_SLICE
from sb3_av.zoo.config import validate_hyperparams
from sb3_av.algorithms import get_algorithm
from tests.test_teacher import Constant

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

BETAS = th.tensor([0.5, 0.9])


def _model(weight: float, learning_starts: int = 1000, seed: int = 0, learning_rate: float = 1e-3) -> ClippedTD3:
    return ClippedTD3(
        "MultiInputPolicy",
        gym.make("LiteScenario1-v0", max_steps=60),
        learning_rate=learning_rate,
        learning_starts=learning_starts,
        batch_size=16,
        buffer_size=300,
        policy_delay=1,
        smoothness_weight=weight,
        policy_kwargs={
            "net_arch": [8],
            "features_extractor_kwargs": {"cnn_output_dim": 8, "vector_output_dim": 4},
            "share_features_extractor": True,
            "action_smoothing": BETAS.tolist(),
        },
        seed=seed,
        device="cpu",
    )


@pytest.mark.parametrize("with_teacher", [False, True])
def test_the_term_is_the_heads_squared_distance_to_the_previous_action(with_teacher: bool) -> None:
    """The actor loss is TD3's (or TD3+BC's on the head) plus ``weight * mean((head - previous)^2)``, computed here
    from the encoder's features, the head and the previous action in the observation's vector."""
    model = _model(0.7)
    if with_teacher:
        model.set_teacher(Constant((0.3, -0.8)), 2.0, clone="head")
    model.learn(40)  # collect only (learning_starts 1000)
    samples = model.replay_buffer.sample(16)
    heads = model._heads()
    batch = heads.encode(samples.observations)
    stats: dict[str, list[th.Tensor]] = {"teacher_bc": [], "teacher_cloned_share": [], "smoothness": []}
    loss = model._actor_loss(heads, batch, samples, stats)

    policy = model.policy
    with th.no_grad():
        head = policy.actor.mu(batch.features)
        previous = samples.observations["vector"][:, PREVIOUS_ACTION_SLICE].float().clamp(-1, 1)
        executed = (1 - BETAS) * head + BETAS * previous
        q = policy.critic.q_networks[0](th.cat([batch.features, executed], dim=1))
        smoothness = ((head - previous) ** 2).mean()
        if with_teacher:
            base = -q.mean() / q.abs().mean() + 2.0 * ((head - th.tensor([0.3, -0.8])) ** 2).mean()
        else:
            base = -q.mean()
    assert float(smoothness) > 1e-3  # the test can tell the term from its absence
    assert float(stats["smoothness"][0]) == pytest.approx(float(smoothness), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(base + 0.7 * smoothness), rel=1e-5)


def _head_distance(model: ClippedTD3) -> float:
    """Mean |head - previous action| over the replay buffer's first 100 observations (the random warm-up's: the same
    ones for every model of one seed)."""
    obs = model.replay_buffer._get_samples(np.arange(100)).observations
    heads = model._heads()
    with th.no_grad():
        batch = heads.encode(obs)
        head = model.policy.actor.mu(batch.features)
    previous = obs["vector"][:, PREVIOUS_ACTION_SLICE].float().clamp(-1, 1)
    return float((head - previous).abs().mean())


def test_the_term_pulls_the_head_to_the_previous_action() -> None:
    """The same run (seed, data) with a large weight ends with the head much closer to the previous action than
    without the term; ``train/smoothness`` is logged only with the term."""
    distances = {}
    for weight in (0.0, 50.0):
        model = _model(weight, learning_starts=100, learning_rate=3e-3)
        model.learn(400)
        distances[weight] = _head_distance(model)
        logged = model.logger.name_to_value
        assert ("train/smoothness" in logged) is (weight > 0)
    assert distances[50.0] < 0.5 * distances[0.0], distances


@pytest.mark.parametrize("weight", [-0.1, float("nan"), True, "1"])
def test_a_bad_weight_is_refused(weight: Any) -> None:
    with pytest.raises(ValueError, match="smoothness_weight must be a finite number >= 0"):
        _model(weight)


def test_the_term_needs_the_driving_observation() -> None:
    with pytest.raises(ValueError, match="smoothness_weight needs the driving observation"):
        ClippedTD3("MlpPolicy", "Pendulum-v1", smoothness_weight=1.0, device="cpu")
    ClippedTD3("MlpPolicy", "Pendulum-v1", smoothness_weight=0.0, device="cpu")  # off: any space


def test_the_yaml_key_is_a_constructor_argument() -> None:
    checked = validate_hyperparams({"smoothness_weight": 0.5}, get_algorithm("td3"), "td3.yml [test]", partial=True)
    assert checked["smoothness_weight"] == 0.5
