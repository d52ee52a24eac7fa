"""Tuning with ``train.py -optimize``: failed trials do not stop a study, the YAML's policy_kwargs survive the
sampler (rl-zoo issue #431), and two workers share one study in PostgreSQL.

The PostgreSQL test uses ``SB3AV_TEST_POSTGRES_URL``; when unset it starts a local server with
``scripts/start_postgres.sh`` if PostgreSQL is installed (needs root or sudo), else it is skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import optuna
import pytest
import yaml
from gymnasium import spaces

from sb3_av.clipping import network_groups
from sb3_av.zoo import ALGO_NAMES, get_algorithm
from sb3_av.zoo import exp_manager
from sb3_av.zoo.exp_manager import normalize_storage_url
from sb3_av.zoo.samplers import tunable_clip_groups
from sb3_av.zoo.train import main
from tests.image_vector_env import ImageVectorEnv

ROOT = Path(__file__).resolve().parents[1]
FLAKY_ID = "SB3AVTestFlaky-v0"
IMAGE_ID = "SB3AVTestImageVector-v0"


class FlakyEnv(gym.Env):
    """A tiny continuous-control env that loses its "simulator" mid-episode while ``failures_left > 0``."""

    failures_left = 0
    #: episodes that run to the end before a failure can happen
    fail_after_episodes = 0

    def __init__(self, **kwargs: Any) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._episodes = getattr(self, "_episodes", -1) + 1
        return np.zeros(3, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        if FlakyEnv.failures_left > 0 and self._t == 15 and self._episodes >= FlakyEnv.fail_after_episodes:
            FlakyEnv.failures_left -= 1
            raise RuntimeError("lost connection to the CARLA server at localhost:2000 (time-out)")
        obs = np.full(3, self._t / 20, np.float32)
        return obs, -float(np.sum(np.square(action))), False, self._t >= 20, {}


if FLAKY_ID not in gym.registry:
    gym.register(FLAKY_ID, entry_point=FlakyEnv)
if IMAGE_ID not in gym.registry:
    gym.register(IMAGE_ID, entry_point="tests.image_vector_env:ImageVectorEnv")


def _one_trial_study(algo: str, env_id: str, conf: Path, storage: str, study: str, n_timesteps: int, tmp_path: Path) -> int:
    """``train.py -optimize`` with one random-sampled trial of ``n_timesteps`` steps, one evaluation episode."""
    return main(
        ["--algo", algo, "--env", env_id, "-conf", str(conf), "-optimize", "--n-trials", "1", "--sampler", "random",
         "--pruner", "none", "--storage", storage, "--study-name", study, "-n", str(n_timesteps), "--n-evaluations", "1",
         "--eval-episodes", "1", "--no-optim-plots", "--verbose", "0", "--seed", "0", "-f", str(tmp_path / "logs")]
    )  # fmt: skip


def test_failed_trial_is_marked_failed_and_the_study_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "td3.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                FLAKY_ID: {
                    "policy": "MlpPolicy",
                    "n_timesteps": 60,
                    "learning_starts": 40,
                    "buffer_size": 500,
                    "batch_size": 8,
                    # Kept by the objective although the sampler tunes net_arch (rl-zoo issue #431):
                    "policy_kwargs": {"n_critics": 3, "activation_fn": "tanh"},
                    "max_grad_norms": {"actor_mlp": 5.0},
                }
            }
        )
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    FlakyEnv.failures_left = 1
    status = main(
        [
            "--algo",
            "td3",
            "--env",
            FLAKY_ID,
            "-conf",
            str(conf),
            "-optimize",
            "--n-trials",
            "3",
            "--sampler",
            "random",
            "--pruner",
            "none",
            "--storage",
            storage,
            "--study-name",
            "flaky",
            "-n",
            "60",
            "--n-evaluations",
            "1",
            "--eval-episodes",
            "1",
            "--no-optim-plots",
            "--verbose",
            "0",
            "--seed",
            "0",
            "-f",
            str(tmp_path / "logs"),
            "--optimization-log-path",
            str(tmp_path / "trials"),
        ]
    )
    assert status == 0
    trials = optuna.load_study(study_name="flaky", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 2
    assert "lost connection to the CARLA server" in trials[0].user_attrs["fail_reason"]
    assert "Trial 0 failed: RuntimeError: lost connection" in capsys.readouterr().err
    for trial in trials[1:]:
        model: Any = get_algorithm("td3").load(tmp_path / "trials" / f"trial_{trial.number}" / "best_model.zip", device="cpu")
        sampled = trial.user_attrs["sampled_hyperparams"]
        assert model.policy_kwargs["n_critics"] == 3, "the YAML's policy_kwargs survive"
        assert model.policy_kwargs["activation_fn"].__name__ == "Tanh"
        assert model.policy_kwargs["net_arch"] == sampled["policy_kwargs"]["net_arch"], "the sampled ones apply"
        assert model.max_grad_norms["actor_mlp"] == 5.0
        assert "max_grad_norms" not in sampled, "an MLP policy has no CNN groups to tune"
        assert trial.params.keys().isdisjoint({"actor_cnn_max_grad_norm", "critic_cnn_max_grad_norm"})
        assert model.batch_size == sampled["batch_size"]

    # --trial-id: train with a stored trial's hyperparameters, merged into the YAML's like in the study.
    best = trials[2]
    status = main(
        ["--env", FLAKY_ID, "-conf", str(conf), "--storage", storage, "--study-name", "flaky", "--trial-id", str(best.number),
         "-n", "50", "--eval-freq", "-1", "--verbose", "0", "--seed", "0", "-f", str(tmp_path / "logs")]
    )  # fmt: skip
    assert status == 0
    config = yaml.safe_load((tmp_path / "logs" / "td3" / f"{FLAKY_ID}_1" / FLAKY_ID / "config.yml").read_text())
    sampled = best.user_attrs["sampled_hyperparams"]
    assert config["policy_kwargs"] == {
        "n_critics": 3,
        "activation_fn": "tanh",
        "net_arch": sampled["policy_kwargs"]["net_arch"],
    }
    assert config["batch_size"] == sampled["batch_size"] and config["learning_rate"] == sampled["learning_rate"]
    assert config["noise_type"] == sampled["noise_type"]


def test_a_killed_workers_trial_is_failed_and_retried_by_the_next_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies (SIGKILL, lost machine) stops its trial's heartbeat; the next worker fails it and reruns it."""
    monkeypatch.setattr(exp_manager, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(exp_manager, "HEARTBEAT_GRACE_S", 1)
    conf = tmp_path / "td3.yml"
    conf.write_text(
        yaml.safe_dump(
            {FLAKY_ID: {"policy": "MlpPolicy", "n_timesteps": 40, "learning_starts": 20, "buffer_size": 200, "batch_size": 8}}
        )
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = exp_manager.make_rdb_storage(url)
    assert (storage.heartbeat_interval, storage.grace_period) == (1, 1)
    dead = optuna.create_study(storage=storage, study_name="s", direction="maximize").ask()
    dead.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
    storage.record_heartbeat(dead._trial_id)  # its worker's last sign of life
    time.sleep(2.5)  # > grace period, at the 1 s resolution of SQLite timestamps
    FlakyEnv.failures_left = 0
    assert _one_trial_study("td3", FLAKY_ID, conf, url, "s", 40, tmp_path) == 0
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0
    assert trials[1].params["learning_rate"] == dead.params["learning_rate"], "the retry reruns the same parameters"


def test_a_journal_file_storage_holds_the_study_and_its_trials_train_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--storage study.log``: optuna's journal file (no database server), for tuning and for ``--trial-id``."""
    conf = tmp_path / "td3.yml"
    block = {"policy": "MlpPolicy", "n_timesteps": 40, "learning_starts": 20, "buffer_size": 200, "batch_size": 8}
    conf.write_text(yaml.safe_dump({FLAKY_ID: block}))
    journal = tmp_path / "journals" / "study.log"  # its folder is created
    FlakyEnv.failures_left = 0
    assert _one_trial_study("td3", FLAKY_ID, conf, str(journal), "j", 40, tmp_path) == 0
    storage = exp_manager.open_storage(str(journal))
    (trial,) = optuna.load_study(study_name="j", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    args = ["--env", FLAKY_ID, "-conf", str(conf), "--storage", str(journal), "--study-name", "j", "--trial-id", "0"]
    assert main([*args, "-n", "30", "--eval-freq", "-1", "--verbose", "0", "-f", str(tmp_path / "logs")]) == 0
    config = yaml.safe_load((tmp_path / "logs" / "td3" / f"{FLAKY_ID}_1" / FLAKY_ID / "config.yml").read_text())
    assert config["batch_size"] == trial.user_attrs["sampled_hyperparams"]["batch_size"]
    capsys.readouterr()
    bad = ["-optimize", "--storage", "study.db", "--n-trials", "1", "--verbose", "0", "-f", str(tmp_path / "logs")]
    assert main([*args[:4], *bad]) == 2
    assert "train.py: error: --storage study.db: expected a database URL (postgresql://..., sqlite:///x.db) or a " in (
        capsys.readouterr().err
    )


def test_a_study_with_only_failures_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "td3.yml"
    conf.write_text(yaml.safe_dump({"default": {"policy": "MlpPolicy", "n_timesteps": 40, "learning_starts": 30}}))
    FlakyEnv.failures_left = 100
    try:
        status = main(
            [
                "--env",
                FLAKY_ID,
                "-conf",
                str(conf),
                "-optimize",
                "--n-trials",
                "2",
                "-n",
                "40",
                "--n-evaluations",
                "1",
                "--eval-episodes",
                "1",
                "--no-optim-plots",
                "--verbose",
                "0",
                "-f",
                str(tmp_path / "logs"),
            ]
        )
    finally:
        FlakyEnv.failures_left = 0
    assert status == 2
    assert "no trial completed" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("algo", ALGO_NAMES)
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("policy", ["MultiInputPolicy", "MlpPolicy"])
def test_tuned_clip_groups_are_the_groups_the_policy_has(algo: str, share: bool, policy: str) -> None:
    """The tuner samples a clip norm only for a CNN group with parameters (else the model rejects it: pruned)."""
    env = ImageVectorEnv() if policy == "MultiInputPolicy" else FlakyEnv()
    kwargs: dict[str, Any] = {"net_arch": [4], "share_features_extractor": share}
    if algo == "tqc":
        kwargs["n_quantiles"] = 3
    algorithm: Any = get_algorithm(algo)
    model = algorithm(policy, env, buffer_size=10, policy_kwargs=kwargs, device="cpu")
    groups = {**network_groups(model.actor, model.actor.optimizer, "actor")}
    groups.update(network_groups(model.critic, model.critic.optimizer, "critic"))
    expected = tuple(name for name in ("actor_cnn", "critic_cnn") if groups[name])
    assert tunable_clip_groups(algo, policy, share) == expected
    if share and policy == "MultiInputPolicy":
        assert expected == (("critic_cnn",) if algo in ("td3", "ddpg") else ("actor_cnn",))
    with pytest.raises(KeyError, match="no tuning rule"):
        tunable_clip_groups("ppo", policy, share)


@pytest.mark.slow
def test_tuning_sac_with_a_shared_encoder_completes_its_trials(tmp_path: Path) -> None:
    """SAC's shared encoder is trained by the actor's optimizer: its norm is ``actor_cnn`` (``critic_cnn`` is empty,
    and a norm sampled for it pruned every trial)."""
    conf = tmp_path / "sac.yml"
    policy_kwargs = {
        "net_arch": [8],
        "share_features_extractor": True,
        "features_extractor_kwargs": {"cnn_output_dim": 8, "vector_output_dim": 8},
    }
    block = {"policy": "MultiInputPolicy", "n_timesteps": 30, "learning_starts": 20, "buffer_size": 100, "batch_size": 4}
    conf.write_text(yaml.safe_dump({IMAGE_ID: {**block, "policy_kwargs": policy_kwargs}}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert _one_trial_study("sac", IMAGE_ID, conf, storage, "shared", 30, tmp_path) == 0
    (trial,) = optuna.load_study(study_name="shared", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert "actor_cnn_max_grad_norm" in trial.params and "critic_cnn_max_grad_norm" not in trial.params


def _postgres_url() -> str:
    url = os.environ.get("SB3AV_TEST_POSTGRES_URL")
    if url:
        return url
    if not (shutil.which("pg_ctlcluster") and glob.glob("/usr/lib/postgresql/*/bin/postgres")):
        pytest.skip('SB3AV_TEST_POSTGRES_URL is not set and PostgreSQL is not installed (eval "$(scripts/start_postgres.sh)")')
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "start_postgres.sh"), "--url"], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        pytest.skip(f"could not start PostgreSQL with scripts/start_postgres.sh: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout.strip()


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_postgres_study(tmp_path: Path) -> None:
    url = _postgres_url()
    study_name = f"sb3av-test-{uuid.uuid4().hex[:8]}"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--algo",
        "td3",
        "--env",
        "LiteScenario0-v0",
        "-optimize",
        "--n-trials",
        "2",
        "--sampler",
        "tpe",
        "--pruner",
        "median",
        "--storage",
        url,
        "--study-name",
        study_name,
        "-n",
        "110",
        "--n-evaluations",
        "1",
        "--eval-episodes",
        "1",
        "--no-optim-plots",
        "--verbose",
        "0",
        "--env-kwargs",
        "camera_size:36",
        "npc_vehicles:2",
        "max_steps:30",
        "-params",
        "learning_starts:100",
        "buffer_size:500",
        "policy_kwargs:dict(features_extractor_kwargs=dict(cnn_output_dim=8, vector_output_dim=8))",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [*cmd, "--seed", str(seed), "-f", str(tmp_path / f"logs{seed}")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=400) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
    study = optuna.load_study(study_name=study_name, storage=normalize_storage_url(url) or url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    by_worker = {t.user_attrs["worker"] for t in complete}
    assert by_worker == {f"{os.uname().nodename}:{w.pid}" for w in workers}, "both workers' trials are in the one study"
    assert all("actor_cnn_max_grad_norm" in t.params for t in complete)
    optuna.delete_study(study_name=study_name, storage=normalize_storage_url(url) or url)


def test_lost_simulator_during_training_saves_a_checkpoint_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A simulator lost mid-training (CARLA gave up reconnecting) must not lose what was learned."""
    conf = tmp_path / "td3.yml"
    conf.write_text(
        yaml.safe_dump(
            {FLAKY_ID: {"policy": "MlpPolicy", "n_timesteps": 200, "learning_starts": 20, "buffer_size": 500, "batch_size": 8}}
        )
    )
    FlakyEnv.failures_left = 1  # episodes 1-2 run (20 steps each), then the "server" is lost at step 15 of episode 3
    FlakyEnv.fail_after_episodes = 2
    try:
        args = ["--algo", "td3", "--env", FLAKY_ID, "-conf", str(conf), "--save-replay-buffer", "--eval-freq", "-1"]
        status = main([*args, "--verbose", "0", "--seed", "0", "-f", str(tmp_path / "logs")])
    finally:
        FlakyEnv.fail_after_episodes = 0
        FlakyEnv.failures_left = 0
    assert status == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "lost connection to the CARLA server" in err[0] and "resume with -i" in err[0], err
    (run_dir,) = (tmp_path / "logs" / "td3").iterdir()
    checkpoints = sorted(run_dir.glob("rl_model_*_steps.zip"))
    assert len(checkpoints) == 1 and checkpoints[0].name == "rl_model_54_steps.zip"
    assert (run_dir / "rl_model_replay_buffer_54_steps.pkl").is_file()
