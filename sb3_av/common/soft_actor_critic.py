"""The ``train()`` of SAC and TQC (SB3's, step for step) with clipped, guarded optimizer steps.

:class:`SoftActorCriticTrainMixin` is shared by :class:`sb3_av.sac.ClippedSAC` and :class:`sb3_av.tqc.ClippedTQC`;
each supplies its critic loss and the actor's Q estimate. What the mixin reads from its host (SB3's ``SAC`` or
sb3-contrib's ``TQC``, which declare the same attributes with different network classes) is declared by the
:class:`SoftActorCriticHost` protocol, the type of ``self`` in the methods that read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecNormalize
from stable_baselines3.sac.policies import Actor as SACActor
from sb3_contrib.tqc.policies import Actor as TQCActor

from sb3_av.common.off_policy import ClippedOffPolicyMixin
from sb3_av.grad_clip import GroupClipper, StepNorms

__all__ = ["SoftActorCriticHost", "SoftActorCriticTrainMixin"]


class SoftActorCriticHost(Protocol):
    """What :meth:`SoftActorCriticTrainMixin.train` reads from SB3's ``SAC`` / sb3-contrib's ``TQC`` and the mixin."""

    _n_updates: int

    @property
    def policy(self) -> BasePolicy: ...
    @property
    def actor(self) -> SACActor | TQCActor: ...
    @property
    def critic(self) -> BaseModel: ...
    @property
    def critic_target(self) -> BaseModel: ...
    @property
    def log_ent_coef(self) -> th.Tensor | None: ...
    @property
    def ent_coef_optimizer(self) -> th.optim.Optimizer | None: ...
    @property
    def ent_coef_tensor(self) -> th.Tensor: ...
    @property
    def target_entropy(self) -> Any: ...  # float after SB3's setup (str | float as typed by SB3, "auto" resolved)
    @property
    def use_sde(self) -> bool: ...
    @property
    def tau(self) -> float: ...
    @property
    def target_update_interval(self) -> int: ...
    @property
    def batch_norm_stats(self) -> list[th.Tensor]: ...
    @property
    def batch_norm_stats_target(self) -> list[th.Tensor]: ...
    @property
    def replay_buffer(self) -> ReplayBuffer | None: ...
    @property
    def _vec_normalize_env(self) -> VecNormalize | None: ...
    @property
    def logger(self) -> Logger: ...
    @property
    def _actor_clipper(self) -> GroupClipper: ...
    @property
    def _critic_clipper(self) -> GroupClipper: ...

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None: ...

    def _critic_loss(self, replay_data: ReplayBufferSamples, ent_coef: th.Tensor, batch_size: int) -> th.Tensor: ...

    def _actor_q(self, observations: PyTorchObs, actions_pi: th.Tensor) -> th.Tensor: ...

    def _ent_coef_step(self, log_prob: th.Tensor, losses: dict[str, list[th.Tensor]]) -> th.Tensor: ...

    def _flush_train_stats(
        self,
        critic_steps: list[tuple[int, StepNorms]],
        actor_steps: list[tuple[int, StepNorms]],
        losses: Mapping[str, list[th.Tensor]],
    ) -> dict[str, np.ndarray]: ...


class SoftActorCriticTrainMixin(ClippedOffPolicyMixin):
    """The ``train()`` of SAC and TQC (SB3's, step for step) with clipped, guarded optimizer steps.

    Groups: ``actor_cnn`` = the actor's extractor, ``actor_mlp`` = ``latent_pi``, ``mu`` and ``log_std``;
    ``critic_cnn`` = the critic's extractor (empty with SB3's ``share_features_extractor=True``, where the actor
    trains it), ``critic_mlp`` = the Q (or quantile) networks. The entropy coefficient is not clipped.
    Subclasses provide :meth:`_critic_loss` and :meth:`_actor_q`.
    """

    def _critic_loss(self, replay_data: ReplayBufferSamples, ent_coef: th.Tensor, batch_size: int) -> th.Tensor:
        """The critic loss of one batch (targets computed without gradient)."""
        raise NotImplementedError

    def _actor_q(self, observations: PyTorchObs, actions_pi: th.Tensor) -> th.Tensor:
        """The Q estimate ``(batch, 1)`` that the actor loss maximizes."""
        raise NotImplementedError

    def _clipped_networks(self: SoftActorCriticHost) -> tuple[BaseModel, BaseModel]:
        return self.actor, self.critic

    def _ent_coef_step(self: SoftActorCriticHost, log_prob: th.Tensor, losses: dict[str, list[th.Tensor]]) -> th.Tensor:
        """The entropy coefficient of this step; with a learned one, also its optimizer step (before it, SB3's order).

        :param log_prob: ``(batch, 1)`` log-probabilities of the current actor's actions.
        :param losses: gets the coefficient (``"ent_coef"``) and, when learned, its loss (``"ent_coef_loss"``).
        """
        ent_coef_loss = None
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            # Important: detach the variable from the graph so we don't change it with other losses
            ent_coef = th.exp(self.log_ent_coef.detach())
            ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
            losses["ent_coef_loss"].append(ent_coef_loss.detach())
        else:
            ent_coef = self.ent_coef_tensor
        losses["ent_coef"].append(ent_coef.detach().reshape(()))

        # Optimize entropy coefficient, also called entropy temperature or alpha in the paper
        if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
            self.ent_coef_optimizer.zero_grad()
            ent_coef_loss.backward()
            self.ent_coef_optimizer.step()
        return ent_coef

    def train(self: SoftActorCriticHost, gradient_steps: int, batch_size: int = 64) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizers learning rate
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        # Update learning rate according to lr schedule
        self._update_learning_rate(optimizers)

        losses: dict[str, list[th.Tensor]] = {"ent_coef_loss": [], "ent_coef": [], "actor": [], "critic": []}
        critic_norms: list[tuple[int, StepNorms]] = []
        actor_norms: list[tuple[int, StepNorms]] = []
        assert self.replay_buffer is not None
        for gradient_step in range(gradient_steps):
            update = self._n_updates + gradient_step + 1
            # Sample replay buffer
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            # We need to sample because `log_std` may have changed between two gradient steps
            if self.use_sde:
                self.actor.reset_noise()
            # Action by the current actor for the sampled state
            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
            log_prob = log_prob.reshape(-1, 1)

            ent_coef = self._ent_coef_step(log_prob, losses)

            critic_loss = self._critic_loss(replay_data, ent_coef, batch_size)
            losses["critic"].append(critic_loss.detach())
            # Optimize the critic
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            critic_norms.append((update, self._critic_clipper.step(self.critic.optimizer)))

            # Compute actor loss
            actor_loss = (ent_coef * log_prob - self._actor_q(replay_data.observations, actions_pi)).mean()
            losses["actor"].append(actor_loss.detach())
            # Optimize the actor
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            actor_norms.append((update, self._actor_clipper.step(self.actor.optimizer)))

            # Update target networks
            if gradient_step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                # Copy running stats, see GH issue #996
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if gradient_steps == 0:
            return  # no losses to log (SB3 would log the mean of nothing, NaN)
        host = self._flush_train_stats(critic_norms, actor_norms, losses)
        self.logger.record("train/ent_coef", float(np.mean(host["ent_coef"])))
        self.logger.record("train/actor_loss", float(np.mean(host["actor"])))
        self.logger.record("train/critic_loss", float(np.mean(host["critic"])))
        if "ent_coef_loss" in host:
            self.logger.record("train/ent_coef_loss", float(np.mean(host["ent_coef_loss"])))
