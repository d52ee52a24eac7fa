"""A tiny Dict env (stacked uint8 image + vector) for testing algorithms without a simulator."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ImageVectorEnv(gym.Env):
    """A point that must move to the origin, seen as a blurry image stack and a position vector.

    :param size: image height and width (>= 36 for a NatureCNN).
    :param stack: frames in the image stack (newest last).
    :param episode_length: steps before truncation.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, size: int = 36, stack: int = 4, episode_length: int = 20) -> None:
        self.size = size
        self.stack = stack
        self.episode_length = episode_length
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (stack, size, size), np.uint8),
                "vector": spaces.Box(-np.inf, np.inf, (3,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._frames = np.zeros((stack, size, size), np.uint8)
        self._position = np.zeros(2)
        self._steps = 0

    def _frame(self) -> np.ndarray:
        frame = np.zeros((self.size, self.size), np.uint8)
        row, col = ((self._position + 1.0) / 2.0 * (self.size - 1)).clip(0, self.size - 1).astype(int)
        frame[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3] = 255
        return frame

    def _observation(self) -> dict[str, np.ndarray]:
        vector = np.array([*self._position, self._steps / self.episode_length], np.float32)
        return {"image": self._frames.copy(), "vector": vector}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._position = self.np_random.uniform(-1, 1, size=2)
        self._steps = 0
        self._frames[:] = self._frame()
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self._position = np.clip(self._position + 0.2 * np.asarray(action, dtype=np.float64), -1, 1)
        self._steps += 1
        self._frames = np.roll(self._frames, -1, axis=0)
        self._frames[-1] = self._frame()
        distance = float(np.linalg.norm(self._position))
        terminated = distance < 0.1
        truncated = self._steps >= self.episode_length
        return self._observation(), -distance, terminated, truncated, {}
