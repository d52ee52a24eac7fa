"""Camera faults of the env contract: ``camera_noise_std`` (Gaussian pixel noise) and ``frame_drop_prob`` (stale frames).

Each faulty env is driven next to a clean twin (same seed, same actions): the faults touch only the image, so the
twin's frames are the ground truth that the noise and the drops are measured against.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import sb3_av  # noqa: F401  (registers the envs)
from tests.test_env_core import _env as scripted_env

ENV_ID = "LiteScenario0-v0"


def _actions(n: int, seed: int = 0) -> np.ndarray:
    """Mostly forward driving with some steering, so that consecutive frames differ."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-0.15, 0.15, n), rng.uniform(0.2, 1.0, n)]).astype(np.float32)


def _twin_run(n_steps: int, seed: int = 3, env_id: str = ENV_ID, **faults: Any) -> tuple[list[dict], list[dict], list[tuple]]:
    """Drive a faulty env and a clean env with the same seed and actions.

    An episode end resets both (with no seed: the env's generator continues).

    :return: the faulty and the clean observations (``"start"`` added: True after a reset), and per step the pairs of
        (reward, terminated, truncated, speed, termination).
    """
    faulty, clean = gym.make(env_id, **faults), gym.make(env_id)
    obs_f, obs_c, steps = [], [], []
    try:
        of, _ = faulty.reset(seed=seed)
        oc, _ = clean.reset(seed=seed)
        start = True
        for action in _actions(n_steps):
            obs_f.append({**of, "start": start})
            obs_c.append({**oc, "start": start})
            of, rf, tf, uf, info_f = faulty.step(action)
            oc, rc, tc, uc, info_c = clean.step(action)
            steps.append(
                (
                    (rf, tf, uf, info_f["speed_ms"], info_f["termination"]),
                    (rc, tc, uc, info_c["speed_ms"], info_c["termination"]),
                )
            )
            start = tc or uc
            if start:
                of, _ = faulty.reset()
                oc, _ = clean.reset()
    finally:
        faulty.close()
        clean.close()
    return obs_f, obs_c, steps


# ---------------------------------------------------------------------- defaults
def test_defaults_observe_the_backend_frames_unchanged() -> None:
    """With the defaults (0, 0) the stack is exactly the rendered frames, newest last, the first repeated on reset."""
    env = gym.make(ENV_ID, render_mode="rgb_array")
    assert env.unwrapped.config.camera_noise_std == 0.0 and env.unwrapped.config.frame_drop_prob == 0.0
    obs, _ = env.reset(seed=5)
    history = [env.render()[:, :, 0]] * 4
    np.testing.assert_array_equal(obs["image"], np.stack(history))
    for action in _actions(300):
        obs, _, terminated, truncated, _ = env.step(action)
        history = [*history[1:], env.render()[:, :, 0]]
        np.testing.assert_array_equal(obs["image"], np.stack(history))
        if terminated or truncated:
            obs, _ = env.reset()
            history = [env.render()[:, :, 0]] * 4
    env.close()


def test_zero_faults_equal_no_kwargs() -> None:
    obs_f, obs_c, steps = _twin_run(200, camera_noise_std=0.0, frame_drop_prob=0.0)
    for of, oc in zip(obs_f, obs_c, strict=True):
        np.testing.assert_array_equal(of["image"], oc["image"])
        np.testing.assert_array_equal(of["vector"], oc["vector"])
    assert all(a == b for a, b in steps)


# ---------------------------------------------------------------------- noise
def test_noise_statistics_and_clipping() -> None:
    """The noise has mean 0 and std ``sqrt(std^2 + 1/12)`` (rounding) on mid-grey pixels; black pixels are clipped."""
    std = 8.0
    obs_f, obs_c, steps = _twin_run(150, camera_noise_std=std)
    noisy = np.stack([o["image"][-1] for o in obs_f]).astype(np.float64)
    clean = np.stack([o["image"][-1] for o in obs_c]).astype(np.float64)
    mid = (clean >= 5 * std) & (clean <= 255 - 5 * std)
    assert mid.sum() > 100_000
    diff = (noisy - clean)[mid]
    assert abs(diff.mean()) < 0.05
    assert diff.std() == pytest.approx(math.sqrt(std**2 + 1 / 12), rel=0.01)
    assert np.all(diff == np.rint(diff))  # whole grey levels
    # Black pixels: the observed value is max(0, rint(n)), n ~ N(0, std^2): P(0) = Phi(0.5 / std), and its mean.
    black = noisy[clean == 0]
    assert black.size > 100_000

    def phi(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    assert np.mean(black == 0) == pytest.approx(phi(0.5 / std), abs=0.005)
    expected_mean = sum(k * (phi((k + 0.5) / std) - phi((k - 0.5) / std)) for k in range(1, 100))
    assert black.mean() == pytest.approx(expected_mean, rel=0.02)
    # Fresh noise every frame, and the older stack entries are the earlier noisy frames (not noised again).
    for prev, cur in itertools.pairwise(obs_f):
        if not cur["start"]:
            np.testing.assert_array_equal(cur["image"][:-1], prev["image"][1:])
            assert not np.array_equal(cur["image"][-1], prev["image"][-1])
    # The world is untouched: same vector observations, rewards and episode ends as the clean twin.
    for of, oc in zip(obs_f, obs_c, strict=True):
        np.testing.assert_array_equal(of["vector"], oc["vector"])
    assert all(a == b for a, b in steps)


def test_reset_frame_is_one_noisy_frame_repeated() -> None:
    env = gym.make(ENV_ID, camera_noise_std=16.0, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    image = obs["image"]
    assert all(np.array_equal(image[i], image[0]) for i in range(1, len(image)))
    assert not np.array_equal(image[-1], env.render()[:, :, 0])
    env.close()


# ---------------------------------------------------------------------- drops
@pytest.mark.parametrize("prob", [0.1, 0.3])
def test_drop_rate_and_stale_frames(prob: float) -> None:
    """A dropped step repeats the previous newest frame; a delivered one is the clean frame; the rate is ``prob``."""
    obs_f, obs_c, _ = _twin_run(1200, frame_drop_prob=prob)
    dropped = delivered = 0
    for t in range(1, len(obs_f)):
        if obs_f[t]["start"]:
            np.testing.assert_array_equal(obs_f[t]["image"], obs_c[t]["image"])  # the reset frame is never dropped
            continue
        prev, cur, truth, prev_truth = obs_f[t - 1]["image"], obs_f[t]["image"], obs_c[t]["image"], obs_c[t - 1]["image"]
        np.testing.assert_array_equal(cur[:-1], prev[1:])  # the stack shifted
        if np.array_equal(truth[-1], prev_truth[-1]):
            continue  # the scene did not change: a drop cannot be told apart
        if np.array_equal(cur[-1], truth[-1]):
            delivered += 1
        else:
            np.testing.assert_array_equal(cur[-1], prev[-1])
            dropped += 1
    n = dropped + delivered
    assert n > 1000
    assert dropped / n == pytest.approx(prob, abs=4 * math.sqrt(prob * (1 - prob) / n))


def test_drop_prob_one_freezes_the_reset_frame() -> None:
    env = gym.make(ENV_ID, frame_drop_prob=1.0, render_mode="rgb_array")
    obs0, _ = env.reset(seed=2)
    for action in _actions(20):
        obs, *_ = env.step(action)
        np.testing.assert_array_equal(obs["image"], obs0["image"])
    assert not np.array_equal(env.render()[:, :, 0], obs0["image"][-1])
    env.close()


# ---------------------------------------------------------------------- reproducibility, every backend, bad values
def test_faults_are_seeded() -> None:
    faults = {"camera_noise_std": 8.0, "frame_drop_prob": 0.3}
    a, _, _ = _twin_run(120, seed=11, **faults)
    b, _, _ = _twin_run(120, seed=11, **faults)
    c, _, _ = _twin_run(120, seed=12, **faults)
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # The seed kwarg seeds the faults like reset(seed=...).
    env1, env2 = gym.make(ENV_ID, seed=11, **faults), gym.make(ENV_ID, seed=11, **faults)
    np.testing.assert_array_equal(env1.reset()[0]["image"], env2.reset()[0]["image"])
    np.testing.assert_array_equal(env1.reset()[0]["image"], env2.reset()[0]["image"])
    env1.close()
    env2.close()


def test_faults_on_any_backend() -> None:
    """The faults live in DrivingEnv, so a backend other than Lite (the scripted one of test_env_core) gets them too."""
    env = scripted_env(camera_noise_std=10.0, frame_drop_prob=0.5)
    clean = scripted_env()
    obs, _ = env.reset(seed=1)
    obs_c, _ = clean.reset(seed=1)
    assert not np.array_equal(obs["image"], obs_c["image"])
    same = 0
    for _ in range(200):
        newest = obs["image"][-1]
        obs, *_ = env.step(np.array([0.0, 0.5]))
        obs_c, *_ = clean.step(np.array([0.0, 0.5]))
        if np.array_equal(obs["image"][-1], newest):
            same += 1  # dropped (two noisy frames are never equal by chance)
        else:
            assert np.abs(obs["image"][-1].astype(int) - obs_c["image"][-1]).max() > 0  # a fresh noisy frame
    assert 70 < same < 130  # about half dropped (binomial(200, 0.5): 100 +- 7)
    env.close()
    clean.close()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("camera_noise_std", -1.0, "camera_noise_std must be a number of grey levels in \\[0, 255\\]"),
        ("camera_noise_std", float("nan"), "camera_noise_std"),
        ("camera_noise_std", 300, "camera_noise_std"),
        ("camera_noise_std", "8", "camera_noise_std"),
        ("camera_noise_std", True, "camera_noise_std"),
        ("frame_drop_prob", 1.5, "frame_drop_prob must be a probability in \\[0, 1\\]"),
        ("frame_drop_prob", -0.1, "frame_drop_prob"),
        ("frame_drop_prob", None, "frame_drop_prob"),
    ],
)
def test_bad_values(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make(ENV_ID, **{key: value})


def test_unknown_kwarg_lists_the_fault_keys() -> None:
    with pytest.raises(ValueError, match=r"camera_noise_std.*frame_drop_prob"):
        gym.make(ENV_ID, camera_noise=3)
