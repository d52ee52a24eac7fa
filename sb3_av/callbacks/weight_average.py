"""An exponential moving average of the policy's weights, to evaluate and deploy instead of the last weights.

An off-policy actor swings from one set of weights to the next: on LiteScenario2 one seed's deterministic policy
drove 5 of 5 curve episodes at 20,000 steps and 2 of 5 at 24,000. Averaging the weights along the training
trajectory (Polyak averaging; for deep RL, Nikishin et al. 2018, "Improving Stability in Deep Reinforcement Learning
with Weight Averaging"; the EMA of weights of supervised training) gives a policy that moves slowly, without changing
training: the average is never trained, only read. TD3's own target actor is such an average, over a window too short
for this (``1 / tau`` updates).

The average is kept in float32 beside the policy (a second copy of its state, ~2x the policy's memory) and updated
after every environment step once ``start`` steps have passed (and once more when ``learn()`` ends, after its last
gradient steps), with TensorFlow's warm-up of the decay,
``min(decay, (1 + n) / (10 + n))`` for the n-th update, so that the first updates do not keep the initial weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_av._checks import is_finite_number

__all__ = ["PolicyWeightAverage"]


class PolicyWeightAverage(BaseCallback):
    """Keep an exponential moving average (EMA) of ``model.policy``'s floating-point weights.

    :param decay: the average's decay per environment step (``vec_env`` step), in [0, 1): the weights of ``n``
        steps ago count ``decay ** n``; its horizon is about ``1 / (1 - decay)`` steps (0.9995: 2,000 steps).
    :param start: the number of steps (``model.num_timesteps``) before which the average only copies the weights
        (e.g. ``learning_starts``: nothing is trained before).
    """

    def __init__(self, decay: float = 0.9995, start: int = 0, verbose: int = 0) -> None:
        super().__init__(verbose)
        if not is_finite_number(decay) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an integer >= 0, got {start!r}")
        self.decay = float(decay)
        self.start = start
        self.n_updates = 0
        self._average: dict[str, th.Tensor] = {}

    def _on_training_start(self) -> None:
        if not self._average:
            self._copy_policy()

    def _copy_policy(self) -> None:
        self._average = {name: value.detach().clone() for name, value in self.model.policy.state_dict().items()}

    def _on_step(self) -> bool:
        self._update()
        return True

    def _on_training_end(self) -> None:
        # SB3 trains after collecting: the last gradient steps of learn() come after the last _on_step
        self._update()

    def _update(self) -> None:
        if self.num_timesteps <= self.start:
            self._copy_policy()
            return
        decay = min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))
        current = self.model.policy.state_dict()
        names = [name for name, value in self._average.items() if value.is_floating_point()]
        with th.no_grad():
            th._foreach_lerp_([self._average[n] for n in names], [current[n].detach() for n in names], 1.0 - decay)
        for name, value in self._average.items():  # integer buffers (none in SB3's policies) follow the policy
            if not value.is_floating_point():
                value.copy_(current[name])
        self.n_updates += 1

    def state_dict(self) -> dict[str, th.Tensor]:
        """A copy of the averaged weights, a ``policy.state_dict()`` to ``load_state_dict``."""
        if not self._average:
            raise RuntimeError("PolicyWeightAverage has no average yet: it starts with model.learn()")
        return {name: value.clone() for name, value in self._average.items()}

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block ``model.policy`` holds the averaged weights; its own come back afterwards."""
        own = {name: value.detach().clone() for name, value in self.model.policy.state_dict().items()}
        self.model.policy.load_state_dict(self.state_dict())
        try:
            yield
        finally:
            self.model.policy.load_state_dict(own)
