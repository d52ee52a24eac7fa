"""Evaluate a saved model or the classical baseline on a driving env: driving metrics in simulation time.

``evaluate(policy, env, n_episodes)`` is the library function; ``sb3-av evaluate`` is its command line
(:func:`add_evaluate_arguments` / :func:`run_evaluate_command`).

Metrics over N episodes: success rate (route completed without a collision), route completion (0..1),
collisions per km (collisions / distance driven), off-road rate (episodes ended off road), mean speed
(distance / simulation time, m/s), mean |lateral offset| (m, over steps), mean |longitudinal jerk|
(m/s^3, from the speed in simulation time), episode length (steps and simulated seconds), mean return.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_av.baselines import PIDPurePursuit
from sb3_av.zoo.algos import ALGO_NAMES, get_algorithm

__all__ = [
    "ALGORITHMS",
    "METRIC_COLUMNS",
    "add_evaluate_arguments",
    "evaluate",
    "format_metrics_table",
    "load_model",
    "parse_env_kwargs",
    "run_evaluate_command",
]


#: ``--algo`` names of the models this command loads: sb3-av's clipped algorithms (:mod:`sb3_av.zoo.algos`).
ALGORITHMS: tuple[str, ...] = ALGO_NAMES

#: (key, column title, format) of the metrics table, in order.
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("success_rate", "success", "{:.2f}"),
    ("route_completion", "route compl.", "{:.3f}"),
    ("collisions_per_km", "coll./km", "{:.2f}"),
    ("off_road_rate", "off-road", "{:.2f}"),
    ("mean_speed_ms", "speed m/s", "{:.2f}"),
    ("mean_abs_lateral_offset_m", "abs lat. m", "{:.3f}"),
    ("mean_abs_jerk_ms3", "abs jerk m/s3", "{:.2f}"),
    ("episode_length_steps", "length steps", "{:.1f}"),
    ("episode_length_s", "length s", "{:.1f}"),
    ("mean_return", "return", "{:.1f}"),
)


def _episode(policy: Any, env: gym.Env, seed: int | None, deterministic: bool) -> dict[str, Any]:
    obs, info = env.reset(seed=seed)
    controller = isinstance(policy, PIDPurePursuit)
    if controller:
        policy.reset()
    speeds = [float(info.get("speed_ms", 0.0))]
    times = [float(info.get("sim_time_s", 0.0))]
    lateral: list[float] = []
    ret, steps, collision, off_road = 0.0, 0, False, False
    while True:
        if controller:
            action = policy.act(obs, info)
        else:
            action, _ = policy.predict(obs, deterministic=deterministic)
        obs, reward, terminated, truncated, info = env.step(action)
        ret += float(reward)
        steps += 1
        speeds.append(float(info["speed_ms"]))
        times.append(float(info["sim_time_s"]))
        lateral.append(abs(float(info["lateral_offset_m"])))
        collision = collision or bool(info["collision"])
        off_road = off_road or bool(info["off_road"])
        if terminated or truncated:
            break
    v, t = np.asarray(speeds), np.asarray(times)
    dt = np.diff(t)
    jerk = np.array([])
    if len(v) >= 3 and np.all(dt > 0):
        accel = np.diff(v) / dt
        jerk = np.diff(accel) / dt[1:]
    return {
        "seed": seed,
        "return": ret,
        "steps": steps,
        "sim_time_s": float(t[-1] - t[0]),
        "distance_m": float(info["distance_m"]),
        "route_completion": float(info["route_completion"]),
        "is_success": bool(info["is_success"]),
        "collision": collision,
        "off_road": off_road,
        "termination": info.get("termination"),
        "mean_abs_lateral_offset_m": float(np.mean(lateral)) if lateral else 0.0,
        "sum_abs_lateral_offset_m": float(np.sum(lateral)),
        "sum_abs_jerk": float(np.sum(np.abs(jerk))),
        "n_jerk": len(jerk),
    }


def evaluate(
    policy_or_model: Any,
    env: gym.Env,
    n_episodes: int,
    seed: int | None = None,
    deterministic: bool = True,
) -> dict[str, Any]:
    """Run N episodes and return driving metrics (simulation time, distance driven).

    :param policy_or_model: an SB3 model (anything with ``predict(obs, deterministic=...)``) or a
        :class:`~sb3_av.baselines.PIDPurePursuit` (given each step's ``info``).
    :param env: a (non-vectorised) driving env of the contract.
    :param n_episodes: number of episodes, >= 1.
    :param seed: episode ``i`` is reset with ``seed + i`` (reproducible); None: unseeded.
    :param deterministic: deterministic actions for models.
    :return: ``success_rate``, ``route_completion``, ``collisions_per_km`` (NaN when nothing was driven),
        ``off_road_rate``, ``mean_speed_ms``, ``mean_abs_lateral_offset_m``, ``mean_abs_jerk_ms3``,
        ``episode_length_steps``, ``episode_length_s``, ``mean_return``, ``std_return``, ``distance_km``,
        ``collisions``, ``n_episodes``, ``terminations`` (reason -> count) and ``episodes`` (per episode).
    :raises ValueError: ``n_episodes < 1``.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    episodes = [_episode(policy_or_model, env, None if seed is None else seed + i, deterministic) for i in range(n_episodes)]
    distance_m = sum(e["distance_m"] for e in episodes)
    sim_time = sum(e["sim_time_s"] for e in episodes)
    steps = sum(e["steps"] for e in episodes)
    collisions = sum(int(e["collision"]) for e in episodes)
    n_jerk = sum(e["n_jerk"] for e in episodes)
    returns = [e["return"] for e in episodes]
    return {
        "n_episodes": n_episodes,
        "success_rate": float(np.mean([e["is_success"] for e in episodes])),
        "route_completion": float(np.mean([e["route_completion"] for e in episodes])),
        "collisions_per_km": collisions / (distance_m / 1000.0) if distance_m > 0 else math.nan,
        "off_road_rate": float(np.mean([e["off_road"] for e in episodes])),
        "mean_speed_ms": distance_m / sim_time if sim_time > 0 else 0.0,
        "mean_abs_lateral_offset_m": sum(e["sum_abs_lateral_offset_m"] for e in episodes) / steps,
        "mean_abs_jerk_ms3": sum(e["sum_abs_jerk"] for e in episodes) / n_jerk if n_jerk else 0.0,
        "episode_length_steps": steps / n_episodes,
        "episode_length_s": sim_time / n_episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "distance_km": distance_m / 1000.0,
        "collisions": collisions,
        "terminations": dict(Counter(str(e["termination"]) for e in episodes)),
        "episodes": [{k: v for k, v in e.items() if not k.startswith(("sum_", "n_jerk"))} for e in episodes],
    }


def format_metrics_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table of metrics, one row per ``(label, metrics)``.

    :param rows: labels (e.g. env ids) and the dicts :func:`evaluate` returned.
    """
    head = "| env | episodes | " + " | ".join(title for _, title, _ in METRIC_COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(METRIC_COLUMNS)
    lines = [head, rule]
    for label, metrics in rows:
        cells = [fmt.format(metrics[key]) for key, _, fmt in METRIC_COLUMNS]
        lines.append(f"| {label} | {metrics['n_episodes']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def parse_env_kwargs(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key:value`` strings as data, as ``train.py --env-kwargs`` does (``npc_vehicles:5``, ``dt:5e-2``,
    ``npc_speed_range_ms:[5,9]``): Python literals or YAML, never code.

    :raises ValueError: an item without ``:`` or with an unparsable value.
    """
    from sb3_av.zoo.config import parse_override_value

    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition(":")
        if not sep or not key:
            raise ValueError(f"--env-kwargs item {item!r} is not key:value (e.g. npc_vehicles:5)")
        result[key] = parse_override_value(key, text)  # its ConfigError is a ValueError
    return result


def load_model(path: str | Path, algo: str, device: str = "auto") -> Any:
    """Load a saved model (``.zip``) or the model of a run folder (``best_model.zip`` first).

    :param path: a ``.zip`` or a run folder.
    :param algo: a key of :data:`ALGORITHMS`.
    :param device: torch device.
    :raises FileNotFoundError: no such file / no model in the folder.
    :raises ValueError: unknown algorithm.
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown --algo {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    path = Path(path)
    if path.is_dir():
        from sb3_av.zoo.run_folder import resolve_model_path

        path = resolve_model_path(path, prefer="best")
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found (give a .zip saved by SB3 or a run folder)")
    return get_algorithm(algo).load(path, device=device)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sb3-av evaluate`` options to a parser."""
    parser.add_argument(
        "--env", nargs="+", metavar="ID", help="env id(s), e.g. LiteScenario0-v0 (default for a run folder: the run's)"
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="PATH", help="a saved model .zip, or a run folder (its best_model.zip)")
    who.add_argument("--baseline", action="store_true", help="the PID speed + pure-pursuit steering controller")
    parser.add_argument(
        "--algo", choices=sorted(ALGORITHMS), help="algorithm of --model (default: the run folder's, else td3)"
    )
    parser.add_argument("-n", "--n-episodes", type=int, default=10, help="episodes per env (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (default: 0)")
    parser.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        metavar="KEY:VALUE",
        help="env kwargs, e.g. npc_vehicles:5 (on top of a run folder's own)",
    )
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    parser.add_argument("--device", default="auto", help="torch device for --model (default: auto)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the metrics (and per-episode results) as JSON")


def _fail(message: str) -> int:
    print(f"sb3-av evaluate: error: {message}", file=sys.stderr)
    return 2


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Run ``sb3-av evaluate``: print a metrics table; exit 0, or 2 with a one-line message on bad input."""
    import sb3_av.envs

    sb3_av.envs.register_envs()
    if args.n_episodes < 1:
        return _fail(f"-n must be >= 1, got {args.n_episodes}")
    run_env_kwargs: dict[str, Any] = {}
    if args.model is not None and Path(args.model).is_dir():
        # a run folder of train.py: its algorithm, env id and env kwargs are the defaults
        from sb3_av.zoo.run_folder import read_run_info

        try:
            run = read_run_info(args.model)
        except FileNotFoundError:  # a folder holding a model but no args.yml: no defaults
            run = None
        except (KeyError, ValueError) as exc:
            return _fail(f"{args.model}: unreadable run settings: {exc}")
        if run is not None:
            args.algo = args.algo or run.algo
            args.env = args.env or [run.env_id]
            run_env_kwargs = run.env_kwargs
    args.algo = args.algo or "td3"
    if not args.env:
        return _fail("--env is required (except with a run folder as --model)")
    for env_id in args.env:
        if env_id not in gym.registry:
            known = ", ".join(sb3_av.envs.scenario_ids())
            return _fail(f"unknown env id {env_id!r}; registered driving envs: {known}")
    try:
        env_kwargs = {**run_env_kwargs, **parse_env_kwargs(args.env_kwargs)}
        model = None if args.baseline else load_model(args.model, args.algo, args.device)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # a corrupt or foreign .zip: SB3 raises many kinds
        return _fail(f"cannot load model {args.model} with --algo {args.algo}: {type(exc).__name__}: {exc}")
    try:
        rows = _evaluate_envs(args, model, env_kwargs)
    except _UserError as exc:
        return _fail(str(exc))
    except Exception as exc:  # a simulator that is not there (CARLA), a missing package, ...
        return _fail(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    print(format_metrics_table(rows))
    if args.json:
        who = {"baseline": "pid_pure_pursuit"} if args.baseline else {"model": str(args.model), "algo": args.algo}
        payload = {
            **who,
            "n_episodes": args.n_episodes,
            "seed": args.seed,
            "env_kwargs": env_kwargs,
            "results": [{"env_id": env_id, **metrics} for env_id, metrics in rows],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=_json_default))
    return 0


class _UserError(Exception):
    """A problem with the command's input, reported on one line."""


def _evaluate_envs(args: argparse.Namespace, model: Any, env_kwargs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Evaluate ``model`` (or the baseline when None) on each env of ``args.env``; each env is closed after use."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for env_id in args.env:
        try:
            env = gym.make(env_id, **env_kwargs)
        except ValueError as exc:
            raise _UserError(str(exc).splitlines()[0]) from None
        try:
            if model is not None and model.observation_space != env.observation_space:
                raise _UserError(
                    f"the model's observation space {model.observation_space} does not match {env_id}'s "
                    f"{env.observation_space}; use the env kwargs it was trained with"
                )
            policy = model if model is not None else PIDPurePursuit.from_env(env)
            rows.append((env_id, evaluate(policy, env, args.n_episodes, seed=args.seed, deterministic=not args.stochastic)))
        finally:
            env.close()
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":  # ``python -m sb3_av.evaluation ...`` = ``sb3-av evaluate ...``
    _parser = argparse.ArgumentParser(prog="python -m sb3_av.evaluation", description=__doc__.splitlines()[0])
    add_evaluate_arguments(_parser)
    sys.exit(run_evaluate_command(_parser.parse_args()))
