"""ClippedSAC: SB3's SAC with sb3-av's per-group gradient clipping, exact norms and non-finite guard."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac import SAC
from stable_baselines3.sac.policies import CnnPolicy, MlpPolicy
from stable_baselines3.sac.policies import MultiInputPolicy as _SB3MultiInputPolicy
from torch.nn import functional as F

from sb3_av.clipping import GradClipMixin
from sb3_av.grad_clip import StepNorms, validate_max_grad_norms
from sb3_av.torch_layers import MultiInputExtractor

__all__ = ["ClippedSAC", "MultiInputPolicy", "SoftActorCriticTrainMixin"]


class MultiInputPolicy(_SB3MultiInputPolicy):
    """SB3's SAC ``MultiInputPolicy`` with :class:`~sb3_av.torch_layers.MultiInputExtractor` as default extractor."""

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Box, lr_schedule: Schedule, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", MultiInputExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


class SoftActorCriticTrainMixin(GradClipMixin):
    """The ``train()`` of SAC and TQC (SB3's, step for step) with clipped, guarded optimizer steps.

    Groups: ``actor_cnn`` = the actor's extractor, ``actor_mlp`` = ``latent_pi``, ``mu`` and ``log_std``;
    ``critic_cnn`` = the critic's extractor (empty with SB3's ``share_features_extractor=True``, where the actor
    trains it), ``critic_mlp`` = the Q (or quantile) networks. The entropy coefficient is not clipped.
    Subclasses provide :meth:`_critic_loss` and :meth:`_actor_q`.
    """

    def _critic_loss(self, replay_data: ReplayBufferSamples, ent_coef: th.Tensor, batch_size: int) -> th.Tensor:
        raise NotImplementedError

    def _actor_q(self, observations: Any, actions_pi: th.Tensor) -> th.Tensor:
        raise NotImplementedError

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)  # type: ignore[attr-defined]
        # Update optimizers learning rate
        optimizers = [self.actor.optimizer, self.critic.optimizer]  # type: ignore[attr-defined]
        if self.ent_coef_optimizer is not None:  # type: ignore[attr-defined]
            optimizers += [self.ent_coef_optimizer]  # type: ignore[attr-defined]
        # Update learning rate according to lr schedule
        self._update_learning_rate(optimizers)  # type: ignore[attr-defined]

        losses: dict[str, list[th.Tensor]] = {"ent_coef_loss": [], "ent_coef": [], "actor": [], "critic": []}
        critic_norms: list[tuple[int, StepNorms]] = []
        actor_norms: list[tuple[int, StepNorms]] = []
        for gradient_step in range(gradient_steps):
            update = self._n_updates + gradient_step + 1  # type: ignore[attr-defined]
            # Sample replay buffer
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[attr-defined]
            # We need to sample because `log_std` may have changed between two gradient steps
            if self.use_sde:  # type: ignore[attr-defined]
                self.actor.reset_noise()  # type: ignore[attr-defined]
            # Action by the current actor for the sampled state
            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)  # type: ignore[attr-defined]
            log_prob = log_prob.reshape(-1, 1)

            ent_coef_loss = None
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:  # type: ignore[attr-defined]
                # Important: detach the variable from the graph so we don't change it with other losses
                ent_coef = th.exp(self.log_ent_coef.detach())  # type: ignore[attr-defined]
                ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()  # type: ignore[attr-defined]
                losses["ent_coef_loss"].append(ent_coef_loss.detach())
            else:
                ent_coef = self.ent_coef_tensor  # type: ignore[attr-defined]
            losses["ent_coef"].append(ent_coef.detach().reshape(()))

            # Optimize entropy coefficient, also called entropy temperature or alpha in the paper
            if ent_coef_loss is not None and self.ent_coef_optimizer is not None:  # type: ignore[attr-defined]
                self.ent_coef_optimizer.zero_grad()  # type: ignore[attr-defined]
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()  # type: ignore[attr-defined]

            critic_loss = self._critic_loss(replay_data, ent_coef, batch_size)
            losses["critic"].append(critic_loss.detach())
            # Optimize the critic
            self.critic.optimizer.zero_grad()  # type: ignore[attr-defined]
            critic_loss.backward()
            critic_norms.append((update, self._critic_clipper.step(self.critic.optimizer)))  # type: ignore[attr-defined]

            # Compute actor loss
            actor_loss = (ent_coef * log_prob - self._actor_q(replay_data.observations, actions_pi)).mean()
            losses["actor"].append(actor_loss.detach())
            # Optimize the actor
            self.actor.optimizer.zero_grad()  # type: ignore[attr-defined]
            actor_loss.backward()
            actor_norms.append((update, self._actor_clipper.step(self.actor.optimizer)))  # type: ignore[attr-defined]

            # Update target networks
            if gradient_step % self.target_update_interval == 0:  # type: ignore[attr-defined]
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)  # type: ignore[attr-defined]
                # Copy running stats, see GH issue #996
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)  # type: ignore[attr-defined]

        self._n_updates += gradient_steps  # type: ignore[attr-defined]
        host = self._flush_train_stats(critic_norms, actor_norms, losses)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")  # type: ignore[attr-defined]
        self.logger.record("train/ent_coef", float(np.mean(host["ent_coef"])))  # type: ignore[attr-defined]
        self.logger.record("train/actor_loss", float(np.mean(host["actor"])))  # type: ignore[attr-defined]
        self.logger.record("train/critic_loss", float(np.mean(host["critic"])))  # type: ignore[attr-defined]
        if "ent_coef_loss" in host:
            self.logger.record("train/ent_coef_loss", float(np.mean(host["ent_coef_loss"])))  # type: ignore[attr-defined]

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + self._grad_clip_excluded_params()  # type: ignore[misc]

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        self._setup_grad_clipping()


class ClippedSAC(SoftActorCriticTrainMixin, SAC):
    """Soft Actor-Critic (Haarnoja et al. 2018) with per-group gradient clipping and exact global L2 norms.

    Takes every parameter of :class:`stable_baselines3.SAC` plus ``max_grad_norms`` (group name -> max global
    L2 norm or None; see :class:`sb3_av.td3.ClippedTD3`). With every value None, training is numerically identical
    to SB3's SAC. ``"MultiInputPolicy"`` uses :class:`~sb3_av.torch_layers.MultiInputExtractor`.
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

    def _actor_q(self, observations: Any, actions_pi: th.Tensor) -> th.Tensor:
        # Min over all critic networks
        q_values_pi = th.cat(self.critic(observations, actions_pi), dim=1)
        min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
        return min_qf_pi
