"""Helpers shared by the train-step benchmarks: driving-shaped spaces, a filled buffer, a model over it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

ACTION_SPACE = spaces.Box(-1, 1, (2,), np.float32)


def driving_space(stack: int = 4, size: int = 84, vector: int = 20) -> spaces.Dict:
    """The driving observation space: ``(stack, size, size)`` uint8 image + ``(vector,)`` float32 features."""
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (stack, size, size), np.uint8),
            "vector": spaces.Box(-np.inf, np.inf, (vector,), np.float32),
        }
    )


def filled_buffer(space: spaces.Dict, n: int, seed: int = 0) -> DictReplayBuffer:
    """An SB3 ``DictReplayBuffer`` holding ``n`` random transitions."""
    rng = np.random.default_rng(seed)
    buffer = DictReplayBuffer(n, space, ACTION_SPACE, device="cpu", n_envs=1)
    for _ in range(n):
        obs = {
            "image": rng.integers(0, 256, (1, *space["image"].shape), dtype=np.uint8),
            "vector": rng.standard_normal((1, *space["vector"].shape)).astype(np.float32),
        }
        next_obs = {key: value.copy() for key, value in obs.items()}
        action = rng.uniform(-1, 1, (1, 2)).astype(np.float32)
        buffer.add(obs, next_obs, action, rng.standard_normal(1).astype(np.float32), np.array([False]), [{}])
    return buffer


class SpacesEnv(gym.Env):
    """Only the spaces SB3 needs to build a model: the benchmarks time ``train()`` on a filled buffer."""

    def __init__(self, observation_space: spaces.Dict) -> None:
        self.observation_space = observation_space
        self.action_space = ACTION_SPACE

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


def model_on_buffer(cls: type, policy: object, buffer: DictReplayBuffer, **kwargs: object) -> OffPolicyAlgorithm:
    """A model of ``cls`` whose replay buffer is ``buffer`` and whose logger writes nowhere."""
    model = cls(policy, SpacesEnv(buffer.observation_space), buffer_size=1, learning_starts=0, seed=0, device="cpu", **kwargs)
    model.replay_buffer = buffer
    model.set_logger(configure(None, []))
    return model
