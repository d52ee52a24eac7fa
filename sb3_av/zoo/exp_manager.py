"""rl-zoo's :class:`~rl_zoo3.exp_manager.ExperimentManager`, extended where it falls short for driving.

What changes, and why (everything else is rl-zoo's code path):

- **Config as data.** Hyperparameters come from :mod:`sb3_av.zoo.config` (``yaml.safe_load``, every key checked,
  names -> classes through explicit dicts) instead of rl-zoo's ``eval`` of strings and imports of module paths.
- **Algorithms** come from :func:`sb3_av.algorithms.get_algorithm` (the clipped TD3/DDPG/SAC/TQC).
- **Replay buffer**: the algorithms' own default (the frame-stack Dict buffer for stacked-image observations,
  :func:`sb3_av.buffers.default_replay_buffer_for`); a config's ``replay_buffer_class`` wins.
- **Construction** from the trainer's parsed arguments, every rl-zoo constructor argument passed by keyword; the
  default config is the package's (:func:`sb3_av.zoo.config.default_config_file`).
- **Callbacks**: checkpoints that also save on SIGINT/SIGTERM, an eval callback and a training callback that log
  the driving metrics, plus the config's ``callback:`` entries (fresh instances for each run and each trial), and
  :class:`~sb3_av.callbacks.progress.ProgressCallback` with ``--progress`` (a bar, or lines in a log).
- **Logging**: a ``progress.csv`` in the run folder always (``sb3-av plot`` reads it), TensorBoard with ``-tb``.
- **Resume** (``-i``): the step counter continues (``reset_num_timesteps=False``) until ``-n``/``n_timesteps``,
  and the replay buffer saved beside the model or checkpoint is loaded.
- **Tuning**: the sampled ``policy_kwargs`` / ``max_grad_norms`` are merged into the YAML's (rl-zoo's objective
  replaces ``policy_kwargs`` wholesale, losing e.g. the features extractor settings: rl-zoo issue #431); an
  exception from the env or the simulator inside a trial marks that trial FAILED and the study goes on. The study
  runs on :func:`open_storage`'s storage: trial heartbeats on a database, so a killed worker's trial is retried.
- **Run folder files** (``config.yml``, ``args.yml``) are plain YAML (``safe_load``-able), not Python-tagged.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import pickle
import random
import re
import shlex
import socket
import sys
import time
import uuid
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from rl_zoo3.callbacks import SaveVecNormalizeCallback, TrialEvalCallback
from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, KVWriter, Logger, make_output_format
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.utils import get_latest_run_id
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from sb3_av.callbacks.checkpoint import InterruptibleCheckpointCallback
from sb3_av.callbacks.driving_metrics import DrivingEvalCallback, DrivingMetricsCallback
from sb3_av.callbacks.progress import ProgressCallback
from sb3_av.algorithms import get_algorithm
from sb3_av.zoo.config import (
    TEACHERS,
    ConfigError,
    default_config_file,
    load_config_file,
    resolve_callbacks,
    resolve_env_wrapper,
    resolve_policy_kwargs,
    resolve_replay_buffer_class,
    select_env_block,
    validate_hyperparams,
)
from sb3_av.zoo.samplers import SAMPLERS, convert_params, tunable_clip_groups

__all__ = ["DrivingExperimentManager", "TrainError", "make_rdb_storage", "normalize_storage_url", "open_storage"]

logger = logging.getLogger(__name__)

#: Info keys of the driving env contract written to monitor.csv at each episode end.
_MONITOR_INFO_KEYS = ("is_success", "route_completion", "collision", "off_road")

_CHECKPOINT_RE = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")


class TrainError(RuntimeError):
    """A run cannot start or go on for a reason the user can fix; the message says what to do."""


def _merge(base: dict[str, Any], update: dict[str, Any], nested: tuple[str, ...]) -> dict[str, Any]:
    """``base`` updated by ``update``, where the ``nested`` keys are merged one level deep instead of replaced."""
    merged = dict(base)
    for key, value in update.items():
        if key in nested and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


class _StepCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV output plus a ``time/step`` column: the step each row was dumped at (rows dumped by callbacks,
    e.g. the gradient monitor's, have no ``time/total_timesteps``)."""

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        super().write({**key_values, "time/step": step}, {**key_excluded, "time/step": ()}, step)


#: Evaluations of a run shorter than its ``--eval-freq`` (rl-zoo's default 25,000 is longer than the Lite budget).
EVALUATIONS_PER_SHORT_RUN = 10


class DrivingExperimentManager(ExperimentManager):
    """rl-zoo's experiment manager for this project's algorithms and driving envs (see the module docstring).

    :param args: the trainer's command line, parsed by :func:`sb3_av.zoo.train.build_parser` (with the seed
        resolved); written to the run folder's ``args.yml``.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        # rl-zoo's constructor, every argument by keyword (rl-zoo's train.py passes 22 of them by position).
        super().__init__(
            args=args,
            algo=args.algo,
            env_id=args.env,
            log_folder=args.log_folder,
            tensorboard_log=args.tensorboard_log,
            n_timesteps=args.n_timesteps,
            eval_freq=args.eval_freq,
            n_eval_episodes=args.eval_episodes,
            save_freq=args.save_freq,
            hyperparams=args.hyperparams,
            env_kwargs=args.env_kwargs,
            eval_env_kwargs=args.eval_env_kwargs,
            trained_agent=args.trained_agent,
            optimize_hyperparameters=args.optimize_hyperparameters,
            storage=normalize_storage_url(args.storage),
            study_name=args.study_name,
            n_trials=args.n_trials,
            max_total_trials=args.max_total_trials,
            n_jobs=args.n_jobs,
            sampler=args.sampler,
            pruner=args.pruner,
            optimization_log_path=args.optimization_log_path,
            n_startup_trials=args.n_startup_trials,
            n_evaluations=args.n_evaluations,
            truncate_last_trajectory=args.truncate_last_trajectory,
            uuid_str=f"_{uuid.uuid4()}" if args.uuid else "",
            seed=args.seed,
            log_interval=args.log_interval,
            save_replay_buffer=args.save_replay_buffer,
            verbose=args.verbose,
            vec_env_type=args.vec_env,
            n_eval_envs=args.n_eval_envs,
            no_optim_plots=args.no_optim_plots,
            device=args.device,
            config=str(args.conf_file or default_config_file(args.algo)),
            show_progress=bool(args.progress),
            trial_id=args.trial_id,
        )
        self.algo_class = get_algorithm(args.algo)
        self._callback_entries: list[Any] = []
        self._teacher_entry: dict[str, Any] | None = None  # the config's checked ``teacher`` entry, if any
        self._config_where = self.config
        self.checkpoint_callback: InterruptibleCheckpointCallback | None = None
        #: The evaluation env of ``--eval-freq`` (closed by :meth:`learn`, or when the setup fails).
        self.eval_env: VecEnv | None = None
        #: ``"SIGINT"``/``"SIGTERM"`` when the last :meth:`learn` was interrupted, else None.
        self.interrupted_by: str | None = None

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        """rl-zoo's setup (hyperparameters, callbacks, env, model), building :attr:`algo_class` instead of rl-zoo's
        ``ALGOS[algo]`` (the stock SB3 classes).

        :return: (model, saved hyperparameters), or None when tuning.
        """
        unprocessed_hyperparams, saved_hyperparams = self.read_hyperparameters()
        hyperparams, self.env_wrapper, self.callbacks, self.vec_env_wrapper = self._preprocess_hyperparams(
            unprocessed_hyperparams
        )
        if not self.optimize_hyperparameters:  # tuning writes its report, not a run folder (rl-zoo leaves an empty one)
            self.create_log_folder()
        self.create_callbacks()
        env: VecEnv | None = None
        try:
            env = self.create_envs(1 if self.optimize_hyperparameters else self.n_envs, no_log=self.optimize_hyperparameters)
            self._hyperparams = self._preprocess_action_noise(hyperparams, saved_hyperparams, env)
            if self.continue_training:
                model = self._load_pretrained_agent(self._hyperparams, env)
            elif self.optimize_hyperparameters:
                env.close()
                return None
            else:
                model = self.algo_class(
                    env=env,
                    tensorboard_log=self.tensorboard_log,
                    seed=self.seed,
                    verbose=self.verbose,
                    device=self.device,
                    **self._hyperparams,
                )
            self._set_teacher(model, env)
            buffer = getattr(model, "replay_buffer", None)
            if self.verbose > 0 and buffer is not None:
                print(f"Replay buffer: {type(buffer).__name__}")
            self._save_config(saved_hyperparams)
        except BaseException:  # also Ctrl-C during a slow simulator start: release what was claimed
            for claimed in (env, self.eval_env):
                _close_quietly(claimed, "an env after the setup failed")
            self.eval_env = None
            raise
        return model, saved_hyperparams

    # ------------------------------------------------------------------------------------------ config
    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load, check and merge the hyperparameters: YAML block, then ``--trial-id``, ``-params``, ``--env-kwargs``.

        :return: (hyperparameters, the same sorted for ``config.yml``), both plain data.
        :raises ConfigError: naming the file, block and key of the first mistake.
        """
        content = load_config_file(self.config)
        for block, values in content.items():
            validate_hyperparams(values, self.algo_class, f"{self.config} [{block}]")
        block, hyperparams = select_env_block(content, self.env_name.gym_id, self.config)
        self._config_where = f"{self.config} [{block}]"
        if self.verbose > 0:
            print(f"Loading hyperparameters from: {self._config_where}")
        hyperparams = validate_hyperparams(hyperparams, self.algo_class, self._config_where)

        nested = ("policy_kwargs", "max_grad_norms", "env_kwargs")
        if self.storage and self.study_name and self.trial_id is not None:
            study_hyperparams = self.load_trial(self.storage, self.study_name, self.trial_id)
            hyperparams = _merge(hyperparams, study_hyperparams, nested)
        if self.custom_hyperparams:
            # -params replaces whole values (rl-zoo's semantics), checked on their own so the message names them.
            overrides = validate_hyperparams(self.custom_hyperparams, self.algo_class, "-params", partial=True)
            hyperparams.update(overrides)
        if self.env_kwargs:
            # --env-kwargs override single env kwargs of the config (rl-zoo replaces the whole mapping).
            hyperparams["env_kwargs"] = {**hyperparams.get("env_kwargs", {}), **self.env_kwargs}
            if self._eval_env_kwargs_args is None:
                self.eval_env_kwargs = hyperparams["env_kwargs"]
        elif "env_kwargs" in hyperparams and self._eval_env_kwargs_args is None:
            self.eval_env_kwargs = hyperparams["env_kwargs"]

        saved_hyperparams = OrderedDict((key, hyperparams[key]) for key in sorted(hyperparams))
        if self.verbose > 0:
            print("Hyperparameters:")
            print(yaml.safe_dump(dict(saved_hyperparams), sort_keys=True).rstrip())
        return hyperparams, saved_hyperparams

    def load_trial(self, storage: str, study_name: str, trial_id: int | None = None, convert: bool = True) -> dict[str, Any]:
        """Parameters of a trial (or the best one) of a stored study, converted by this project's samplers."""
        try:
            study = optuna.load_study(storage=open_storage(storage), study_name=study_name)
            params = study.trials[trial_id].params if trial_id is not None else study.best_trial.params
        except (KeyError, IndexError, ValueError) as exc:
            where = _redact(storage)
            raise ConfigError(f"--trial-id {trial_id}: cannot read it from study {study_name!r} at {where}: {exc}") from None
        return convert_params(params) if convert else params

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]) -> tuple[dict[str, Any], Any, list[BaseCallback], Any]:
        # Names -> objects here; rl-zoo's own preprocessing then sees no strings it would eval or import.
        hyperparams = dict(hyperparams)
        if "policy_kwargs" in hyperparams:
            hyperparams["policy_kwargs"] = resolve_policy_kwargs(hyperparams["policy_kwargs"])
        if "replay_buffer_class" in hyperparams:
            hyperparams["replay_buffer_class"] = resolve_replay_buffer_class(hyperparams["replay_buffer_class"])
        self._callback_entries = hyperparams.pop("callback", [])
        self._teacher_entry = hyperparams.pop("teacher", None)
        env_wrapper = resolve_env_wrapper(hyperparams.pop("env_wrapper", []))
        # Fail now, not after the envs are built, when a callback rejects its arguments.
        resolve_callbacks(self._callback_entries, self._config_where)
        if self._is_driving_env() and not self.monitor_kwargs:
            self.monitor_kwargs = {"info_keywords": _MONITOR_INFO_KEYS}
        hyperparams, _, _, vec_env_wrapper = super()._preprocess_hyperparams(hyperparams)
        return hyperparams, env_wrapper, [], vec_env_wrapper

    def _set_teacher(self, model: BaseAlgorithm, env: VecEnv) -> None:
        """Give the model the config's ``teacher`` (a new one, also for a loaded model: the teacher is not saved).

        The controller is built from the first training env (:meth:`PIDPurePursuit.from_env` reads its target speed,
        control period and steering geometry); with envs in other processes, from their ``config`` alone (the
        steering geometry at the controller's default, Lite's).
        """
        entry = self._teacher_entry
        if entry is None:
            return
        vec_env = env.unwrapped if isinstance(env, VecEnvWrapper) else env
        if isinstance(vec_env, DummyVecEnv):
            first: Any = vec_env.envs[0]
        else:
            first = SimpleNamespace(unwrapped=SimpleNamespace(config=env.get_attr("config", [0])[0]))
        controller = TEACHERS[entry["controller"]](first)
        try:
            model.set_teacher(  # type: ignore[attr-defined]
                controller, entry["weight"], entry["q_filter"], entry["clone"]
            )
        except (ValueError, NotImplementedError) as error:
            raise ConfigError(f"{self._config_where}: key 'teacher': {error}") from None
        if self.verbose > 0:
            print(
                f"Teacher: {entry['controller']} (weight {entry['weight']}, q_filter {entry['q_filter']}, "
                f"clone {entry['clone']})"
            )

    def _is_driving_env(self) -> bool:
        return self.entry_point(self.env_name.gym_id).startswith("sb3_av.")

    def _make_action_noise(self, noise_type: str | None, noise_std: float) -> Any:
        sigma = noise_std * np.ones(self.n_actions)
        if noise_type == "normal":
            return NormalActionNoise(mean=np.zeros(self.n_actions), sigma=sigma)
        if noise_type == "ornstein-uhlenbeck":
            return OrnsteinUhlenbeckActionNoise(mean=np.zeros(self.n_actions), sigma=sigma)
        return None

    # --------------------------------------------------------------------------------------- callbacks
    def create_callbacks(self) -> None:
        """Checkpoints (+ on interrupt), evaluation with driving metrics, the config's callbacks, progress (last: it
        shows the evaluation of the same step)."""
        save_freq = max(self.save_freq // self.n_envs, 1) if self.save_freq > 0 else 0
        self.checkpoint_callback = InterruptibleCheckpointCallback(
            save_freq=save_freq,
            save_path=self.save_path,
            name_prefix="rl_model",
            save_replay_buffer=self.save_replay_buffer,
            save_vecnormalize=self.normalize,
            verbose=self.verbose,
        )
        self.callbacks.append(self.checkpoint_callback)
        eval_callback: DrivingEvalCallback | None = None
        if self.eval_freq > 0 and not self.optimize_hyperparameters:
            if self.eval_freq > self.n_timesteps:
                # rl-zoo's default cadence (25,000 steps) never evaluates a shorter run, which then keeps no
                # best_model.zip; evaluate it EVALUATIONS_PER_SHORT_RUN times instead (rl-zoo keeps the best).
                every = max(self.n_timesteps // EVALUATIONS_PER_SHORT_RUN, 1)
                if self.verbose > 0:
                    print(f"--eval-freq {self.eval_freq} > the run's {self.n_timesteps} steps: evaluating every {every} steps")
                self.eval_freq = every
            self.eval_freq = max(self.eval_freq // self.n_envs, 1)
            if self.verbose > 0:
                print("Creating test environment")
            self.eval_env = self.create_envs(self.n_eval_envs, eval_env=True)
            eval_callback = DrivingEvalCallback(
                self.eval_env,
                callback_on_new_best=SaveVecNormalizeCallback(save_freq=1, save_path=self.params_path),
                best_model_save_path=self.save_path,
                n_eval_episodes=self.n_eval_episodes,
                log_path=self.save_path,
                eval_freq=self.eval_freq,
                deterministic=self.deterministic_eval,
            )
            self.callbacks.append(eval_callback)
        configured = resolve_callbacks(self._callback_entries, self._config_where)
        if not any(isinstance(callback, DrivingMetricsCallback) for callback in configured):
            self.callbacks.append(DrivingMetricsCallback())
        self.callbacks.extend(configured)
        if self.show_progress:
            self.callbacks.append(ProgressCallback(eval_callback=eval_callback))

    # ------------------------------------------------------------------------------------ train, save
    def _make_logger(self, model: BaseAlgorithm) -> Logger:
        """stdout (verbose), ``progress.csv`` in the run folder, and TensorBoard under ``-tb`` like SB3 names it."""
        formats: list[KVWriter] = [_StepCSVOutputFormat(os.path.join(self.save_path, "progress.csv"))]
        if self.verbose >= 1:
            formats.insert(0, make_output_format("stdout", self.save_path))
        if self.tensorboard_log is not None:
            tb_name = self.algo.upper()
            run_id = get_latest_run_id(self.tensorboard_log, tb_name)
            run_id = run_id if self.continue_training and run_id > 0 else run_id + 1
            formats.append(make_output_format("tensorboard", os.path.join(self.tensorboard_log, f"{tb_name}_{run_id}")))
        return Logger(folder=self.save_path, output_formats=formats)

    def learn(self, model: BaseAlgorithm) -> None:
        """Train until ``n_timesteps`` in total (a resumed run continues its step count); Ctrl-C/SIGTERM stop cleanly.

        :raises TrainError: when a resumed model already reached ``n_timesteps``.
        """
        reset = not self.continue_training
        total = self.n_timesteps
        if self.continue_training:
            total = self.n_timesteps - model.num_timesteps
            if total <= 0:
                _close_quietly(model.env, "the training env")
                _close_quietly(self.eval_env, "the evaluation env")
                self.eval_env = None
                raise TrainError(
                    f"the model of -i is at step {model.num_timesteps}, already >= the run's budget {self.n_timesteps}; "
                    "pass a larger -n (the total number of steps of the run)"
                )
            print(f"Resuming at step {model.num_timesteps}: {total} steps to go until {self.n_timesteps}")
        kwargs: dict[str, Any] = {"reset_num_timesteps": reset, "callback": self.callbacks}
        if self.log_interval > -1:
            kwargs["log_interval"] = self.log_interval
        elif self.log_interval < -1:
            kwargs["log_interval"] = None
        model.set_logger(self._make_logger(model))
        self.interrupted_by = None
        try:
            model.learn(total, **kwargs)
        except KeyboardInterrupt:
            self.interrupted_by = "SIGINT"
        except Exception as exc:  # a lost simulator (CarlaConnectionError, ...) or a crash: keep what was learned
            saved = self._save_after_failure(model)
            where = f"; the model so far is saved as {saved}: resume with -i {self.save_path}" if saved else ""
            raise TrainError(f"{type(exc).__name__}: {exc} (training stopped at step {model.num_timesteps}{where})") from exc
        finally:
            # rl-zoo's cleanup: close a progress bar that an interrupt or a crash left open (SB3 closes it only
            # when learn() returns), then release the envs (on CARLA: actors, sync mode, Traffic Manager port).
            for callback in self.callbacks:
                if isinstance(callback, ProgressCallback):
                    callback.close()
            model.logger.close()
            _close_quietly(model.env, "the training env")
            _close_quietly(self.eval_env, "the evaluation env")
            self.eval_env = None
        if self.checkpoint_callback is not None and self.checkpoint_callback.interrupted_by is not None:
            self.interrupted_by = self.checkpoint_callback.interrupted_by
        if self.interrupted_by is not None:
            print(f"Interrupted by {self.interrupted_by} at step {model.num_timesteps}; saving the model")

    def _save_after_failure(self, model: BaseAlgorithm) -> Path | None:
        """Write a checkpoint (model, and replay buffer if asked) after training failed; None if nothing to save."""
        callback = self.checkpoint_callback
        if callback is None or getattr(callback, "model", None) is None or model.num_timesteps == 0:
            return None
        try:
            return callback.save_checkpoint()
        except Exception as save_error:  # never hide the original failure behind a failed save
            logger.warning("could not save a checkpoint after the failure: %s", save_error)
            return None

    def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: VecEnv) -> BaseAlgorithm:
        hyperparams = dict(hyperparams)
        hyperparams.pop("policy", None)
        hyperparams.pop("policy_kwargs", None)  # the saved policy's own are used
        print(f"Loading pretrained agent {self.trained_agent}")
        model = self.algo_class.load(
            self.trained_agent,
            env=env,
            seed=self.seed,
            tensorboard_log=self.tensorboard_log,
            verbose=self.verbose,
            device=self.device,
            **hyperparams,
        )
        buffer_path = _replay_buffer_beside(Path(self.trained_agent))
        if buffer_path is not None and hasattr(model, "load_replay_buffer"):
            print(f"Loading replay buffer {buffer_path}")
            model.load_replay_buffer(str(buffer_path), truncate_last_traj=self.truncate_last_trajectory)
        elif hasattr(model, "replay_buffer"):
            logger.warning(
                "no replay buffer beside %s: resuming with an empty one (train with --save-replay-buffer)", self.trained_agent
            )
        return model

    def _save_config(self, saved_hyperparams: dict[str, Any]) -> None:
        """``config.yml`` (the checked hyperparameters), ``args.yml`` (the command line), ``command.txt``, as rl-zoo."""
        params_path = Path(self.params_path)
        params_path.mkdir(parents=True, exist_ok=True)
        (params_path / "config.yml").write_text(yaml.safe_dump(_plain(dict(saved_hyperparams)), sort_keys=True))
        args = {key: vars(self.args)[key] for key in sorted(vars(self.args))}
        (params_path / "args.yml").write_text(yaml.safe_dump(_plain(args), sort_keys=True))
        (params_path / "command.txt").write_text(shlex.join(getattr(sys, "orig_argv", ["python3", *sys.argv])) + "\n")
        print(f"Log path: {self.save_path}")

    # ------------------------------------------------------------------------------------------ tuning
    def objective(self, trial: optuna.Trial) -> float:
        """Train one trial and return its last evaluation's mean return.

        A trial whose hyperparameters make training fail numerically is pruned (rl-zoo's behaviour); a trial
        whose env or simulator raises (lost CARLA server, timeout, any other exception) is marked FAILED
        (the objective returns NaN) and the study goes on with the next trial.
        """
        kwargs = self._trial_hyperparams(trial)
        train_env: VecEnv | None = None
        eval_env: VecEnv | None = None
        try:
            train_env = self.create_envs(self.n_envs, no_log=True)
            model = self.algo_class(
                env=train_env,
                tensorboard_log=None,
                seed=None,
                verbose=self.verbose if self.verbose >= 2 else 0,
                device=self.device,
                **kwargs,
            )
            self._set_teacher(model, train_env)
            eval_env = self.create_envs(n_envs=self.n_eval_envs, eval_env=True)
            eval_callback = self._trial_eval_callback(trial, eval_env)
            callbacks = [*resolve_callbacks(self._callback_entries, self._config_where), eval_callback]
            model.learn(self.n_timesteps, callback=callbacks)
        except (AssertionError, ValueError) as exc:
            # rl-zoo: random hyperparameters can produce NaNs; prune those trials.
            print(f"Trial {trial.number} pruned: {exc}")
            raise optuna.TrialPruned() from exc
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("Trial %d failed (the study goes on): %s", trial.number, reason)
            print(f"Trial {trial.number} failed: {reason}", file=sys.stderr)
            trial.set_user_attr("fail_reason", reason[:1000])
            return math.nan  # optuna marks the trial FAILED
        finally:  # a dead simulator must not take the study down: a failed close is a warning
            _close_quietly(train_env, "a trial's training env")
            _close_quietly(eval_env, "a trial's evaluation env")
        if eval_callback.is_pruned:
            raise optuna.TrialPruned()
        return float(eval_callback.last_mean_reward)

    def _trial_hyperparams(self, trial: optuna.Trial) -> dict[str, Any]:
        """The model's constructor arguments for a trial: the YAML's, with the sampled ones merged in.

        Also records the sampled values and the worker (host:pid) as the trial's user attributes.
        """
        sampled = SAMPLERS[self.algo](trial, self._tunable_clip_groups())
        data = {k: v for k, v in sampled.items() if k not in ("noise_type", "noise_std")}
        validate_hyperparams(data, self.algo_class, f"sampler of {self.algo}", partial=True)
        trial.set_user_attr("sampled_hyperparams", _plain(sampled))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        kwargs = copy.deepcopy(self._hyperparams)
        if "policy_kwargs" in data:
            data["policy_kwargs"] = resolve_policy_kwargs(data["policy_kwargs"])
        # Merge, do not replace: keep the YAML's policy_kwargs (features extractor, share_features_extractor, ...)
        # and clip norms of the groups not tuned. rl-zoo's objective loses them (rl-zoo issue #431).
        kwargs = _merge(kwargs, data, ("policy_kwargs", "max_grad_norms"))
        if "noise_type" in sampled:
            kwargs["action_noise"] = self._make_action_noise(sampled["noise_type"], sampled.get("noise_std", 0.1))
        return self._preprocess_schedules(kwargs)

    def _trial_eval_callback(self, trial: optuna.Trial, eval_env: VecEnv) -> TrialEvalCallback:
        """rl-zoo's evaluation callback of a trial: ``--n-evaluations`` evaluations, reported to the pruner."""
        n_evaluations = max(int(self.n_evaluations or 1), 1)
        folder = self.optimization_log_path
        path = None if folder is None else os.path.join(folder, f"trial_{trial.number}")
        return TrialEvalCallback(
            eval_env,
            trial,
            best_model_save_path=path,
            log_path=path,
            n_eval_episodes=self.n_eval_episodes,
            eval_freq=max(int(self.n_timesteps / n_evaluations) // self.n_envs, 1),
            deterministic=self.deterministic_eval,
        )

    def _tunable_clip_groups(self) -> tuple[str, ...]:
        """The CNN groups the configured policy has (see :func:`~sb3_av.zoo.samplers.tunable_clip_groups`)."""
        policy_kwargs = self._hyperparams.get("policy_kwargs") or {}
        return tunable_clip_groups(
            self.algo, self._hyperparams.get("policy"), bool(policy_kwargs.get("share_features_extractor", False))
        )

    def hyperparameters_optimization(self) -> None:
        """Run the study: rl-zoo's loop (its sampler, pruner, trial budget and report) on :func:`open_storage`'s storage.

        Overridden as a whole: rl-zoo 2.9's method creates the study from the ``--storage`` string, and a URL cannot
        carry optuna's heartbeat settings (a killed worker's trial would stay RUNNING for ever); rl-zoo has no hook
        that takes a storage object.

        :raises TrainError: when no trial completed (every trial failed or was pruned).
        """
        if self.verbose > 0:
            print("Optimizing hyperparameters")
        if self.storage is not None and self.study_name is None:
            warnings.warn("--storage without --study-name: optuna names the study; its workers need one --study-name")
        if self.tensorboard_log is not None:
            warnings.warn("TensorBoard logging is off while tuning")
            self.tensorboard_log = None
        study = optuna.create_study(
            sampler=self._create_sampler(self.sampler),
            pruner=self._create_pruner(self.pruner),
            storage=None if self.storage is None else open_storage(self.storage),  # None: in memory
            study_name=self.study_name,
            load_if_exists=True,
            direction="maximize",
        )
        if "command" not in study.user_attrs:  # the first worker records how the study was started
            study.set_user_attr("command", shlex.join(getattr(sys, "orig_argv", sys.argv)))
            for key in sorted(self._hyperparams):
                study.set_user_attr(key, str(self._hyperparams[key]))
        try:
            self._run_trials(study)
        except KeyboardInterrupt:
            pass
        self._report_study(study)

    def _run_trials(self, study: optuna.Study) -> None:
        """``--n-trials`` trials of this worker, or trials until the study holds ``--max-total-trials``."""
        if self.max_total_trials is None:
            study.optimize(self.objective, n_jobs=self.n_jobs, n_trials=self.n_trials, gc_after_trial=True)
            return
        # Running trials count too, else the study ends with max_total_trials + (number of workers) trials.
        counted = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
        if len(study.get_trials(states=counted)) < self.max_total_trials:
            budget = MaxTrialsCallback(self.max_total_trials, states=counted)
            study.optimize(self.objective, n_jobs=self.n_jobs, callbacks=[budget], gc_after_trial=True)

    def _report_study(self, study: optuna.Study) -> None:
        """Print the best trial; write ``report_*.csv`` (all trials) and ``report_*.pkl`` (the study) as rl-zoo does."""
        print(f"Number of finished trials: {len(study.trials)}")
        try:
            best = study.best_trial
        except ValueError as exc:
            raise TrainError(f"no trial completed (see the failure reasons above): {exc}") from None
        print(f"Best trial: {best.number}, value {best.value}")
        print("Params:\n" + "".join(f"    {key}: {value}\n" for key, value in best.params.items()).rstrip())
        report_name = (
            f"report_{self.env_name}_{self.n_trials}-trials-{self.n_timesteps}-{self.sampler}-{self.pruner}_{int(time.time())}"
        )
        log_path = Path(self.log_folder) / self.algo / report_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        study.trials_dataframe().to_csv(f"{log_path}.csv")
        with open(f"{log_path}.pkl", "wb") as f:
            pickle.dump(study, f)
        if self.verbose > 0:
            print(f"Report: {log_path}.csv")
        if not self.no_optim_plots:
            try:
                optuna.visualization.plot_optimization_history(study).show()
                optuna.visualization.plot_param_importances(study).show()
            except (ValueError, ImportError, RuntimeError):
                pass


def normalize_storage_url(url: str | None) -> str | None:
    """A storage URL that works with the installed driver.

    SQLAlchemy 2.1 maps ``postgresql://`` to the ``psycopg`` (3) driver; when only ``psycopg2`` is installed
    (the ``postgres`` extra of sb3-av), name it explicitly: ``postgresql+psycopg2://``.
    """
    if url is None or not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


#: A running trial writes a heartbeat every HEARTBEAT_INTERVAL_S; one silent for HEARTBEAT_GRACE_S (a worker killed
#: with SIGKILL, a lost machine) is marked FAILED by the next worker that starts a trial, and enqueued again once.
HEARTBEAT_INTERVAL_S = 60
HEARTBEAT_GRACE_S = 300
MAX_TRIAL_RETRIES = 1


def make_rdb_storage(
    url: str,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    max_retry: int | None = None,
    attempts: int = 5,
) -> optuna.storages.RDBStorage:
    """Optuna's database storage with trial heartbeats and one retry of a trial whose worker died.

    Creating the tables is retried: workers that start together race on ``CREATE TABLE``.

    :param url: SQLAlchemy URL (``postgresql://...``, ``sqlite:///...``).
    :param heartbeat_interval_s: seconds between a running trial's heartbeats (default :data:`HEARTBEAT_INTERVAL_S`).
    :param grace_period_s: a trial without a heartbeat this long is stale, FAILED and retried (:data:`HEARTBEAT_GRACE_S`).
    :param max_retry: how often a stale trial is enqueued again (default :data:`MAX_TRIAL_RETRIES`).
    :param attempts: tries to open the storage.
    :raises TrainError: the storage cannot be opened (the message hides the password).
    """
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_interval_s or HEARTBEAT_INTERVAL_S,
                grace_period=grace_period_s or HEARTBEAT_GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_TRIAL_RETRIES if max_retry is None else max_retry
                ),
            )
        except Exception as exc:
            if attempt == attempts - 1:
                raise TrainError(f"cannot open the optuna storage {_redact(url)}: {type(exc).__name__}: {exc}") from None
            time.sleep(0.5 + random.random() * 2)
    raise AssertionError("unreachable")


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """The optuna storage of ``--storage``.

    :param spec: a journal file ``*.log`` (its folder is created), or a database URL, opened by
        :func:`make_rdb_storage` (trial heartbeats, one retry of a dead worker's trial).
    :raises TrainError: for anything else, or a database that cannot be opened.
    """
    if spec.endswith(".log"):
        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(spec))
    if "://" in spec:
        return make_rdb_storage(spec)
    raise TrainError(f"--storage {spec}: expected a database URL (postgresql://..., sqlite:///x.db) or a journal file *.log")


def _redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _close_quietly(env: Any, what: str) -> None:
    """Close an env (None: nothing); a failure (a dead simulator, a closed pipe) is a warning, never an exception."""
    if env is None:
        return
    try:
        env.close()
    except Exception as exc:
        logger.warning("closing %s failed: %s: %s", what, type(exc).__name__, exc)


def _plain(value: Any) -> Any:
    """Plain YAML data (dicts, lists, scalars); anything else (classes, objects) becomes its name/str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, type):
        return value.__name__
    return str(value)


def _replay_buffer_beside(model_path: Path) -> Path | None:
    """The replay buffer saved with a model: ``replay_buffer.pkl`` beside a final model, or the checkpoint's own."""
    match = _CHECKPOINT_RE.match(model_path.name)
    if match is not None:
        candidate = model_path.with_name(f"{match['prefix']}_replay_buffer_{match['steps']}_steps.pkl")
    else:
        candidate = model_path.with_name("replay_buffer.pkl")
    return candidate if candidate.is_file() else None
