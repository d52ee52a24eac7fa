"""A controller labels every transition and a behaviour-cloning term pulls the actor to it (sb3_av.teacher)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.buffers import DictReplayBuffer

from sb3_av.buffers import FrameStackDictReplayBuffer, TeacherDictReplayBufferSamples
from sb3_av.sac import ClippedSAC
from sb3_av.td3 import ClippedDDPG, ClippedTD3
from sb3_av.teacher import teacher_actor_loss
from tests.test_warmup import TowardOrigin, _env, _tiny


class Constant:
    """Always answers the same action."""

    def __init__(self, action: tuple[float, float]) -> None:
        self.action = np.asarray(action, dtype=np.float32)

    def reset(self) -> None:
        pass

    def act(self, observation: Any, info: dict | None = None) -> np.ndarray:
        return self.action


def _toward_origin(vectors: np.ndarray) -> np.ndarray:
    """TowardOrigin's answer for observation vectors ``(n, 3)``."""
    return np.clip(-2.0 * vectors[:, :2], -1, 1)


# ------------------------------------------------------------------------------------------------------ the loss
def test_the_loss_is_td3_bc_with_the_q_filter_computed_independently() -> None:
    generator = th.Generator().manual_seed(0)
    batch, dim, weight = 64, 2, 0.7
    q_policy = th.randn(batch, 1, generator=generator).requires_grad_()
    policy_actions = th.rand(batch, dim, generator=generator).mul(2).sub(1).requires_grad_()
    teacher = th.rand(batch, dim, generator=generator).mul(2).sub(1)
    teacher[:10, 1] = float("nan")  # 10 rows without a label
    q_teacher = th.randn(batch, 1, generator=generator)
    parts = teacher_actor_loss(q_policy, policy_actions, teacher, q_teacher, weight)
    parts.loss.backward()

    qp, pa, ta, qt = (t.detach().numpy().astype(np.float64) for t in (q_policy, policy_actions, teacher, q_teacher))
    mask = ~np.isnan(ta).any(axis=1) & (qt[:, 0] > qp[:, 0])
    assert 10 < mask.sum() < batch - 10  # the filter passes some rows and not others
    squared = np.where(mask[:, None], (pa - np.nan_to_num(ta)) ** 2, 0.0).mean(axis=1)
    bc = squared.mean()
    scale = np.abs(qp).mean()
    np.testing.assert_allclose(parts.bc.item(), bc, rtol=1e-5)
    np.testing.assert_allclose(parts.loss.item(), -qp.mean() / scale + weight * bc, rtol=1e-5)
    np.testing.assert_allclose(parts.cloned_share.item(), mask.mean(), rtol=1e-6)
    # the gradients: the Q term's scale is a constant (detached); the BC term reaches only the filtered rows
    np.testing.assert_allclose(q_policy.grad.numpy(), np.full((batch, 1), -1.0 / (batch * scale)), rtol=1e-5)
    expected = weight * 2.0 * (pa - np.nan_to_num(ta)) / (dim * batch) * mask[:, None]
    np.testing.assert_allclose(policy_actions.grad.numpy(), expected, rtol=1e-4, atol=1e-8)


def test_without_the_filter_every_labelled_row_is_cloned() -> None:
    q_policy = th.tensor([[1.0], [-3.0], [2.0]])
    policy_actions = th.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, -1.0]])
    teacher = th.tensor([[1.0, 1.0], [float("nan"), 0.0], [0.0, -1.0]])
    parts = teacher_actor_loss(q_policy, policy_actions, teacher, None, 2.0)
    bc = (1.0 + 0.0 + 0.5) / 3  # row means 1.0, (unlabelled), 0.5
    assert parts.bc.item() == pytest.approx(bc)
    assert parts.cloned_share.item() == pytest.approx(2 / 3)
    assert parts.loss.item() == pytest.approx(-0.0 / 2.0 + 2.0 * bc)


# --------------------------------------------------------------------------------------------- the labels stored
@pytest.mark.parametrize("n_steps", [1, 3])
def test_every_transition_is_labelled_with_the_teachers_action_in_its_obs(n_steps: int) -> None:
    kwargs: dict[str, Any] = {}
    if n_steps > 1:
        kwargs = {"replay_buffer_class": FrameStackDictReplayBuffer, "replay_buffer_kwargs": {"n_steps": n_steps}}
    model = ClippedTD3("MultiInputPolicy", _env(episode_length=20), learning_starts=100, **kwargs, **_tiny())
    given = TowardOrigin()
    model.set_teacher(given, 1.0)
    model.learn(45)
    buffer = model.replay_buffer
    assert isinstance(buffer, FrameStackDictReplayBuffer)
    vectors = buffer.observations["vector"][:45, 0]
    np.testing.assert_allclose(buffer.teacher_actions[:45, 0], _toward_origin(vectors), atol=1e-6)
    assert np.isnan(buffer.teacher_actions[45:]).all()
    # the teacher never acts: the warm-up's uniform random actions were taken
    assert not np.allclose(buffer.actions[:45, 0], buffer.teacher_actions[:45, 0], atol=0.1)
    # a copy per env, fed each step's info and reset at each episode end, as a warm-up controller
    teacher = model._teacher.controllers[0]  # type: ignore[union-attr]
    assert given.calls == [] and len(teacher.calls) == 45
    ends = np.flatnonzero(buffer.dones[:45, 0])
    assert len(ends) >= 2 and teacher.resets == 1 + len(ends)
    assert all(teacher.calls[k][1] is None for k in ends + 1 if k < 45)
    # each sample carries the label of its own obs
    np.random.seed(0)
    samples = buffer.sample(32)
    assert isinstance(samples, TeacherDictReplayBufferSamples)
    sampled_vectors = samples.observations["vector"].numpy()
    np.testing.assert_allclose(samples.teacher_actions.numpy(), _toward_origin(sampled_vectors), atol=1e-6)
    assert (samples.discounts is not None) == (n_steps > 1)


def test_a_buffer_without_labels_samples_as_before() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), learning_starts=100, **_tiny())
    model.learn(30)
    samples = model.replay_buffer.sample(8)
    assert type(samples).__name__ == "DictReplayBufferSamples"
    assert model.replay_buffer.teacher_actions is None


# --------------------------------------------------------------------------------------------------- the training
def _policy_distance_to(model: ClippedTD3, action: np.ndarray, n: int = 30) -> float:
    env = _env()
    distances = []
    obs, _ = env.reset(seed=123)
    for _ in range(n):
        predicted, _ = model.predict(obs, deterministic=True)
        distances.append(np.abs(predicted - action).mean())
        obs, *_ = env.step(env.action_space.sample())
    return float(np.mean(distances))


@pytest.mark.parametrize("algorithm", [ClippedTD3, ClippedDDPG])
def test_the_bc_term_pulls_the_policy_to_the_teachers_action(algorithm: type[ClippedTD3]) -> None:
    target = np.array([0.6, -0.4], dtype=np.float32)

    def trained(teacher: Constant | None) -> ClippedTD3:
        model = algorithm("MultiInputPolicy", _env(), learning_starts=50, learning_rate=3e-3, **_tiny())
        if teacher is not None:
            model.set_teacher(teacher, 20.0, q_filter=False)
        model.learn(350)
        return model

    taught, alone = trained(Constant((0.6, -0.4))), trained(None)
    assert _policy_distance_to(taught, target) < 0.1
    assert _policy_distance_to(alone, target) > 0.3
    logged = taught.logger.name_to_value
    assert logged["train/teacher_cloned_share"] == 1.0 and 0 <= logged["train/teacher_bc"] < 0.05


def test_the_q_filter_share_is_logged() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), learning_starts=20, **_tiny())
    model.set_teacher(TowardOrigin(), 1.0, q_filter=True)
    assert model.teacher_q_filter
    model.learn(60)
    share = model.logger.name_to_value["train/teacher_cloned_share"]
    assert 0.0 <= share <= 1.0


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_a_bad_weight_is_refused(weight: Any) -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), **_tiny())
    with pytest.raises(ValueError, match="teacher's weight must be a finite number > 0"):
        model.set_teacher(TowardOrigin(), weight)


def test_a_bad_q_filter_is_refused() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), **_tiny())
    with pytest.raises(ValueError, match="q_filter must be True or False"):
        model.set_teacher(TowardOrigin(), 1.0, q_filter="yes")  # type: ignore[arg-type]


def test_sac_has_no_teacher_term() -> None:
    model = ClippedSAC("MultiInputPolicy", _env(), **_tiny())
    with pytest.raises(NotImplementedError, match="set_teacher works with TD3 and DDPG"):
        model.set_teacher(TowardOrigin(), 1.0)


def test_a_buffer_that_cannot_hold_labels_is_refused() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), replay_buffer_class=DictReplayBuffer, **_tiny())
    with pytest.raises(ValueError, match="stored in sb3-av's FrameStackDictReplayBuffer"):
        model.set_teacher(TowardOrigin(), 1.0)


def test_a_controller_without_act_is_refused() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), **_tiny())
    with pytest.raises(TypeError, match=r"act\(observation, info\) and reset\(\)"):
        model.set_teacher(object(), 1.0)  # type: ignore[arg-type]


def test_the_teacher_is_not_saved_and_none_removes_it(tmp_path) -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), learning_starts=10, **_tiny())
    model.set_teacher(TowardOrigin(), 1.0)
    model.learn(20)
    model.save(tmp_path / "model")
    loaded = ClippedTD3.load(tmp_path / "model", env=_env())
    assert loaded._teacher is None and loaded.teacher_weight == 0.0
    loaded.learn(20)  # trains without a teacher
    assert "train/teacher_bc" not in loaded.logger.name_to_value
    model.set_teacher(None, 1.0)
    assert model._teacher is None and model.teacher_weight == 0.0
    n_labelled = int(np.isfinite(model.replay_buffer.teacher_actions[:, 0, 0]).sum())
    model.learn(10, reset_num_timesteps=False)
    assert int(np.isfinite(model.replay_buffer.teacher_actions[:, 0, 0]).sum()) == n_labelled  # no more labels


def test_a_pid_teacher_labels_lite_with_the_pids_own_answers() -> None:
    """On the driving env with sb3-av's shared encoder: the labels are the PID's answers, given each step's info
    (it reads the leader's gap there)."""
    from sb3_av.baselines import PIDPurePursuit

    class RecordingPID(PIDPurePursuit):
        def act(self, observation: Any, info: dict | None = None) -> np.ndarray:
            action = super().act(observation, info)
            self.calls = [*getattr(self, "calls", []), (info, np.asarray(action, dtype=np.float32))]
            return action

    env = gym.make("LiteScenario1-v0")
    model = ClippedTD3(
        "MultiInputPolicy",
        env,
        learning_starts=40,
        **{**_tiny(), "policy_kwargs": {"net_arch": [8], "share_features_extractor": True}},
    )
    pid = PIDPurePursuit.from_env(env)
    pid.__class__ = RecordingPID
    model.set_teacher(pid, 1.0)
    model.learn(60)
    assert np.isfinite(model.logger.name_to_value["train/teacher_bc"])
    calls = model._teacher.controllers[0].calls  # type: ignore[union-attr]
    answers = model.policy.scale_action(np.stack([action for _, action in calls]))
    np.testing.assert_allclose(model.replay_buffer.teacher_actions[:60, 0], answers, atol=1e-6)
    assert calls[0][0] is None and all("lead_distance_m" in info["backend"] for info, _ in calls[1:] if info)
    assert sum(info is not None for info, _ in calls) >= 50


# --------------------------------------------------------------------------- what is cloned under action smoothing
@pytest.mark.parametrize("clone", ["action", "head"])
def test_the_term_clones_the_smoothed_action_or_the_heads_output(clone: str) -> None:
    """With ``action_smoothing``, ``clone="action"`` compares the executed action ``(1 - beta) * head + beta *
    previous`` with the teacher's and ``clone="head"`` the head's output itself; both checked against the loss
    computed by hand from the encoder's features, the head and the previous action in the observation."""
    from sb3_av.td3.policies import PREVIOUS_ACTION_SLICE

    betas = th.tensor([0.5, 0.9])
    model = ClippedTD3(
        "MultiInputPolicy",
        gym.make("LiteScenario1-v0"),
        learning_starts=1000,  # collect only
        **{
            **_tiny(),
            "policy_kwargs": {"net_arch": [8], "share_features_extractor": True, "action_smoothing": [0.5, 0.9]},
        },
    )
    model.set_teacher(Constant((0.3, -0.8)), 2.0, clone=clone)
    assert model.teacher_clone == clone
    model.learn(40)
    samples = model.replay_buffer.sample(16)
    heads = model._heads()
    batch = heads.encode(samples.observations)
    stats: dict[str, list[th.Tensor]] = {"teacher_bc": [], "teacher_cloned_share": []}
    loss = model._teacher_actor_loss(heads, batch, heads.actor_pass(batch), samples.teacher_actions, stats)

    policy = model.policy
    with th.no_grad():
        features = batch.features
        head = policy.actor.mu(features)
        previous = samples.observations["vector"][:, PREVIOUS_ACTION_SLICE].float().clamp(-1, 1)
        executed = (1 - betas) * head + betas * previous
        q = policy.critic.q_networks[0](th.cat([features, executed], dim=1))
        cloned = head if clone == "head" else executed
        bc = ((cloned - th.tensor([0.3, -0.8])) ** 2).mean()
        expected = -q.mean() / q.abs().mean() + 2.0 * bc
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    other = executed if clone == "head" else head
    assert float(((other - th.tensor([0.3, -0.8])) ** 2).mean()) != pytest.approx(float(bc), rel=1e-3)


def test_a_bad_clone_target_is_refused() -> None:
    model = ClippedTD3("MultiInputPolicy", _env(), **_tiny())
    with pytest.raises(ValueError, match="clone must be one of 'action', 'head', got 'mu'"):
        model.set_teacher(TowardOrigin(), 1.0, clone="mu")
