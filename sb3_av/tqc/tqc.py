"""ClippedTQC: sb3-contrib's TQC with sb3-av's per-group gradient clipping, exact norms and non-finite guard."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from sb3_contrib.common.utils import quantile_huber_loss
from sb3_contrib.tqc import TQC
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, ReplayBufferSamples

from sb3_av.common.soft_actor_critic import SoftActorCriticTrainMixin
from sb3_av.grad_clip import validate_max_grad_norms
from sb3_av.tqc.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["ClippedTQC"]


class ClippedTQC(SoftActorCriticTrainMixin, TQC):
    """Truncated Quantile Critics (Kuznetsov et al. 2020) with per-group gradient clipping and exact norms.

    Takes every parameter of :class:`sb3_contrib.TQC` plus ``max_grad_norms`` (see :class:`sb3_av.td3.ClippedTD3`).
    ``critic_mlp`` is the quantile networks. With every value None, training is numerically identical to TQC.
    ``max_grad_norms`` is keyword-only, so positional arguments bind as in sb3-contrib. ``"MultiInputPolicy"`` is
    sb3-contrib's, except on the driving observation space (see :class:`sb3_av.tqc.policies.MultiInputPolicy`);
    stacked uint8 images get the frame-stack replay buffer by default, as in :class:`sb3_av.sac.ClippedSAC`.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    def __init__(self, *args: Any, max_grad_norms: dict[str, float | None] | None = None, **kwargs: Any) -> None:
        self.max_grad_norms = validate_max_grad_norms(max_grad_norms)
        super().__init__(*args, **kwargs)

    def _critic_loss(self, replay_data: ReplayBufferSamples, ent_coef: th.Tensor, batch_size: int) -> th.Tensor:
        # For n-step replay, discount factor is gamma**n_steps (when no early termination)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            # Select action according to policy
            next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
            # Compute and cut quantiles at the next state
            # batch x nets x quantiles
            next_quantiles = self.critic_target(replay_data.next_observations, next_actions)
            # Sort and drop top k quantiles to control overestimation.
            n_target_quantiles = self.critic.quantiles_total - self.top_quantiles_to_drop_per_net * self.critic.n_critics
            next_quantiles, _ = th.sort(next_quantiles.reshape(batch_size, -1))
            next_quantiles = next_quantiles[:, :n_target_quantiles]
            # td error + entropy term
            target_quantiles = next_quantiles - ent_coef * next_log_prob.reshape(-1, 1)
            target_quantiles = replay_data.rewards + (1 - replay_data.dones) * discounts * target_quantiles
            # Make target_quantiles broadcastable to (batch_size, n_critics, n_target_quantiles).
            target_quantiles.unsqueeze_(dim=1)
        # Get current Quantile estimates using action from the replay buffer
        current_quantiles = self.critic(replay_data.observations, replay_data.actions)
        # Compute critic loss, not summing over the quantile dimension as in the paper.
        return quantile_huber_loss(current_quantiles, target_quantiles, sum_over_quantiles=False)

    def _actor_q(self, observations: PyTorchObs, actions_pi: th.Tensor) -> th.Tensor:
        return self.critic(observations, actions_pi).mean(dim=2).mean(dim=1, keepdim=True)
