"""The setup every Clipped off-policy algorithm shares: a lean replay buffer by default, then the clippers.

:class:`ClippedOffPolicyMixin` goes before the SB3 class in the bases (``class ClippedTD3(ClippedOffPolicyMixin,
TD3)``). Its ``_setup_model`` picks sb3-av's frame-stack replay buffer where SB3 would pick its ``DictReplayBuffer``
for stacked uint8 images (:meth:`ClippedOffPolicyMixin._lean_replay_buffer`), runs SB3's ``_setup_model`` and
builds the gradient clippers from the host's actor and critic. It also lets a classical controller drive the first
steps instead of SB3's uniform random actions (:meth:`ClippedOffPolicyMixin.set_warmup_controller`,
:mod:`sb3_av.warmup`), and label every transition with a teacher controller's action for a behaviour-cloning term
(:meth:`ClippedOffPolicyMixin.set_teacher`, :mod:`sb3_av.teacher`; TD3 and DDPG).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.preprocessing import is_image_space_channels_first

from sb3_av._checks import is_int, positive_number
from sb3_av.buffers import FrameStackDictReplayBuffer, default_replay_buffer_for
from sb3_av.clipping import GradClipMixin
from sb3_av.teacher import clone_target
from sb3_av.warmup import ControllerWarmup, WarmupController

__all__ = ["ClippedOffPolicyMixin"]

# For the type checker the mixin is an OffPolicyAlgorithm (whose attributes and methods it uses); at run time it is a
# plain mixin, placed before the SB3 algorithm in the bases.
if TYPE_CHECKING:
    _OffPolicyBase = OffPolicyAlgorithm
else:
    _OffPolicyBase = object


class ClippedOffPolicyMixin(GradClipMixin, _OffPolicyBase):
    """Lean replay buffer by default and gradient clippers, for an SB3 off-policy actor-critic.

    The host provides :meth:`_clipped_networks` (its actor and critic, each with its optimizer) and sets
    ``max_grad_norms`` before ``_setup_model``.
    """

    #: env steps (``num_timesteps``) during which the warm-up controller acts; 0 = none (SB3's warm-up)
    warmup_steps: int = 0
    _warmup: ControllerWarmup | None = None
    #: weight of the teacher's behaviour-cloning term in the actor loss (0 = no teacher) and whether it is Q-filtered
    teacher_weight: float = 0.0
    teacher_q_filter: bool = False
    #: what the term pulls towards the teacher's action: the executed "action" or the actor's "head" output
    teacher_clone: str = "action"
    _teacher: ControllerWarmup | None = None
    _teacher_actions: np.ndarray | None = None  # the teacher's scaled actions for the step being taken
    #: whether the host's train() has the teacher term (ClippedTD3 / ClippedDDPG)
    _trains_with_teacher: bool = False

    def set_warmup_controller(self, controller: WarmupController | None, steps: int) -> None:
        """Let ``controller`` choose the actions of the first ``steps`` env steps (counted in ``num_timesteps``, as
        ``learning_starts``), with the algorithm's ``action_noise`` added as to the policy's actions; SB3's uniform
        random actions are not used. Training still starts at ``learning_starts``. See :mod:`sb3_av.warmup`.

        Not saved with the model: a loaded model has no warm-up controller (its steps are behind it).

        :param controller: an object with ``act(observation, info)`` and ``reset()``, e.g.
            :class:`~sb3_av.baselines.PIDPurePursuit` (copied once per env); None removes the warm-up.
        :param steps: the number of env steps it drives, >= 0.
        """
        if not is_int(steps) or steps < 0:
            raise ValueError(f"warm-up steps must be an integer >= 0, got {steps!r}")
        if controller is not None and not isinstance(self.action_space, spaces.Box):
            raise ValueError(f"a warm-up controller needs a Box action space, got {self.action_space}")
        warmup = None if controller is None else ControllerWarmup(controller, self.n_envs)  # checks the controller
        self._warmup = warmup if steps > 0 else None
        self.warmup_steps = int(steps) if self._warmup is not None else 0

    def set_teacher(
        self, controller: WarmupController | None, weight: float, q_filter: bool = False, clone: str = "action"
    ) -> None:
        """Label every transition collected from now on with ``controller``'s action in its observation, and add
        TD3+BC's behaviour-cloning term towards those actions to the actor loss (see :mod:`sb3_av.teacher`). The
        teacher never acts. Needs sb3-av's frame-stack replay buffer (the default for the driving env), where the
        labels are stored.

        Not saved with the model (as the warm-up controller): a loaded model trains without a teacher until this
        is called again.

        :param controller: an object with ``act(observation, info)`` and ``reset()``, e.g.
            :class:`~sb3_av.baselines.PIDPurePursuit` (copied once per env); None removes the teacher.
        :param weight: the weight of the behaviour-cloning term (TD3+BC's ``1 / alpha``), > 0.
        :param q_filter: apply the term only where the critic rates the teacher's action above the policy's (off by
            default: on LiteScenario2 the filter let the teacher through too rarely early on; README, Learning).
        :param clone: what is pulled towards the teacher's action (:data:`sb3_av.teacher.CLONE_TARGETS`):
            ``"action"``, the action the env executes (TD3+BC), or ``"head"``, the actor head's output before the
            policy's ``action_smoothing`` (the same without smoothing; see :mod:`sb3_av.teacher`).
        """
        if controller is None:
            self._teacher, self.teacher_weight, self._teacher_actions = None, 0.0, None
            return
        if not self._trains_with_teacher:
            raise NotImplementedError(f"{type(self).__name__} has no teacher term; set_teacher works with TD3 and DDPG")
        weight = positive_number("the teacher's weight", weight)
        if not isinstance(q_filter, bool):
            raise ValueError(f"q_filter must be True or False, got {q_filter!r}")
        clone = clone_target("clone", clone)
        if not isinstance(self.action_space, spaces.Box):
            raise ValueError(f"a teacher needs a Box action space, got {self.action_space}")
        if not isinstance(self.replay_buffer, FrameStackDictReplayBuffer):
            raise ValueError(
                "a teacher's labels are stored in sb3-av's FrameStackDictReplayBuffer (the default for stacked uint8 "
                f"images); this model's replay buffer is {type(self.replay_buffer).__name__}"
            )
        self._teacher = ControllerWarmup(controller, self.n_envs)  # checks the controller
        self.teacher_weight = weight
        self.teacher_q_filter = q_filter
        self.teacher_clone = clone
        self._teacher_actions = None
        self.replay_buffer.keep_teacher_actions()

    def _controller_observations(self) -> np.ndarray | dict[str, np.ndarray]:
        """The envs' last observations as a controller reads them (the env's own, not VecNormalize's)."""
        assert self._last_obs is not None, "self._last_obs was not set"
        observations = self._last_obs
        if self._vec_normalize_env is not None:
            observations = self._vec_normalize_env.unnormalize_obs(observations)
        return observations

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._teacher is not None:  # the label of the transition this step stores
            self._teacher_actions = self.policy.scale_action(self._teacher.actions(self._controller_observations()))
        if self._warmup is None or self.num_timesteps >= self.warmup_steps:
            return super()._sample_action(learning_starts, action_noise, n_envs)
        # as SB3 does for the policy's action: scaled to [-1, 1], the noise added there and clipped
        scaled_action = self.policy.scale_action(self._warmup.actions(self._controller_observations()))
        if action_noise is not None:
            scaled_action = np.clip(scaled_action + action_noise(), -1, 1)
        return self.policy.unscale_action(scaled_action), scaled_action

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        # num_timesteps already counts this step: the controller acts next only below warmup_steps
        if self._warmup is not None and self.num_timesteps < self.warmup_steps:
            self._warmup.observe(infos, dones)
        row = replay_buffer.pos  # the row SB3's add() writes
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if self._teacher is not None and self._teacher_actions is not None:
            assert isinstance(replay_buffer, FrameStackDictReplayBuffer)
            replay_buffer.set_teacher_actions(row, self._teacher_actions)
            self._teacher.observe(infos, dones)

    def _clipped_networks(self) -> tuple[BaseModel, BaseModel]:
        """The actor and the critic whose optimizer steps are clipped (available after SB3's ``_setup_model``)."""
        raise NotImplementedError

    def _setup_model(self) -> None:
        self._lean_replay_buffer()
        super()._setup_model()
        self._setup_grad_clipping(*self._clipped_networks())

    def _lean_replay_buffer(self) -> None:
        """Pick :class:`~sb3_av.buffers.FrameStackDictReplayBuffer` where SB3 would store every image stack twice.

        Only where SB3 itself would pick its ``DictReplayBuffer`` and the frame-stack buffer gives the same
        samples: no ``replay_buffer_class`` given (an explicit class, HER's included, always wins), no replay
        buffer yet (a loaded model keeps its class), a Dict space that :func:`~sb3_av.buffers.default_replay_buffer_for`
        accepts (a uint8 ``(stack, H, W)`` ``"image"``, ``stack > 1``) with the stack on the first axis, and none of
        SB3's settings that its ``DictReplayBuffer`` refuses (``optimize_memory_usage``, ``n_steps > 1``: SB3's own
        error stays; the frame-stack buffer computes n-step returns when given ``replay_buffer_kwargs``
        ``{"n_steps": n, "gamma": gamma}`` and the class explicitly). The user's ``replay_buffer_kwargs`` are
        passed on (the frame-stack buffer takes SB3's ``handle_timeout_termination`` too).
        """
        if self.replay_buffer_class is not None or self.replay_buffer is not None:
            return
        if self.optimize_memory_usage or self.n_steps > 1:
            return
        default = default_replay_buffer_for(self.observation_space)
        if default is None:
            return
        buffer_class, buffer_kwargs = default
        assert isinstance(self.observation_space, spaces.Dict)  # default_replay_buffer_for accepts only Dict spaces
        stacked = self.observation_space.spaces[buffer_kwargs.get("image_key", "image")]
        assert isinstance(stacked, spaces.Box)
        if not is_image_space_channels_first(stacked):
            return
        self.replay_buffer_class = buffer_class
        self.replay_buffer_kwargs = {**buffer_kwargs, **self.replay_buffer_kwargs}

    def _excluded_save_params(self) -> list[str]:
        return (
            super()._excluded_save_params()
            + self._grad_clip_excluded_params()
            + [
                "_warmup",
                "warmup_steps",
                "_teacher",
                "_teacher_actions",
                "teacher_weight",
                "teacher_q_filter",
                "teacher_clone",
            ]
        )
