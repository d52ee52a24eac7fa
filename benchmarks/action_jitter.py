"""Where a driving policy's jerk comes from: its actor head's output against the action the env executes.

sb3-av's TD3 policy can smooth its actions (``action_smoothing``: ``action = (1 - beta) * head + beta * previous
action``, the previous action read from the observation). The longitudinal jerk the evaluation reports comes from
how much the executed throttle_brake moves from one agent step to the next, which is ``(1 - beta)`` times how far the
head's output is from the previous action. This drives a saved model deterministically for a few episodes and
reports, for each control, per agent step:

- ``|head - previous|`` and ``|action - previous|`` (the head's jitter, and what the filter passes of it),
- ``|head - PID|``, ``|action - PID|`` and ``|PID change|``: the PID baseline's answer in the same states (the teacher
  of the Lite recipe; it is fed each step's ``info`` as in training, and only labels: the model drives),
- the share of steps at which the head is saturated (``|head| >= 0.95``),

and the episodes' mean |jerk| (m/s^3, :func:`sb3_av.evaluation.evaluate`'s definition).

    python benchmarks/action_jitter.py models/sb3av_seed0.zip --env LiteScenario2-v0 --episodes 2 --seed 10000
    python benchmarks/action_jitter.py MODEL --action-smoothing 0.7 0.95   # the same head, another filter

``--action-smoothing`` evaluates the saved head with another filter than it was trained with (a diagnostic: the
head's outputs were learned for its own filter).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th

import sb3_av  # noqa: F401  (registers the env ids)
from sb3_av.baselines import PIDPurePursuit
from sb3_av.evaluation import EpisodeMetrics
from sb3_av.td3 import ClippedTD3
from sb3_av.td3.policies import EncoderActor, previous_action

CONTROLS = ("steer", "throttle_brake")


def measure(model: ClippedTD3, env: gym.Env, episodes: int, seed: int) -> dict[str, Any]:
    """Drive ``episodes`` episodes of ``env`` (seeds ``seed``, ``seed + 1``, ...) with ``model`` and return the
    per-control means (see the module docstring) and the mean |jerk| over the episodes.

    :raises ValueError: the model's actor does not smooth through its head (not an sb3-av driving policy).
    """
    actor = model.policy.actor
    if not isinstance(actor, EncoderActor):
        raise ValueError(f"the model's actor is {type(actor).__name__}, not sb3-av's EncoderActor")
    pid = PIDPurePursuit.from_env(env)
    rows: list[np.ndarray] = []  # per step: head, action, previous, pid (each (2,))
    jerk_sum, jerk_n = 0.0, 0
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        pid.reset()
        metrics = EpisodeMetrics()
        metrics.start(info)
        done = False
        while not done:
            tensor_obs, _ = model.policy.obs_to_tensor(obs)
            with th.no_grad():
                head, action = actor.head_and_actions(tensor_obs)
            pid_action = model.policy.scale_action(np.asarray(pid.act(obs, info), dtype=np.float32)[None])[0]
            previous = previous_action(tensor_obs)[0].numpy()  # what the filter blends with
            rows.append(np.stack([head[0].numpy(), action[0].numpy(), previous, pid_action]))
            obs, _, terminated, truncated, info = env.step(model.policy.unscale_action(action.numpy())[0])
            metrics.add(info)
            done = terminated or truncated
        summary = metrics.finish()
        jerk_sum += summary.get("sum_abs_jerk", 0.0)
        jerk_n += summary.get("n_jerk", 0)
    steps = np.stack(rows)  # (n, 4, 2)
    head, action, previous, pid_action = (steps[:, i] for i in range(4))
    per_control = {
        name: {
            "head_minus_previous": float(np.abs(head[:, j] - previous[:, j]).mean()),
            "action_minus_previous": float(np.abs(action[:, j] - previous[:, j]).mean()),
            "head_minus_pid": float(np.abs(head[:, j] - pid_action[:, j]).mean()),
            "action_minus_pid": float(np.abs(action[:, j] - pid_action[:, j]).mean()),
            "pid_change": float(np.abs(np.diff(pid_action[:, j])).mean()),
            "head_saturated_share": float((np.abs(head[:, j]) >= 0.95).mean()),
        }
        for j, name in enumerate(CONTROLS)
    }
    return {"steps": len(steps), "mean_abs_jerk_ms3": jerk_sum / max(jerk_n, 1), "controls": per_control}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved sb3-av TD3 model (.zip)")
    parser.add_argument("--env", default="LiteScenario2-v0", help="env id (default: LiteScenario2-v0)")
    parser.add_argument("--action-repeat", type=int, default=2, help="the agent's control period (default 2)")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=10000, help="first episode seed (default 10000)")
    parser.add_argument(
        "--action-smoothing", type=float, nargs=2, metavar=("STEER", "THROTTLE"), help="evaluate with this filter"
    )
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no such model file: {args.model}")
    if args.episodes < 1 or args.action_repeat < 1:
        parser.error("--episodes and --action-repeat must be >= 1")
    if args.action_smoothing and not all(0.0 <= b < 1.0 for b in args.action_smoothing):
        parser.error(f"--action-smoothing values must be in [0, 1), got {args.action_smoothing}")
    if args.env not in gym.registry:
        parser.error(f"unknown env id {args.env!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    model = ClippedTD3.load(args.model, device="cpu")
    if args.action_smoothing and isinstance(model.policy.actor, EncoderActor):  # else measure() says what is wrong
        model.policy.actor.set_action_smoothing(tuple(args.action_smoothing))
    env = gym.make(args.env, action_repeat=args.action_repeat)
    try:
        result = measure(model, env, args.episodes, args.seed)
    except ValueError as error:
        raise SystemExit(f"action_jitter.py: {error}") from None
    finally:
        env.close()
    betas = getattr(model.policy.actor, "action_smoothing", None)
    print(f"{args.model} on {args.env}, {args.episodes} episodes from seed {args.seed}, action_smoothing {betas}")
    print(f"{result['steps']} agent steps, mean |jerk| {result['mean_abs_jerk_ms3']:.2f} m/s^3")
    print("| control | head - previous | action - previous | head - PID | action - PID | PID change | head saturated |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, c in result["controls"].items():
        print(
            f"| {name} | {c['head_minus_previous']:.3f} | {c['action_minus_previous']:.4f} | {c['head_minus_pid']:.3f} "
            f"| {c['action_minus_pid']:.3f} | {c['pid_change']:.4f} | {c['head_saturated_share']:.2f} |"
        )
    return result


if __name__ == "__main__":
    main()
