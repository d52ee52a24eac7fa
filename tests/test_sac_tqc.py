"""ClippedSAC and ClippedTQC: identical to SB3 without limits; clipped, measured and guarded with limits."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch as th
from sb3_contrib import TQC
from stable_baselines3 import SAC

from sb3_av.callbacks import GradientMonitorCallback
from sb3_av.sac import ClippedSAC
from sb3_av.tqc import ClippedTQC
from tests.image_vector_env import ImageVectorEnv
from tests.test_td3 import _GradCapture, _groups, _record_steps, _tiny


@pytest.mark.parametrize("ours_class, reference_class", [(ClippedSAC, SAC), (ClippedTQC, TQC)])
def test_all_none_is_identical_to_reference(ours_class, reference_class) -> None:
    kwargs = {"learning_starts": 30, "batch_size": 16, "policy_kwargs": {"net_arch": [8]}, "seed": 1, "device": "cpu"}
    ours = ours_class("MlpPolicy", gym.make("Pendulum-v1"), **kwargs).learn(70)
    reference = reference_class("MlpPolicy", gym.make("Pendulum-v1"), **kwargs).learn(70)
    for key, value in ours.policy.state_dict().items():
        assert th.equal(value, reference.policy.state_dict()[key]), key
    assert th.equal(ours.log_ent_coef, reference.log_ent_coef)
    for tag in ("train/actor_loss", "train/critic_loss", "train/ent_coef", "train/ent_coef_loss"):
        assert ours.logger.name_to_value[tag] == reference.logger.name_to_value[tag], tag


@pytest.mark.parametrize("algorithm", [ClippedSAC, ClippedTQC])
def test_dict_policy_norms_exact_and_clipped(algorithm) -> None:
    limits = {"actor_cnn": 0.01, "critic_cnn": 0.05}
    kwargs = _tiny()
    if algorithm is ClippedTQC:
        kwargs["policy_kwargs"]["n_quantiles"] = 5
    model = algorithm("MultiInputPolicy", ImageVectorEnv(), max_grad_norms=limits, **kwargs)
    assert set(model._actor_clipper.names) == {"actor_cnn", "actor_mlp"}
    assert set(model._critic_clipper.names) == {"critic_cnn", "critic_mlp"}
    model.learn(40, callback=GradientMonitorCallback(dump_freq=10))
    records = _record_steps(model)
    capture = _GradCapture(model)
    groups = _groups(model)
    model.train(gradient_steps=3, batch_size=16)
    phases = {network: [i for i, (name, _) in enumerate(capture.phases) if name == network] for network in ("actor", "critic")}
    assert len(records["actor"]) == len(records["critic"]) == 3  # SAC updates the actor every step
    for network in ("actor", "critic"):
        clipper = getattr(model, f"_{network}_clipper")
        for phase, norms in zip(phases[network], records[network], strict=True):
            for index, name in enumerate(clipper.names):
                expected = capture.norm(phase, groups[name])
                assert norms.before[index].item() == pytest.approx(expected, rel=1e-5), name
                if name in limits:
                    assert norms.after[index].item() <= limits[name] * (1 + 1e-5)


def test_sac_nan_gradient_skips_actor_step() -> None:
    model = ClippedSAC("MultiInputPolicy", ImageVectorEnv(), **_tiny())
    model.learn(40)
    poisoned = next(model.actor.mu.parameters())
    handle = poisoned.register_hook(lambda grad: th.full_like(grad, float("inf")))
    weights = [p.detach().clone() for p in model.actor.parameters()]
    model.train(gradient_steps=1, batch_size=16)
    handle.remove()
    assert all(th.equal(p.detach(), w) for p, w in zip(model.actor.parameters(), weights, strict=True))
    assert model.grad_norms.nonfinite_total == {"actor": 1, "critic": 0}
