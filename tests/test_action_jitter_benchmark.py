"""benchmarks/action_jitter.py: the head's jitter against the executed action, on a saved model."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest

from sb3_av.td3 import ClippedTD3
from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def jitter():
    return load_benchmark("action_jitter")


def _model(betas: list[float]) -> ClippedTD3:
    env = gym.make("LiteScenario1-v0", max_steps=40, action_repeat=2)
    kwargs = {"net_arch": [8], "share_features_extractor": True, "action_smoothing": betas}
    return ClippedTD3("MultiInputPolicy", env, buffer_size=100, policy_kwargs=kwargs, seed=0, device="cpu")


def test_the_filter_passes_one_minus_beta_of_the_heads_distance_to_the_previous_action(jitter) -> None:
    """``action - previous = (1 - beta) * (head - previous)`` step by step, so the means are in that ratio; the
    PID's answers are actions in [-1, 1]."""
    betas = [0.5, 0.9]
    env = gym.make("LiteScenario1-v0", max_steps=40, action_repeat=2)
    result = jitter.measure(_model(betas), env, episodes=1, seed=3)
    assert result["steps"] == 20
    for beta, control in zip(betas, jitter.CONTROLS, strict=True):
        c = result["controls"][control]
        assert c["head_minus_previous"] > 0.0
        assert c["action_minus_previous"] == pytest.approx((1 - beta) * c["head_minus_previous"], rel=1e-4)
        assert 0.0 <= c["head_saturated_share"] <= 1.0 and c["head_minus_pid"] <= 2.0
    assert math.isfinite(result["mean_abs_jerk_ms3"]) and result["mean_abs_jerk_ms3"] >= 0.0


def test_another_filter_for_a_saved_head_and_bad_arguments(jitter, tmp_path, capsys) -> None:
    path = tmp_path / "model.zip"
    _model([0.7, 0.92]).save(path)
    argv = [str(path), "--env", "LiteScenario1-v0", "--episodes", "1"]
    result = jitter.main([*argv, "--action-smoothing", "0.0", "0.0"])
    throttle = result["controls"]["throttle_brake"]
    assert throttle["action_minus_previous"] == pytest.approx(throttle["head_minus_previous"], rel=1e-4)  # no filter
    assert "action_smoothing (0.0, 0.0)" in capsys.readouterr().out
    for bad, message in [
        ([str(tmp_path / "none.zip")], "no such model file"),
        ([*argv, "--action-smoothing", "0.5", "1.0"], "must be in [0, 1)"),
        ([str(path), "--env", "Nope-v0"], "unknown env id 'Nope-v0'"),
    ]:
        with pytest.raises(SystemExit) as exc:
            jitter.main(bad)
        assert exc.value.code == 2 and message in capsys.readouterr().err
