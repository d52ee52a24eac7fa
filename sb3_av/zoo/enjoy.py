"""``python enjoy.py`` and ``sb3-av evaluate``: one command line over :func:`sb3_av.evaluation.evaluate`.

What to evaluate: a run folder or a ``.zip`` (``python enjoy.py logs/td3/LiteScenario0-v0_1``, or ``--model PATH``),
rl-zoo's lookup (``--algo``/``--env``/``-f``/``--exp-id``, 0: the latest run), or the classical baseline
(``--baseline``). In a run folder ``--load-best``, ``--load-checkpoint N`` and ``--load-last-checkpoint`` pick the
model (default: the final model, else the best, else the last checkpoint), and the run's algorithm, env id and
env kwargs (``config.yml``) are the defaults, updated by ``--algo``, ``--env`` and ``--env-kwargs``. Every failure
is one line on stderr and exit status 2 (130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_av.algorithms import ALGO_NAMES, get_algorithm
from sb3_av.baselines import PIDPurePursuit
from sb3_av.compute import set_torch_threads
from sb3_av.evaluation import evaluate, format_metrics_table
from sb3_av.zoo.config import ConfigError, parse_override_value
from sb3_av.zoo.run_folder import RunInfo, find_checkpoints, read_run_info, resolve_model_path

__all__ = [
    "Target",
    "add_evaluate_arguments",
    "add_target_arguments",
    "build_parser",
    "load_model",
    "main",
    "make_env_for",
    "parse_env_kwargs",
    "resolve_run_dir",
    "resolve_target",
    "run_evaluate_command",
    "run_user_command",
]


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that say what to run (a run folder or model, or the baseline) and on which env."""
    parser.set_defaults(prog=parser.prog)
    parser.add_argument("run_dir", nargs="?", metavar="RUN", help="a run folder (e.g. logs/td3/LiteScenario0-v0_1) or .zip")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--model", metavar="PATH", help="same as RUN: a run folder or a saved model .zip")
    who.add_argument("--baseline", action="store_true", help="the PID speed + pure-pursuit steering controller")
    parser.add_argument("--algo", choices=ALGO_NAMES, help="algorithm of the model (default: the run's, else td3)")
    parser.add_argument("--env", nargs="+", metavar="ID", help="env id(s) to evaluate on (default: the run's)")
    parser.add_argument("-f", "--folder", default="logs", help="log folder of train.py for --algo/--env (default: logs)")
    parser.add_argument("--exp-id", type=int, default=0, help="run number for --algo/--env (0: the latest)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--load-best", action="store_true", help="best_model.zip (best evaluation)")
    which.add_argument("--load-checkpoint", type=int, metavar="STEPS", help="rl_model_<STEPS>_steps.zip")
    which.add_argument("--load-last-checkpoint", action="store_true", help="the checkpoint with the most steps")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default: 0)")
    parser.add_argument(
        "--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE", help="env kwargs, e.g. npc_vehicles:5 (over the run's)"
    )
    parser.add_argument("--device", default="auto", help="torch device of the model (default: auto)")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the evaluation options (those of ``enjoy.py`` and ``sb3-av evaluate``) to a parser."""
    add_target_arguments(parser)
    parser.add_argument("-n", "--n-episodes", type=int, default=10, help="episodes per env (default: 10)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    parser.add_argument("--json", metavar="OUT.json", help="also write the metrics (and per-episode results) as JSON")
    parser.add_argument(
        "--video",
        metavar="OUT.mp4",
        help="also record the first --video-episodes episodes on the first env as an MP4 and a GIF beside it "
        "(deterministic actions, same seeds; see sb3-av record)",
    )
    parser.add_argument("--video-episodes", type=int, default=1, help="episodes in the --video (default: 1)")


def build_parser(prog: str = "enjoy.py") -> argparse.ArgumentParser:
    """The parser of ``enjoy.py``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_evaluate_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python enjoy.py``: evaluate, print the metrics table; the exit status of :func:`run_evaluate_command`."""
    return run_evaluate_command(build_parser().parse_args(argv))


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Evaluate what ``args`` names and print the metrics table (and write ``--json``).

    :return: 0; 2 with a one-line message on stderr for a user error or any other failure (a corrupt model file,
        a lost simulator, a missing package); 130 after Ctrl-C.
    """
    return run_user_command(_run, args, default_prog="sb3-av evaluate")


def run_user_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, default_prog: str) -> int:
    """Run ``run(args)``; every failure becomes one line on stderr (``PROG: error: ...``) and exit status 2.

    :return: ``run``'s status; 2 for a user error or any other failure (a corrupt model file, a lost simulator, a
        missing package); 130 after Ctrl-C.
    """
    prog = getattr(args, "prog", default_prog)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        message = str(exc)
    except Exception as exc:  # a corrupt model, the simulator, an import: one line, not a traceback
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def parse_env_kwargs(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key:value`` strings as data, as ``train.py --env-kwargs`` does (``npc_vehicles:5``, ``dt:5e-2``,
    ``npc_speed_range_ms:[5,9]``): Python literals or YAML, never code.

    :raises ValueError: an item without ``:`` or with an unparsable value.
    """
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition(":")
        if not sep or not key:
            raise ValueError(f"--env-kwargs item {item!r} is not key:value (e.g. npc_vehicles:5)")
        result[key] = parse_override_value(key, text)  # its ConfigError is a ValueError
    return result


def resolve_run_dir(args: argparse.Namespace) -> Path:
    """The run folder of rl-zoo's ``--algo``/``--env``/``-f``/``--exp-id`` (``--exp-id 0``: the latest run).

    :raises FileNotFoundError: no such run.
    :raises ValueError: ``--algo`` or ``--env`` missing.
    """
    if not (args.algo and args.env):
        raise ValueError("give a run folder or a .zip, --algo and --env (and -f, --exp-id) to find a run, or --baseline")
    base = Path(args.folder) / args.algo
    env_id = args.env[0]
    runs = sorted((int(p.name.rsplit("_", 1)[1]), p) for p in base.glob(f"{env_id}_*") if p.name.rsplit("_", 1)[1].isdigit())
    if not runs:
        raise FileNotFoundError(f"no run of {args.algo} on {env_id} under {base}")
    if args.exp_id == 0:
        return runs[-1][1]
    for run_id, path in runs:
        if run_id == args.exp_id:
            return path
    raise FileNotFoundError(f"run {env_id}_{args.exp_id} not found under {base}")


@dataclass
class Target:
    """What to evaluate: a model file (None: the baseline), its algorithm, the env ids and env kwargs.

    :param run_dir: the run folder the model comes from (None for a bare .zip or the baseline).
    """

    model_path: Path | None
    algo: str | None
    env_ids: list[str]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None


def resolve_target(args: argparse.Namespace) -> Target:
    """Resolve the arguments of :func:`add_target_arguments` to a :class:`Target` (run folder defaults under the
    command line's choices).

    :raises ValueError: contradictory or missing options.
    :raises FileNotFoundError: the run folder or model file does not exist.
    """
    loads = args.load_best or args.load_checkpoint is not None or args.load_last_checkpoint
    if args.baseline:
        if args.run_dir or loads:
            raise ValueError("--baseline evaluates the controller: give no run folder, model or --load-* option")
        if not args.env:
            raise ValueError("--env is required with --baseline")
        for env_id in args.env:
            _check_env_id(env_id)
        return Target(None, None, args.env, parse_env_kwargs(args.env_kwargs))
    path = Path(args.model or args.run_dir or resolve_run_dir(args))
    run = _run_info(path) if path.is_dir() else None
    if path.is_dir():
        model_path = _model_path(path, args)
    elif loads:
        raise ValueError("--load-best, --load-checkpoint and --load-last-checkpoint pick a model in a run folder, not a .zip")
    elif not path.is_file():
        raise FileNotFoundError(f"model file {path} not found (give a .zip saved by SB3 or a run folder)")
    else:
        model_path = path
    env_ids = args.env or ([run.env_id] if run else [])
    if not env_ids:
        raise ValueError("--env is required (except with a run folder of train.py)")
    env_kwargs = {**(run.env_kwargs if run else {}), **parse_env_kwargs(args.env_kwargs)}
    for env_id in env_ids:
        _check_env_id(env_id)
    return Target(model_path, args.algo or (run.algo if run else "td3"), env_ids, env_kwargs, path if path.is_dir() else None)


def _check_env_id(env_id: str) -> None:
    import sb3_av.envs

    sb3_av.envs.register_envs()
    if env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}; registered driving envs: {', '.join(sb3_av.envs.scenario_ids())}")


def _run_info(run_dir: Path) -> RunInfo | None:
    """The run's settings; None for a folder that holds models but no ``args.yml``."""
    try:
        run = read_run_info(run_dir)
    except FileNotFoundError:
        return None
    if (run_dir / run.env_id / "vecnormalize.pkl").is_file():
        raise ValueError(f"{run_dir} was trained with VecNormalize; its evaluation is not supported")
    return run


def _model_path(run_dir: Path, args: argparse.Namespace) -> Path:
    """The model of a run folder that ``--load-*`` picks (default: the final model)."""
    if args.load_best:
        path = run_dir / "best_model.zip"
    elif args.load_checkpoint is not None:
        path = run_dir / f"rl_model_{args.load_checkpoint}_steps.zip"
    elif args.load_last_checkpoint:
        checkpoints = find_checkpoints(run_dir)
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoint in {run_dir} (train with --save-freq)")
        path = checkpoints[-1][1]
    else:
        return resolve_model_path(run_dir, prefer="last")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def _run(args: argparse.Namespace) -> int:
    if args.n_episodes < 1:
        raise ValueError(f"-n must be >= 1, got {args.n_episodes}")
    target = resolve_target(args)
    if args.video_episodes < 1:
        raise ValueError(f"--video-episodes must be >= 1, got {args.video_episodes}")
    set_torch_threads()
    model = load_model(target, args.device)
    rows = [(env_id, _evaluate_on(env_id, model, target, args)) for env_id in target.env_ids]
    print(format_metrics_table(rows))
    if args.json:
        _write_json(Path(args.json), target, args, rows)
    if args.video:
        from sb3_av.record import record_target

        record_target(model, target, target.env_ids[0], Path(args.video), args.video_episodes, args.seed)
    return 0


def load_model(target: Target, device: str = "auto") -> Any:
    """The model a :class:`Target` names (None for the baseline), loaded with its algorithm's ``load``."""
    if target.model_path is None:
        return None
    assert target.algo is not None
    return get_algorithm(target.algo).load(target.model_path, device=device)


def _evaluate_on(env_id: str, model: Any, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``model`` (the baseline when None) on a new env of ``env_id``, closed afterwards."""
    env = make_env_for(env_id, model, target)
    try:
        who = target.model_path if model is not None else "the PID + pure-pursuit baseline"
        print(f"Evaluating {who} on {env_id} ({args.n_episodes} episodes, env kwargs {target.env_kwargs})")
        policy = model if model is not None else PIDPurePursuit.from_env(env)
        return evaluate(policy, env, args.n_episodes, seed=args.seed, deterministic=not args.stochastic)
    finally:
        env.close()


def make_env_for(env_id: str, model: Any, target: Target) -> gym.Env:
    """A new env of ``env_id`` with the target's env kwargs, checked against the model's observation space.

    :raises ValueError: the model was trained on another observation space (the env is closed).
    """
    env = gym.make(env_id, **target.env_kwargs)
    if model is not None and model.observation_space != env.observation_space:
        env.close()
        raise ValueError(
            f"the model's observation space {model.observation_space} does not match {env_id}'s "
            f"{env.observation_space}; use the env kwargs it was trained with"
        )
    return env


def _write_json(out: Path, target: Target, args: argparse.Namespace, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """``{model, algo | baseline, n_episodes, seed, env_kwargs, results: [{env_id, metrics...}]}``."""
    who = {"model": str(target.model_path), "algo": target.algo} if target.model_path else {"baseline": "pid_pure_pursuit"}
    payload = {
        **who,
        "n_episodes": args.n_episodes,
        "seed": args.seed,
        "env_kwargs": target.env_kwargs,
        "results": [{"env_id": env_id, **metrics} for env_id, metrics in rows],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
