"""FrameStackDictReplayBuffer: same samples as SB3's DictReplayBuffer, a fraction of the memory."""

from __future__ import annotations

import pickle
import warnings
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_av.buffers import DEFAULT_FRAME_RESERVE, FrameRing, FrameStackDictReplayBuffer, default_replay_buffer_for

STACK = 4
N_VEC = 3
ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


def _obs_space(stack: int = STACK, height: int = 3, width: int = 4, n_vec: int = N_VEC) -> spaces.Dict:
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (stack, height, width), np.uint8),
            "vector": spaces.Box(-np.inf, np.inf, (n_vec,), np.float32),
        }
    )


# ------------------------------------------------------------------------------------------- a stream of transitions
def _stream(
    rng: np.random.Generator,
    n_envs: int,
    n_steps: int,
    frame_shape: tuple[int, int] = (3, 4),
    p_done: float = 0.1,
    p_arbitrary: float = 0.03,
    fixed_episode_len: int | None = None,
    n_vec: int = N_VEC,
    p_repeat: float = 0.1,
):
    """Yield ``add()`` arguments as SB3's ``_store_transition`` gives them, plus streams no frame stacker makes.

    Episodes end at different times per env (terminated or time limit); a reset stack is the first frame repeated,
    zero-padded, all zeros or arbitrary; frames sometimes repeat; sometimes ``next_obs`` is not a shift of ``obs`` and
    ``obs`` is not the previous ``next_obs`` (arbitrary stacks mid-episode).
    """

    def frame() -> np.ndarray:
        return rng.integers(0, 256, frame_shape, dtype=np.uint8)

    def reset_stack() -> np.ndarray:
        kind = rng.integers(4) if fixed_episode_len is None else 0
        first = frame()
        if kind == 0:
            return np.stack([first] * STACK)
        if kind == 1:
            return np.stack([np.zeros_like(first)] * (STACK - 1) + [first])
        if kind == 2:
            return np.zeros((STACK, *frame_shape), np.uint8)
        return rng.integers(0, 256, (STACK, *frame_shape), dtype=np.uint8)

    def _perturb(stack: np.ndarray) -> None:
        """Make an arbitrary stack in place: one frame replaced, or all of them."""
        if rng.random() < 0.5:
            stack[rng.integers(STACK)] = frame()
        else:
            stack[:] = rng.integers(0, 256, stack.shape, dtype=np.uint8)

    current = np.stack([reset_stack() for _ in range(n_envs)])
    vector = rng.normal(size=(n_envs, n_vec)).astype(np.float32)
    episode_len = np.zeros(n_envs, dtype=int)
    for _ in range(n_steps):
        obs = {"image": current.copy(), "vector": vector.copy()}
        next_image = np.empty_like(current)
        for env in range(n_envs):
            new = current[env, -1].copy() if rng.random() < p_repeat else frame()
            next_image[env] = np.concatenate([current[env, 1:], new[None]])
            if fixed_episode_len is None and rng.random() < p_arbitrary:
                _perturb(next_image[env])
        next_vector = rng.normal(size=(n_envs, n_vec)).astype(np.float32)
        episode_len += 1
        if fixed_episode_len is None:
            done = rng.random(n_envs) < p_done
            timeout = done & (rng.random(n_envs) < 0.4)
        else:
            done = episode_len >= fixed_episode_len
            timeout = done.copy()
        infos: list[dict[str, Any]] = [
            {"TimeLimit.truncated": bool(timeout[env])} if rng.random() < 0.9 else {} for env in range(n_envs)
        ]
        yield (
            obs,
            {"image": next_image.copy(), "vector": next_vector.copy()},
            rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32),
            rng.normal(size=n_envs).astype(np.float32),
            done.astype(np.float32),
            infos,
        )
        current = next_image
        vector = next_vector
        for done_env in np.flatnonzero(done):
            current[done_env] = reset_stack()
            vector[done_env] = rng.normal(size=n_vec)
            episode_len[done_env] = 0
        for env in range(n_envs):
            if fixed_episode_len is None and rng.random() < p_arbitrary / 2:
                _perturb(current[env])


def _add_both(ours: FrameStackDictReplayBuffer, ref: Any, transition: tuple) -> None:
    ref.add(*deepcopy(transition))
    ours.add(*deepcopy(transition))


def _assert_same_samples(ours: FrameStackDictReplayBuffer, ref: Any, batch_size: int, seed: int, env: Any = None) -> None:
    np.random.seed(seed)
    expected = ref.sample(batch_size, env=env)
    np.random.seed(seed)
    got = ours.sample(batch_size, env=env)
    for name in ("observations", "next_observations"):
        exp, act = getattr(expected, name), getattr(got, name)
        assert list(act) == list(exp)
        for key in exp:
            assert act[key].dtype == exp[key].dtype, (name, key)
            assert th.equal(act[key], exp[key]), (name, key)
    for name in ("actions", "dones", "rewards"):
        exp, act = getattr(expected, name), getattr(got, name)
        assert act.dtype == exp.dtype and th.equal(act, exp), name
    assert got.discounts is None and expected.discounts is None


# ----------------------------------------------------------------------------------------------------- equality
@pytest.mark.parametrize(
    ("n_envs", "buffer_size", "frame_reserve", "p_arbitrary", "expect_growth"),
    [
        (1, 37, 3.0, 0.03, False),
        (3, 60, 3.0, 0.03, False),
        (4, 48, 0.0, 0.03, True),
        (2, 2, DEFAULT_FRAME_RESERVE, 0.03, None),
        (1, 2, 0.0, 0.5, True),
    ],
)
def test_samples_equal_sb3_dict_replay_buffer(
    n_envs: int, buffer_size: int, frame_reserve: float, p_arbitrary: float, expect_growth: bool | None
):
    """Any stream (resets, arbitrary stacks, timeouts, several envs, wrap-around) gives SB3's samples exactly."""
    space = _obs_space()
    ref = DictReplayBuffer(buffer_size, space, ACTION_SPACE, device="cpu", n_envs=n_envs)
    ours = FrameStackDictReplayBuffer(
        buffer_size, space, ACTION_SPACE, device="cpu", n_envs=n_envs, frame_reserve=frame_reserve
    )
    rng = np.random.default_rng(n_envs * 1000 + buffer_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, transition in enumerate(_stream(rng, n_envs, 260, p_arbitrary=p_arbitrary)):
            _add_both(ours, ref, transition)
            if step % 5 == 0 or step < 12:
                _assert_same_samples(ours, ref, batch_size=64, seed=step)
    assert ours.pos == ref.pos and ours.full and ref.full
    if expect_growth is not None:
        assert (ours.n_ring_growths > 0) == expect_growth


@pytest.mark.parametrize(("n_envs", "buffer_size"), [(1, 2), (2, 2), (2, 10)])
def test_worst_case_streams_equal(n_envs: int, buffer_size: int):
    """Every next_obs arbitrary (8 new frames a transition), obs the previous next_obs or arbitrary, no reserve."""
    space = _obs_space()
    ref = DictReplayBuffer(buffer_size, space, ACTION_SPACE, device="cpu", n_envs=n_envs)
    ours = FrameStackDictReplayBuffer(buffer_size, space, ACTION_SPACE, device="cpu", n_envs=n_envs, frame_reserve=0.0)
    rng = np.random.default_rng(buffer_size + n_envs)
    images = rng.integers(0, 256, (n_envs, STACK, 3, 4), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(40):
            if rng.random() < 0.5:
                images = rng.integers(0, 256, images.shape, dtype=np.uint8)
            next_images = rng.integers(0, 256, images.shape, dtype=np.uint8)
            vector = np.zeros((n_envs, N_VEC), np.float32)
            transition: tuple = (
                {"image": images, "vector": vector},
                {"image": next_images, "vector": vector},
                np.full((n_envs, 2), step, np.float32),
                np.zeros(n_envs, np.float32),
                np.zeros(n_envs, np.float32),
                [{}] * n_envs,
            )
            _add_both(ours, ref, transition)
            _assert_same_samples(ours, ref, batch_size=16, seed=step)
            images = next_images


def test_ring_growth_warns_and_stays_exact():
    space = _obs_space()
    ref = DictReplayBuffer(20, space, ACTION_SPACE, device="cpu", n_envs=2)
    ours = FrameStackDictReplayBuffer(20, space, ACTION_SPACE, device="cpu", n_envs=2, frame_reserve=0.0)
    capacity = len(ours.ring.frames)
    with pytest.warns(UserWarning, match="frame_reserve"):
        for transition in _stream(np.random.default_rng(3), 2, 80, p_done=0.5):
            _add_both(ours, ref, transition)
    assert len(ours.ring.frames) > capacity and ours.n_ring_growths >= 1
    for seed in range(5):
        _assert_same_samples(ours, ref, batch_size=40, seed=seed)


def test_vec_normalize_samples_equal():
    space = _obs_space()
    ref = DictReplayBuffer(30, space, ACTION_SPACE, device="cpu", n_envs=2)
    ours = FrameStackDictReplayBuffer(30, space, ACTION_SPACE, device="cpu", n_envs=2, frame_reserve=3.0)
    for transition in _stream(np.random.default_rng(5), 2, 50):
        _add_both(ours, ref, transition)
    venv = VecNormalize(DummyVecEnv([lambda: _StackedImageEnv(size=(3, 4))] * 2), norm_obs_keys=["vector"], gamma=0.9)
    venv.obs_rms["vector"].mean[:] = [0.5, -1.0, 2.0]
    venv.obs_rms["vector"].var[:] = [4.0, 0.25, 1.0]
    venv.ret_rms.var = np.array(9.0)
    _assert_same_samples(ours, ref, batch_size=32, seed=7, env=venv)


def test_n_step_samples_equal_sb3_n_step_buffer():
    """n_steps > 1: the n-step returns, discounts, dones and stacks of SB3's NStepReplayBuffer (fed flat obs)."""
    n_envs, buffer_size, n_steps, gamma = 2, 40, 3, 0.9
    space = _obs_space()
    image_size = STACK * 3 * 4
    flat_space = spaces.Box(-np.inf, np.inf, (image_size + N_VEC,), np.float32)
    ref = NStepReplayBuffer(buffer_size, flat_space, ACTION_SPACE, device="cpu", n_envs=n_envs, n_steps=n_steps, gamma=gamma)
    ours = FrameStackDictReplayBuffer(
        buffer_size, space, ACTION_SPACE, device="cpu", n_envs=n_envs, frame_reserve=3.0, n_steps=n_steps, gamma=gamma
    )

    def flat(obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([obs["image"].reshape(n_envs, -1).astype(np.float32), obs["vector"]], axis=1)

    for step, (obs, next_obs, action, reward, done, infos) in enumerate(_stream(np.random.default_rng(11), n_envs, 70)):
        ref.add(flat(obs), flat(next_obs), action, reward, done, infos)
        ours.add(obs, next_obs, action, reward, done, infos)
        if step < 5 or step % 9 == 0:
            np.random.seed(step)
            expected = ref.sample(48)
            np.random.seed(step)
            got = ours.sample(48)
            for name in ("observations", "next_observations"):
                exp = getattr(expected, name)
                assert th.equal(getattr(got, name)["image"], exp[:, :image_size].to(th.uint8).reshape(-1, STACK, 3, 4))
                assert th.equal(getattr(got, name)["vector"], exp[:, image_size:])
            for name in ("actions", "dones", "rewards", "discounts"):
                assert th.equal(getattr(got, name), getattr(expected, name)), name
    assert got.discounts is not None
    values = {round(float(v), 6) for v in got.discounts.flatten()}
    assert round(gamma**n_steps, 6) in values and len(values) > 1  # full n-step and truncated-by-episode-end returns
    assert values <= {round(gamma**k, 6) for k in range(1, n_steps + 1)}


# ---------------------------------------------------------------------------------------------------- the ring
def test_frame_ring_stores_each_frame_once_and_grows_instead_of_overwriting():
    ring = FrameRing(n_envs=1, stack_size=3, frame_shape=(2, 2), capacity=8, frame_reserve=0.0)
    f = [np.full((2, 2), i, np.uint8) for i in range(40)]

    def stack(*indices: int) -> np.ndarray:
        return np.stack([f[i] for i in indices])[None]  # (n_envs=1, 3, 2, 2)

    # a reset stack filled with its first frame costs one frame, the next stack (shifted by one) one more
    obs_ids, next_ids = ring.add(stack(0, 0, 0), stack(0, 0, 1), keep_from=None)
    assert ring.n_written == 2 and obs_ids.tolist() == [[0, 0, 0]] and next_ids.tolist() == [[0, 0, 1]]
    # the obs that continues the last next_obs reuses its frames: one new frame a step
    obs_ids, next_ids = ring.add(stack(0, 0, 1), stack(0, 1, 2), keep_from=0)
    assert ring.n_written == 3 and obs_ids.tolist() == [[0, 0, 1]] and next_ids.tolist() == [[0, 1, 2]]
    np.testing.assert_array_equal(ring.gather(next_ids), stack(0, 1, 2))
    # unrelated stacks while frame 0 is still needed: the ring grows (with a warning) and keeps every frame
    kept = [(obs_ids, stack(0, 0, 1))]
    with pytest.warns(UserWarning, match="growing it"):
        for k in range(3):
            a, b = 10 + 6 * k, 13 + 6 * k
            obs_ids, next_ids = ring.add(stack(a, a + 1, a + 2), stack(b, b + 1, b + 2), keep_from=0)
            kept += [(obs_ids, stack(a, a + 1, a + 2)), (next_ids, stack(b, b + 1, b + 2))]
    assert ring.n_growths >= 1 and ring.n_written == 3 + 18 and len(ring.frames) >= 21
    for ids, expected in kept:
        np.testing.assert_array_equal(ring.gather(ids), expected)


# ------------------------------------------------------------------------------------------------------ memory
def test_bytes_per_transition_84x84_stack():
    """4x84x84 uint8 + 20 floats: <= 8000 bytes a transition (SB3: ~56 KB), and no growth for 20-step episodes."""
    space = _obs_space(STACK, 84, 84, 20)
    ours = FrameStackDictReplayBuffer(400, space, ACTION_SPACE, device="cpu")
    sb3 = DictReplayBuffer(400, space, ACTION_SPACE, device="cpu")
    sb3_nbytes = sum(a.nbytes for a in [*sb3.observations.values(), *sb3.next_observations.values()])
    sb3_nbytes += sb3.actions.nbytes + sb3.rewards.nbytes + sb3.dones.nbytes + sb3.timeouts.nbytes
    assert sb3_nbytes / 400 == 2 * (4 * 84 * 84 + 20 * 4) + 2 * 4 + 3 * 4 == 56628
    assert 7056 < ours.nbytes_per_transition <= 8000
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for transition in _stream(rng, 1, 1000, frame_shape=(84, 84), fixed_episode_len=20, n_vec=20, p_repeat=0.0):
            ours.add(*transition)
    assert ours.n_ring_growths == 0
    assert ours.n_frames_written == 1000 + 1000 // 20  # one frame a step, one per episode start


# -------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("space", "kwargs", "match"),
    [
        (spaces.Box(0, 255, (4, 8, 8), np.uint8), {}, "Dict observation space"),
        (_obs_space(), {"image_key": "camera"}, "not a key"),
        (spaces.Dict({"image": spaces.Box(0, 1, (4, 8, 8), np.float32)}), {}, "uint8 Box"),
        (spaces.Dict({"image": spaces.Box(0, 255, (8, 8), np.uint8)}), {}, "uint8 Box"),
        (spaces.Dict({"image": spaces.Discrete(3)}), {}, "uint8 Box"),
        (_obs_space(), {"optimize_memory_usage": True}, "optimize_memory_usage"),
        (_obs_space(), {"frame_reserve": -0.5}, "frame_reserve"),
        (_obs_space(), {"frame_reserve": float("nan")}, "frame_reserve"),
        (_obs_space(), {"frame_reserve": "a lot"}, "frame_reserve"),
        (_obs_space(), {"n_steps": 0}, "n_steps"),
        (_obs_space(), {"gamma": 1.5}, "gamma"),
    ],
)
def test_bad_construction_raises(space: spaces.Space, kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        FrameStackDictReplayBuffer(10, space, ACTION_SPACE, device="cpu", **kwargs)


def test_add_with_wrong_image_shape_raises():
    buffer = FrameStackDictReplayBuffer(10, _obs_space(), ACTION_SPACE, device="cpu", n_envs=2)
    obs = {"image": np.zeros((2, STACK, 4, 3), np.uint8), "vector": np.zeros((2, N_VEC), np.float32)}
    bad = {"image": np.zeros((1, STACK, 3, 4), np.uint8), "vector": np.zeros((2, N_VEC), np.float32)}
    with pytest.raises(ValueError, match=r"expected \(2, 4, 3, 4\)"):
        buffer.add(bad, bad, np.zeros((2, 2)), np.zeros(2), np.zeros(2), [{}, {}])
    buffer.add(
        {"image": obs["image"].reshape(2, STACK, 3, 4), "vector": obs["vector"]},
        {"image": obs["image"].reshape(2, STACK, 3, 4), "vector": obs["vector"]},
        np.zeros((2, 2)),
        np.zeros(2),
        np.zeros(2),
        [{}, {}],
    )
    assert buffer.size() == 1


def test_default_replay_buffer_for():
    assert default_replay_buffer_for(_obs_space()) == (FrameStackDictReplayBuffer, {"image_key": "image"})
    assert default_replay_buffer_for(spaces.Box(0, 255, (4, 8, 8), np.uint8)) is None
    assert default_replay_buffer_for(spaces.Dict({"camera": spaces.Box(0, 255, (4, 8, 8), np.uint8)})) is None
    assert default_replay_buffer_for(_obs_space(stack=1)) is None
    assert default_replay_buffer_for(spaces.Dict({"image": spaces.Box(0, 1, (4, 8, 8), np.float32)})) is None


# ------------------------------------------------------------------------------------------------ TD3 with it
class _StackedImageEnv(gym.Env):
    """A dot to steer to the centre of a small image; 4 stacked frames (reset fills the stack) + a position vector."""

    def __init__(self, size: tuple[int, int] = (36, 36), seed: int = 0):
        self.size = size
        self.observation_space = _obs_space(STACK, *size)
        self.action_space = ACTION_SPACE
        self._rng = np.random.default_rng(seed)
        self._pos = np.zeros(2)
        self._stack = np.zeros((STACK, *size), np.uint8)

    def _frame(self) -> np.ndarray:
        frame = self._rng.integers(0, 30, self.size, dtype=np.uint8)  # noise: consecutive frames differ
        row, col = (np.clip((self._pos + 1) / 2, 0, 0.999) * self.size).astype(int)
        frame[row, col] = 255
        return frame

    def _obs(self) -> dict[str, np.ndarray]:
        return {"image": self._stack.copy(), "vector": np.append(self._pos, 1.0).astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self._rng.uniform(-0.8, 0.8, 2)
        self._stack = np.stack([self._frame()] * STACK)
        return self._obs(), {}

    def step(self, action: np.ndarray):
        self._pos = self._pos + 0.2 * np.asarray(action, dtype=np.float64)
        self._stack = np.concatenate([self._stack[1:], self._frame()[None]])
        terminated = bool(np.abs(self._pos).max() > 1.0)
        return self._obs(), float(-np.linalg.norm(self._pos)), terminated, False, {}


class _TeeBuffer(FrameStackDictReplayBuffer):
    """Also feeds every transition to an SB3 DictReplayBuffer, to compare both on the stream TD3 produced."""

    def __init__(self, buffer_size, observation_space, action_space, device="auto", n_envs=1, **kwargs):
        super().__init__(buffer_size, observation_space, action_space, device, n_envs, **kwargs)
        self.sb3 = DictReplayBuffer(buffer_size, observation_space, action_space, device, n_envs)

    def add(self, obs, next_obs, action, reward, done, infos):
        self.sb3.add(deepcopy(obs), deepcopy(next_obs), np.array(action), np.array(reward), np.array(done), infos)
        super().add(obs, next_obs, action, reward, done, infos)


@pytest.fixture
def one_torch_thread():
    """Tiny nets on a shared machine: one thread is several times faster than contending for all cores."""
    n_threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(n_threads)


def test_td3_trains_with_it_and_save_load_round_trip(tmp_path, one_torch_thread):
    env = DummyVecEnv(
        [lambda: TimeLimit(_StackedImageEnv(seed=1), 9), lambda: TimeLimit(_StackedImageEnv(seed=2), 14)]  # type: ignore[list-item]
    )
    model = TD3(
        "MultiInputPolicy",
        env,
        buffer_size=100,  # 50 rows per env: 100 steps of 2 envs wrap around
        learning_starts=30,
        batch_size=16,
        replay_buffer_class=_TeeBuffer,
        replay_buffer_kwargs={"frame_reserve": 1.0},  # episodes here are shorter than 1 / DEFAULT_FRAME_RESERVE
        policy_kwargs={"net_arch": [16], "features_extractor_kwargs": {"cnn_output_dim": 8}},
        seed=0,
        device="cpu",
    )
    before = [p.detach().clone() for p in model.critic.parameters()]
    model.learn(200)
    buffer = model.replay_buffer
    assert isinstance(buffer, _TeeBuffer) and buffer.full
    assert model._n_updates >= 80 and buffer.n_ring_growths == 0
    assert any(not th.equal(a, b) for a, b in zip(before, model.critic.parameters(), strict=True))
    assert buffer.dones.sum() > 10 and buffer.timeouts.sum() > 0  # episodes ended, some by the time limit
    for seed in range(4):
        _assert_same_samples(buffer, buffer.sb3, batch_size=64, seed=seed)

    path = tmp_path / "replay_buffer.pkl"
    model.save_replay_buffer(path)
    model.load_replay_buffer(path)
    loaded = model.replay_buffer
    assert loaded is not buffer and isinstance(loaded, FrameStackDictReplayBuffer)
    for seed in range(3):
        _assert_same_samples(loaded, buffer.sb3, batch_size=64, seed=100 + seed)
    model.learn(20, reset_num_timesteps=False)  # keeps training from the loaded buffer
    assert model.replay_buffer is loaded


def test_pickle_round_trip_keeps_adding_exactly():
    space = _obs_space()
    ref = DictReplayBuffer(25, space, ACTION_SPACE, device="cpu", n_envs=2)
    ours = FrameStackDictReplayBuffer(25, space, ACTION_SPACE, device="cpu", n_envs=2, frame_reserve=3.0)
    stream = _stream(np.random.default_rng(21), 2, 80)
    for _ in range(30):
        _add_both(ours, ref, next(stream))
    ours = pickle.loads(pickle.dumps(ours))
    for transition in stream:
        _add_both(ours, ref, transition)
    for seed in range(3):
        _assert_same_samples(ours, ref, batch_size=50, seed=seed)


def test_a_buffer_pickled_before_frame_ring_loads_and_keeps_adding_exactly():
    """tests/data/buffers: a buffer saved by sb3-av before the FrameRing refactor (commit 800ae26; the ring's arrays
    were the buffer's own attributes) with SB3's ``save_to_pkl``, after 17 transitions of 4-step episodes, and what
    that old code sampled (``np.random.seed(0)``, 8 samples) after 13 more. Loaded with today's class, it must
    sample the same after the same 13 transitions."""
    from pathlib import Path

    from stable_baselines3.common.save_util import load_from_pkl

    data = Path(__file__).parent / "data" / "buffers"
    buffer = load_from_pkl(data / "framestack_before_framering.pkl")
    expected = np.load(data / "framestack_before_framering_expected.npz")
    assert isinstance(buffer, FrameStackDictReplayBuffer) and isinstance(buffer.ring, FrameRing)
    assert "frames" not in vars(buffer) and "n_frames_written" not in vars(buffer)
    for i in range(13):
        obs = {"image": expected[f"stream_{i}_image"], "vector": expected[f"stream_{i}_vector"]}
        next_obs = {"image": expected[f"stream_{i}_next_image"], "vector": expected[f"stream_{i}_next_vector"]}
        reward, done = expected[f"stream_{i}_reward"], expected[f"stream_{i}_done"]
        buffer.add(obs, next_obs, expected[f"stream_{i}_action"], reward, done, [{}])
    assert buffer.n_frames_written == int(expected["frames_written"])
    np.random.seed(0)
    sample = buffer.sample(8)
    np.testing.assert_array_equal(sample.observations["image"].numpy(), expected["image"])
    np.testing.assert_array_equal(sample.next_observations["image"].numpy(), expected["next_image"])
    np.testing.assert_array_equal(sample.observations["vector"].numpy(), expected["vector"])
    np.testing.assert_array_equal(sample.actions.numpy(), expected["actions"])
    np.testing.assert_array_equal(sample.rewards.numpy(), expected["rewards"])
    np.testing.assert_array_equal(sample.dones.numpy(), expected["dones"])
