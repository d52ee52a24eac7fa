"""The rl-zoo trainer: config checks, samplers, run folders, resume after an interrupt, enjoy.py.

In-process tests cover the config parsing and the error paths; the ``slow`` ones run ``train.py`` /
``enjoy.py`` as subprocesses on LiteScenario0 with tiny budgets (CI runs them too).
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import optuna
import pytest
import torch as th
import yaml

from sb3_av import grad_clip, plotting
from sb3_av.buffers import FrameStackDictReplayBuffer
from sb3_av.compute import default_torch_threads
from sb3_av.zoo import ALGO_NAMES, SAMPLERS, config, get_algorithm, samplers
from sb3_av.zoo.config import ConfigError, load_config_file, parse_override_value, resolve_env_wrapper, validate_hyperparams
from sb3_av.zoo.enjoy import main as enjoy_main
from sb3_av.zoo.exp_manager import DrivingExperimentManager, _replay_buffer_beside, normalize_storage_url
from sb3_av.zoo.run_folder import read_run_info, resolve_model_path
from sb3_av.zoo.samplers import convert_params
from sb3_av.zoo.train import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "sb3_av" / "configs"

#: A tiny agent on a small, short LiteScenario0: a few seconds per run.
TINY_ENV = ["--env-kwargs", "camera_size:36", "npc_vehicles:2", "max_steps:40"]
TINY_PARAMS = [
    "-params",
    "learning_starts:100",
    "buffer_size:1000",
    "batch_size:8",
    "train_freq:20",
    "gradient_steps:2",
    "policy_kwargs:dict(net_arch=[8], features_extractor_kwargs=dict(cnn_output_dim=8, vector_output_dim=8))",
    "callback:[{GradientMonitorCallback: {dump_freq: 50}}]",
]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Any:
    """``main()`` sets torch's thread count for the process; give the next test the count it had."""
    threads = th.get_num_threads()
    yield
    th.set_num_threads(threads)


def _train(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "train.py"), "-f", "logs", "--verbose", "0", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _steps(model_path: Path, algo: str) -> int:
    return int(get_algorithm(algo).load(model_path, device="cpu").num_timesteps)


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_shipped_configs_are_valid_for_every_registered_env(algo: str) -> None:
    import gymnasium as gym

    from sb3_av.envs import register_envs, scenario_ids

    register_envs()
    content = load_config_file(CONFIGS / f"{algo}.yml")
    assert set(scenario_ids()) <= set(content), "every registered env id has a block"
    assert all(env_id in gym.registry for env_id in content if env_id != "default")
    for block, values in content.items():
        checked = validate_hyperparams(values, get_algorithm(algo), f"{algo}.yml [{block}]")
        assert checked["policy"] == "MultiInputPolicy"
        # The replaced system's limits wherever the network exists; a shared (critic-trained) encoder has no actor CNN.
        shared = checked["policy_kwargs"].get("share_features_extractor", False)
        assert checked["max_grad_norms"]["actor_cnn"] == (None if shared and algo in ("td3", "ddpg") else 1.0)
        assert checked["max_grad_norms"]["critic_cnn"] == 10.0
        assert any("GradientMonitorCallback" in entry for entry in checked["callback"]), "gradient monitor on"


def test_validate_normalises_and_names_the_key() -> None:
    algo = get_algorithm("td3")
    checked = validate_hyperparams(
        {"policy": "MultiInputPolicy", "n_timesteps": 1e5, "train_freq": [1, "episode"], "learning_rate": "lin_1e-3"},
        algo,
        "x",
    )
    assert checked["n_timesteps"] == 100000 and isinstance(checked["n_timesteps"], int)
    assert checked["train_freq"] == [1, "episode"]
    cases = {
        "lerning_rate": (0.1, "unknown key 'lerning_rate'"),
        "gamma": (1.5, "key 'gamma': expected a number in (0, 1]"),
        "batch_size": ("big", "key 'batch_size'"),
        "max_grad_norms": (
            {"actor_cnn": -1.0},
            "key 'max_grad_norms': max_grad_norms['actor_cnn'] must be a finite number > 0",
        ),
        "policy": ("CnnPolicyy", "key 'policy'"),
        "policy_kwargs": ({"activation_fn": "nn.ReLU"}, "activation_fn"),
        "noise_type": ("gaussian", "key 'noise_type'"),
        "callback": (["os.system"], "unknown callback 'os.system'"),
        "optimize_memory_usage": ("yes", "expected true or false"),
        "teacher": ({"controller": "mpc", "weight": 1.0}, "teacher controller must be one of ['pid']"),
    }
    teacher_cases = [
        ({"controller": "pid"}, "teacher weight must be a finite number > 0, got None"),
        ({"controller": "pid", "weight": 0}, "teacher weight must be a finite number > 0, got 0"),
        ({"controller": "pid", "weight": 1, "q_filter": "no"}, "teacher q_filter must be true or false"),
        ({"controller": "pid", "weight": 1, "alpha": 2.5}, "unknown teacher argument(s) ['alpha']"),
        ({"controller": "pid", "weight": 1, "clone": "mu"}, "teacher clone must be one of 'action', 'head', got 'mu'"),
    ]
    for value, message in teacher_cases:
        with pytest.raises(ConfigError) as info:
            validate_hyperparams({"policy": "MultiInputPolicy", "n_timesteps": 10, "teacher": value}, algo, "cfg [env]")
        assert message in str(info.value) and "key 'teacher'" in str(info.value)
    entry = {"policy": "MultiInputPolicy", "n_timesteps": 10, "teacher": {"controller": "pid", "weight": 2}}
    checked = {"controller": "pid", "weight": 2.0, "q_filter": False, "clone": "action"}
    assert validate_hyperparams(entry, algo, "x")["teacher"] == checked
    with pytest.raises(ConfigError, match="ClippedSAC has no teacher term"):
        validate_hyperparams(entry, get_algorithm("sac"), "cfg [env]")
    for key, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=None) as info:
            validate_hyperparams({"policy": "MultiInputPolicy", "n_timesteps": 10, key: value}, algo, "cfg [env]")
        assert message in str(info.value) and str(info.value).startswith("cfg [env]")
    with pytest.raises(ConfigError, match="missing key 'n_timesteps'"):
        validate_hyperparams({"policy": "MultiInputPolicy"}, algo, "cfg")


def test_grad_groups_and_max_grad_norms_come_from_grad_clip() -> None:
    """One definition of the groups, and the algorithms' own check of max_grad_norms, re-raised naming the key."""
    assert config.GRAD_GROUPS is grad_clip.GROUP_NAMES and plotting.GRAD_GROUPS is grad_clip.GROUP_NAMES
    assert samplers.convert_params({"critic_mlp_max_grad_norm": 2.0}) == {"max_grad_norms": {"critic_mlp": 2.0}}
    algo = get_algorithm("td3")
    base = {"policy": "MultiInputPolicy", "n_timesteps": 10}
    checked = validate_hyperparams({**base, "max_grad_norms": {"critic_cnn": 10, "actor_mlp": None}}, algo, "cfg [env]")
    assert checked["max_grad_norms"] == {"actor_mlp": None, "critic_cnn": 10.0}, "the groups given, as floats"
    cases = {
        "Unknown gradient group(s) ['actor']": {"actor": 1.0},
        "max_grad_norms['critic_cnn'] must be a finite number > 0 or None, got inf (null in YAML: measure only)": {
            "critic_cnn": float("inf")
        },
        "max_grad_norms['actor_cnn'] must be a finite number > 0 or None, got True": {"actor_cnn": True},
        "expected a mapping of group -> max norm or null, groups ['actor_cnn'": [1.0],
    }
    for message, value in cases.items():
        with pytest.raises(ConfigError) as info:
            validate_hyperparams({**base, "max_grad_norms": value}, algo, "cfg.yml [env]")
        assert str(info.value).startswith("cfg.yml [env]: key 'max_grad_norms': ") and message in str(info.value)


def test_env_wrappers_that_break_the_driving_envs_are_rejected() -> None:
    algo = get_algorithm("td3")
    base = {"policy": "MultiInputPolicy", "n_timesteps": 10}
    for name, reason in (("TimeFeatureWrapper", "needs a Box observation"), ("TimeLimit", "env_kwargs max_steps")):
        with pytest.raises(ConfigError) as info:
            validate_hyperparams({**base, "env_wrapper": [{name: {"max_steps": 5}}]}, algo, "cfg [env]")
        assert f"key 'env_wrapper': env wrapper {name!r} is not supported" in str(info.value) and reason in str(info.value)
    known = (
        r"\['ClearancePenalty', 'ClipAction', 'HeadwayPenalty', 'JerkPenalty', 'OverspeedPenalty', 'ScaleReward', "
        r"'ScenarioCycle'\]"
    )
    with pytest.raises(ConfigError, match=rf"unknown env wrapper 'Nope'; known: {known}"):
        validate_hyperparams({**base, "env_wrapper": "Nope"}, algo, "cfg")
    with pytest.raises(ConfigError, match=r"env wrapper ScaleReward: got an unexpected keyword argument 'factor'"):
        validate_hyperparams({**base, "env_wrapper": [{"ScaleReward": {"factor": 0.1}}]}, algo, "cfg")
    checked = validate_hyperparams({**base, "env_wrapper": "ClipAction"}, algo, "cfg")
    wrap = resolve_env_wrapper(checked["env_wrapper"])
    assert wrap is not None
    env = wrap(gym.make("Pendulum-v1"))
    assert isinstance(env, gym.wrappers.ClipAction)
    np.testing.assert_array_equal(env.action(np.array([5.0], np.float32)), [2.0])  # Pendulum's max torque
    env.close()


def test_override_values_are_data_never_code() -> None:
    assert parse_override_value("a", "1e-3") == 0.001
    assert parse_override_value("a", "[64, 64]") == [64, 64]
    assert parse_override_value("a", "dict(net_arch=[16], x=dict(y=True))") == {"net_arch": [16], "x": {"y": True}}
    assert parse_override_value("a", "{net_arch: [16]}") == {"net_arch": [16]}
    assert parse_override_value("a", "MultiInputPolicy") == "MultiInputPolicy"
    assert parse_override_value("a", "[1, episode]") == [1, "episode"]
    # Code is not run: it stays a string (and the key check then rejects it).
    assert parse_override_value("a", "__import__('os').getcwd()") == "__import__('os').getcwd()"
    with pytest.raises(ConfigError, match="space after"):
        parse_override_value("policy_kwargs", "{features_extractor_kwargs: {cnn_output_dim:8}}")


def test_broken_yaml_and_wrong_structure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("default:\n  policy: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yml: line \d+, column \d+: invalid YAML"):
        load_config_file(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of env id"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="Python files"):
        load_config_file(tmp_path / "hyperparams.py")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
        (["--env", "LiteScenari0-v0"], "did you mean LiteScenario0-v0?"),
        (["-params", "tau:2"], "-params: key 'tau'"),
        (["-params", "foo:1"], "-params: unknown key 'foo'"),
        (["-i", "missing.zip"], "-i missing.zip: not a model .zip file or a run folder"),
        (["--track"], "--track is not supported"),
        (["--wandb-entity", "me"], "--wandb-entity is not supported"),
        (["--truncate-last-trajectory", "maybe"], "expected true or false, got 'maybe'"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "-f", str(tmp_path / "logs")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("train.py: error:") and message in line
    assert not (tmp_path / "logs" / "td3").exists() or not any((tmp_path / "logs" / "td3").glob("*/*.zip"))


def test_config_file_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "td3.yml"
    conf.write_text(yaml.safe_dump({"default": {"policy": "MultiInputPolicy", "n_timesteps": 10, "learning_rte": 0.1}}))
    assert main(["-conf", str(conf), "-f", str(tmp_path / "logs")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{conf} [default]: unknown key 'learning_rte'" in line
    assert main(["-params", "policy_kwargs:{features_dim:8}"]) == 2
    assert "space after ':'" in _error_line(capsys.readouterr().err)
    assert main(["--algo", "ppo"]) == 2
    assert "invalid choice: 'ppo'" in _error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_samplers_tune_the_clip_norms_and_give_valid_hyperparams(algo: str) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    sampled = SAMPLERS[algo](trial)
    norms = sampled["max_grad_norms"]
    assert set(norms) == {"actor_cnn", "critic_cnn"} and all(0.1 <= v <= 100 for v in norms.values())
    assert set(sampled["policy_kwargs"]) <= {"net_arch", "n_quantiles"}, "only tuned entries: the YAML's others are kept"
    data = {k: v for k, v in sampled.items() if k not in ("noise_type", "noise_std")}
    validate_hyperparams(data, get_algorithm(algo), "sampler", partial=True)
    assert convert_params(trial.params) == sampled, "--trial-id reads a trial back to the same hyperparameters"
    assert ("noise_type" in sampled) == (algo in ("td3", "ddpg"))


def test_storage_url_and_replay_buffer_paths(tmp_path: Path) -> None:
    url = normalize_storage_url("postgresql://u:p@127.0.0.1:5432/db")
    assert url is not None and url.endswith("://u:p@127.0.0.1:5432/db") and url.startswith("postgresql")
    assert normalize_storage_url("sqlite:///x.db") == "sqlite:///x.db"
    (tmp_path / "rl_model_200_steps.zip").write_bytes(b"")
    assert _replay_buffer_beside(tmp_path / "rl_model_200_steps.zip") is None
    (tmp_path / "rl_model_replay_buffer_200_steps.pkl").write_bytes(b"")
    (tmp_path / "replay_buffer.pkl").write_bytes(b"")
    assert _replay_buffer_beside(tmp_path / "rl_model_200_steps.zip") == tmp_path / "rl_model_replay_buffer_200_steps.pkl"
    assert _replay_buffer_beside(tmp_path / "Env-v0.zip") == tmp_path / "replay_buffer.pkl"


def test_resolve_model_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model"):
        resolve_model_path(tmp_path)
    for name in ("rl_model_100_steps.zip", "rl_model_1000_steps.zip", "rl_model_300_steps.zip"):
        (tmp_path / name).write_bytes(b"")
    assert resolve_model_path(tmp_path).name == "rl_model_1000_steps.zip"
    (tmp_path / "best_model.zip").write_bytes(b"")
    assert resolve_model_path(tmp_path, prefer="best").name == "best_model.zip"
    assert resolve_model_path(tmp_path, prefer="last").name == "rl_model_1000_steps.zip"
    (tmp_path / "LiteScenario0-v0.zip").write_bytes(b"")
    assert resolve_model_path(tmp_path, prefer="last").name == "LiteScenario0-v0.zip"
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_model_path(tmp_path / "nope")


# ------------------------------------------------------------------------ in-process runs: cleanup, errors

#: A tiny Pendulum run (200-step episodes): trains and evaluates in a few seconds.
_PENDULUM = {
    "Pendulum-v1": {
        "policy": "MlpPolicy",
        "n_timesteps": 60,
        "learning_starts": 40,
        "buffer_size": 200,
        "batch_size": 8,
        "policy_kwargs": {"net_arch": [8]},
    }
}


class _EnvSpy:
    """Wraps :meth:`DrivingExperimentManager.create_envs`: records each env (and whether it is the evaluation env),
    counts its ``close()`` calls, and can raise Ctrl-C instead of building the training env (a slow town load)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, interrupt_training_env: bool = False) -> None:
        self.created: list[tuple[bool, Any]] = []
        self.closes: dict[int, int] = {}
        self.manager: DrivingExperimentManager | None = None
        original = DrivingExperimentManager.create_envs

        def create_envs(manager: DrivingExperimentManager, n_envs: int, eval_env: bool = False, no_log: bool = False) -> Any:
            self.manager = manager
            if interrupt_training_env and not eval_env:
                raise KeyboardInterrupt
            env = original(manager, n_envs, eval_env=eval_env, no_log=no_log)
            self.created.append((eval_env, env))
            self.closes[id(env)] = 0
            close = env.close

            def counting_close() -> None:
                self.closes[id(env)] += 1
                close()

            env.close = counting_close  # type: ignore[method-assign]
            return env

        monkeypatch.setattr(DrivingExperimentManager, "create_envs", create_envs)

    def close_counts(self, eval_env: bool) -> list[int]:
        return [self.closes[id(env)] for is_eval, env in self.created if is_eval == eval_env]


def _pendulum_args(tmp_path: Path, *extra: str) -> list[str]:
    conf = tmp_path / "td3.yml"
    conf.write_text(yaml.safe_dump(_PENDULUM))
    return ["--env", "Pendulum-v1", "-conf", str(conf), "--verbose", "0", "--seed", "0", "-f", str(tmp_path / "logs"), *extra]


def test_the_evaluation_env_is_closed_after_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CARLA an unclosed eval env keeps its actors, the synchronous mode and its Traffic Manager port."""
    spy = _EnvSpy(monkeypatch)
    assert main(_pendulum_args(tmp_path, "--eval-freq", "30", "--eval-episodes", "1")) == 0
    assert spy.close_counts(eval_env=True) == [1] and spy.close_counts(eval_env=False) == [1]
    evaluations = np.load(tmp_path / "logs" / "td3" / "Pendulum-v1_1" / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [30, 60], "the closed env is the one the evaluations ran on"
    assert spy.manager is not None and spy.manager.eval_env is None


def test_a_run_shorter_than_the_eval_freq_is_evaluated_ten_times_and_keeps_its_best_model(tmp_path: Path) -> None:
    """rl-zoo's default --eval-freq (25,000) is longer than the Lite budget: the run is evaluated every n/10 steps."""
    assert main(_pendulum_args(tmp_path, "--eval-episodes", "1")) == 0
    run = tmp_path / "logs" / "td3" / "Pendulum-v1_1"
    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == list(range(6, 61, 6))
    assert (run / "best_model.zip").is_file()
    assert main(_pendulum_args(tmp_path, "--eval-freq", "0")) == 0  # 0 still means never
    assert not (tmp_path / "logs" / "td3" / "Pendulum-v1_2" / "evaluations.npz").exists()


def test_an_interrupted_run_closes_the_evaluation_env_and_the_progress_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_av.callbacks.driving_metrics import DrivingMetricsCallback
    from sb3_av.callbacks.progress import ProgressCallback

    original = DrivingMetricsCallback._on_step

    def interrupt_at_45(callback: DrivingMetricsCallback) -> bool:
        if callback.num_timesteps == 45:
            raise KeyboardInterrupt  # Ctrl-C inside learn(), outside the checkpoint callback's signal handler
        return original(callback)

    monkeypatch.setattr(DrivingMetricsCallback, "_on_step", interrupt_at_45)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: the progress is a bar
    spy = _EnvSpy(monkeypatch)
    assert main(_pendulum_args(tmp_path, "--eval-freq", "30", "--eval-episodes", "1", "-P")) == 0
    assert "Interrupted by SIGINT at step 45" in capsys.readouterr().out
    assert spy.close_counts(eval_env=True) == [1] and spy.close_counts(eval_env=False) == [1]
    assert spy.manager is not None
    (bar,) = [c for c in spy.manager.callbacks if isinstance(c, ProgressCallback)]
    assert bar.pbar is not None and bar.pbar.disable, "rl-zoo's cleanup: the progress bar of an interrupted run is closed"
    assert _steps(tmp_path / "logs" / "td3" / "Pendulum-v1_1" / "Pendulum-v1.zip", "td3") == 45


def _zoo_arguments() -> list[tuple[list[str], Any]]:
    """(flags, default) of every ``add_argument`` call in rl-zoo's ``train.py``, read from its source."""
    import rl_zoo3.train

    found = []
    for node in ast.walk(ast.parse(Path(rl_zoo3.train.__file__).read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flags = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
            default = next((kw.value for kw in node.keywords if kw.arg == "default"), None)
            found.append((flags, None if default is None else ast.literal_eval(default)))
    return found


def test_the_parser_keeps_every_rl_zoo_flag_and_default() -> None:
    parser = build_parser()
    zoo = _zoo_arguments()
    assert len(zoo) >= 40
    ours = {flag: action for action in parser._actions for flag in action.option_strings}
    changed = {"algo": "td3", "env": "LiteScenario0-v0", "num_threads": None, "progress": None}
    for flags, default in zoo:
        assert all(flag in ours for flag in flags), f"rl-zoo's {flags} is unknown to train.py"
        dest = ours[flags[0]].dest
        if dest == "track" or dest.startswith("wandb"):  # refused with a one-line error (tested above)
            assert ours[flags[0]].default is argparse.SUPPRESS
            continue
        assert parser.get_default(dest) == changed.get(dest, default), dest
    help_text = " ".join(parser.format_help().split())
    assert f"half the cores this process may use, here {default_torch_threads()}" in help_text
    assert "--no-progress" in help_text
    assert parser.parse_args(["--truncate-last-trajectory", "False"]).truncate_last_trajectory is False


def test_threads_and_progress_by_default_and_switched_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    th.set_num_threads(3)  # not the default: main() must set it
    assert main(_pendulum_args(tmp_path, "--verbose", "1", "--eval-freq", "-1")) == 0
    out = capsys.readouterr().out
    args = read_run_info(tmp_path / "logs" / "td3" / "Pendulum-v1_1").args
    assert args["num_threads"] == default_torch_threads() == th.get_num_threads()
    assert args["progress"] is True
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert progress and progress[-1].startswith("step 60/60 (100%) | "), "stdout is no terminal: progress lines"

    assert main(_pendulum_args(tmp_path, "--verbose", "1", "--eval-freq", "-1", "--no-progress", "--num-threads", "2")) == 0
    out = capsys.readouterr().out
    args = read_run_info(tmp_path / "logs" / "td3" / "Pendulum-v1_2").args
    assert (args["num_threads"], args["progress"], th.get_num_threads()) == (2, False, 2)
    assert not [line for line in out.splitlines() if line.startswith("step ")]
    assert main(_pendulum_args(tmp_path, "--eval-freq", "-1")) == 0  # --verbose 0: quiet, no progress either
    assert read_run_info(tmp_path / "logs" / "td3" / "Pendulum-v1_3").args["progress"] is False
    assert main(_pendulum_args(tmp_path, "--eval-freq", "-1", "-P")) == 0
    assert read_run_info(tmp_path / "logs" / "td3" / "Pendulum-v1_4").args["progress"] is True
    assert any(line.startswith("step 60/60 (100%) | ") for line in capsys.readouterr().out.splitlines())
    user_threads = default_torch_threads() + 2
    monkeypatch.setenv("OMP_NUM_THREADS", str(user_threads))  # the user's: torch follows it (read at its start)
    th.set_num_threads(user_threads)
    assert main(_pendulum_args(tmp_path, "--eval-freq", "-1")) == 0
    args = read_run_info(tmp_path / "logs" / "td3" / "Pendulum-v1_5").args
    assert args["num_threads"] == user_threads == th.get_num_threads()


def test_ctrl_c_before_training_exits_130_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the training env starts (a CARLA town load): no traceback, and the eval env is released."""
    spy = _EnvSpy(monkeypatch, interrupt_training_env=True)
    assert main(_pendulum_args(tmp_path, "--eval-freq", "30")) == 130
    assert _error_line(capsys.readouterr().err) == "train.py: interrupted (Ctrl-C) outside training; no model saved"
    assert spy.close_counts(eval_env=True) == [1], "the eval env built before the interrupt is closed"


def _run_folder(tmp_path: Path, args: dict[str, Any] | str, model: bytes | None = None) -> Path:
    run = tmp_path / "logs" / "td3" / "LiteScenario0-v0_1"
    (run / "LiteScenario0-v0").mkdir(parents=True)
    text = args if isinstance(args, str) else yaml.safe_dump(args)
    (run / "LiteScenario0-v0" / "args.yml").write_text(text)
    (run / "LiteScenario0-v0" / "config.yml").write_text(yaml.safe_dump({"env_kwargs": {"camera_size": 36}}))
    if model is not None:
        (run / "LiteScenario0-v0.zip").write_bytes(model)
    return run


def test_enjoy_reports_a_corrupt_model_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_data = tmp_path / "no_data.zip"
    with zipfile.ZipFile(no_data, "w") as archive:
        archive.writestr("notes.txt", b"x")  # a zip, but no "data" entry: SB3 asserts
    run = _run_folder(tmp_path, {"algo": "td3", "env": "LiteScenario0-v0"}, no_data.read_bytes())
    assert enjoy_main([str(run), "-n", "1"]) == 2
    assert _error_line(capsys.readouterr().err) == "enjoy.py: error: AssertionError: No data found in the saved file"
    truncated = tmp_path / "truncated.zip"
    with zipfile.ZipFile(truncated, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", b"")  # an empty torch file: EOFError without a message
    (run / "LiteScenario0-v0.zip").write_bytes(truncated.read_bytes())
    assert enjoy_main([str(run), "-n", "1"]) == 2
    assert _error_line(capsys.readouterr().err) == "enjoy.py: error: EOFError"
    (run / "LiteScenario0-v0.zip").write_bytes(b"not a zip")
    assert enjoy_main([str(run), "-n", "1"]) == 2
    assert "wasn't a zip-file" in _error_line(capsys.readouterr().err)


def test_enjoy_other_failures_and_ctrl_c_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sb3_av.zoo.enjoy as enjoy

    run = _run_folder(tmp_path, {"algo": "td3", "env": "LiteScenario0-v0"}, b"")

    def no_carla(name: str) -> Any:
        raise ImportError("No module named 'carla'")

    monkeypatch.setattr(enjoy, "get_algorithm", no_carla)
    assert enjoy_main([str(run)]) == 2
    assert _error_line(capsys.readouterr().err) == "enjoy.py: error: ImportError: No module named 'carla'"

    def interrupted(name: str) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(enjoy, "get_algorithm", interrupted)
    assert enjoy_main([str(run)]) == 130
    assert _error_line(capsys.readouterr().err) == "enjoy.py: interrupted (Ctrl-C)"


def test_a_run_folder_without_algo_or_env_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(tmp_path, {"env": "LiteScenario0-v0", "seed": 0}, b"")
    args_yml = run / "LiteScenario0-v0" / "args.yml"
    with pytest.raises(ValueError, match=r"args.yml: no 'algo' entry; it is not the args.yml of a train.py run"):
        read_run_info(run)
    assert enjoy_main([str(run)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"enjoy.py: error: {args_yml}: no 'algo' entry")
    args_yml.write_text(yaml.safe_dump({"seed": 0}))
    with pytest.raises(ValueError, match="no 'algo' and no 'env' entry"):
        read_run_info(run)
    args_yml.write_text("- a\n- list\n")
    with pytest.raises(ValueError, match=r"args.yml: expected a mapping, got list"):
        read_run_info(run)
    args_yml.write_text("algo: [unclosed\n")
    with pytest.raises(ValueError, match=r"args.yml: invalid YAML"):
        read_run_info(run)


# --------------------------------------------------------------------------------- subprocess runs (slow)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_train_every_algo_writes_a_run_folder(algo: str, tmp_path: Path) -> None:
    result = _train(
        tmp_path,
        "--algo",
        algo,
        "--env",
        "LiteScenario0-v0",
        "-n",
        "200",
        "--seed",
        "3",
        "--eval-freq",
        "200",
        "--eval-episodes",
        "1",
        "--save-freq",
        "100",
        *TINY_ENV,
        *TINY_PARAMS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "logs" / algo / "LiteScenario0-v0_1"
    assert _steps(run / "LiteScenario0-v0.zip", algo) == 200
    model: Any = get_algorithm(algo).load(run / "LiteScenario0-v0.zip", device="cpu")
    assert model.replay_buffer_class is FrameStackDictReplayBuffer, "stacked frames stored once (the algorithm's default)"
    assert {p.name for p in run.glob("rl_model_*_steps.zip")} == {"rl_model_100_steps.zip", "rl_model_200_steps.zip"}
    assert (run / "best_model.zip").is_file() and (run / "evaluations.npz").is_file()
    info = read_run_info(run)
    assert (info.algo, info.env_id) == (algo, "LiteScenario0-v0")
    actor_cnn = None if algo == "td3" else 1.0  # the Lite TD3 blocks share one critic-trained encoder
    expected_norms = {"actor_cnn": actor_cnn, "actor_mlp": None, "critic_cnn": 10.0, "critic_mlp": None}
    assert info.hyperparams["max_grad_norms"] == expected_norms
    config_kwargs = {"action_repeat": 2} if algo == "td3" else {}  # the Lite TD3 blocks' control period
    assert info.hyperparams["env_kwargs"] == {**config_kwargs, "camera_size": 36, "npc_vehicles": 2, "max_steps": 40}
    assert "train.py" in (run / "LiteScenario0-v0" / "command.txt").read_text()
    rows = list(csv.DictReader((run / "progress.csv").open()))
    grad_rows = [r for r in rows if r.get("debug/critic_cnn_grad_norm_BEFORE_clip")]
    assert grad_rows and all(float(r["debug/critic_cnn_grad_norm_AFTER_clip"]) <= 10.0 + 1e-3 for r in grad_rows)
    assert any(r.get("driving/route_completion") for r in rows), "driving metrics logged during training"
    assert any(r.get("eval/route_completion") for r in rows), "driving metrics of the evaluation episodes"
    assert any(r.get("reward_terms/progress") for r in rows)
    if algo == "td3":  # the config's OverspeedPenalty wrapper runs in the trainer and its term is logged
        assert any(r.get("reward_terms/overspeed") for r in rows)


@pytest.mark.slow
def test_a_teacher_in_the_config_trains_with_the_bc_term(tmp_path: Path) -> None:
    """``teacher: {controller: pid, ...}`` reaches the model (with its clone target): the behaviour-cloning term is
    logged while training, on every sample without the Q-filter; the saved model has no teacher (it is not saved)."""
    teacher = "teacher:dict(controller='pid', weight=0.5, q_filter=False, clone='head')"
    params = [*TINY_PARAMS, teacher]
    result = _train(tmp_path, "--algo", "td3", "--env", "LiteScenario0-v0", "-n", "200", "--seed", "3", *TINY_ENV, *params)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "logs" / "td3" / "LiteScenario0-v0_1"
    rows = [r for r in csv.DictReader((run / "progress.csv").open()) if r.get("train/teacher_bc")]
    assert rows and all(float(r["train/teacher_cloned_share"]) == 1.0 for r in rows)
    assert all(0.0 <= float(r["train/teacher_bc"]) <= 4.0 for r in rows)  # squared distances of actions in [-1, 1]
    checked = {"controller": "pid", "weight": 0.5, "q_filter": False, "clone": "head"}
    assert read_run_info(run).hyperparams["teacher"] == checked
    model: Any = get_algorithm("td3").load(run / "LiteScenario0-v0.zip", device="cpu")
    assert model._teacher is None


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues_the_step_count(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-f",
        "logs",
        "--verbose",
        "0",
        "-n",
        "100000",
        "--seed",
        "1",
        "--eval-freq",
        "-1",
        "--save-freq",
        "100",
        "--save-replay-buffer",
        *TINY_ENV,
        *TINY_PARAMS,
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    run = tmp_path / "logs" / "td3" / "LiteScenario0-v0_1"
    deadline = time.monotonic() + 180
    while not (run / "rl_model_200_steps.zip").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    stopped_at = _steps(run / "LiteScenario0-v0.zip", "td3")
    assert stopped_at >= 200
    assert (run / "replay_buffer.pkl").is_file()
    assert (run / f"rl_model_{stopped_at}_steps.zip").is_file(), "a checkpoint written at the interrupt"

    result = _train(
        tmp_path, "-i", str(run), "-n", str(stopped_at + 60), "--seed", "2", "--eval-freq", "-1", *TINY_ENV, *TINY_PARAMS
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = tmp_path / "logs" / "td3" / "LiteScenario0-v0_2"
    assert _steps(resumed / "LiteScenario0-v0.zip", "td3") == stopped_at + 60
    steps = [int(r["time/step"]) for r in csv.DictReader((resumed / "progress.csv").open()) if r.get("time/step")]
    assert steps and min(steps) > stopped_at, "the logger continues the step count"
    assert read_run_info(resumed).args["trained_agent"].endswith("LiteScenario0-v0.zip")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
        (["--algo", "ppo"], "invalid choice: 'ppo'"),
        (["-conf", "broken.yml"], "broken.yml: line 3, column 14: invalid YAML"),
    ],
)
def test_cli_errors_exit_non_zero_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "broken.yml").write_text("default:\n  policy: [MultiInputPolicy\n  n_timesteps: 10\n")
    result = _train(tmp_path, *args, timeout=120)
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert message in line and "Traceback" not in result.stderr


@pytest.mark.slow
def test_enjoy_evaluates_a_run_folder(tmp_path: Path) -> None:
    result = _train(tmp_path, "-n", "120", "--seed", "0", "--eval-freq", "-1", *TINY_ENV, *TINY_PARAMS)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "logs" / "td3" / "LiteScenario0-v0_1"
    enjoy = [sys.executable, str(ROOT / "enjoy.py")]
    out = subprocess.run(
        [*enjoy, str(run), "-n", "2", "--json", "m.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_episodes"] == 2 and 0.0 <= metrics["results"][0]["route_completion"] <= 1.0
    run_kwargs = {"action_repeat": 2, "camera_size": 36, "npc_vehicles": 2, "max_steps": 40}  # the config's + the run's
    assert metrics["env_kwargs"] == run_kwargs, "the run's env kwargs"
    assert "| LiteScenario0-v0 | 2 |" in out.stdout
    # `sb3-av evaluate` on the run folder takes the run's algorithm, env id and env kwargs
    out = subprocess.run(
        [sys.executable, "-m", "sb3_av.cli", "evaluate", "--model", str(run), "-n", "1", "--json", "e.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["algo"] == "td3" and evaluated["results"][0]["env_id"] == "LiteScenario0-v0"
    assert evaluated["env_kwargs"] == run_kwargs
    # rl-zoo style lookup, and a missing checkpoint is a one-line error
    out = subprocess.run(
        [*enjoy, "--algo", "td3", "--env", "LiteScenario0-v0", "--load-best", "-n", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode == 2 and "best_model.zip not found" in _error_line(out.stderr)


def test_checkpoint_callback_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    from stable_baselines3 import TD3
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from sb3_av.callbacks.checkpoint import InterruptibleCheckpointCallback

    model = TD3("MlpPolicy", "Pendulum-v1", learning_starts=1000, policy_kwargs={"net_arch": [8]}, seed=0)
    checkpoints = InterruptibleCheckpointCallback(save_freq=20, save_path=str(tmp_path), save_replay_buffer=True)

    class SendSigint(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 30:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in the terminal
            return True

    send = SendSigint()
    before = signal.getsignal(signal.SIGINT)
    model.learn(10_000, callback=CallbackList([send, checkpoints]))
    assert checkpoints.interrupted_by == "SIGINT"
    assert model.num_timesteps == 30, "stopped at the step boundary right after the signal"
    assert checkpoints.last_checkpoint == tmp_path / "rl_model_30_steps.zip"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rl_model_20_steps.zip",
        "rl_model_30_steps.zip",
        "rl_model_replay_buffer_20_steps.pkl",
        "rl_model_replay_buffer_30_steps.pkl",
    ], "no partial files left"
    assert signal.getsignal(signal.SIGINT) is before, "handlers restored after learn()"
    assert TD3.load(tmp_path / "rl_model_30_steps.zip").num_timesteps == 30


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["record", "--bogus"], ["evaluate", "-n", "x"], []])
def test_sb3_av_usage_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from sb3_av.cli import main as sb3_av_main

    with pytest.raises(SystemExit) as exc:
        sb3_av_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and err.endswith("(see --help)\n")
