"""The Clipped classes as drop-ins for SB3's: every Dict space, HER, VecFrameStack/VecNormalize, float64 actions,
save/load, ``train(0)``, keyword-only new parameters, the ``"MultiInputPolicy"`` alias and the lean replay buffer.

With no ``max_grad_norms``, a Clipped class trains exactly as its SB3 class: most tests train both from the same
seed and compare every weight.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TQC
from stable_baselines3 import DDPG, SAC, TD3, HerReplayBuffer
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv
from stable_baselines3.common.torch_layers import CombinedExtractor
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize
from stable_baselines3.td3.policies import MultiInputPolicy as SB3TD3MultiInputPolicy

from sb3_av import ClippedDDPG, ClippedSAC, ClippedTD3, ClippedTQC
from sb3_av.buffers import FrameStackDictReplayBuffer
from sb3_av.common.policies import is_driving_observation_space
from sb3_av.td3 import MultiInputPolicy as TD3MultiInputPolicy
from sb3_av.torch_layers import MultiInputExtractor
from tests.image_vector_env import ImageVectorEnv

PAIRS = [(ClippedTD3, TD3), (ClippedDDPG, DDPG), (ClippedSAC, SAC), (ClippedTQC, TQC)]
PAIR_IDS = ["td3", "ddpg", "sac", "tqc"]


class MixedDictEnv(gym.Env):
    """Random Dict observations with two images, a Box, a Discrete and a MultiBinary entry; reward -|action|^2.

    :param action_dtype: dtype of the Box action space.
    :param episode_length: steps before truncation.
    :param boxes_only: leave out the Discrete and MultiBinary entries (SB3's VecFrameStack stacks Boxes only).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, action_dtype: type = np.float32, episode_length: int = 8, boxes_only: bool = False) -> None:
        entries: dict[str, spaces.Space] = {
            "front": spaces.Box(0, 255, (1, 36, 36), np.uint8),
            "rear": spaces.Box(0, 255, (1, 36, 36), np.uint8),
            "speed": spaces.Box(-1, 1, (2,), np.float32),
        }
        if not boxes_only:
            entries |= {"gear": spaces.Discrete(3), "lights": spaces.MultiBinary(2)}
        self.observation_space = spaces.Dict(entries)
        self.action_space = spaces.Box(-1, 1, (2,), action_dtype)
        self.episode_length = episode_length
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self._steps = 0
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self._steps += 1
        reward = -float(np.sum(np.square(action)))
        return self.observation_space.sample(), reward, False, self._steps >= self.episode_length, {}


def _kwargs(algorithm: type[BaseAlgorithm], **overrides: Any) -> dict[str, Any]:
    """Tiny networks, an early start, a fixed seed."""
    policy_kwargs: dict[str, Any] = {"net_arch": [8], "features_extractor_kwargs": {"cnn_output_dim": 8}}
    if issubclass(algorithm, TQC):
        policy_kwargs["n_quantiles"] = 5
    kwargs = {"learning_starts": 20, "batch_size": 8, "buffer_size": 500, "policy_kwargs": policy_kwargs, "seed": 2}
    return {**kwargs, "device": "cpu", **overrides}


def _assert_same_training(ours: BaseAlgorithm, reference: BaseAlgorithm) -> None:
    ours_state, reference_state = ours.policy.state_dict(), reference.policy.state_dict()
    assert ours_state.keys() == reference_state.keys()
    for key, value in ours_state.items():
        assert th.equal(value, reference_state[key]), key
    assert ours.logger.name_to_value["train/critic_loss"] == reference.logger.name_to_value["train/critic_loss"]


def _assert_save_load_keeps_predictions(model: BaseAlgorithm, path: Path, env: VecEnv | gym.Env | None = None) -> None:
    observations = [model.observation_space.sample() for _ in range(3)]
    before = [model.predict(obs, deterministic=True)[0] for obs in observations]
    model.save(path)
    loaded = type(model).load(path, env=env, device="cpu")
    assert type(loaded.policy) is type(model.policy)
    assert loaded.replay_buffer_class is model.replay_buffer_class
    for obs, action in zip(observations, before, strict=True):
        np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)
    if hasattr(model, "max_grad_norms"):
        assert loaded.max_grad_norms == model.max_grad_norms
        assert loaded.grad_norms.groups == model.grad_norms.groups


# ------------------------------------------------------------------------------------------ the MultiInputPolicy alias
def test_driving_observation_space_is_exactly_image_and_vector() -> None:
    image = spaces.Box(0, 255, (4, 36, 36), np.uint8)
    vector = spaces.Box(-np.inf, np.inf, (5,), np.float32)
    assert is_driving_observation_space(spaces.Dict({"image": image, "vector": vector}))
    assert is_driving_observation_space(ImageVectorEnv().observation_space)
    assert not is_driving_observation_space(spaces.Dict({"image": image, "vector": vector, "goal": vector}))
    assert not is_driving_observation_space(spaces.Dict({"image": image}))
    assert not is_driving_observation_space(spaces.Dict({"img": image, "vector": vector}))
    assert not is_driving_observation_space(
        spaces.Dict({"image": spaces.Box(0, 1, (4, 36, 36), np.float32), "vector": vector})
    )
    assert not is_driving_observation_space(spaces.Dict({"image": image, "vector": spaces.Box(0, 1, (2, 2), np.float32)}))
    assert not is_driving_observation_space(spaces.Dict({"image": image, "vector": spaces.Discrete(3)}))
    assert not is_driving_observation_space(image)


@pytest.mark.parametrize(
    "algorithm, sb3_net_arch", [(ClippedTD3, [400, 300]), (ClippedSAC, [256, 256]), (ClippedTQC, [256, 256])]
)
def test_alias_is_sb3s_except_on_the_driving_space(algorithm, sb3_net_arch) -> None:
    # Non-driving Dict space: SB3's CombinedExtractor and the algorithm's SB3 default heads.
    model = algorithm("MultiInputPolicy", MixedDictEnv(), buffer_size=10, device="cpu")
    assert type(model.actor.features_extractor) is CombinedExtractor
    assert model.policy.net_arch == sb3_net_arch
    # The driving space: sb3-av's extractor and [256, 256].
    model = algorithm("MultiInputPolicy", ImageVectorEnv(), buffer_size=10, device="cpu")
    assert type(model.actor.features_extractor) is MultiInputExtractor
    assert model.policy.net_arch == [256, 256]
    # An explicit extractor wins, both ways.
    model = algorithm(
        "MultiInputPolicy",
        ImageVectorEnv(),
        buffer_size=10,
        device="cpu",
        policy_kwargs={"features_extractor_class": CombinedExtractor},
    )
    assert type(model.actor.features_extractor) is CombinedExtractor
    assert model.policy.net_arch == sb3_net_arch
    env_with_goal = ImageVectorEnv()
    env_with_goal.observation_space = spaces.Dict({**env_with_goal.observation_space.spaces, "goal": spaces.Box(-1, 1, (2,))})
    model = algorithm(
        "MultiInputPolicy",
        env_with_goal,
        buffer_size=10,
        device="cpu",
        policy_kwargs={"features_extractor_class": MultiInputExtractor},
    )
    assert type(model.actor.features_extractor) is MultiInputExtractor
    assert model.policy.net_arch == [256, 256]


def test_readme_example_gets_driving_extractor_and_frame_stack_buffer() -> None:
    env = gym.make("LiteScenario0-v0")
    model = ClippedTD3("MultiInputPolicy", env, buffer_size=100, device="cpu")
    assert type(model.actor.features_extractor) is MultiInputExtractor
    assert model.policy.net_arch == [256, 256]
    assert type(model.replay_buffer) is FrameStackDictReplayBuffer
    env.close()


# --------------------------------------------------------------------------------- same training as SB3 on Dict spaces
@pytest.mark.parametrize("ours_class, reference_class", PAIRS, ids=PAIR_IDS)
def test_dict_space_with_discrete_multibinary_and_two_images_trains_as_sb3(ours_class, reference_class, tmp_path) -> None:
    kwargs = _kwargs(reference_class)
    ours = ours_class("MultiInputPolicy", MixedDictEnv(), **kwargs).learn(40)
    reference = reference_class("MultiInputPolicy", MixedDictEnv(), **kwargs).learn(40)
    assert type(ours.replay_buffer) is type(reference.replay_buffer) is DictReplayBuffer
    _assert_same_training(ours, reference)
    _assert_save_load_keeps_predictions(ours, tmp_path / "model.zip")


@pytest.mark.parametrize("ours_class, reference_class", [(ClippedTD3, TD3), (ClippedSAC, SAC)], ids=["td3", "sac"])
def test_float64_actions_train_as_sb3(ours_class, reference_class, tmp_path) -> None:
    kwargs = _kwargs(reference_class)
    ours = ours_class("MultiInputPolicy", MixedDictEnv(np.float64), **kwargs).learn(40)
    reference = reference_class("MultiInputPolicy", MixedDictEnv(np.float64), **kwargs).learn(40)
    assert ours.action_space.dtype == np.float64
    _assert_same_training(ours, reference)
    _assert_save_load_keeps_predictions(ours, tmp_path / "model.zip")


@pytest.mark.parametrize("ours_class, reference_class", PAIRS, ids=PAIR_IDS)
def test_vec_normalize_on_dict_trains_as_sb3(ours_class, reference_class, tmp_path) -> None:
    def env() -> VecNormalize:
        return VecNormalize(make_vec_env(MixedDictEnv, n_envs=2, seed=0), norm_obs_keys=["speed"], gamma=0.9)

    kwargs = _kwargs(reference_class)
    ours = ours_class("MultiInputPolicy", env(), **kwargs).learn(40)
    reference = reference_class("MultiInputPolicy", env(), **kwargs).learn(40)
    _assert_same_training(ours, reference)
    _assert_save_load_keeps_predictions(ours, tmp_path / "model.zip")


@pytest.mark.parametrize("ours_class, reference_class", [(ClippedTD3, TD3), (ClippedTQC, TQC)], ids=["td3", "tqc"])
def test_vec_frame_stack_on_dict_trains_as_sb3(ours_class, reference_class, tmp_path) -> None:
    def env() -> VecFrameStack:
        return VecFrameStack(make_vec_env(MixedDictEnv, n_envs=2, seed=0, env_kwargs={"boxes_only": True}), n_stack=2)

    kwargs = _kwargs(reference_class)
    ours = ours_class("MultiInputPolicy", env(), **kwargs).learn(40)
    reference = reference_class("MultiInputPolicy", env(), **kwargs).learn(40)
    assert ours.observation_space["front"].shape == (2, 36, 36)
    _assert_same_training(ours, reference)
    _assert_save_load_keeps_predictions(ours, tmp_path / "model.zip")


def test_vec_frame_stacked_driving_space_gets_frame_stack_buffer_and_sb3s_samples(tmp_path) -> None:
    """VecFrameStack makes a driving space out of single frames: the lean buffer's samples are still SB3's."""

    def env() -> VecFrameStack:
        return VecFrameStack(make_vec_env(ImageVectorEnv, n_envs=2, seed=0, env_kwargs={"stack": 1}), n_stack=3)

    kwargs = _kwargs(
        TD3, policy_kwargs={"net_arch": [8], "features_extractor_kwargs": {"cnn_output_dim": 8, "vector_output_dim": 4}}
    )
    ours = ClippedTD3("MultiInputPolicy", env(), **kwargs).learn(60)
    reference = TD3(TD3MultiInputPolicy, env(), **kwargs).learn(60)
    assert ours.observation_space["image"].shape == (3, 36, 36)
    assert type(ours.replay_buffer) is FrameStackDictReplayBuffer and type(reference.replay_buffer) is DictReplayBuffer
    _assert_same_training(ours, reference)
    _assert_save_load_keeps_predictions(ours, tmp_path / "model.zip")


@pytest.mark.parametrize("share_features_extractor", [False, True])
def test_sb3s_own_td3_policy_class_trains_as_sb3(share_features_extractor, tmp_path) -> None:
    """A model saved by SB3 or a custom SB3 policy class: ClippedTD3 runs SB3's step on it, SB3's sharing mode too."""
    kwargs = _kwargs(TD3)
    kwargs["policy_kwargs"]["share_features_extractor"] = share_features_extractor
    ours = ClippedTD3(SB3TD3MultiInputPolicy, MixedDictEnv(), **kwargs).learn(40)
    reference = TD3(SB3TD3MultiInputPolicy, MixedDictEnv(), **kwargs).learn(40)
    _assert_same_training(ours, reference)
    reference.save(tmp_path / "sb3_model.zip")
    loaded = ClippedTD3.load(tmp_path / "sb3_model.zip", env=MixedDictEnv(), device="cpu")
    assert type(loaded.policy) is SB3TD3MultiInputPolicy
    loaded.learn(20, reset_num_timesteps=False)  # trains with the clippers over SB3's policy
    assert loaded.grad_norms.pop_dump()["critic"].steps > 0


# -------------------------------------------------------------------------------------------------------------- HER
@pytest.mark.parametrize("ours_class, reference_class", PAIRS[:3], ids=PAIR_IDS[:3])
def test_her_on_goal_env_trains_as_sb3(ours_class, reference_class, tmp_path) -> None:
    def env() -> BitFlippingEnv:
        return BitFlippingEnv(n_bits=4, continuous=True, max_steps=4)

    kwargs = _kwargs(
        reference_class,
        policy_kwargs={"net_arch": [8]},
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 2, "goal_selection_strategy": "future"},
    )
    ours = ours_class("MultiInputPolicy", env(), **kwargs).learn(60)
    reference = reference_class("MultiInputPolicy", env(), **kwargs).learn(60)
    assert type(ours.replay_buffer) is HerReplayBuffer
    assert type(ours.actor.features_extractor) is CombinedExtractor
    _assert_same_training(ours, reference)
    _assert_save_load_keeps_predictions(ours, tmp_path / "model.zip", env=env())


# ---------------------------------------------------------------------------------------------- the lean replay buffer
@pytest.mark.parametrize("algorithm", [ClippedTD3, ClippedDDPG, ClippedSAC, ClippedTQC], ids=PAIR_IDS)
def test_stacked_images_get_the_frame_stack_buffer(algorithm, tmp_path) -> None:
    env = make_vec_env(ImageVectorEnv, n_envs=2, seed=0)
    model = algorithm("MultiInputPolicy", env, **_kwargs(algorithm, replay_buffer_kwargs={"frame_reserve": 0.5}))
    assert type(model.replay_buffer) is FrameStackDictReplayBuffer
    assert model.replay_buffer_kwargs == {"image_key": "image", "frame_reserve": 0.5}
    model.learn(40)
    assert model.replay_buffer.pos == 20  # type: ignore[union-attr]  # 40 steps of 2 envs
    _assert_save_load_keeps_predictions(model, tmp_path / "model.zip")


def test_explicit_buffer_and_sb3_refusals_win() -> None:
    explicit = ClippedTD3(
        "MultiInputPolicy", ImageVectorEnv(), replay_buffer_class=DictReplayBuffer, buffer_size=10, device="cpu"
    )
    assert type(explicit.replay_buffer) is DictReplayBuffer
    # Settings SB3's DictReplayBuffer refuses keep SB3's own error.
    for kwargs in ({"optimize_memory_usage": True}, {"n_steps": 3}):
        with pytest.raises(AssertionError) as ours:
            ClippedTD3("MultiInputPolicy", ImageVectorEnv(), buffer_size=10, device="cpu", **kwargs)
        with pytest.raises(AssertionError) as reference:
            TD3("MultiInputPolicy", ImageVectorEnv(), buffer_size=10, device="cpu", **kwargs)
        assert str(ours.value) == str(reference.value)
    # Unstacked images (one frame) and images under another key keep SB3's buffer.
    single = ClippedTD3("MultiInputPolicy", ImageVectorEnv(stack=1), buffer_size=10, device="cpu")
    assert type(single.replay_buffer) is DictReplayBuffer
    other_keys = ClippedTD3("MultiInputPolicy", MixedDictEnv(), buffer_size=10, device="cpu")
    assert type(other_keys.replay_buffer) is DictReplayBuffer


# ------------------------------------------------------------------------------------------------ API compatibility
@pytest.mark.parametrize("algorithm", [ClippedTD3, ClippedDDPG, ClippedSAC, ClippedTQC], ids=PAIR_IDS)
def test_train_with_zero_gradient_steps_does_nothing(algorithm) -> None:
    model = algorithm("MultiInputPolicy", ImageVectorEnv(), **_kwargs(algorithm)).learn(30)
    weights = {key: value.clone() for key, value in model.policy.state_dict().items()}
    n_updates = model._n_updates
    model.logger.name_to_value.clear()
    model.train(gradient_steps=0, batch_size=8)
    assert model._n_updates == n_updates
    # As SB3: the learning rate and the update count; no losses (SB3 would log NaN, the mean of no steps).
    assert dict(model.logger.name_to_value) == {
        "train/learning_rate": 1e-3 if algorithm in (ClippedTD3, ClippedDDPG) else 3e-4,
        "train/n_updates": n_updates,
    }
    assert all(th.equal(value, weights[key]) for key, value in model.policy.state_dict().items())


@pytest.mark.parametrize("ours_class, reference_class", PAIRS, ids=PAIR_IDS)
def test_new_parameters_are_keyword_only_and_positional_arguments_bind_as_sb3(ours_class, reference_class) -> None:
    ours = inspect.signature(ours_class.__init__).parameters
    for name in ("max_grad_norms", "image_augmentation", "augmentation_pad"):
        if name in ours:
            assert ours[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert "max_grad_norms" in ours
    positional = [p for p in ours.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in ours.values()):
        assert not positional[1:]  # (self, *args): SB3's own signature binds them
    else:
        reference = inspect.signature(reference_class.__init__).parameters
        expected = [name for name, p in reference.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert [p.name for p in positional] == expected
    # A positional call up to stats_window_size (TD3/SAC/TQC) or tensorboard_log (DDPG) binds as SB3's.
    reference_parameters = list(inspect.signature(reference_class.__init__).parameters.values())[1:]
    last = "tensorboard_log" if reference_class is DDPG else "stats_window_size"
    names = [p.name for p in reference_parameters][: [p.name for p in reference_parameters].index(last) + 1]
    values: list[Any] = [
        "MlpPolicy",
        "Pendulum-v1",
        *[p.default for p in reference_parameters[2 : len(names) - 1]],
        7 if last == "stats_window_size" else None,
    ]
    values[names.index("buffer_size")] = 123
    model = ours_class(*values, device="cpu")
    assert model.buffer_size == 123
    if last == "stats_window_size":
        assert model._stats_window_size == 7
