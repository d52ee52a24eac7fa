"""The setup every Clipped off-policy algorithm shares: a lean replay buffer by default, then the clippers.

:class:`ClippedOffPolicyMixin` goes before the SB3 class in the bases (``class ClippedTD3(ClippedOffPolicyMixin,
TD3)``). Its ``_setup_model`` picks sb3-av's frame-stack replay buffer where SB3 would pick its ``DictReplayBuffer``
for stacked uint8 images (:meth:`ClippedOffPolicyMixin._lean_replay_buffer`), runs SB3's ``_setup_model`` and
builds the gradient clippers from the host's actor and critic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.preprocessing import is_image_space_channels_first

from sb3_av.buffers import default_replay_buffer_for
from sb3_av.clipping import GradClipMixin

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
        return super()._excluded_save_params() + self._grad_clip_excluded_params()
