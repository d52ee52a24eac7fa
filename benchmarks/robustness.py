"""Robustness: trained agents and the PID baseline on variations of their scenario they were not trained on.

Each variation is a dict of env kwargs on top of the base scenario (and the run's own env kwargs): NPC speeds
slower and faster than in training, NPC counts between and beyond the scenarios' 20 / 50 / 100, traffic rules of the
harder scenarios (lane changes, slow leaders; skipped when the env has no such kwarg), another route lane, a
tighter and a wider turn, narrower lanes, camera noise and dropped frames (``camera_noise_std``,
``frame_drop_prob``). Every model (several run folders or ``.zip`` files = several seeds) and the PID + pure-pursuit
baseline drive the same ``-n`` episodes per variation (episode i uses seed ``--seed + i``; the default 20000 is
disjoint from the training and evaluation seeds of ``train.py``). The table gives success (model: mean and min over
the models), collisions per km, mean speed and mean |jerk|, model and PID, and marks with ``NO`` a variation where
the PID still succeeds in >= 90% of the episodes and the models' mean success is below 90%. A variation that the env
rejects (an unknown kwarg, or NPCs that do not fit on the road) is reported as skipped, with the env's message.

    python benchmarks/robustness.py logs/td3/LiteScenario0-v0_1 logs/td3/LiteScenario0-v0_2 -n 20 \\
        --out benchmarks/results/robustness_lite0.json
    python benchmarks/robustness.py RUN --variations scenario camera_noise_16 --add 'npc_60={"npc_vehicles": 60}'
    python benchmarks/robustness.py --env LiteScenario1-v0 -n 20          # the PID baseline alone
    python benchmarks/robustness.py --merge seed0.json seeds1_2.json --out all.json   # models run at other times
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import sb3_av  # noqa: F401  (registers the envs)
from sb3_av.baselines import PIDPurePursuit
from sb3_av.compute import set_torch_threads
from sb3_av.evaluation import evaluate
from sb3_av.zoo.enjoy import Target, load_model, make_env_for, parse_env_kwargs, resolve_target

#: The variations, by name: env kwargs on top of the base scenario. ``scenario`` is the base itself.
VARIATIONS: dict[str, dict[str, Any]] = {
    "scenario": {},
    "npc_slower": {"npc_speed_range_ms": [4.0, 7.0]},  # training: [7, 11] m/s, the ego's target 8 m/s
    "npc_faster": {"npc_speed_range_ms": [11.0, 15.0]},
    "npc_35": {"npc_vehicles": 35},  # between LiteScenario0 (20) and 1 (50)
    "npc_75": {"npc_vehicles": 75},  # between LiteScenario1 (50) and 2 (100)
    "npc_130": {"npc_vehicles": 130},  # beyond LiteScenario2: fits the 4-lane road (12 m apart) for 200 of 200 seeds,
    # 140 fails on 3 of 100 and 150 on most
    "npc_lane_changes": {"npc_lane_changes": True},  # the traffic of LiteScenario1/2
    "slow_leader": {"slow_npcs_ahead": 1},
    "route_lane_0": {"route_lane": 0},  # training: lane 1 (0 = leftmost, inside of the left turn)
    "route_lane_2": {"route_lane": 2},
    "turn_radius_15": {"turn_radius_m": 15.0},  # training: 20 m
    "turn_radius_30": {"turn_radius_m": 30.0},
    "lane_width_3.5": {"lane_width_m": 3.5},  # training: 4 m
    "camera_noise_8": {"camera_noise_std": 8.0},  # grey levels of Gaussian pixel noise
    "camera_noise_16": {"camera_noise_std": 16.0},
    "frame_drop_0.1": {"frame_drop_prob": 0.1},  # the camera repeats its previous frame
    "frame_drop_0.3": {"frame_drop_prob": 0.3},
}

#: The success rate the PID must reach for a variation to count, and the models' mean success it asks of them.
THRESHOLD = 0.9

#: The metrics kept per evaluation (key of :func:`sb3_av.evaluation.evaluate`'s result).
METRICS: tuple[str, ...] = (
    "success_rate",
    "route_completion",
    "collisions_per_km",
    "off_road_rate",
    "mean_speed_ms",
    "mean_abs_jerk_ms3",
    "mean_abs_lateral_offset_m",
    "episode_length_steps",
    "distance_km",
    "collisions",
    "terminations",
)


def resolve_models(
    paths: Sequence[str], algo: str | None, env: str | None, env_kwargs: list[str], load_best: bool
) -> list[Target]:
    """The :class:`~sb3_av.zoo.enjoy.Target` of each run folder or ``.zip`` (as ``enjoy.py`` resolves them)."""
    targets = []
    for path in paths:
        args = argparse.Namespace(
            run_dir=path,
            model=None,
            baseline=False,
            algo=algo,
            env=[env] if env else None,
            folder="logs",
            exp_id=0,
            load_best=load_best,
            load_checkpoint=None,
            load_last_checkpoint=False,
            env_kwargs=env_kwargs,
        )
        targets.append(resolve_target(args))
    return targets


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The kept metrics of one :func:`evaluate` result, plus the per-episode seeds and outcomes."""
    result = {key: metrics[key] for key in METRICS}
    result["episodes"] = [
        {"seed": e["seed"], "is_success": e["is_success"], "termination": e.get("termination")} for e in metrics["episodes"]
    ]
    return result


def _rejection(env_id: str, env_kwargs: dict[str, Any], seed: int) -> str | None:
    """The env's message when it rejects these kwargs (on make or on the first reset), else None."""
    try:
        env = gym.make(env_id, **env_kwargs)
    except ValueError as exc:
        return str(exc)
    try:
        env.reset(seed=seed)
    except ValueError as exc:
        return str(exc)
    finally:
        env.close()
    return None


def evaluate_pid(env_id: str, env_kwargs: dict[str, Any], n_episodes: int, seed: int) -> dict[str, Any]:
    """The PID + pure-pursuit baseline on ``env_id`` with ``env_kwargs`` (its control period: dt x action_repeat)."""
    env = gym.make(env_id, **env_kwargs)
    try:
        return evaluate(PIDPurePursuit.from_env(env), env, n_episodes, seed=seed)
    finally:
        env.close()


def evaluate_model(model: Any, target: Target, env_id: str, variation: dict[str, Any], n_episodes: int, seed: int) -> dict:
    """A model on ``env_id`` with its run's env kwargs and the variation's (checked against its observation space)."""
    env = make_env_for(env_id, model, replace(target, env_kwargs={**target.env_kwargs, **variation}))
    try:
        return evaluate(model, env, n_episodes, seed=seed)
    finally:
        env.close()


def run_variation(
    name: str,
    variation: dict[str, Any],
    env_id: str,
    models: list[tuple[Target, Any]],
    base_kwargs: dict[str, Any],
    n_episodes: int,
    seed: int,
) -> dict[str, Any]:
    """One row: the models' and the PID's metrics on one variation (or why it was skipped)."""
    row: dict[str, Any] = {"name": name, "env_kwargs": variation}
    skipped = _rejection(env_id, {**base_kwargs, **variation}, seed)
    if skipped is not None:
        return {**row, "skipped": skipped}
    try:
        pid = _summary(evaluate_pid(env_id, {**base_kwargs, **variation}, n_episodes, seed))
        per_model = [_summary(evaluate_model(m, t, env_id, variation, n_episodes, seed)) for t, m in models]
    except ValueError as exc:  # e.g. NPCs that do not fit on the road for a later seed
        return {**row, "skipped": str(exc)}
    row["pid"] = pid
    row["models"] = per_model
    return _with_model_summary(row)


def _with_model_summary(row: dict[str, Any]) -> dict[str, Any]:
    """The row with the models' mean metrics, their minimum success and the verdict (when it has models)."""
    per_model, pid = row["models"], row["pid"]
    if per_model:
        keys = ("success_rate", "route_completion", "collisions_per_km", "mean_speed_ms", "mean_abs_jerk_ms3")
        row["model"] = {key: _nanmean([m[key] for m in per_model]) for key in keys}
        row["model"]["success_rate_min"] = min(m["success_rate"] for m in per_model)
        row["holds_up"] = None if pid["success_rate"] < THRESHOLD else row["model"]["success_rate"] >= THRESHOLD
    return row


#: What result files must share to be merged: the base scenario and the episodes every policy drove.
MERGE_KEYS = ("env_id", "env_kwargs", "n_episodes", "seed", "threshold")


def merge_results(payloads: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One result from several ``--out`` files of other models on the same episodes (models run at different times).

    A row's models are those of the files that ran its variation (``row["model_paths"]`` names them), in file order;
    the PID's row is the first file's, after checking that every file's PID ended the same episodes the same way.

    :param payloads: ``(file name, parsed --out JSON)`` pairs.
    :raises ValueError: the files differ in a :data:`MERGE_KEYS` entry, a variation's env kwargs, or the PID's episodes.
    """
    (first_name, first), *rest = payloads
    for name, payload in rest:
        for key in MERGE_KEYS:
            if payload.get(key) != first.get(key):
                raise ValueError(
                    f"{name} has {key}={payload.get(key)!r}, {first_name} {first.get(key)!r}: not the same episodes"
                )
    rows: dict[str, dict[str, Any]] = {}
    for name, payload in payloads:
        for row in payload["rows"]:
            merged = rows.get(row["name"])
            if merged is not None and merged["env_kwargs"] != row["env_kwargs"]:
                raise ValueError(f"{name}: variation {row['name']!r} is {row['env_kwargs']}, elsewhere {merged['env_kwargs']}")
            if "skipped" in row:
                rows.setdefault(row["name"], dict(row))
                continue
            if merged is None or "skipped" in merged:
                rows[row["name"]] = merged = {**row, "models": [], "model_paths": []}
            elif _episode_outcomes(merged["pid"]) != _episode_outcomes(row["pid"]):
                raise ValueError(f"{name}: the PID's episodes of {row['name']!r} ended otherwise than in {first_name}")
            merged["models"].extend(row.get("models", []))
            # a merged file's row names its own models (it may not have run with every model of that file)
            merged["model_paths"].extend(row.get("model_paths", payload["models"]))
    # each model once, with its algo, though several files ran it (on other variations)
    algo_of_model = {
        path: algo
        for _, payload in payloads
        for path, algo in zip(payload["models"], payload.get("algos") or [None] * len(payload["models"]), strict=True)
    }
    return {
        **{key: first.get(key) for key in MERGE_KEYS},
        "models": list(algo_of_model),
        "algos": list(algo_of_model.values()),
        "merged_from": [name for name, _ in payloads],
        "rows": [row if "skipped" in row else _with_model_summary(row) for row in rows.values()],
    }


def _episode_outcomes(metrics: dict[str, Any]) -> list[tuple[int, str]]:
    return [(episode["seed"], episode["termination"]) for episode in metrics.get("episodes", [])]


def _nanmean(values: list[float]) -> float:
    """The mean of the values that are not NaN (collisions per km is NaN for a model that never moved); NaN if none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def format_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run_variation` rows."""
    has_models = any("model" in row for row in rows)
    if has_models:
        head = (
            "| variation | env kwargs | success model mean (min) | PID | coll./km model | PID | speed m/s model | PID "
            f"| abs jerk m/s3 model | PID | holds up (PID >= {THRESHOLD}) |"
        )
        rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    else:
        head, rule = (
            "| variation | env kwargs | success PID | coll./km PID | speed m/s PID | abs jerk m/s3 PID |",
            "|---|---|---:|---:|---:|---:|",
        )
    lines = [head, rule]
    for row in rows:
        kwargs = ", ".join(f"{k}={v}" for k, v in row["env_kwargs"].items()) or "(base)"
        if "skipped" in row:
            reason = " ".join(row["skipped"].split())
            lines.append(f"| {row['name']} | {kwargs} | skipped: {reason[:160]} |")
            continue
        pid = row["pid"]
        if not has_models:
            lines.append(
                f"| {row['name']} | {kwargs} | {pid['success_rate']:.2f} | {pid['collisions_per_km']:.2f} | "
                f"{pid['mean_speed_ms']:.2f} | {pid['mean_abs_jerk_ms3']:.2f} |"
            )
            continue
        model = row["model"]
        verdict = {None: "-", True: "yes", False: "**NO**"}[row["holds_up"]]
        lines.append(
            f"| {row['name']} | {kwargs} | {model['success_rate']:.2f} ({model['success_rate_min']:.2f}) | "
            f"{pid['success_rate']:.2f} | {model['collisions_per_km']:.2f} | {pid['collisions_per_km']:.2f} | "
            f"{model['mean_speed_ms']:.2f} | {pid['mean_speed_ms']:.2f} | {model['mean_abs_jerk_ms3']:.2f} | "
            f"{pid['mean_abs_jerk_ms3']:.2f} | {verdict} |"
        )
    return "\n".join(lines)


def _parse_added(items: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME={"key": value, ...}`` items (JSON objects) as variations."""
    added: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            value = json.loads(text) if sep and name else None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--add {item!r}: the part after = is not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(
                f"--add {item!r} is not NAME={{JSON object of env kwargs}}, e.g. 'npc_60={{\"npc_vehicles\": 60}}'"
            )
        added[name] = value
    return added


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="RUN", help="run folders or .zip files (several: several seeds)")
    parser.add_argument("--env", help="the base scenario (default: the first run's env id; required without a run folder)")
    parser.add_argument("--algo", help="algorithm of .zip models (default: the run's, else td3)")
    parser.add_argument("--load-best", action="store_true", help="best_model.zip of each run folder")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE", help="env kwargs under every variation")
    parser.add_argument("-n", "--n-episodes", type=int, default=10, help="episodes per variation and policy (default: 10)")
    parser.add_argument("--seed", type=int, default=20000, help="episode i uses seed + i (default: 20000)")
    parser.add_argument(
        "--variations", nargs="+", metavar="NAME", help=f"which variations (default: all): {', '.join(VARIATIONS)}"
    )
    parser.add_argument(
        "--add", nargs="*", default=[], metavar="NAME=JSON", help="more variations, e.g. 'npc_60={\"npc_vehicles\": 60}'"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: sb3-av's choice)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="instead of evaluating: one table from --out files of other models on the same episodes",
    )
    return parser


def _merge_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.models:
        raise SystemExit("robustness.py: error: --merge takes result files, not models")
    try:
        payloads = [(str(path), json.loads(path.read_text())) for path in args.merge]
        merged = merge_results(payloads)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        raise SystemExit(f"robustness.py: error: --merge: {exc}") from None
    print(f"{len(merged['models'])} model(s) and the PID baseline on {merged['env_id']} (merged)\n")
    print(format_table(merged["rows"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(merged, indent=2, default=_json_default))
    return merged["rows"]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    if args.merge:
        return _merge_main(args)
    if args.n_episodes < 1:
        raise SystemExit(f"-n must be >= 1, got {args.n_episodes}")
    variations = dict(VARIATIONS)
    try:
        added = _parse_added(args.add)
        unknown = sorted(set(args.variations or []) - set(variations) - set(added))
        if unknown:
            raise ValueError(f"unknown variation(s) {', '.join(unknown)}; known: {', '.join([*variations, *added])}")
        targets = resolve_models(args.models, args.algo, args.env, args.env_kwargs, args.load_best)
        env_id = args.env or (targets[0].env_ids[0] if targets else None)
        if env_id is None:
            raise ValueError("give run folders or .zip files, or --env for the PID baseline alone")
        base_kwargs = targets[0].env_kwargs if targets else parse_env_kwargs(args.env_kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"robustness.py: error: {exc}") from None
    chosen = {name: variations[name] for name in args.variations if name in variations} if args.variations else variations
    chosen.update(added)
    set_torch_threads(args.threads)
    models = [(t, load_model(t, device="cpu")) for t in targets]
    rows = []
    for name, variation in chosen.items():
        print(f"{name}: {variation or '(base)'}", file=sys.stderr, flush=True)
        rows.append(run_variation(name, variation, env_id, models, base_kwargs, args.n_episodes, args.seed))
    who = f"{len(models)} model(s) and the PID baseline" if models else "the PID baseline"
    print(f"{who} on {env_id}, {args.n_episodes} episodes per variation from seed {args.seed}, env kwargs {base_kwargs}\n")
    print(format_table(rows))
    if args.out is not None:
        payload = {
            "env_id": env_id,
            "models": [str(t.model_path) for t in targets],
            "algos": [t.algo for t in targets],
            "env_kwargs": base_kwargs,
            "n_episodes": args.n_episodes,
            "seed": args.seed,
            "threshold": THRESHOLD,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2, default=_json_default))
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
