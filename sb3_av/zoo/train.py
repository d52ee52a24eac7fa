"""``python train.py``: rl-zoo's trainer command line, for this project's algorithms and driving envs.

The argument parser *is* rl-zoo's (:func:`rl_zoo3.train.train` builds it; we take it before it parses), with
``--algo`` limited to td3/ddpg/sac/tqc, ``key:value`` overrides parsed as data instead of ``eval``-ed, and the
defaults ``--algo td3 --env LiteScenario0-v0``. The run itself goes through
:class:`~sb3_av.zoo.exp_manager.DrivingExperimentManager`. Every error the user can cause ends with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import gymnasium as gym
import numpy as np
import torch as th

__all__ = ["TrainError", "build_parser", "main"]

from sb3_av.algorithms import ALGO_NAMES
from sb3_av.zoo.config import ConfigError, parse_override_value
from sb3_av.zoo.exp_manager import TrainError
from sb3_av.zoo.run_folder import resolve_model_path

#: rl-zoo options this project does not support (Weights & Biases tracking).
_UNSUPPORTED = ("track",)


class _DataStoreDict(argparse.Action):
    """rl-zoo's ``StoreDict`` (``key:value ...`` -> dict) without ``eval``: values are parsed as data."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> None:
        result: dict[str, Any] = {}
        for item in values:
            key, sep, text = item.partition(":")
            if not sep or not key:
                parser.error(f"{option_string}: expected key:value, got {item!r}")
            try:
                result[key] = parse_override_value(key, text)
            except ConfigError as exc:
                parser.error(f"{option_string}: {exc}")
        setattr(namespace, self.dest, result)


class _ParserCaptured(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    """rl-zoo's ``train.py`` parser, adapted (see the module docstring)."""
    import rl_zoo3.train as zoo_train

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        raise _ParserCaptured(self)

    with (
        mock.patch.object(zoo_train, "ALGOS", dict.fromkeys(ALGO_NAMES)),
        mock.patch.object(zoo_train, "StoreDict", _DataStoreDict),
        mock.patch.object(argparse.ArgumentParser, "parse_args", capture),
    ):
        try:
            zoo_train.train()
        except _ParserCaptured as captured:
            parser: argparse.ArgumentParser = captured.args[0]
    parser.prog = "train.py"
    parser.description = (
        "Train (or tune with -optimize) a driving agent, rl-zoo style. "
        "Example: python train.py --algo td3 --env LiteScenario0-v0 -n 100000 -tb runs/"
    )
    parser.set_defaults(algo="td3", env="LiteScenario0-v0")
    parser.error = types.MethodType(_one_line_error, parser)  # type: ignore[method-assign]
    helps = {
        "trained_agent": "continue a run: a model .zip (final model or checkpoint) or a run folder; the step counter and "
        "the replay buffer saved beside it continue, until -n steps in total",
        "conf_file": "hyperparameter YAML (default: configs/<algo>.yml); Python files are not accepted",
        "hyperparams": "override hyperparameters, parsed as data, e.g. learning_rate:1e-4 "
        "policy_kwargs:'{net_arch: [64, 64]}' train_freq:'[1, episode]'",
        "env_kwargs": "env keyword arguments, e.g. npc_vehicles:10 port:2000 (merged into the config's env_kwargs)",
        "storage": "optuna storage shared by tuning workers: a database URL (postgresql://user:pw@host/db, "
        "sqlite:///study.db) or a journal file *.log",
    }
    for action in parser._actions:
        if action.dest in helps:
            action.help = helps[action.dest]
    return parser


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error without the (long) usage text: one line, exit status 2."""
    parser.exit(2, f"{parser.prog}: error: {' '.join(message.split())} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer.

    :param argv: arguments without the program name (default: ``sys.argv[1:]``).
    :return: exit status: 0 done (also after Ctrl-C/SIGTERM during training, with the model saved), 2 user error
        or failure, 130 Ctrl-C outside training (e.g. while a simulator loads its town; nothing is saved).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported on one line
        return int(exc.code or 0)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("train.py: interrupted (Ctrl-C) outside training; no model saved", file=sys.stderr)
        return 130
    except (ConfigError, TrainError) as exc:
        return _fail(exc)
    except Exception as exc:
        if args.verbose >= 2:
            raise
        return _fail(f"{type(exc).__name__}: {exc} (run with --verbose 2 for the traceback)")


def _fail(message: object) -> int:
    text = " ".join(str(message).split())  # one line
    print(f"train.py: error: {text}", file=sys.stderr)
    return 2


def _check_env_id(env_id: str) -> None:
    if env_id in gym.registry:
        return
    from sb3_av.envs import scenario_ids

    close = difflib.get_close_matches(env_id, list(gym.registry), n=1, cutoff=0.8)
    hint = f"did you mean {close[0]}? " if close else ""
    raise TrainError(f"unknown env id {env_id!r}; {hint}driving envs: {', '.join(scenario_ids())}")


def _resolve_trained_agent(path: str) -> str:
    if not path:
        return ""
    p = Path(path)
    if p.is_dir():
        return str(resolve_model_path(p, prefer="last"))
    if p.suffix != ".zip" or not p.is_file():
        raise TrainError(f"-i {path}: not a model .zip file or a run folder")
    return str(p)


def _run(args: argparse.Namespace) -> int:
    import sb3_av.envs  # noqa: F401  (registers the driving env ids)
    from sb3_av.envs import register_envs
    from sb3_av.zoo.exp_manager import DrivingExperimentManager

    register_envs()
    for name in _UNSUPPORTED:
        if getattr(args, name, False):
            raise TrainError(f"--{name} is not supported by sb3-av; use -tb for TensorBoard")
    for module in args.gym_packages:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise TrainError(f"--gym-packages {module}: cannot import it: {exc}") from None
    _check_env_id(args.env)
    args.trained_agent = _resolve_trained_agent(args.trained_agent)
    if args.optimize_hyperparameters and args.trained_agent:
        raise TrainError("-optimize and -i cannot be combined")

    if args.seed < 0:
        args.seed = int(np.random.randint(2**32 - 1, dtype="int64"))
    from stable_baselines3.common.utils import set_random_seed

    set_random_seed(args.seed)
    if args.num_threads > 0:
        th.set_num_threads(args.num_threads)
    print("=" * 10, args.env, "=" * 10)
    print(f"Seed: {args.seed}")

    manager = DrivingExperimentManager(
        args,
        args.algo,
        args.env,
        args.log_folder,
        args.tensorboard_log,
        args.n_timesteps,
        args.eval_freq,
        args.eval_episodes,
        args.save_freq,
        args.hyperparams,
        args.env_kwargs,
        args.eval_env_kwargs,
        args.trained_agent,
        args.optimize_hyperparameters,
        args.storage,
        args.study_name,
        args.n_trials,
        args.max_total_trials,
        args.n_jobs,
        args.sampler,
        args.pruner,
        args.optimization_log_path,
        n_startup_trials=args.n_startup_trials,
        n_evaluations=args.n_evaluations,
        truncate_last_trajectory=args.truncate_last_trajectory,
        uuid_str=f"_{__import__('uuid').uuid4()}" if args.uuid else "",
        seed=args.seed,
        log_interval=args.log_interval,
        save_replay_buffer=args.save_replay_buffer,
        verbose=args.verbose,
        vec_env_type=args.vec_env,
        n_eval_envs=args.n_eval_envs,
        no_optim_plots=args.no_optim_plots,
        device=args.device,
        config=args.conf_file,
        show_progress=args.progress,
        trial_id=args.trial_id,
    )
    results = manager.setup_experiment()
    if results is None:
        manager.hyperparameters_optimization()
        return 0
    model, _ = results
    manager.learn(model)
    manager.save_trained_model(model)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
