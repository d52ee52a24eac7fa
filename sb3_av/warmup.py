"""A classical controller drives an off-policy learner's first steps (demonstration warm-up).

SB3's off-policy algorithms fill the replay buffer with uniform random actions until ``learning_starts``. On a road
with traffic those episodes end within seconds (off the road or into the first car), so the critic first sees
nothing but crashes, and an image-based TD3 spends its first 10,000-20,000 simulation steps learning to brake behind
a slow leader (README, Learning). With a warm-up controller (e.g. :class:`~sb3_av.baselines.PIDPurePursuit`) the
first ``steps`` environment steps are driven by the controller instead, with the algorithm's own action noise on top
(the controller's action is the mean, as the policy's is after the warm-up): the buffer starts with whole episodes
of driving, braking and following, and their rewards. Training starts at ``learning_starts`` as usual; the
controller may drive on after it (``steps > learning_starts``: the learner trains off-policy on the controller's
episodes), and the policy drives from ``steps`` on. Every step counts in the budget as any other.

The controller reads the env's observation and its last ``info`` (the PID's adaptive cruise control uses
``info["backend"]["lead_distance_m"]``); it is copied once per env of the ``VecEnv``, and each copy is reset when
its env's episode ends. Use it through :meth:`sb3_av.common.off_policy.ClippedOffPolicyMixin.set_warmup_controller`.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import numpy as np

__all__ = ["ControllerWarmup", "WarmupController"]


class WarmupController(Protocol):
    """What a warm-up controller provides (:class:`~sb3_av.baselines.PIDPurePursuit` does)."""

    def reset(self) -> None:
        """Clear the controller's state at an episode start."""

    def act(self, observation: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> np.ndarray:
        """The action (in the env's action space) for one env's observation and its last ``info``."""


class ControllerWarmup:
    """One copy of a controller per env of a ``VecEnv``, fed each env's observation and last ``info``.

    :param controller: the controller (copied: the caller's object is never stepped).
    :param n_envs: the number of envs of the ``VecEnv``.
    """

    def __init__(self, controller: WarmupController, n_envs: int) -> None:
        if not callable(getattr(controller, "act", None)) or not callable(getattr(controller, "reset", None)):
            raise TypeError(
                f"a warm-up controller needs act(observation, info) and reset() (as PIDPurePursuit), got {controller!r}"
            )
        self.controllers = [copy.deepcopy(controller) for _ in range(n_envs)]
        for c in self.controllers:
            c.reset()
        self.last_infos: list[dict[str, Any] | None] = [None] * n_envs

    def actions(self, observations: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """The controllers' actions ``(n_envs, action_dim)`` for the ``VecEnv``'s batched observations."""
        rows = []
        for i, (controller, info) in enumerate(zip(self.controllers, self.last_infos, strict=True)):
            if isinstance(observations, dict):
                own: Any = {key: value[i] for key, value in observations.items()}
            else:
                own = observations[i]
            rows.append(np.asarray(controller.act(own, info), dtype=np.float32))
        return np.stack(rows)

    def observe(self, infos: list[dict[str, Any]], dones: np.ndarray) -> None:
        """Record each env's ``info`` after a step; reset the controllers whose episode ended (the ``VecEnv`` has
        already reset that env: the next observation is a first one, with no step info yet)."""
        for i, (info, done) in enumerate(zip(infos, dones, strict=True)):
            if done:
                self.controllers[i].reset()
                self.last_infos[i] = None
            else:
                self.last_infos[i] = info
