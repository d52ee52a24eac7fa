"""ClippedSAC: SB3's SAC with sb3-av's per-group gradient clipping, exact norms and non-finite guard."""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, ReplayBufferSamples
from stable_baselines3.sac import SAC
from torch.nn import functional as F

from sb3_av.common.soft_actor_critic import SoftActorCriticTrainMixin
from sb3_av.grad_clip import validate_max_grad_norms
from sb3_av.sac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["ClippedSAC"]


class ClippedSAC(SoftActorCriticTrainMixin, SAC):
    """Soft Actor-Critic (Haarnoja et al. 2018) with per-group gradient clipping and exact global L2 norms.

    Takes every parameter of :class:`stable_baselines3.SAC` plus ``max_grad_norms`` (group name -> max global
    L2 norm or None; see :class:`sb3_av.td3.ClippedTD3`). With every value None, training is numerically identical
    to SB3's SAC. ``max_grad_norms`` is keyword-only, so positional arguments bind as in SB3. ``"MultiInputPolicy"``
    is SB3's, except on the driving observation space (see :class:`sb3_av.sac.policies.MultiInputPolicy`). Stacked
    uint8 images are stored by :class:`~sb3_av.buffers.FrameStackDictReplayBuffer` unless ``replay_buffer_class`` is
    given (see :class:`sb3_av.common.off_policy.ClippedOffPolicyMixin`).
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
            # Compute the next Q values: min over all critics targets
            next_q_values = th.cat(self.critic_target(replay_data.next_observations, next_actions), dim=1)
            next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
            # add entropy term
            next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
            # td error + entropy term
            target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
        # Get current Q-values estimates for each critic network using action from the replay buffer
        current_q_values = self.critic(replay_data.observations, replay_data.actions)
        critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
        assert isinstance(critic_loss, th.Tensor)
        return critic_loss

    def _actor_q(self, observations: PyTorchObs, actions_pi: th.Tensor) -> th.Tensor:
        # Min over all critic networks
        q_values_pi = th.cat(self.critic(observations, actions_pi), dim=1)
        min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
        return min_qf_pi
