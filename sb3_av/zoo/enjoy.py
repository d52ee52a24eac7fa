"""``python enjoy.py``: evaluate a trained run with the driving metrics of :mod:`sb3_av.evaluation`.

rl-zoo's habits: give the run folder (``python enjoy.py logs/td3/LiteScenario0-v0_1``) or ``--algo``/``--env``/
``-f``/``--exp-id`` (0: the latest run); ``--load-best``, ``--load-checkpoint N``, ``--load-last-checkpoint`` pick
the model (default: the final model, else the last checkpoint). The env is built with the env kwargs the run
trained with (``config.yml``), updated by ``--env-kwargs``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from sb3_av.zoo.algos import ALGO_NAMES, get_algorithm
from sb3_av.zoo.config import ConfigError, parse_override_value
from sb3_av.zoo.run_folder import find_checkpoints, read_run_info, resolve_model_path

__all__ = ["build_parser", "main", "resolve_run_dir"]


def build_parser() -> argparse.ArgumentParser:
    """The ``enjoy.py`` parser."""
    parser = argparse.ArgumentParser(prog="enjoy.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="run folder, e.g. logs/td3/LiteScenario0-v0_1")
    parser.add_argument("--algo", choices=ALGO_NAMES, help="with --env: find the run under -f (rl-zoo style)")
    parser.add_argument("--env", help="env id of the run (with --algo); also evaluates a run on another env id")
    parser.add_argument("-f", "--folder", default="logs", help="log folder of train.py (default: logs)")
    parser.add_argument("--exp-id", type=int, default=0, help="run number (0: the latest)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--load-best", action="store_true", help="best_model.zip (best evaluation)")
    which.add_argument("--load-checkpoint", type=int, metavar="STEPS", help="rl_model_<STEPS>_steps.zip")
    which.add_argument("--load-last-checkpoint", action="store_true", help="the checkpoint with the most steps")
    parser.add_argument("-n", "--n-episodes", type=int, default=10, help="episodes (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default: 0)")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE", help="override env kwargs of the run")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    parser.add_argument("--device", default="auto", help="torch device (default: auto)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the metrics as JSON")
    return parser


def resolve_run_dir(args: argparse.Namespace) -> Path:
    """The run folder named by ``run_dir`` or by ``--algo``/``--env``/``-f``/``--exp-id``.

    :raises FileNotFoundError: no such run.
    :raises ValueError: neither form given.
    """
    if args.run_dir:
        return Path(args.run_dir)
    if not (args.algo and args.env):
        raise ValueError("give a run folder, or --algo and --env (and -f, --exp-id) to find one")
    base = Path(args.folder) / args.algo
    runs = sorted((int(p.name.rsplit("_", 1)[1]), p) for p in base.glob(f"{args.env}_*") if p.name.rsplit("_", 1)[1].isdigit())
    if not runs:
        raise FileNotFoundError(f"no run of {args.algo} on {args.env} under {base}")
    if args.exp_id == 0:
        return runs[-1][1]
    for run_id, path in runs:
        if run_id == args.exp_id:
            return path
    raise FileNotFoundError(f"run {args.env}_{args.exp_id} not found under {base}")


def _model_path(run_dir: Path, args: argparse.Namespace) -> Path:
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


def _env_kwargs(items: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition(":")
        if not sep or not key:
            raise ValueError(f"--env-kwargs item {item!r} is not key:value (e.g. npc_vehicles:5)")
        result[key] = parse_override_value(key, text)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a run; print the metrics table.

    :return: 0; 2 with a one-line message on stderr for a user error or any other failure (a corrupt model file,
        a lost simulator, a missing package); 130 after Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("enjoy.py: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ConfigError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # a corrupt model, the simulator, an import: one line, not a traceback
        return _fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _fail(message: str) -> int:
    print(f"enjoy.py: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    import sb3_av.envs
    from sb3_av.evaluation import evaluate, format_metrics_table

    sb3_av.envs.register_envs()
    if args.n_episodes < 1:
        raise ValueError(f"-n must be >= 1, got {args.n_episodes}")
    run_dir = resolve_run_dir(args)
    info = read_run_info(run_dir)
    if (run_dir / info.env_id / "vecnormalize.pkl").is_file():
        raise ValueError(f"{run_dir} was trained with VecNormalize; its evaluation is not supported")
    env_id = args.env or info.env_id
    if env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}; registered driving envs: {', '.join(sb3_av.envs.scenario_ids())}")
    model_path = _model_path(run_dir, args)
    env_kwargs = {**info.env_kwargs, **_env_kwargs(args.env_kwargs)}
    model = get_algorithm(info.algo).load(model_path, device=args.device)
    env = gym.make(env_id, **env_kwargs)
    try:
        if model.observation_space != env.observation_space:
            raise ValueError(
                f"the model's observation space {model.observation_space} does not match the env's {env.observation_space}"
            )
        print(f"Evaluating {model_path} on {env_id} ({args.n_episodes} episodes, env kwargs {env_kwargs})")
        metrics = evaluate(model, env, args.n_episodes, seed=args.seed, deterministic=not args.stochastic)
    finally:
        env.close()
    print(format_metrics_table([(env_id, metrics)]))
    if args.json:
        payload = {"model": str(model_path), "algo": info.algo, "env_id": env_id, "env_kwargs": env_kwargs, **metrics}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=lambda v: getattr(v, "item", lambda: str(v))()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
