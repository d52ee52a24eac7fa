"""The rl-zoo style trainer of this project's algorithms and driving envs: ``python train.py``, ``sb3-av train``.

The command line is rl-zoo's (the flags of ``rl_zoo3/train.py``, rl-zoo3 2.9, declared here), with ``--algo``
limited to td3/ddpg/sac/tqc, ``key:value`` overrides parsed as data instead of ``eval``-ed, the defaults
``--algo td3 --env LiteScenario0-v0``, a torch thread count that leaves cores to the simulator, and progress shown
by default (``--no-progress``). The run itself is :class:`~sb3_av.zoo.exp_manager.DrivingExperimentManager`, built
from the parsed arguments. Every error the user can cause ends with one line on stderr and exit status 2.
``sb3-av train`` (also ``python -m sb3_av train``, from an installed package) takes the same flags.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np

from sb3_av.compute import default_torch_threads, set_torch_threads
from sb3_av.algorithms import ALGO_NAMES
from sb3_av.cli import OneLineErrorParser
from sb3_av.zoo.config import ConfigError, parse_override_value
from sb3_av.zoo.exp_manager import TrainError
from sb3_av.zoo.run_folder import resolve_model_path

__all__ = ["TrainError", "add_train_arguments", "build_parser", "main", "run_train_command"]


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


class _Unsupported(argparse.Action):
    """An rl-zoo flag sb3-av does not support (Weights & Biases tracking): a one-line error instead of silence."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> NoReturn:
        parser.error(f"{option_string} is not supported by sb3-av; use -tb for TensorBoard")


def _bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no`` (rl-zoo's ``type=bool`` reads any non-empty text, even "False", as True)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The trainer's argument parser (:func:`add_train_arguments`); usage errors are one line.

    :param prog: the program name in messages.
    """
    parser = OneLineErrorParser(prog=prog, description=_DESCRIPTION.format(prog=prog))
    add_train_arguments(parser)
    return parser


_DESCRIPTION = (
    "Train (or tune with -optimize) a driving agent, rl-zoo style. "
    "Example: {prog} --algo td3 --env LiteScenario0-v0 -n 100000 -tb runs/"
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the trainer's flags to ``parser``: rl-zoo's (see the module docstring), in groups."""
    _add_run_arguments(parser.add_argument_group("run"))
    _add_config_arguments(parser.add_argument_group("hyperparameters and env"))
    _add_eval_arguments(parser.add_argument_group("evaluation, checkpoints, logs"))
    _add_compute_arguments(parser.add_argument_group("compute"))
    _add_tuning_arguments(parser.add_argument_group("tuning (Optuna)"))
    unsupported = parser.add_argument_group("rl-zoo flags not supported (Weights & Biases)")
    unsupported.add_argument("--track", nargs=0, action=_Unsupported, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for flags in (["--wandb-project-name"], ["--wandb-entity"], ["--wandb-group"], ["-tags", "--wandb-tags"]):
        unsupported.add_argument(*flags, nargs="*", action=_Unsupported, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_run_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--algo", default="td3", choices=ALGO_NAMES, help="algorithm (default: td3)")
    group.add_argument("--env", default="LiteScenario0-v0", help="env id (default: LiteScenario0-v0)")
    group.add_argument(
        "-n", "--n-timesteps", type=int, default=-1, help="total env steps of the run (default: the config's n_timesteps)"
    )
    group.add_argument("--seed", type=int, default=-1, help="random seed (default: a random one, written to args.yml)")
    group.add_argument(
        "-i",
        "--trained-agent",
        default="",
        help="continue a run: a model .zip (final model or checkpoint) or a run folder; the step counter and "
        "the replay buffer saved beside it continue, until -n steps in total",
    )
    group.add_argument(
        "--truncate-last-trajectory",
        type=_bool,
        default=True,
        help="with -i and a HER replay buffer: truncate the last, unfinished trajectory (default: true)",
    )
    group.add_argument(
        "-P",
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress: a bar on a terminal, else a line every 15 s with steps, steps/s, ETA and success "
        "rates (default: on, off with --verbose 0)",
    )
    group.add_argument("--verbose", type=int, default=1, help="0: no output, 1: info, 2: debug (tracebacks)")
    group.add_argument("--gym-packages", nargs="+", default=[], help="modules to import that register more env ids")


def _add_config_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "-conf", "--conf-file", default=None, help="hyperparameter YAML (default: the package's configs/<algo>.yml)"
    )
    group.add_argument(
        "-params",
        "--hyperparams",
        nargs="+",
        action=_DataStoreDict,
        help="override hyperparameters, parsed as data, e.g. learning_rate:1e-4 "
        "policy_kwargs:'{net_arch: [64, 64]}' train_freq:'[1, episode]'",
    )
    group.add_argument(
        "--env-kwargs",
        nargs="+",
        action=_DataStoreDict,
        help="env keyword arguments, e.g. npc_vehicles:10 port:2000 (merged into the config's env_kwargs)",
    )
    group.add_argument(
        "--eval-env-kwargs", nargs="+", action=_DataStoreDict, help="env keyword arguments of the evaluation env"
    )
    group.add_argument("--vec-env", default="dummy", choices=["dummy", "subproc"], help="VecEnv type (default: dummy)")


def _add_eval_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--eval-freq",
        type=int,
        default=25000,
        help="evaluate every N steps (<= 0: never; default 25000; a run shorter than N is evaluated 10 times)",
    )
    group.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation (default 5)")
    group.add_argument("--n-eval-envs", type=int, default=1, help="evaluation envs (default 1)")
    group.add_argument("--save-freq", type=int, default=-1, help="checkpoint every N steps (<= 0: never)")
    group.add_argument("--save-replay-buffer", action="store_true", help="save the replay buffer with the model")
    group.add_argument("-f", "--log-folder", default="logs", help="run folders go to DIR/<algo>/<env id>_<n> (default logs)")
    group.add_argument("-tb", "--tensorboard-log", default="", help="TensorBoard log folder (default: none)")
    group.add_argument("-uuid", "--uuid", action="store_true", help="append a unique id to the run folder's name")
    group.add_argument(
        "--log-interval", type=int, default=-1, help="log every N episodes (-1: the algorithm's default, -2: never)"
    )


def _add_compute_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ... (default auto)")
    group.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help=f"torch threads (default: half the cores this process may use, here {default_torch_threads()}: OpenMP "
        "threads stall while an env worker or a simulator holds one of their cores; OMP_NUM_THREADS, when set, "
        "wins over this default; -1: torch's default, one per core)",
    )


def _add_tuning_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("-optimize", "--optimize-hyperparameters", action="store_true", help="tune instead of training")
    group.add_argument("--n-trials", type=int, default=500, help="trials of this worker (default 500)")
    group.add_argument("--max-total-trials", type=int, default=None, help="trials of the whole study, all workers")
    group.add_argument("--n-jobs", type=int, default=1, help="parallel trials in this process (default 1)")
    group.add_argument("--sampler", default="tpe", choices=["random", "tpe", "auto"], help="optuna sampler (default tpe)")
    group.add_argument(
        "--pruner", default="median", choices=["halving", "median", "none"], help="optuna pruner (default median)"
    )
    group.add_argument("--n-startup-trials", type=int, default=10, help="random trials before the sampler (default 10)")
    group.add_argument("--n-evaluations", type=int, default=None, help="evaluations per trial (default: one per 100k steps)")
    group.add_argument(
        "--storage",
        default=None,
        help="optuna storage shared by tuning workers: a database URL (postgresql://user:pw@host/db, "
        "sqlite:///study.db) or a journal file *.log",
    )
    group.add_argument("--study-name", default=None, help="study name (the same for every worker)")
    group.add_argument("--trial-id", type=int, default=None, help="train with this trial's hyperparameters (--storage)")
    group.add_argument("--optimization-log-path", default=None, help="save each trial's evaluations and best model here")
    group.add_argument("--no-optim-plots", action="store_true", help="no optuna plots after tuning")


def main(argv: Sequence[str] | None = None, prog: str = "train.py") -> int:
    """Run the trainer: ``python train.py``.

    :param argv: arguments without the program name (default: ``sys.argv[1:]``).
    :param prog: the program name in messages.
    :return: exit status: 0 done (also after Ctrl-C/SIGTERM during training, with the model saved), 2 user error
        or failure, 130 Ctrl-C outside training (e.g. while a simulator loads its town; nothing is saved).
    """
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported on one line
        return int(exc.code or 0)
    return _run_reporting_errors(args, prog)


def run_train_command(args: argparse.Namespace) -> int:
    """``sb3-av train``: the trainer on arguments parsed by :func:`add_train_arguments` (exit status as :func:`main`)."""
    vars(args).pop("command", None)  # the sb3-av subcommand name is not a trainer argument (args.yml)
    return _run_reporting_errors(args, "sb3-av train")


def _run_reporting_errors(args: argparse.Namespace, prog: str) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C) outside training; no model saved", file=sys.stderr)
        return 130
    except (ConfigError, TrainError) as exc:
        return _fail(prog, exc)
    except Exception as exc:
        if args.verbose >= 2:
            raise
        return _fail(prog, f"{type(exc).__name__}: {exc} (run with --verbose 2 for the traceback)")


def _fail(prog: str, message: object) -> int:
    text = " ".join(str(message).split())  # one line
    print(f"{prog}: error: {text}", file=sys.stderr)
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
    from stable_baselines3.common.utils import set_random_seed

    from sb3_av.envs import register_envs
    from sb3_av.zoo.exp_manager import DrivingExperimentManager

    register_envs()
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
    set_random_seed(args.seed)
    args.num_threads = set_torch_threads(args.num_threads)
    if args.progress is None:
        args.progress = args.verbose > 0
    print("=" * 10, args.env, "=" * 10)
    print(f"Seed: {args.seed}, torch threads: {args.num_threads}")

    manager = DrivingExperimentManager(args)
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
