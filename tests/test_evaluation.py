"""evaluate() metrics (checked against scripted episodes), the same metrics in the training logs, and the one
evaluation command behind ``enjoy.py`` and ``sb3-av evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sb3_av.baselines import PIDPurePursuit
from sb3_av.envs import register_envs
from sb3_av.envs.core import DrivingEnv, make_driving_env
from sb3_av.evaluation import METRIC_COLUMNS, evaluate, format_metrics_table
from sb3_av.zoo.enjoy import add_evaluate_arguments, build_parser, main, parse_env_kwargs, run_evaluate_command
from tests.test_env_core import ScriptedBackend

register_envs()


class _Throttle:
    """A 'model' with SB3's predict(): constant steer 0, throttle from a schedule."""

    def __init__(self, schedule: list[float]) -> None:
        self.schedule = schedule
        self.t = 0

    def predict(self, obs: Any, deterministic: bool = True) -> tuple[np.ndarray, None]:
        action = np.array([0.0, self.schedule[self.t % len(self.schedule)]], dtype=np.float32)
        self.t += 1
        return action, None


def _scripted(**kwargs: Any) -> DrivingEnv:
    keys = {"collide_at_step": None, "off_lane_at_step": None, "start_speed": 0.0}
    return make_driving_env("LiteScenario0", ScriptedBackend, keys, **kwargs)


def test_metrics_of_scripted_episodes() -> None:
    metrics = evaluate(_Throttle([0.5]), _scripted(max_steps=40), n_episodes=2, seed=0)
    # Constant acceleration 2 m/s^2 for 2 s (40 steps): 4 m/s at the end, 4 m driven, no jerk, truncated.
    assert metrics["episode_length_steps"] == 40 and metrics["episode_length_s"] == pytest.approx(2.0)
    assert metrics["distance_km"] == pytest.approx(2 * 0.5 * 2.0 * 2.0**2 / 1000, rel=0.03)
    assert metrics["mean_speed_ms"] == pytest.approx(metrics["distance_km"] * 1000 / 4.0)
    assert metrics["mean_abs_jerk_ms3"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["terminations"] == {"time_limit": 2} and metrics["success_rate"] == 0.0
    assert metrics["collisions"] == 0 and metrics["collisions_per_km"] == 0.0
    assert metrics["mean_abs_lateral_offset_m"] == pytest.approx(0.0, abs=1e-9)
    assert [e["seed"] for e in metrics["episodes"]] == [0, 1]

    # Throttle 1, 0, 1, 0: acceleration 4, 0, 4, 0 m/s^2, so |jerk| = 4 / 0.05 = 80 m/s^3 at every step.
    metrics = evaluate(_Throttle([1.0, 0.0]), _scripted(max_steps=20), n_episodes=1)
    assert metrics["mean_abs_jerk_ms3"] == pytest.approx(80.0)


def test_collisions_per_km_and_off_road_rate() -> None:
    metrics = evaluate(_Throttle([1.0]), _scripted(collide_at_step=30), n_episodes=3, seed=1)
    assert metrics["collisions"] == 3 and metrics["terminations"] == {"collision": 3}
    assert metrics["collisions_per_km"] == pytest.approx(3 / metrics["distance_km"])
    assert metrics["episode_length_steps"] == 30
    metrics = evaluate(_Throttle([1.0]), _scripted(off_lane_at_step=10), n_episodes=2)
    assert metrics["off_road_rate"] == 1.0 and metrics["collisions"] == 0
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate(_Throttle([1.0]), _scripted(), n_episodes=0)


def test_several_envs_take_the_episodes_in_turn() -> None:
    """Episode i drives env i mod k with seed + i: a collision env and a clean one give every other episode each."""
    envs = [_scripted(collide_at_step=30), _scripted(max_steps=40)]
    metrics = evaluate(_Throttle([1.0]), envs, n_episodes=5, seed=3)
    assert [(e["seed"], e["env_index"]) for e in metrics["episodes"]] == [(3, 0), (4, 1), (5, 0), (6, 1), (7, 0)]
    assert metrics["terminations"] == {"collision": 3, "time_limit": 2} and metrics["collisions"] == 3
    alone = [evaluate(_Throttle([1.0]), env, n_episodes=1, seed=3)["mean_return"] for env in envs]
    assert metrics["mean_return"] == pytest.approx((3 * alone[0] + 2 * alone[1]) / 5)
    with pytest.raises(ValueError, match="at least one env"):
        evaluate(_Throttle([1.0]), [], n_episodes=1)


def test_baseline_on_a_short_lite_route() -> None:
    import gymnasium as gym

    env = gym.make("LiteScenario0-v0", npc_vehicles=0, route_length_m=60.0)
    metrics = evaluate(PIDPurePursuit.from_env(env), env, n_episodes=2, seed=0)
    assert metrics["success_rate"] == 1.0 and metrics["route_completion"] == 1.0
    assert metrics["collisions_per_km"] == 0.0 and metrics["off_road_rate"] == 0.0
    assert 4.0 < metrics["mean_speed_ms"] < 8.5
    assert metrics["mean_abs_lateral_offset_m"] < 0.3
    table = format_metrics_table([("LiteScenario0-v0", metrics)])
    assert table.splitlines()[2].startswith("| LiteScenario0-v0 | 2 | 1.00 | 1.000 | 0.00 | 0.00 |")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return run_evaluate_command(parser.parse_args(argv))


def test_cli_baseline_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.json"
    argv = ["--baseline", "--env", "LiteScenario0-v0", "-n", "1", "--env-kwargs", "route_length_m:40", "npc_vehicles:0"]
    assert _run([*argv, "--json", str(out)]) == 0
    assert "| LiteScenario0-v0 | 1 | 1.00 |" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["baseline"] == "pid_pure_pursuit" and payload["env_kwargs"] == {"route_length_m": 40, "npc_vehicles": 0}
    assert payload["results"][0]["env_id"] == "LiteScenario0-v0" and payload["results"][0]["success_rate"] == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline", "--env", "NoSuchEnv-v0"], "unknown env id"),
        (["--model", "missing.zip", "--env", "LiteScenario0-v0"], "not found"),
        (["--baseline", "--env", "LiteScenario0-v0", "--env-kwargs", "npc_vehicle:3"], "valid keys"),
        (["--baseline", "--env", "LiteScenario0-v0", "--env-kwargs", "novalue"], "key:value"),
        (["--baseline", "--env", "LiteScenario0-v0", "-n", "0"], "-n must be"),
    ],
)
def test_cli_errors_exit_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_rejects_unknown_algo() -> None:
    with pytest.raises(SystemExit) as exc:
        _run(["--model", "m.zip", "--algo", "ppo", "--env", "LiteScenario0-v0"])
    assert exc.value.code == 2


def test_parse_env_kwargs_yaml_values() -> None:
    assert parse_env_kwargs(["a:1", "b:[5, 9]", "c:x", "d:null"]) == {"a": 1, "b": [5, 9], "c": "x", "d": None}


@pytest.mark.slow
def test_cli_saved_model_and_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import gymnasium as gym
    from stable_baselines3 import TD3

    env = gym.make("LiteScenario0-v0", npc_vehicles=0)
    model = TD3("MultiInputPolicy", env, buffer_size=10, learning_starts=10, policy_kwargs={"net_arch": [8]}, device="cpu")
    model.save(tmp_path / "best_model.zip")
    common = ["--env", "LiteScenario0-v0", "-n", "1", "--device", "cpu", "--env-kwargs", "npc_vehicles:0", "max_steps:5"]
    assert _run(["--model", str(tmp_path / "best_model.zip"), *common]) == 0
    assert _run(["--model", str(tmp_path), *common]) == 0  # a run folder: its best_model.zip
    assert capsys.readouterr().out.count("| LiteScenario0-v0 | 1 |") == 2
    assert _run(["--model", str(tmp_path), *common, "frame_stack:2"]) == 2
    assert "observation space" in capsys.readouterr().err
    (tmp_path / "junk.zip").write_text("not a zip")
    assert _run(["--model", str(tmp_path / "junk.zip"), *common]) == 2


def test_metrics_table_is_valid_markdown() -> None:
    rows = [("LiteScenario0-v0", {key: 1.0 for key, _, _ in METRIC_COLUMNS} | {"n_episodes": 1})]
    lines = format_metrics_table(rows).splitlines()
    assert len({line.count("|") for line in lines}) == 1  # no stray pipes in titles or cells


def test_cli_unreachable_carla_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--baseline", "--env", "CarlaScenario0-v0", "-n", "1", "--env-kwargs", "port:2999", "connect_timeout_s:1"]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CarlaConnectionError" in err and "127.0.0.1:2999" in err


def test_env_kwargs_parse_like_train_py() -> None:
    assert parse_env_kwargs(["dt:5e-2", "seed:3", "npc_speed_range_ms:[5, 9]"]) == {
        "dt": 0.05,
        "seed": 3,
        "npc_speed_range_ms": [5, 9],
    }


def test_training_logs_and_evaluate_share_the_metrics() -> None:
    """The callback's ``driving/*`` values are evaluate()'s per-episode metrics: speed = distance / simulated time."""
    from stable_baselines3 import TD3
    from stable_baselines3.common.logger import Logger

    from sb3_av.callbacks import DrivingMetricsCallback

    env = _scripted(max_steps=40)
    expected = evaluate(_Throttle([0.5]), env, n_episodes=1, seed=0)["episodes"][0]
    # Constant 2 m/s^2 from rest for 2 s: ~4 m in 2 s, 2 m/s (the mean of the per-step speeds would be 2.05 m/s).
    assert expected["mean_speed_ms"] == pytest.approx(expected["distance_m"] / 2.0) == pytest.approx(2.0, rel=0.03)
    env.reset(seed=0)
    infos: list[dict[str, Any]] = []
    policy = _Throttle([0.5])
    while not infos or infos[-1]["termination"] is None:
        infos.append(env.step(policy.predict(None)[0])[4])
    callback = DrivingMetricsCallback()
    callback.init_callback(TD3("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [4]}, buffer_size=10, device="cpu"))
    callback.model.set_logger(Logger(folder=None, output_formats=[]))
    for i, info in enumerate(infos):
        callback.update_locals({"infos": [info], "dones": np.array([i == len(infos) - 1])})
        callback.on_step()
    logged = callback.logger.name_to_value
    assert logged["driving/mean_speed_ms"] == pytest.approx(expected["mean_speed_ms"], rel=1e-12)
    assert logged["driving/distance_m"] == pytest.approx(expected["distance_m"])
    assert logged["driving/episode_sim_time_s"] == pytest.approx(2.0)
    assert logged["driving/collision_rate"] == 0.0 and logged["driving/route_completion"] == expected["route_completion"]
    terms = {k.removeprefix("reward_terms/"): v for k, v in logged.items() if k.startswith("reward_terms/")}
    assert sum(terms.values()) == pytest.approx(expected["return"]) and terms == pytest.approx(expected["reward_terms"])


def test_enjoy_and_sb3_av_evaluate_are_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sb3_av.cli import _build_parser

    def options(parser: argparse.ArgumentParser) -> set[str]:
        return {opt for action in parser._actions for opt in action.option_strings} - {"-h", "--help"}

    cli = _build_parser(["evaluate"])
    subparser = next(a for a in cli._actions if isinstance(a, argparse._SubParsersAction)).choices["evaluate"]
    assert options(subparser) == options(build_parser()) and "--load-best" in options(subparser)
    out = tmp_path / "m.json"
    argv = ["--baseline", "--env", "LiteScenario0-v0", "-n", "1", "--env-kwargs", "route_length_m:40", "npc_vehicles:0"]
    assert main([*argv, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["success_rate"] == 1.0
    assert main(["--baseline", "--env", "LiteScenario0-v0", "-n", "0"]) == 2
    assert capsys.readouterr().err == "enjoy.py: error: -n must be >= 1, got 0\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a run folder or a .zip, --algo and --env"),
        (["--baseline"], "--env is required with --baseline"),
        (["x.zip", "--baseline", "--env", "LiteScenario0-v0"], "--baseline evaluates the controller"),
        (["--model", "{zip}", "--load-best", "--env", "LiteScenario0-v0"], "pick a model in a run folder, not a .zip"),
        (["--model", "{zip}"], "--env is required (except with a run folder"),
        (["--algo", "td3", "--env", "LiteScenario0-v0", "-f", "{dir}"], "no run of td3 on LiteScenario0-v0"),
    ],
)
def test_what_to_evaluate_errors(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.zip").write_bytes(b"")
    argv = [a.format(zip=tmp_path / "m.zip", dir=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("enjoy.py: error: ") and message in err and err.count("\n") == 1
