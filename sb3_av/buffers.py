"""A Dict replay buffer for stacked image observations that stores each new frame once.

SB3's :class:`~stable_baselines3.common.buffers.DictReplayBuffer` stores ``obs`` and ``next_obs`` in full: with a
``4x84x84`` uint8 frame stack that is two stacks, 56 KB a transition, 56 GB for a million transitions. Consecutive
stacks of one episode share all but one frame, so :class:`FrameStackDictReplayBuffer` keeps a single ring of frames
(:class:`FrameRing`, shared by every env) and, per transition, the ring positions of the frames of the ``obs`` stack and of
the ``next_obs`` stack. At sample time the stacks are gathered back from the ring.

What is stored is decided by comparing contents, never by trusting ``done`` flags or the env's reset convention:

* ``obs`` equal to the previous ``next_obs`` of the same env (the usual case): nothing is stored, the pointers are
  reused;
* ``next_obs`` equal to ``obs`` shifted by one frame (the usual case, including the terminal observation of a done
  env): the newest frame only;
* any other stack (an episode start, an arbitrary stack): its frames, except that a frame equal to the one before it
  in the same stack is stored once (a reset stack filled with its first frame costs one frame, a zero-padded one two).

So the samples are exactly SB3's for any stream of ``add()`` calls, and the steady state costs one frame a
transition plus one frame per episode start. The ring holds ``n_envs * buffer_size * (1 + frame_reserve)`` frames
(``frame_reserve`` is the room for episode starts); a frame is overwritten only when no transition still in the
buffer uses it. If a stream needs more room (episodes shorter than about ``1 / frame_reserve`` steps on average, or
many arbitrary stacks), the ring grows, with a warning, instead of ever returning a wrong stack: every transition
that SB3's buffer can sample is rebuilt exactly, and the sampling draws the same indices from ``np.random`` as SB3.

Other keys of the Dict space are stored by SB3's own ``DictReplayBuffer.add`` (``obs`` and ``next_obs`` in full, in
``observations`` / ``next_observations``, which therefore hold no entry for the stacked key).

``n_steps > 1`` gives n-step returns exactly as SB3's :class:`~stable_baselines3.common.buffers.NStepReplayBuffer`
computes them for Box observations (SB3 has no Dict n-step buffer). Pass it explicitly: SB3 only sets up n-step
returns itself when ``replay_buffer_class`` is None, so use ``replay_buffer_kwargs={"n_steps": n, "gamma": gamma}``.

With :meth:`FrameStackDictReplayBuffer.keep_teacher_actions` the buffer also holds, per transition, the action a
teacher (a classical controller, :mod:`sb3_av.teacher`) would have taken in that transition's ``obs``; the samples
are then :class:`TeacherDictReplayBufferSamples` (SB3's fields plus ``teacher_actions``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.preprocessing import get_obs_shape
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

__all__ = [
    "DEFAULT_FRAME_RESERVE",
    "FrameRing",
    "FrameStackDictReplayBuffer",
    "TeacherDictReplayBufferSamples",
    "default_replay_buffer_for",
]

#: Default room for episode starts, as extra frames per stored transition (1/16: no growth while episodes
#: average 16 steps or more; the ring grows, with a warning, for shorter ones).
DEFAULT_FRAME_RESERVE = 1 / 16


class TeacherDictReplayBufferSamples(NamedTuple):
    """SB3's ``DictReplayBufferSamples`` (the same fields, in its order) plus the teacher's actions.

    :param teacher_actions: ``(batch, action_dim)``, the teacher's action in each sampled ``obs``, scaled to [-1, 1]
        as ``actions`` are; NaN rows where no teacher action was stored.
    """

    observations: Any
    actions: th.Tensor
    next_observations: Any
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None = None
    teacher_actions: th.Tensor | None = None


#: The growth factor of the frame ring when a stream needs more room than it has.
_GROWTH = 1.25


def _check_stacked_image_space(observation_space: spaces.Space, image_key: str) -> spaces.Box:
    """Return the stacked-image subspace, or raise a ``ValueError`` saying what is wrong with it."""
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(
            f"FrameStackDictReplayBuffer needs a gymnasium.spaces.Dict observation space, got {observation_space!r}; "
            "use SB3's ReplayBuffer for non-Dict observations."
        )
    if image_key not in observation_space.spaces:
        raise ValueError(
            f"FrameStackDictReplayBuffer: image_key={image_key!r} is not a key of the observation space "
            f"(keys: {sorted(observation_space.spaces)}); pass the key of the stacked frames as image_key."
        )
    box = observation_space.spaces[image_key]
    if not isinstance(box, spaces.Box) or box.dtype != np.uint8 or len(box.shape) != 3:
        raise ValueError(
            f"FrameStackDictReplayBuffer: observation_space[{image_key!r}] must be a uint8 Box of shape "
            f"(stack, height, width), channel-first with the newest frame last; got {box!r}."
        )
    return box


def default_replay_buffer_for(observation_space: spaces.Space) -> tuple[type[ReplayBuffer], dict[str, Any]] | None:
    """Pick the frame-stack buffer for observation spaces that have a stacked image under ``"image"``.

    :param observation_space: the env's observation space.
    :return: ``(FrameStackDictReplayBuffer, {"image_key": "image"})`` for a Dict space whose ``"image"`` is a uint8
        Box of shape ``(stack, height, width)`` with ``stack > 1``; None otherwise (SB3's default buffer applies).
    """
    if not isinstance(observation_space, spaces.Dict):
        return None
    image = observation_space.spaces.get("image")
    if isinstance(image, spaces.Box) and image.dtype == np.uint8 and len(image.shape) == 3 and image.shape[0] > 1:
        return FrameStackDictReplayBuffer, {"image_key": "image"}
    return None


def _check_settings(optimize_memory_usage: bool, frame_reserve: Any, n_steps: Any, gamma: float) -> float:
    """Check the buffer's own settings; return ``frame_reserve`` as a float."""
    if optimize_memory_usage:
        raise ValueError(
            "FrameStackDictReplayBuffer does not support optimize_memory_usage=True (nor does SB3's "
            "DictReplayBuffer); it already stores each frame once. Set optimize_memory_usage=False."
        )
    try:
        reserve = float(frame_reserve)
    except (TypeError, ValueError):
        reserve = math.nan
    if not (math.isfinite(reserve) and reserve >= 0):
        raise ValueError(f"frame_reserve must be a finite number >= 0 (extra frames per transition), got {frame_reserve!r}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    return reserve


class FrameRing:
    """The frames of stacked image observations, each stored once, and the stacks as frame numbers.

    Frame number ``f`` lives in ``frames[f % capacity]``. Per env the ring remembers the last ``next_obs`` stack it
    was given: an ``obs`` equal to it reuses its frame numbers, a ``next_obs`` equal to ``obs`` shifted by one frame
    adds its newest frame only, any other stack adds its frames (a frame equal to the one before it in the stack
    once). A frame still needed is never overwritten: the ring grows, with a warning, instead.

    :param n_envs: number of parallel envs.
    :param stack_size: frames per stack.
    :param frame_shape: ``(height, width)`` of a frame.
    :param capacity: initial number of frame slots.
    :param frame_reserve: the buffer's room for episode starts (named in the growth warning).
    """

    def __init__(self, n_envs: int, stack_size: int, frame_shape: tuple[int, int], capacity: int, frame_reserve: float):
        self.frame_reserve = frame_reserve
        self.frames = np.zeros((capacity, *frame_shape), dtype=np.uint8)
        #: Frames written so far (the number the next frame gets) and how often the ring grew.
        self.n_written = 0
        self.n_growths = 0
        # The last next_obs stack of each env, to recognise the obs that continues it
        self._last_next = np.zeros((n_envs, stack_size, *frame_shape), dtype=np.uint8)
        self._last_next_ids = np.zeros((n_envs, stack_size), dtype=np.int64)
        self._has_last = np.zeros(n_envs, dtype=bool)

    @property
    def nbytes(self) -> int:
        """Bytes of the frames and of the per-env copy of the last stacks."""
        return self.frames.nbytes + self._last_next.nbytes + self._last_next_ids.nbytes + self._has_last.nbytes

    def gather(self, frame_ids: np.ndarray) -> np.ndarray:
        """The frames of ``frame_ids`` (any shape ``S``), as a new ``(*S, height, width)`` uint8 array."""
        return np.take(self.frames, frame_ids % len(self.frames), axis=0)

    def add(self, images: np.ndarray, next_images: np.ndarray, keep_from: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Store one transition's stacks of every env; return their frame numbers.

        :param images: ``(n_envs, stack, height, width)`` uint8 ``obs`` stacks.
        :param next_images: the ``next_obs`` stacks, same shape.
        :param keep_from: the smallest frame number other stored transitions still use; None when there are none.
        :return: ``(n_envs, stack)`` frame numbers of the ``obs`` stacks and of the ``next_obs`` stacks.
        """
        new_frames: list[np.ndarray] = []
        obs_ids = np.empty(self._last_next_ids.shape, dtype=np.int64)
        next_ids = np.empty(self._last_next_ids.shape, dtype=np.int64)
        for env, (image, next_image) in enumerate(zip(images, next_images, strict=True)):
            if self._has_last[env] and np.array_equal(image, self._last_next[env]):
                obs_ids[env] = self._last_next_ids[env]
            else:
                self._queue(image, obs_ids[env], 0, new_frames)
            if np.array_equal(next_image[:-1], image[1:]):  # obs shifted by one frame: only the newest is new
                next_ids[env, :-1] = obs_ids[env, 1:]
                self._queue(next_image, next_ids[env], len(next_image) - 1, new_frames)
            else:
                self._queue(next_image, next_ids[env], 0, new_frames)
        if new_frames:
            oldest_needed = min(int(obs_ids.min()), int(next_ids.min()), *([] if keep_from is None else [keep_from]))
            self._write(new_frames, oldest_needed)
        self._last_next[:] = next_images
        self._last_next_ids[:] = next_ids
        self._has_last[:] = True
        return obs_ids, next_ids

    def _queue(self, stack: np.ndarray, ids: np.ndarray, first: int, new_frames: list[np.ndarray]) -> None:
        """Number the frames ``stack[first:]`` into ``ids[first:]``, queueing each one not equal to the one before."""
        for j in range(first, len(stack)):
            if j > 0 and np.array_equal(stack[j], stack[j - 1]):
                ids[j] = ids[j - 1]
            else:
                ids[j] = self.n_written + len(new_frames)
                new_frames.append(stack[j])

    def _write(self, new_frames: list[np.ndarray], oldest_needed: int) -> None:
        """Write the queued frames, growing the ring first if they would overwrite frame ``oldest_needed`` or later."""
        end = self.n_written + len(new_frames)
        if end - oldest_needed > len(self.frames):
            self._grow(end - oldest_needed, oldest_needed)
        self.frames[np.arange(self.n_written, end, dtype=np.int64) % len(self.frames)] = np.stack(new_frames)
        self.n_written = end

    def _grow(self, needed_capacity: int, oldest_needed: int) -> None:
        """Reallocate the ring with room for ``needed_capacity`` frames, keeping frames from ``oldest_needed`` on."""
        old = self.frames
        capacity = max(needed_capacity, math.ceil(len(old) * _GROWTH))
        if self.frame_reserve > 0:
            cause = f"episodes average fewer than about 1 / frame_reserve = {1 / self.frame_reserve:.0f} steps"
        else:
            cause = "frame_reserve=0 leaves no room for episode starts"
        warnings.warn(
            f"FrameStackDictReplayBuffer: the frame ring is full ({len(old)} frames); growing it to {capacity} frames "
            f"({capacity * old[0].nbytes / 1e9:.2f} GB): {cause}, or stacks are often not continuations of the "
            "previous ones. Pass a larger frame_reserve (replay_buffer_kwargs) to avoid this copy."
        )
        live = np.arange(oldest_needed, self.n_written, dtype=np.int64)
        self.frames = np.zeros((capacity, *old.shape[1:]), dtype=np.uint8)
        self.frames[live % capacity] = old[live % len(old)]
        self.n_growths += 1


class FrameStackDictReplayBuffer(DictReplayBuffer):
    """SB3's :class:`~stable_baselines3.common.buffers.DictReplayBuffer` with the stacked image key in a
    :class:`FrameRing`: each new frame is stored once.

    A drop-in replacement (same constructor, same ``add()``, same samples for the same ``np.random`` state): pass it
    as ``replay_buffer_class`` to TD3/SAC/DDPG. SB3's ``add()`` stores the other keys, actions, rewards and flags;
    this class keeps, per transition, the frame numbers of the ``obs`` and ``next_obs`` stacks and gathers the
    stacks back at sample time. See the module docstring for what that costs.

    :param buffer_size: max number of transitions, all envs together (as in SB3: ``buffer_size // n_envs`` rows).
    :param observation_space: a Dict space whose ``image_key`` entry is a uint8 Box ``(stack, height, width)``,
        channel-first, newest frame last.
    :param action_space: action space.
    :param device: PyTorch device of the sampled tensors.
    :param n_envs: number of parallel environments.
    :param optimize_memory_usage: not supported (must be False), as in SB3's DictReplayBuffer.
    :param handle_timeout_termination: treat ``info["TimeLimit.truncated"]`` as not done (as in SB3).
    :param image_key: the key of the stacked frames in the observation Dict.
    :param frame_reserve: extra frame slots per transition slot, room for episode starts (each costs one frame).
        The ring grows, with a warning, if a stream needs more.
    :param n_steps: n-step returns when > 1, computed as SB3's ``NStepReplayBuffer`` does.
    :param gamma: discount factor of the n-step returns (used only when ``n_steps > 1``).
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        image_key: str = "image",
        frame_reserve: float = DEFAULT_FRAME_RESERVE,
        n_steps: int = 1,
        gamma: float = 0.99,
    ):
        box = _check_stacked_image_space(observation_space, image_key)
        assert isinstance(observation_space, spaces.Dict)  # checked above, for the type checker
        reserve = _check_settings(optimize_memory_usage, frame_reserve, n_steps, gamma)
        # SB3's storage for every key but the image (its full stacks would be 56 KB a transition), then the whole space
        others = spaces.Dict({key: space for key, space in observation_space.spaces.items() if key != image_key})
        super().__init__(buffer_size, others, action_space, device, n_envs, False, handle_timeout_termination)
        self.observation_space = observation_space
        self.obs_shape = get_obs_shape(observation_space)  # type: ignore[assignment]
        self.image_key = image_key
        self.frame_reserve = reserve
        self.n_steps = n_steps
        self.gamma = gamma
        self.stack_size, height, width = (int(d) for d in box.shape)
        self.frame_shape = (height, width)
        n_frames = math.ceil(self.buffer_size * self.n_envs * (1.0 + reserve)) + 2 * self.stack_size * self.n_envs
        self.ring = FrameRing(self.n_envs, self.stack_size, self.frame_shape, n_frames, reserve)
        # Per transition, the frame numbers of the obs / next_obs stacks
        self.obs_frame_ids = np.zeros((self.buffer_size, self.n_envs, self.stack_size), dtype=np.int64)
        self.next_frame_ids = np.zeros((self.buffer_size, self.n_envs, self.stack_size), dtype=np.int64)

    #: per transition, the teacher's action in its ``obs`` (NaN: none); None until :meth:`keep_teacher_actions`
    teacher_actions: np.ndarray | None = None

    def keep_teacher_actions(self) -> None:
        """Hold a teacher action per transition from now on (NaN for the transitions already stored); the samples
        become :class:`TeacherDictReplayBufferSamples`. Costs ``action_dim`` float32 a transition."""
        if self.teacher_actions is None:
            self.teacher_actions = np.full((self.buffer_size, self.n_envs, self.action_dim), np.nan, dtype=np.float32)

    def set_teacher_actions(self, row: int, actions: np.ndarray) -> None:
        """Store the teacher's actions ``(n_envs, action_dim)`` (scaled to [-1, 1]) of the transitions in ``row``
        (the row ``add()`` just wrote: ``pos`` before that call)."""
        if self.teacher_actions is None:
            raise RuntimeError("call keep_teacher_actions() before storing teacher actions")
        self.teacher_actions[row] = np.asarray(actions, dtype=np.float32).reshape(self.n_envs, self.action_dim)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle (``load_replay_buffer``), also a buffer saved before the frames moved into :class:`FrameRing`
        (sb3-av before commit 800ae26 kept the ring's arrays and counters on the buffer itself, the same values)."""
        if "ring" not in state and "frames" in state:
            ring = FrameRing.__new__(FrameRing)
            ring.frame_reserve = state["frame_reserve"]
            ring.frames = state.pop("frames")
            ring.n_written = state.pop("n_frames_written")
            ring.n_growths = state.pop("n_ring_growths")
            ring._last_next = state.pop("_last_next_image")
            ring._last_next_ids = state.pop("_last_next_ids")
            ring._has_last = state.pop("_has_last")
            state["ring"] = ring
        self.__dict__.update(state)

    # ------------------------------------------------------------------------------------------ memory accounting
    @property
    def n_frames_written(self) -> int:
        """Frames stored so far (one a step plus the frames of episode starts and arbitrary stacks)."""
        return self.ring.n_written

    @property
    def n_ring_growths(self) -> int:
        """How often the frame ring grew (each time with a warning)."""
        return self.ring.n_growths

    @property
    def nbytes(self) -> int:
        """Bytes of every array the buffer holds (frames, pointers, other keys, actions, rewards, flags)."""
        arrays = [self.obs_frame_ids, self.next_frame_ids, self.actions, self.rewards, self.dones, self.timeouts]
        arrays += [] if self.teacher_actions is None else [self.teacher_actions]
        arrays += [*self.observations.values(), *self.next_observations.values()]
        return self.ring.nbytes + int(sum(a.nbytes for a in arrays))

    @property
    def nbytes_per_transition(self) -> float:
        """:attr:`nbytes` divided by the capacity in transitions (``buffer_size * n_envs``)."""
        return self.nbytes / (self.buffer_size * self.n_envs)

    # ----------------------------------------------------------------------------------------------------- adding
    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Add one transition of every env (same arguments as SB3's ``DictReplayBuffer.add``).

        :param obs: observations, each key ``(n_envs, *shape)``.
        :param next_obs: next observations (the terminal observation for a done env), each key ``(n_envs, *shape)``.
        :param action: ``(n_envs, action_dim)`` actions.
        :param reward: ``(n_envs,)`` rewards.
        :param done: ``(n_envs,)`` done flags.
        :param infos: one info dict per env (``"TimeLimit.truncated"`` is read).
        """
        images = self._stacked(obs[self.image_key], "obs")
        next_images = self._stacked(next_obs[self.image_key], "next_obs")
        ids = self.ring.add(images, next_images, self._oldest_kept_frame())
        self.obs_frame_ids[self.pos], self.next_frame_ids[self.pos] = ids
        super().add(obs, next_obs, action, reward, done, infos)  # the other keys (it skips image_key) and the rest

    def _stacked(self, images: Any, name: str) -> np.ndarray:
        """Return the stacked images of all envs as ``(n_envs, stack, height, width)`` uint8, checking the shape."""
        array = np.asarray(images)
        shape = (self.n_envs, self.stack_size, *self.frame_shape)
        if array.size != math.prod(shape):
            raise ValueError(
                f"FrameStackDictReplayBuffer.add: {name}[{self.image_key!r}] has shape {array.shape}, expected {shape} "
                "(n_envs, stack, height, width)."
            )
        return array.reshape(shape)

    def _oldest_kept_frame(self) -> int | None:
        """Smallest frame number used by the transitions that stay when row ``pos`` is overwritten; None if none.

        Per env, the smallest frame number of a row never decreases from one row to the next (a row reuses frames
        of the row before or adds newer ones), so the oldest row that stays bounds all the others.
        """
        if self.full and self.buffer_size > 1:
            oldest = (self.pos + 1) % self.buffer_size
        elif not self.full and self.pos > 0:
            oldest = 0
        else:
            return None
        return min(int(self.obs_frame_ids[oldest].min()), int(self.next_frame_ids[oldest].min()))

    # --------------------------------------------------------------------------------------------------- sampling
    def _observation(self, frame_ids: np.ndarray, rows: np.ndarray, env_indices: np.ndarray, nxt: bool) -> dict[str, Any]:
        """Rebuild the observation Dict (keys in the space's order) of the given rows and envs."""
        others = self.next_observations if nxt else self.observations
        return {
            key: self.ring.gather(frame_ids[rows, env_indices]) if key == self.image_key else others[key][rows, env_indices]
            for key in self.obs_shape
        }

    def _to_torch_dict(self, observation: dict[str, np.ndarray]) -> dict[str, th.Tensor]:
        """Tensors of an observation Dict; the gathered stacks are fresh arrays, so they are not copied again."""
        return {key: self.to_torch(value, copy=key != self.image_key) for key, value in observation.items()}

    def _get_samples(  # type: ignore[override]
        self,
        batch_inds: np.ndarray,
        env: VecNormalize | None = None,
    ) -> DictReplayBufferSamples:
        """SB3's ``DictReplayBuffer._get_samples`` (stable-baselines3 2.9.2) with the stacks gathered from the ring;
        tests/test_buffers.py checks the samples against SB3's buffer."""
        # Sample randomly the env idx (the same draw as SB3's DictReplayBuffer / NStepReplayBuffer)
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        if self.n_steps > 1:
            samples = self._get_n_step_samples(batch_inds, env_indices, env)
        else:
            samples = self._get_one_step_samples(batch_inds, env_indices, env)
        if self.teacher_actions is None:
            return samples
        return TeacherDictReplayBufferSamples(  # type: ignore[return-value]
            *samples, teacher_actions=self.to_torch(self.teacher_actions[batch_inds, env_indices])
        )

    def _get_one_step_samples(
        self, batch_inds: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None
    ) -> DictReplayBufferSamples:
        """One-step samples of the given rows and envs."""
        obs_ = self._normalize_obs(self._observation(self.obs_frame_ids, batch_inds, env_indices, nxt=False), env)
        next_obs_ = self._normalize_obs(self._observation(self.next_frame_ids, batch_inds, env_indices, nxt=True), env)
        assert isinstance(obs_, dict)
        assert isinstance(next_obs_, dict)
        return DictReplayBufferSamples(
            observations=self._to_torch_dict(obs_),
            actions=self.to_torch(self.actions[batch_inds, env_indices]),
            next_observations=self._to_torch_dict(next_obs_),
            # Only use dones that are not due to timeouts
            dones=self.to_torch(self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])).reshape(
                -1, 1
            ),
            rewards=self.to_torch(self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env)),
        )

    def _get_n_step_samples(
        self, batch_inds: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None
    ) -> DictReplayBufferSamples:
        """N-step samples, step for step as SB3's ``NStepReplayBuffer._get_samples`` (stable-baselines3 2.9.2), with
        Dict observations, which SB3's n-step buffer does not take; tests/test_buffers.py checks the samples
        against ``NStepReplayBuffer`` fed the flattened observations."""
        # The self.pos index would overlap two episodes when the buffer is full:
        # mark self.pos - 1 as truncated (temporarily) if it is neither done nor truncated
        last_valid_index = self.pos - 1
        original_timeout_values = self.timeouts[last_valid_index].copy()
        self.timeouts[last_valid_index] = np.logical_or(original_timeout_values, np.logical_not(self.dones[last_valid_index]))

        steps = np.arange(self.n_steps).reshape(1, -1)
        indices = (batch_inds[:, None] + steps) % self.buffer_size  # [batch, n_steps]
        rewards_seq = self._normalize_reward(self.rewards[indices, env_indices[:, None]], env)
        dones_seq = self.dones[indices, env_indices[:, None]]
        truncated_seq = self.timeouts[indices, env_indices[:, None]]

        # 1 until the first done/truncation (inclusive)
        done_or_truncated = np.logical_or(dones_seq, truncated_seq)
        done_idx = done_or_truncated.argmax(axis=1)
        has_done_or_truncated = done_or_truncated.any(axis=1)
        done_idx = np.where(has_done_or_truncated, done_idx, self.n_steps - 1)
        mask = np.arange(self.n_steps).reshape(1, -1) <= done_idx[:, None]
        target_q_discounts = self.gamma ** mask.sum(axis=1, keepdims=True).astype(np.float32)
        discounts = self.gamma ** np.arange(self.n_steps, dtype=np.float32).reshape(1, -1)
        n_step_returns = (rewards_seq * discounts * mask).sum(axis=1, keepdims=True)

        last_indices = (batch_inds + done_idx) % self.buffer_size
        next_obs = self._normalize_obs(self._observation(self.next_frame_ids, last_indices, env_indices, nxt=True), env)
        next_dones = self.dones[last_indices, env_indices][:, None].astype(np.float32)
        next_timeouts = self.timeouts[last_indices, env_indices][:, None].astype(np.float32)
        final_dones = next_dones * (1.0 - next_timeouts)

        self.timeouts[last_valid_index] = original_timeout_values

        obs = self._normalize_obs(self._observation(self.obs_frame_ids, batch_inds, env_indices, nxt=False), env)
        assert isinstance(obs, dict)
        assert isinstance(next_obs, dict)
        return DictReplayBufferSamples(
            observations=self._to_torch_dict(obs),
            actions=self.to_torch(self.actions[batch_inds, env_indices]),
            next_observations=self._to_torch_dict(next_obs),
            dones=self.to_torch(final_dones),
            rewards=self.to_torch(n_step_returns),
            discounts=self.to_torch(target_q_discounts),
        )
