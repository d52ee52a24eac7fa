"""ProgressCallback: the reported steps, speed, time left and success rates against a run whose numbers are known."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.monitor import Monitor

from sb3_av.callbacks import ProgressCallback
from sb3_av.callbacks.progress import format_duration

EPISODE_LENGTH = 10
#: Seconds of the fake clock per environment step: exactly 4 steps/s (binary fractions: no rounding).
SECONDS_PER_STEP = 0.25

_LINE = re.compile(
    r"^step (?P<steps>[\d,]+)/(?P<target>[\d,]+) \((?P<share>\d+)%\) \| (?P<speed>[\d.]+) steps/s \| ETA (?P<eta>[\d:]+)"
    r"(?: \| success (?P<success>[\d.]+) \((?P<episodes>\d+) episodes\))?"
    r"(?: \| eval success (?P<eval>[\d.]+) \(step (?P<eval_step>[\d,]+)\))?$"
)


class SuccessEnv(gym.Env):
    """Episodes of :data:`EPISODE_LENGTH` steps; episode ``k`` (from 0) ends with ``is_success = k % every == 0``."""

    def __init__(self, every: int = 3) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.every = every
        self._t = 0
        self._episode = -1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._episode += 1
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        end = self._t >= EPISODE_LENGTH
        info = {"is_success": self._episode % self.every == 0} if end else {}
        return np.zeros(1, np.float32), 0.0, False, end, info


def _train_success(episodes: int) -> float:
    """Success rate of the first ``episodes`` training episodes of a :class:`SuccessEnv` (every 3rd succeeds)."""
    return float(np.mean([k % 3 == 0 for k in range(episodes)]))


def _lines(text: str) -> list[dict[str, str]]:
    parsed = []
    for line in text.splitlines():
        match = _LINE.match(line)
        assert match is not None, f"not a progress line: {line!r}"
        parsed.append(match.groupdict())
    return parsed


def _model() -> TD3:
    # No gradient step (learning_starts > budget): a run of 100 steps takes well under a second.
    return TD3("MlpPolicy", SuccessEnv(), learning_starts=10_000, policy_kwargs={"net_arch": [4]}, seed=0, device="cpu")


def _fake_clock(model: TD3) -> Any:
    """A clock that runs :data:`SECONDS_PER_STEP` seconds per environment step of ``model``."""
    return lambda: model.num_timesteps * SECONDS_PER_STEP


def test_lines_report_steps_speed_eta_and_success_rates(tmp_path: Path) -> None:
    model = _model()
    evaluation = EvalCallback(Monitor(SuccessEnv(every=1)), eval_freq=50, n_eval_episodes=2, log_path=str(tmp_path))
    out = io.StringIO()
    progress = ProgressCallback(25 * SECONDS_PER_STEP, stream=out, eval_callback=evaluation, clock=_fake_clock(model))
    model.learn(100, callback=[evaluation, progress])

    lines = _lines(out.getvalue())
    assert [int(line["steps"].replace(",", "")) for line in lines] == [25, 50, 75, 100, 100], "every 25 steps, then last"
    for line, steps in zip(lines, [25, 50, 75, 100, 100], strict=True):
        assert int(line["target"]) == 100 and int(line["share"]) == steps
        assert float(line["speed"]) == 1 / SECONDS_PER_STEP
        assert line["eta"] == format_duration(math.ceil((100 - steps) * SECONDS_PER_STEP))
    # SB3 adds an episode to ep_success_buffer after the callbacks of its last step: a line at step s shows the
    # episodes that ended before s; the last line (at training end) all 10.
    for line, episodes in zip(lines, [2, 4, 7, 9, 10], strict=True):
        assert int(line["episodes"]) == episodes
        assert float(line["success"]) == pytest.approx(_train_success(episodes), abs=0.005)
    assert [line["success"] for line in lines] == ["0.50", "0.50", "0.43", "0.33", "0.40"]
    assert [(line["eval"], line["eval_step"]) for line in lines] == [
        (None, None),
        ("1.00", "50"),
        ("1.00", "50"),
        ("1.00", "100"),
        ("1.00", "100"),
    ], "the last evaluation (the eval env always succeeds)"
    assert progress.success_rates() == (0.4, 10, 1.0, 100)


def test_a_resumed_run_counts_on_from_the_models_steps() -> None:
    model = _model()
    model.learn(100)
    out = io.StringIO()
    progress = ProgressCallback(interval_s=25 * SECONDS_PER_STEP, stream=out, clock=_fake_clock(model))
    model.learn(50, reset_num_timesteps=False, callback=progress)
    lines = _lines(out.getvalue())
    assert [(line["steps"], line["target"], line["share"]) for line in lines] == [
        ("125", "150", "83"),
        ("150", "150", "100"),
        ("150", "150", "100"),  # the last line, at training end
    ]
    assert [line["eta"] for line in lines] == ["0:07", "0:00", "0:00"]  # 25 steps at 4 steps/s: 6.25 s, rounded up
    assert [float(line["speed"]) for line in lines] == [4.0, 4.0, 4.0]


def test_a_bar_when_asked_and_no_lines_before_the_interval() -> None:
    model = _model()
    out = io.StringIO()
    model.learn(100, callback=ProgressCallback(stream=out, bar=True))
    final = out.getvalue().split("\r")[-1]
    assert "100/100" in final and "success 0.40 (10 episodes)" in final, final

    quiet = io.StringIO()
    model.learn(60, callback=ProgressCallback(interval_s=3600, stream=quiet))  # StringIO is no terminal: lines
    (line,) = _lines(quiet.getvalue())
    assert line["steps"] == "60" and line["target"] == "60", "only the last line"


def test_format_duration_and_bad_interval() -> None:
    assert [format_duration(s) for s in (0, 0.2, 59.2, 3600, 3725, math.inf, math.nan)] == [
        "0:00",
        "0:01",
        "1:00",
        "1:00:00",
        "1:02:05",
        "?",
        "?",
    ]
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="interval_s must be a finite number >= 0"):
            ProgressCallback(interval_s=bad)
