"""ClippedTD3 / ClippedDDPG: equality with SB3, exact norms, clipping, the non-finite guard, save/load, modes."""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.buffers import DictReplayBuffer
from torch import nn

from sb3_av.buffers import FrameStackDictReplayBuffer
from sb3_av.grad_clip import GroupClipper, StepNorms
from sb3_av.td3 import ClippedDDPG, ClippedTD3, MultiInputPolicy
from sb3_av.torch_layers import MultiInputExtractor
from tests.image_vector_env import ImageVectorEnv

TINY_POLICY = {
    "net_arch": [16],
    "features_extractor_kwargs": {"cnn_output_dim": 16, "vector_output_dim": 8},
}


def _tiny(**overrides):
    kwargs = {
        "learning_starts": 40,
        "batch_size": 16,
        "buffer_size": 1000,
        "policy_kwargs": {**TINY_POLICY, **overrides.pop("policy_kwargs", {})},
        "seed": 3,
        "device": "cpu",
    }
    kwargs.update(overrides)
    return kwargs


def _record_steps(model: ClippedTD3) -> dict[str, list[StepNorms]]:
    """Spy on the clippers: the StepNorms of every optimizer step, by network."""
    records: dict[str, list[StepNorms]] = {"actor": [], "critic": []}
    for network in ("actor", "critic"):
        clipper: GroupClipper = getattr(model, f"_{network}_clipper")
        original = clipper.step

        def step(optimizer, _original=original, _network=network):
            norms = _original(optimizer)
            records[_network].append(norms)
            return norms

        clipper.step = step  # type: ignore[method-assign]
    return records


class _GradCapture:
    """Captures each parameter's gradient with tensor hooks, phase by phase (one phase per zero_grad)."""

    def __init__(self, model: ClippedTD3) -> None:
        self.phases: list[tuple[str, dict[int, th.Tensor]]] = []
        for network in ("actor", "critic"):
            optimizer = getattr(model, network).optimizer
            original = optimizer.zero_grad

            def zero_grad(*args, _original=original, _network=network, **kwargs):
                self.phases.append((_network, {}))
                return _original(*args, **kwargs)

            optimizer.zero_grad = zero_grad
        for param in model.policy.parameters():
            if param.requires_grad:
                param.register_hook(self._hook(param))

    def _hook(self, param: nn.Parameter):
        def hook(grad: th.Tensor) -> None:
            self.phases[-1][1][id(param)] = grad.detach().clone()

        return hook

    def norm(self, phase: int, params: list[nn.Parameter]) -> float:
        grads = self.phases[phase][1]
        return float(th.linalg.vector_norm(th.cat([grads[id(p)].flatten().double() for p in params])))


def _groups(model: ClippedTD3) -> dict[str, list[nn.Parameter]]:
    groups = {}
    for network in ("actor", "critic"):
        clipper = getattr(model, f"_{network}_clipper")
        for name in clipper.names:
            groups[name] = clipper.group_parameters(name)
    return groups


def test_all_none_is_numerically_identical_to_sb3_td3() -> None:
    kwargs = _tiny()
    # one after the other: SB3 seeds and samples through the global RNGs
    ours = ClippedTD3("MultiInputPolicy", ImageVectorEnv(), **kwargs).learn(120)
    reference = TD3(MultiInputPolicy, ImageVectorEnv(), **kwargs).learn(120)
    assert ours._n_updates == reference._n_updates == 80
    # ours stores the stacks in the frame-stack buffer by default: same samples as SB3's DictReplayBuffer
    assert type(ours.replay_buffer) is FrameStackDictReplayBuffer and type(reference.replay_buffer) is DictReplayBuffer
    ours_state, reference_state = ours.policy.state_dict(), reference.policy.state_dict()
    assert ours_state.keys() == reference_state.keys()
    for key in ours_state:
        assert th.equal(ours_state[key], reference_state[key]), key
    assert ours.logger.name_to_value["train/critic_loss"] == reference.logger.name_to_value["train/critic_loss"]


def test_ddpg_all_none_is_identical_to_sb3_ddpg() -> None:
    env_id = "Pendulum-v1"
    kwargs = {"learning_starts": 30, "batch_size": 16, "policy_kwargs": {"net_arch": [8]}, "seed": 1, "device": "cpu"}
    ours = ClippedDDPG("MlpPolicy", gym.make(env_id), **kwargs).learn(80)
    reference = DDPG("MlpPolicy", gym.make(env_id), **kwargs).learn(80)
    assert ours.policy_delay == 1 and ours.critic.n_critics == 1
    for key, value in ours.policy.state_dict().items():
        assert th.equal(value, reference.policy.state_dict()[key]), key


def test_logged_norms_match_hook_computation_and_clip_holds() -> None:
    limits = {"actor_cnn": 1e-3, "critic_cnn": 0.05, "actor_mlp": None, "critic_mlp": None}
    model = ClippedTD3("MultiInputPolicy", ImageVectorEnv(), max_grad_norms=limits, **_tiny())
    model.learn(40)  # fill the buffer; training starts after learning_starts
    records = _record_steps(model)
    capture = _GradCapture(model)
    groups = _groups(model)
    clipped_grad_norms: dict[str, list[float]] = {"actor_cnn": [], "critic_cnn": []}
    for network, names in (("actor", ["actor_cnn"]), ("critic", ["critic_cnn"])):
        optimizer = getattr(model, network).optimizer
        original_step = optimizer.step

        def step(*args, _original=original_step, _names=names, **kwargs):
            for name in _names:  # the gradients the optimizer really applies
                clipped_grad_norms[name].append(float(th.linalg.vector_norm(th.cat([p.grad.flatten() for p in groups[name]]))))
            return _original(*args, **kwargs)

        optimizer.step = step
    model.train(gradient_steps=6, batch_size=16)

    critic_phases = [i for i, (network, _) in enumerate(capture.phases) if network == "critic"]
    actor_phases = [i for i, (network, _) in enumerate(capture.phases) if network == "actor"]
    assert len(critic_phases) == len(records["critic"]) == 6
    assert len(actor_phases) == len(records["actor"]) == 3  # policy_delay=2
    for network, phases in (("critic", critic_phases), ("actor", actor_phases)):
        clipper = getattr(model, f"_{network}_clipper")
        for phase, norms in zip(phases, records[network], strict=True):
            for index, name in enumerate(clipper.names):
                expected = capture.norm(phase, groups[name])
                assert norms.before[index].item() == pytest.approx(expected, rel=1e-5), name
                limit = limits[name]
                expected_after = expected if limit is None else expected * min(1.0, limit / (expected + 1e-6))
                assert norms.after[index].item() == pytest.approx(expected_after, rel=1e-5), name
                if limit is not None:
                    assert norms.after[index].item() <= limit * (1 + 1e-5)
    # the clip really acted: BEFORE above the limit, gradients applied at the limit
    for name in ("actor_cnn", "critic_cnn"):
        index = (model._actor_clipper if name.startswith("actor") else model._critic_clipper).names.index(name)
        network = "actor" if name.startswith("actor") else "critic"
        befores = [norms.before[index].item() for norms in records[network]]
        assert max(befores) > limits[name]
        for before, applied in zip(befores, clipped_grad_norms[name], strict=True):
            assert applied <= limits[name] * (1 + 1e-5)
            assert applied == pytest.approx(before * min(1.0, limits[name] / (before + 1e-6)), rel=1e-4)
    # the window saw the same values
    summary = model.grad_norms.pop_dump()
    critic_index = model._critic_clipper.names.index("critic_mlp")
    expected_max = max(capture.norm(phase, groups["critic_mlp"]) for phase in critic_phases)
    assert summary["critic"].max_before[critic_index] == pytest.approx(expected_max, rel=1e-5)
    assert summary["actor"].steps == 3 and summary["critic"].steps == 6


def test_nan_gradient_skips_step_leaves_weights_and_is_counted() -> None:
    model = ClippedTD3("MultiInputPolicy", ImageVectorEnv(), max_grad_norms={"critic_cnn": 10.0}, **_tiny())
    model.learn(40)
    poisoned = next(model.critic.q_networks[0].parameters())
    handle = poisoned.register_hook(lambda grad: th.full_like(grad, float("nan")))
    critic_weights = [p.detach().clone() for p in model.critic.parameters()]
    critic_target_weights = [p.detach().clone() for p in model.critic_target.parameters()]
    model.train(gradient_steps=1, batch_size=16)  # _n_updates = 1: critic only
    handle.remove()
    for p, w in zip(model.critic.parameters(), critic_weights, strict=True):
        assert th.equal(p.detach(), w)
    for p, w in zip(model.critic_target.parameters(), critic_target_weights, strict=True):
        assert th.equal(p.detach(), w)
    assert model.grad_norms.nonfinite_total["critic"] == 1
    summary = model.grad_norms.pop_dump()["critic"]
    assert summary.nonfinite_steps == 1
    assert summary.nonfinite_groups[model._critic_clipper.names.index("critic_mlp")] == 1
    model.train(gradient_steps=1, batch_size=16)  # healthy again: the step is taken
    assert not all(th.equal(p.detach(), w) for p, w in zip(model.critic.parameters(), critic_weights, strict=True))


def test_save_load_keeps_max_grad_norms_and_predictions(tmp_path: Path) -> None:
    limits = {"actor_cnn": 1.0, "critic_cnn": 10.0}
    env = ImageVectorEnv()
    model = ClippedTD3("MultiInputPolicy", env, max_grad_norms=limits, **_tiny()).learn(60)
    obs, _ = env.reset(seed=5)
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "model")
    loaded = ClippedTD3.load(tmp_path / "model", env=ImageVectorEnv(), device="cpu")
    assert loaded.max_grad_norms == {"actor_cnn": 1.0, "actor_mlp": None, "critic_cnn": 10.0, "critic_mlp": None}
    assert loaded._actor_clipper.max_norms == model._actor_clipper.max_norms
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)
    loaded.learn(20, reset_num_timesteps=False)  # the clippers are rebuilt over the loaded parameters
    assert loaded.grad_norms.pop_dump()["critic"].steps > 0


def test_shared_encoder_is_trained_by_critic_only() -> None:
    model = ClippedTD3(
        "MultiInputPolicy",
        ImageVectorEnv(),
        max_grad_norms={"critic_cnn": 5.0},
        **_tiny(policy_kwargs={"share_features_extractor": True}),
    )
    policy = model.policy
    assert policy.actor.features_extractor is policy.critic.features_extractor
    assert policy.actor_target.features_extractor is policy.critic_target.features_extractor
    assert policy.actor_target.features_extractor is not policy.actor.features_extractor
    encoder_ids = {id(p) for p in policy.critic.features_extractor.parameters()}
    assert not encoder_ids & {id(p) for group in model.actor.optimizer.param_groups for p in group["params"]}
    assert model._actor_clipper.names == ("actor_mlp",)
    assert model._critic_clipper.names == ("critic_cnn", "critic_mlp")

    model.learn(40)
    encoder_before = [p.detach().clone() for p in policy.critic.features_extractor.parameters()]
    target_before = [p.detach().clone() for p in policy.critic_target.features_extractor.parameters()]
    records = _record_steps(model)
    model.train(gradient_steps=4, batch_size=16)
    assert len(records["critic"]) == 4 and len(records["actor"]) == 2
    assert all(norms.before[0].item() > 0 for norms in records["critic"])  # critic_cnn receives critic gradients
    assert all(norms.after[0].item() <= 5.0 * (1 + 1e-5) for norms in records["critic"])
    encoder_after = list(policy.critic.features_extractor.parameters())
    assert not all(th.equal(a, b) for a, b in zip(encoder_after, encoder_before, strict=True))
    # the target encoder is soft-updated once per target update (SB3's shared mode does it twice: 2 * tau)
    online, target = model.policy.heads().target_update_parameters()
    assert (
        len({id(p) for p in target})
        == len(target)
        == len(list(policy.critic_target.parameters())) + len(list(policy.actor_target.mu.parameters()))
    )
    assert [id(p) for p in online[: len(encoder_before)]] == [id(p) for p in policy.critic.features_extractor.parameters()]
    moved = [
        (new.detach() - old).abs().max().item()
        for old, new in zip(target_before, policy.critic_target.features_extractor.parameters(), strict=True)
    ]
    assert max(moved) > 0


def test_shared_encoder_step_is_the_drq_v2_step() -> None:
    """One gradient step of the shared mode against the same step written out by hand (DrQ-v2's update)."""
    model = ClippedTD3(
        "MultiInputPolicy", ImageVectorEnv(), policy_delay=1, **_tiny(policy_kwargs={"share_features_extractor": True})
    )
    model.learn(40)  # fills the buffer; no update yet
    assert model._n_updates == 0
    batch = model.replay_buffer.sample(16)
    model.replay_buffer.sample = lambda *args, **kwargs: batch  # type: ignore[method-assign]
    policy = model.policy
    encoder, target_encoder = deepcopy(policy.critic.features_extractor), deepcopy(policy.critic_target.features_extractor)
    q_nets = nn.ModuleList(deepcopy(policy.critic.q_networks))
    target_q_nets = nn.ModuleList(deepcopy(policy.critic_target.q_networks))
    mu, target_mu = deepcopy(policy.actor.mu), deepcopy(policy.actor_target.mu)
    critic_optimizer = th.optim.Adam([*encoder.parameters(), *q_nets.parameters()], lr=model.learning_rate)
    actor_optimizer = th.optim.Adam(mu.parameters(), lr=model.learning_rate)

    th.manual_seed(7)
    with th.no_grad():
        next_features = target_encoder(batch.next_observations)
        noise = batch.actions.clone().normal_(0, model.target_policy_noise)
        next_actions = (target_mu(next_features) + noise.clamp(-model.target_noise_clip, model.target_noise_clip)).clamp(-1, 1)
        next_q = th.cat([q(th.cat([next_features, next_actions], dim=1)) for q in target_q_nets], dim=1).min(
            dim=1, keepdim=True
        )
        target_q = batch.rewards + (1 - batch.dones) * model.gamma * next_q.values
    features = encoder(batch.observations)  # the critic loss trains the encoder
    critic_loss = sum(nn.functional.mse_loss(q(th.cat([features, batch.actions], dim=1)), target_q) for q in q_nets)
    critic_optimizer.zero_grad()
    critic_loss.backward()
    critic_optimizer.step()
    detached = features.detach()  # the actor loss reads the same features, detached
    actor_loss = -q_nets[0](th.cat([detached, mu(detached)], dim=1)).mean()
    actor_optimizer.zero_grad()
    actor_loss.backward()
    actor_optimizer.step()
    with th.no_grad():
        for online, target in ((encoder, target_encoder), (q_nets, target_q_nets), (mu, target_mu)):
            for p, p_target in zip(online.parameters(), target.parameters(), strict=True):
                p_target.mul_(1 - model.tau).add_(model.tau * p)

    th.manual_seed(7)
    model.train(gradient_steps=1, batch_size=16)
    assert model.logger.name_to_value["train/critic_loss"] == pytest.approx(float(critic_loss.detach()), rel=1e-6)
    assert model.logger.name_to_value["train/actor_loss"] == pytest.approx(float(actor_loss.detach()), rel=1e-6)
    for ours, expected in (
        (policy.critic.features_extractor, encoder),
        (policy.critic_target.features_extractor, target_encoder),
        (nn.ModuleList(policy.critic.q_networks), q_nets),
        (nn.ModuleList(policy.critic_target.q_networks), target_q_nets),
        (policy.actor.mu, mu),
        (policy.actor_target.mu, target_mu),
    ):
        for p, p_expected in zip(ours.parameters(), expected.parameters(), strict=True):
            th.testing.assert_close(p.detach(), p_expected.detach(), rtol=1e-6, atol=1e-7)


def test_shared_mode_actor_loss_does_not_reach_encoder() -> None:
    model = ClippedTD3("MultiInputPolicy", ImageVectorEnv(), **_tiny(policy_kwargs={"share_features_extractor": True}))
    obs = model.policy.obs_to_tensor(ImageVectorEnv().reset(seed=0)[0])[0]
    model.policy.zero_grad()
    model.policy.actor(obs).sum().backward()
    assert all(p.grad is None for p in model.policy.critic.features_extractor.parameters())
    assert any(p.grad is not None for p in model.policy.actor.mu.parameters())


def test_limit_on_missing_group_is_an_error() -> None:
    with pytest.raises(ValueError, match="no actor_cnn parameters"):
        ClippedTD3(
            "MultiInputPolicy",
            ImageVectorEnv(),
            max_grad_norms={"actor_cnn": 1.0},
            **_tiny(policy_kwargs={"share_features_extractor": True}),
        )
    with pytest.raises(ValueError, match="Unknown gradient group"):
        ClippedTD3("MultiInputPolicy", ImageVectorEnv(), max_grad_norms={"cnn": 1.0}, **_tiny())


def test_extractor_rejects_spaces_without_image_and_vector() -> None:
    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (4, 36, 36), np.uint8)})
    with pytest.raises(ValueError, match="no \\['vector'\\] key"):
        MultiInputExtractor(space)
    extractor = MultiInputExtractor(ImageVectorEnv().observation_space, cnn_output_dim=16, vector_output_dim=0)
    assert extractor.features_dim == 16 + 3
    out = extractor({"image": th.rand(2, 4, 36, 36), "vector": th.zeros(2, 3)})
    assert out.shape == (2, 19) and math.isfinite(float(out.detach().sum()))


def test_random_shift_is_a_bounded_integer_shift() -> None:
    from sb3_av.augmentation import random_shift

    images = th.arange(2 * 3 * 10 * 10, dtype=th.int64).reshape(2, 3, 10, 10).to(th.uint8)
    generator = th.Generator().manual_seed(0)
    shifted = random_shift(images, pad=2, generator=generator)
    assert shifted.dtype == th.uint8 and shifted.shape == images.shape
    padded = th.nn.functional.pad(images.float(), (2, 2, 2, 2), mode="replicate").to(th.uint8)
    for b in range(2):  # each sample is one crop of its padded image, the same for all its channels
        matches = [
            (dy, dx) for dy in range(5) for dx in range(5) if th.equal(shifted[b], padded[b, :, dy : dy + 10, dx : dx + 10])
        ]
        assert len(matches) == 1
    # the crop of sample b is at the offset drawn for it: (row, col) = th.randint(0, 2 pad + 1, (B, 2)) of the generator
    wide = th.randint(0, 256, (6, 2, 9, 13), generator=th.Generator().manual_seed(1)).float()  # any dtype, H != W
    shifted = random_shift(wide, pad=3, generator=th.Generator().manual_seed(7))
    offsets = th.randint(0, 7, (6, 2), generator=th.Generator().manual_seed(7))
    padded = th.nn.functional.pad(wide, (3, 3, 3, 3), mode="replicate")
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert th.equal(shifted[b], padded[b, :, dy : dy + 9, dx : dx + 13])
    assert th.equal(random_shift(images, pad=0), images)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        random_shift(images, pad=-1)


def test_augmentation_option_trains_and_is_validated() -> None:
    with pytest.raises(ValueError, match="Unknown image_augmentation"):
        ClippedTD3("MultiInputPolicy", ImageVectorEnv(), image_augmentation="mixup", **_tiny())
    model = ClippedTD3(
        "MultiInputPolicy",
        ImageVectorEnv(),
        image_augmentation="random_shift",
        **_tiny(policy_kwargs={"share_features_extractor": True}),
    )
    model.learn(60)
    sample = model.replay_buffer.sample(8)
    augmented = model._augment(sample)
    assert th.equal(augmented.observations["vector"], sample.observations["vector"])
    assert not th.equal(augmented.observations["image"], sample.observations["image"])
    assert model.grad_norms.pop_dump()["critic"].steps == 20


def test_extractor_bfloat16_and_channels_last_match_float32() -> None:
    space = ImageVectorEnv().observation_space
    th.manual_seed(0)
    reference = MultiInputExtractor(space, cnn_output_dim=16, vector_output_dim=8)
    fast = MultiInputExtractor(space, cnn_output_dim=16, vector_output_dim=8, cnn_dtype="bfloat16", channels_last=True)
    fast.load_state_dict(reference.state_dict())
    assert fast.cnn[0].weight.is_contiguous(memory_format=th.channels_last)
    batch = {"image": th.rand(8, 4, 36, 36), "vector": th.randn(8, 3)}
    expected, got = reference(batch), fast(batch)
    assert got.dtype == th.float32
    th.testing.assert_close(got, expected, rtol=5e-2, atol=5e-2)
    got.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == th.float32 for p in fast.parameters())
    with pytest.raises(ValueError, match="cnn_dtype"):
        MultiInputExtractor(space, cnn_dtype="float16")


@pytest.mark.parametrize("cnn_dtype, channels_last", [("float32", False), ("float32", True), ("bfloat16", True)])
def test_raw_uint8_images_give_the_features_of_preprocessed_ones(cnn_dtype: str, channels_last: bool) -> None:
    space = ImageVectorEnv().observation_space
    extractor = MultiInputExtractor(
        space, cnn_output_dim=16, vector_output_dim=8, cnn_dtype=cnn_dtype, channels_last=channels_last
    )
    images = th.randint(0, 256, (4, 4, 36, 36), dtype=th.uint8)
    vector = th.randn(4, 3)
    from_raw = extractor({"image": images, "vector": vector})
    from_float = extractor({"image": images.float() / 255.0, "vector": vector})
    tolerance = 1e-6 if cnn_dtype == "float32" else 2e-2
    th.testing.assert_close(from_raw, from_float, rtol=tolerance, atol=tolerance)
