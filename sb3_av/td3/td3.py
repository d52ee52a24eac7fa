"""ClippedTD3 and ClippedDDPG: SB3's TD3/DDPG with per-group gradient clipping and exact norm bookkeeping."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.td3 import TD3
from torch.nn import functional as F

from sb3_av._checks import non_negative_number
from sb3_av.augmentation import AUGMENTATIONS
from sb3_av.common.off_policy import ClippedOffPolicyMixin
from sb3_av.grad_clip import StepNorms, validate_max_grad_norms
from sb3_av.common.policies import is_driving_observation_space
from sb3_av.td3.policies import (
    ActorPass,
    CnnPolicy,
    EncodedBatch,
    MlpPolicy,
    MultiInputPolicy,
    TD3Heads,
    TD3Policy,
    previous_action,
)
from sb3_av.teacher import teacher_actor_loss

__all__ = ["ClippedDDPG", "ClippedTD3"]

SelfClippedTD3 = TypeVar("SelfClippedTD3", bound="ClippedTD3")


class ClippedTD3(ClippedOffPolicyMixin, TD3):
    """Twin Delayed DDPG (Fujimoto et al. 2018, "Addressing Function Approximation Error in Actor-Critic
    Methods") with gradient clipping per parameter group and exact global L2 norms.

    Takes every parameter of :class:`stable_baselines3.TD3` (in SB3's order), plus these keyword-only ones:

    :param max_grad_norms: group name -> max global L2 norm of that group's gradient, or None to only measure
        it. Groups: ``actor_cnn``, ``actor_mlp``, ``critic_cnn``, ``critic_mlp`` (see
        :mod:`sb3_av.td3.policies` for which modules each names). An unknown name is a ``ValueError``. With
        every value None (and no augmentation), training is numerically identical to SB3's TD3.
    :param image_augmentation: augmentation of the sampled image observations (and next observations) before
        each gradient step: None, or ``"random_shift"`` (DrQ's random shift by up to ``augmentation_pad`` pixels).
    :param augmentation_pad: the shift, in pixels, of ``"random_shift"``.
    :param smoothness_weight: weight of a temporal smoothness term in the actor loss (the "temporal" term of CAPS,
        Mysore et al. 2021, "Regularizing Action Policies for Smooth Control"), on the driving observation, which
        carries the previous action: ``smoothness_weight * mean((head(s) - previous_action(s))^2)``, where ``head`` is
        the actor head's output before the policy's ``action_smoothing``. Unlike a harder ``action_smoothing``
        filter, which delays every action by the same time, the term competes with the Q term (meant to hold the
        action where the critic sees little difference and to move it where it sees one; on LiteScenario2 with the
        PID teacher it learned worse than without it: README, Learning). 0 (default): SB3's actor loss.
        ``train/smoothness`` logs the mean squared distance.

    After each backward pass ``train()`` measures every group of the network in one fused pass, clips the
    groups that have a max_norm, and skips the optimizer step (weights untouched) when a gradient is NaN/Inf.
    The norms stay on the device; one host copy per ``train()`` call fills :attr:`grad_norms`, which
    :class:`sb3_av.callbacks.GradientMonitorCallback` logs and checks for explosions.

    :meth:`set_teacher` adds TD3+BC's behaviour-cloning term towards a classical controller's actions (e.g. the PID
    baseline's) to the actor loss, optionally Q-filtered (:mod:`sb3_av.teacher`); ``train/teacher_bc`` and
    ``train/teacher_cloned_share`` log it.

    A drop-in for SB3's TD3: ``"MultiInputPolicy"`` is SB3's on every Dict space but the driving one (see
    :class:`sb3_av.td3.policies.MultiInputPolicy`), and stacked uint8 images are stored by
    :class:`~sb3_av.buffers.FrameStackDictReplayBuffer` (SB3's samples, a fraction of the memory) unless
    ``replay_buffer_class`` is given (see :class:`sb3_av.common.off_policy.ClippedOffPolicyMixin`).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: TD3Policy
    _trains_with_teacher = True

    def __init__(
        self,
        policy: str | type[TD3Policy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        policy_delay: int = 2,
        target_policy_noise: float = 0.2,
        target_noise_clip: float = 0.5,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        max_grad_norms: dict[str, float | None] | None = None,
        image_augmentation: str | None = None,
        augmentation_pad: int = 4,
        smoothness_weight: float = 0.0,
    ) -> None:
        self.max_grad_norms = validate_max_grad_norms(max_grad_norms)
        self.smoothness_weight = non_negative_number("smoothness_weight", smoothness_weight)
        if image_augmentation is not None and image_augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"Unknown image_augmentation {image_augmentation!r}; choose None or one of {sorted(AUGMENTATIONS)}"
            )
        if augmentation_pad < 0:
            raise ValueError(f"augmentation_pad must be >= 0, got {augmentation_pad}")
        self.image_augmentation = image_augmentation
        self.augmentation_pad = augmentation_pad
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_delay=policy_delay,
            target_policy_noise=target_policy_noise,
            target_noise_clip=target_noise_clip,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )
        if self.smoothness_weight > 0 and not is_driving_observation_space(self.observation_space):
            raise ValueError(
                "smoothness_weight needs the driving observation (a Dict of 'image' and 'vector', whose vector carries "
                f"the previous action), got {self.observation_space}; leave smoothness_weight at 0 on other spaces"
            )

    def _clipped_networks(self) -> tuple[BaseModel, BaseModel]:
        return self.actor, self.critic

    def _heads(self) -> TD3Heads:
        """The policy's encode-once-then-heads; SB3's own TD3 policies (e.g. a model saved by SB3) train as in SB3."""
        return self.policy.heads() if isinstance(self.policy, TD3Policy) else TD3Heads(self.policy)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)

        # Update learning rate according to lr schedule
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])

        heads = self._heads()  # encodes each batch once (shared encoder), then runs the actor and critic heads
        actor_losses: list[th.Tensor] = []
        critic_losses: list[th.Tensor] = []
        critic_norms: list[tuple[int, StepNorms]] = []
        actor_norms: list[tuple[int, StepNorms]] = []
        actor_terms: dict[str, list[th.Tensor]] = {"teacher_bc": [], "teacher_cloned_share": [], "smoothness": []}
        assert self.replay_buffer is not None
        for _ in range(gradient_steps):
            self._n_updates += 1
            # Sample replay buffer
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            if self.image_augmentation is not None:
                replay_data = self._augment(replay_data)
            target_q_values = self._target_q_values(heads, replay_data)

            # Get current Q-values estimates for each critic network
            batch = heads.encode(replay_data.observations)
            current_q_values = heads.q_values(batch, replay_data.actions)

            # Compute critic loss
            critic_loss = sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.detach())

            # Optimize the critics
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            critic_norms.append((self._n_updates, self._critic_clipper.step(self.critic.optimizer)))

            # Delayed policy updates
            if self._n_updates % self.policy_delay == 0:
                # Compute actor loss
                actor_loss = self._actor_loss(heads, batch, replay_data, actor_terms)
                actor_losses.append(actor_loss.detach())

                # Optimize the actor
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                actor_norms.append((self._n_updates, self._actor_clipper.step(self.actor.optimizer)))

                online, target = heads.target_update_parameters()
                polyak_update(online, target, self.tau)
                # Copy running stats, see GH issue #996
                polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if gradient_steps == 0:
            return  # no losses to log (SB3 would log the mean of nothing, NaN)
        losses = self._flush_train_stats(
            critic_norms, actor_norms, {"actor": actor_losses, "critic": critic_losses, **actor_terms}
        )
        if len(actor_losses) > 0:
            self.logger.record("train/actor_loss", float(np.mean(losses["actor"])))
        self.logger.record("train/critic_loss", float(np.mean(losses["critic"])))
        for name in actor_terms:
            if name in losses:
                self.logger.record(f"train/{name}", float(np.mean(losses[name])))

    def _actor_loss(
        self,
        heads: TD3Heads,
        batch: EncodedBatch,
        replay_data: ReplayBufferSamples,
        stats: dict[str, list[th.Tensor]],
    ) -> th.Tensor:
        """TD3's actor loss (minus the first critic's mean Q of the actor's actions), TD3+BC's with a teacher, plus
        the smoothness term (``smoothness_weight``); the terms' values are appended to ``stats``."""
        actor = heads.actor_pass(batch)
        teacher_actions = getattr(replay_data, "teacher_actions", None)
        if self._teacher is not None and teacher_actions is not None:
            loss = self._teacher_actor_loss(heads, batch, actor, teacher_actions, stats)
        else:
            loss = -actor.q_values.mean()
        if self.smoothness_weight > 0:
            smoothness = F.mse_loss(actor.head_actions, previous_action(batch.observations))
            stats["smoothness"].append(smoothness.detach())
            loss = loss + self.smoothness_weight * smoothness
        return loss

    def _teacher_actor_loss(
        self,
        heads: TD3Heads,
        batch: EncodedBatch,
        actor: ActorPass,
        teacher_actions: th.Tensor,
        stats: dict[str, list[th.Tensor]],
    ) -> th.Tensor:
        """TD3+BC's actor loss towards the teacher's actions (:func:`sb3_av.teacher.teacher_actor_loss`)."""
        q_teacher = None
        if self.teacher_q_filter:
            labelled = th.nan_to_num(teacher_actions)  # unlabelled rows are masked out whatever their Q
            q_teacher = heads.first_q_values(batch, labelled)
        cloned = actor.head_actions if self.teacher_clone == "head" else actor.actions
        parts = teacher_actor_loss(actor.q_values, cloned, teacher_actions, q_teacher, self.teacher_weight)
        stats["teacher_bc"].append(parts.bc)
        stats["teacher_cloned_share"].append(parts.cloned_share)
        return parts.loss

    def _target_q_values(self, heads: TD3Heads, replay_data: ReplayBufferSamples) -> th.Tensor:
        """TD3's critic target ``(batch, 1)``: reward + discounted min of the target critics at the smoothed action."""
        # For n-step replay, discount factor is gamma**n_steps (when no early termination)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            next_batch = heads.encode(replay_data.next_observations, target=True)
            # Select action according to policy and add clipped noise
            noise = replay_data.actions.clone().data.normal_(0, self.target_policy_noise)
            noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
            next_actions = (heads.actions(next_batch, target=True) + noise).clamp(-1, 1)

            # Compute the next Q-values: min over all critics targets
            next_q_values = th.cat(heads.q_values(next_batch, next_actions, target=True), dim=1)
            next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
            return replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

    def _augment(self, replay_data: ReplayBufferSamples) -> ReplayBufferSamples:
        """Augment every image entry of the observations and next observations (independent draws)."""
        assert self.image_augmentation is not None
        augment = AUGMENTATIONS[self.image_augmentation]

        def apply(observations: Any) -> Any:
            if isinstance(observations, dict):
                return {
                    key: augment(value, self.augmentation_pad) if self._is_image_key(key) else value
                    for key, value in observations.items()
                }
            return augment(observations, self.augmentation_pad) if self._is_image_key(None) else observations

        return replay_data._replace(
            observations=apply(replay_data.observations), next_observations=apply(replay_data.next_observations)
        )

    def _is_image_key(self, key: str | None) -> bool:
        space = self.observation_space
        if key is not None:
            assert isinstance(space, spaces.Dict)
            space = space[key]
        return is_image_space(space, check_channels=False) and len(space.shape or ()) == 3


class ClippedDDPG(ClippedTD3):
    """Deep Deterministic Policy Gradient (Lillicrap et al. 2016) with sb3-av's per-group clipping.

    SB3's DDPG is TD3 without its tricks (one critic, no policy delay, no target smoothing); this is
    :class:`ClippedTD3` configured the same way. Parameters as :class:`stable_baselines3.DDPG` plus the keyword-only
    ``max_grad_norms``, ``image_augmentation`` and ``augmentation_pad`` (see :class:`ClippedTD3`).
    """

    def __init__(
        self,
        policy: str | type[TD3Policy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        max_grad_norms: dict[str, float | None] | None = None,
        image_augmentation: str | None = None,
        augmentation_pad: int = 4,
    ) -> None:
        super().__init__(
            policy=policy,
            env=env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            max_grad_norms=max_grad_norms,
            image_augmentation=image_augmentation,
            augmentation_pad=augmentation_pad,
            policy_kwargs=policy_kwargs,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            # Remove all tricks from TD3 to obtain DDPG:
            # we still need to specify target_policy_noise > 0 to avoid errors
            policy_delay=1,
            target_noise_clip=0.0,
            target_policy_noise=0.1,
            _init_setup_model=False,
        )
        # Use only one critic
        if "n_critics" not in self.policy_kwargs:
            self.policy_kwargs["n_critics"] = 1
        if _init_setup_model:
            self._setup_model()

    def learn(
        self: SelfClippedTD3,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DDPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfClippedTD3:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
