"""Proof of learning: sb3-av's recommended TD3 vs SB3's default TD3 vs the PID baseline, same env-step budget.

Each learned configuration trains on ``--env`` (default ``LiteScenario0-v0``) for ``--budget`` environment steps,
once per seed, then is evaluated deterministically on ``--eval-episodes`` episodes whose seeds (10000, 10001, ...)
differ from every training seed. Learning curves come from a deterministic evaluation of ``--curve-episodes``
episodes (seeds 20000, ...) every ``--curve-every`` steps. The PID + pure-pursuit baseline is evaluated on the same
episodes. Results go to ``--out`` (JSON, written after every run) and ``<out>.png`` (curves).

- ``sb3av``: :class:`~sb3_av.td3.ClippedTD3` with sb3-av's recommended settings (:data:`RECOMMENDED`, equal to the
  ``LiteScenario*`` blocks of ``sb3_av/configs/td3.yml``): one critic-trained encoder (DrQ-v2 style), bfloat16 where
  the CPU has it natively (``cnn_dtype: auto``, else float32) + channels-last convolutions, critic-CNN clipping, the
  frame-stack replay buffer, a training reward with an over-speed penalty
  (:class:`~sb3_av.envs.wrappers.OverspeedPenalty`) and a jerk penalty, scaled by 0.1, Gaussian action noise (sigma
  0.2), tau 0.01, lr 3e-4, 1000 random warm-up steps, a policy filter on the actions (``action_smoothing`` [0.7, 0.93]
  for [steer, throttle_brake]) and the PID baseline as a teacher (TD3+BC's behaviour-cloning term towards its action
  on every transition, on the actor head's output before the filter, weight 1, no Q-filter: ``pid_teacher``,
  ``teacher_clone``; ``--set '{"pid_teacher": 0}'`` is the recipe without it). Random-shift augmentation and n-step
  returns are options (``--set '{"image_augmentation": "random_shift", "n_steps": 3}'``); in short budgets both slowed
  learning. ``--set '{"action_repeat": 2}'`` gives the agent a control period of 2 simulation steps (in training and
  evaluation; the budget and ``--train-freq`` still count simulation steps). ``--set '{"policy_average_decay":
  0.9995}'`` evaluates, keeps and saves a moving average of the policy's weights
  (:class:`~sb3_av.callbacks.PolicyWeightAverage`) instead of its last weights; on LiteScenario2 it drove worse
  (README). ``--set '{"pid_warmup": 6000}'`` lets the PID baseline drive the first 6000 simulation steps instead of
  SB3's uniform random warm-up actions
  (:meth:`~sb3_av.common.off_policy.ClippedOffPolicyMixin.set_warmup_controller`); it did not shorten the early phase
  of rear-ending the first slow NPC (README). ``pid_teacher`` (a weight) labels every transition with the PID
  baseline's action and adds TD3+BC's behaviour-cloning term towards it, with this weight, to the actor loss
  (:meth:`~sb3_av.common.off_policy.ClippedOffPolicyMixin.set_teacher`; Q-filtered with ``"teacher_q_filter": true``).
  Evaluation runs on the plain env otherwise (no reward wrappers: success does not depend on the reward).
- ``sb3_default``: ``stable_baselines3.TD3("MultiInputPolicy", env)`` with SB3's defaults (CombinedExtractor,
  net_arch [400, 300], lr 1e-3, batch 256, learning_starts 100, no action noise); buffer_size capped to the
  budget (it never fills further).
- ``pid``: :class:`~sb3_av.baselines.PIDPurePursuit`.

Both learned configurations share ``--train-freq`` / ``--gradient-steps`` / ``--batch-size``: the compute budget
(``--train-freq`` counts simulation steps, also for an agent with ``action_repeat``). The README's run keeps SB3's
one gradient step per env step for both, with batch 64 instead of SB3's 256 (which does not fit the time of this
benchmark on a 2-core CPU). Half as many gradient steps (``--train-freq 2``) left 2 of 7 seeds at 0.20-0.40.

    python benchmarks/learning.py --budget 20000 --train-freq 1 --batch-size 64 --seeds 0 1 2 --eval-episodes 20 \
        --curve-every 2500 --curve-episodes 4 --jobs 2 --threads 1 --out benchmarks/results/learning_lite0.json
    python benchmarks/learning.py --tiny --budget 300 --seeds 0 --out /tmp/learning_tiny.json   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from rl_zoo3.utils import linear_schedule
from stable_baselines3 import TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import NormalActionNoise

import sb3_av  # noqa: F401  (registers the env ids)
from sb3_av._checks import is_int, non_negative_number
from sb3_av.baselines import PIDPurePursuit
from sb3_av.buffers import FrameStackDictReplayBuffer
from sb3_av.callbacks.weight_average import PolicyWeightAverage
from sb3_av.compute import native_bfloat16
from sb3_av.envs.wrappers import (
    ClearancePenalty,
    HeadwayPenalty,
    JerkPenalty,
    OverspeedPenalty,
    ScaleReward,
    ScenarioCycle,
    cycle_entry,
)
from sb3_av.evaluation import evaluate
from sb3_av.td3 import ClippedTD3
from sb3_av.teacher import CLONE_TARGETS, clone_target
from sb3_av.zoo.config import checked_learning_rate

__all__ = ["CONFIGS", "RECOMMENDED", "main", "run_benchmark"]

EVAL_SEED = 10_000  # final evaluation: episode i uses EVAL_SEED + i
CURVE_SEED = 20_000  # learning-curve evaluations
SELECT_SEED = 30_000  # --select-episodes: the validation episodes that choose among the best curve snapshots
TINY_ENV_KWARGS: dict[str, Any] = {"max_steps": 120}

#: sb3-av's recommended TD3 settings for pixel-based driving (the ``sb3av`` configuration).
RECOMMENDED: dict[str, Any] = {
    "learning_rate": 3e-4,
    "batch_size": 64,
    "learning_starts": 1000,
    "tau": 0.01,
    "gamma": 0.99,
    "n_steps": 1,
    "action_noise_sigma": 0.2,
    "reward_scale": 0.1,
    "env_kwargs": {},
    "action_repeat": 2,
    # charged per simulation step (2 per agent step at action_repeat 2; the result files before this were run with
    # 1.0 and 2.0 charged once per agent step: the same reward)
    "overspeed_penalty": 0.5,
    "jerk_penalty": 1.0,
    "headway_penalty": 0.0,  # HeadwayPenalty weight (time headway below 1.5 s); 0 = off
    "clearance_penalty": 0.0,  # ClearancePenalty weight (an NPC's box within 1 m of the ego's); 0 = off
    "cycle_scenarios": [],  # more training scenarios, one episode each in turn after --env's (ScenarioCycle)
    # a curriculum: --env alone for this many simulation steps, then the cycle (ScenarioCycle first_env_steps)
    "cycle_after": 0,
    # the curve evaluations (and the snapshot --keep-best keeps) drive --env and the cycle's scenarios in turn, each on
    # its plain env with the entry's own kwargs; False: --env alone
    "curve_on_cycle": False,
    # simulation steps driven by the PID baseline (PIDPurePursuit, with the learner's action noise) instead of SB3's
    # uniform random warm-up actions; training still starts at learning_starts (sb3_av.warmup); 0 = off
    "pid_warmup": 0,
    # weight of a behaviour-cloning term towards the PID baseline's action on every transition (TD3+BC, sb3_av.teacher);
    # 0 = off. With teacher_q_filter, only where the critic rates the PID's action higher (worse on seed 0: README)
    "pid_teacher": 1.0,
    "teacher_q_filter": False,
    # what the teacher's term pulls towards the PID's action: the executed "action" (TD3+BC) or the actor "head"'s
    # output before action_smoothing (sb3_av.teacher); the head: on the executed action the term leaves the head free
    # to jitter, and the filter passes the jitter on as jerk (README, Learning)
    "teacher_clone": "head",
    "image_augmentation": None,
    "augmentation_pad": 4,
    # weight of ClippedTD3's temporal smoothness term in the actor loss (the head's squared distance to the previous
    # action, CAPS); 0 = off
    "smoothness_weight": 0.0,
    # a number in [0, 1): evaluate, keep and save an exponential moving average of the policy's weights with this
    # decay per agent step (PolicyWeightAverage) instead of its last weights; None = off
    "policy_average_decay": None,
    "max_grad_norms": {"critic_cnn": 10.0},
    "policy_kwargs": {
        "share_features_extractor": True,
        "net_arch": [256, 256],
        "features_extractor_kwargs": {
            "cnn_output_dim": 256,
            "vector_output_dim": 64,
            "cnn_dtype": "auto",
            "channels_last": True,
        },
        # [steer, throttle_brake]: the jerk comes from the second; 0.95 brakes too late for a cut-in (README, Learning)
        "action_smoothing": [0.7, 0.93],
    },
}

_TINY_POLICY = {"net_arch": [16]}


def _recommended_settings(args: argparse.Namespace) -> dict[str, Any]:
    """:data:`RECOMMENDED` with the ``--set`` overrides."""
    return {**RECOMMENDED, **args.overrides}


def _learning_rate(value: float | str) -> float | Callable[[float], float]:
    """A number, or rl-zoo's ``"lin_<initial>"``: linear decay from the initial value to 0 over the run."""
    if isinstance(value, str):
        return linear_schedule(float(value.removeprefix("lin_")))
    return float(value)


def _recommended(env: gym.Env, seed: int, args: argparse.Namespace) -> ClippedTD3:
    r = _recommended_settings(args)
    policy_kwargs = json.loads(json.dumps(r["policy_kwargs"]))
    batch_size = args.batch_size or r["batch_size"]
    if args.tiny:
        policy_kwargs.update(_TINY_POLICY)
        policy_kwargs["features_extractor_kwargs"].update(cnn_output_dim=16, vector_output_dim=8)
        batch_size = 16
    n_actions = int(np.prod(env.action_space.shape or (1,)))
    noise = NormalActionNoise(np.zeros(n_actions), r["action_noise_sigma"] * np.ones(n_actions))
    if r["reward_scale"] != 1.0:  # the Monitor inside still records the env's own returns
        env = ScaleReward(env, float(r["reward_scale"]))
    agent_steps = args.budget // r["action_repeat"]
    return ClippedTD3(
        "MultiInputPolicy",
        env,
        learning_rate=_learning_rate(r["learning_rate"]),
        buffer_size=agent_steps,
        learning_starts=min(r["learning_starts"], agent_steps // 3),
        batch_size=batch_size,
        tau=r["tau"],
        gamma=r["gamma"],
        # train_freq counts simulation steps for both learners (the same compute budget): in agent steps here.
        train_freq=max(1, round(args.train_freq / r["action_repeat"])),
        gradient_steps=args.gradient_steps,
        action_noise=noise,
        replay_buffer_class=FrameStackDictReplayBuffer,
        replay_buffer_kwargs={"n_steps": r["n_steps"], "gamma": r["gamma"]} if r["n_steps"] > 1 else None,
        max_grad_norms=r["max_grad_norms"],
        image_augmentation=r["image_augmentation"],
        augmentation_pad=r["augmentation_pad"],
        smoothness_weight=r["smoothness_weight"],
        policy_kwargs=policy_kwargs,
        seed=seed,
        device="cpu",
    )


def _sb3_default(env: gym.Env, seed: int, args: argparse.Namespace) -> TD3:
    kwargs: dict[str, Any] = {"batch_size": args.batch_size} if args.batch_size else {}
    if args.tiny:
        kwargs = {"policy_kwargs": {**_TINY_POLICY, "features_extractor_kwargs": {"cnn_output_dim": 16}}, "batch_size": 16}
    return TD3(
        "MultiInputPolicy",
        env,
        buffer_size=args.budget,
        train_freq=args.train_freq,
        gradient_steps=args.gradient_steps,
        seed=seed,
        device="cpu",
        **kwargs,
    )


#: configuration name -> (description, model factory or None for the PID baseline).
CONFIGS: dict[str, tuple[str, Callable[[gym.Env, int, argparse.Namespace], Any] | None]] = {
    "sb3av": ("sb3-av recommended TD3", _recommended),
    "sb3_default": ("SB3 TD3, default settings", _sb3_default),
    "pid": ("PID + pure pursuit (no learning)", None),
}


class _CurveCallback(BaseCallback):
    """Every ``every`` simulation steps, evaluate deterministically; also keep each training episode's outcome.

    :param action_repeat: simulation steps per agent step (the env's ``action_repeat``); steps are reported in
        simulation steps, so that learners with different control rates share one x axis.
    """

    def __init__(
        self,
        eval_env: gym.Env | list[gym.Env],
        every: int,
        n_episodes: int,
        action_repeat: int = 1,
        keep_best: bool = False,
        keep_top: int = 1,
        average: PolicyWeightAverage | None = None,
    ) -> None:
        super().__init__()
        self.eval_env = eval_env
        #: with a weight average, the curve evaluates (and keeps) the averaged policy
        self.average = average
        self.keep_best = keep_best
        self.keep_top = keep_top
        #: with ``keep_best``: the ``keep_top`` best curve evaluations, best first, each as (success rate, return),
        #: its step and a copy of the policy's weights then (more than one for ``--select-episodes``)
        self.top: list[tuple[tuple[float, float], int, dict[str, th.Tensor]]] = []
        self.every = every
        self.action_repeat = action_repeat
        self.n_episodes = n_episodes
        self.eval_points: list[dict[str, Any]] = []
        self.train_episodes: list[list[float]] = []  # [env step, return, route completion, success]
        self.eval_time_s = 0.0

    @property
    def sim_steps(self) -> int:
        """Simulation steps so far."""
        return int(self.num_timesteps) * self.action_repeat

    def _evaluate(self) -> None:
        start = time.perf_counter()
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            m = evaluate(self.model, self.eval_env, self.n_episodes, seed=CURVE_SEED)
            score = (m["success_rate"], m["mean_return"])
            keep = self.keep_best and (len(self.top) < self.keep_top or score > self.top[-1][0])
            if keep:  # the evaluated weights (the average's, when there is one)
                state = {k: v.detach().clone() for k, v in self.model.policy.state_dict().items()}
        self.eval_time_s += time.perf_counter() - start
        self.eval_points.append(
            {
                "step": self.sim_steps,
                "success_rate": m["success_rate"],
                "route_completion": m["route_completion"],
                "return": m["mean_return"],
                "terminations": m["terminations"],
                "mean_abs_jerk_ms3": m["mean_abs_jerk_ms3"],
            }
        )
        if keep:
            # a stable sort keeps the earlier of two equal scores first (a later one must beat it)
            ranked = sorted([*self.top, (score, self.sim_steps, state)], key=lambda t: t[0], reverse=True)
            self.top = ranked[: self.keep_top]
        recent = self.train_episodes[-10:]
        train_success = np.mean([e[3] for e in recent]) if recent else float("nan")
        print(
            f"  [{time.strftime('%H:%M:%S')}] step {self.sim_steps}: eval success {m['success_rate']:.2f}, "
            f"route {m['route_completion']:.3f}, return {m['mean_return']:.1f}, |jerk| {m['mean_abs_jerk_ms3']:.2f} "
            f"{m['terminations']}; last 10 train "
            f"episodes success {train_success:.2f} ({len(self.train_episodes)} episodes)",
            flush=True,
        )

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.train_episodes.append(
                    [
                        self.sim_steps,
                        round(float(info["episode"]["r"]), 2),
                        round(float(info.get("route_completion", 0.0)), 3),
                        float(info.get("is_success", False)),
                    ]
                )
        if self.every > 0 and self.sim_steps % self.every < self.action_repeat:
            self._evaluate()
        return True


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "success_rate",
        "route_completion",
        "mean_return",
        "collisions_per_km",
        "off_road_rate",
        "mean_speed_ms",
        "mean_abs_jerk_ms3",
    )
    out = {k: metrics[k] for k in keys}
    out["terminations"] = metrics["terminations"]
    return out


def _make_env(args: argparse.Namespace, env_id: str, **env_kwargs: Any) -> gym.Env:
    kwargs: dict[str, Any] = dict(TINY_ENV_KWARGS) if args.tiny else {}
    return gym.make(env_id, **kwargs, **env_kwargs)


def _evaluate_on(
    policy: Any, args: argparse.Namespace, action_repeat: int, env_ids: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The final evaluation on every ``--eval-envs`` id (or ``env_ids``): the plain env, at the agent's control rate."""
    results = {}
    for env_id in env_ids or args.eval_envs:
        env = _make_env(args, env_id, action_repeat=action_repeat)
        if policy is None:
            policy_or_pid: Any = PIDPurePursuit.from_env(env)
        else:
            policy_or_pid = policy
        results[env_id] = _summary(evaluate(policy_or_pid, env, args.eval_episodes, seed=EVAL_SEED))
        env.close()
    return results


def _training_env(args: argparse.Namespace, settings: dict[str, Any] | None, action_repeat: int) -> gym.Env:
    """The recommended config's training env (env kwargs, scenario cycle, reward terms); others get the plain env.

    Evaluation always uses the plain env (:func:`_evaluate_on`, the curve's :func:`_curve_envs`).
    """
    if settings is None:
        return _make_env(args, args.env, action_repeat=action_repeat)
    train_env = _make_env(args, args.env, **settings["env_kwargs"], action_repeat=action_repeat)
    if settings["cycle_scenarios"]:
        cycle_kwargs = {**(TINY_ENV_KWARGS if args.tiny else {}), **settings["env_kwargs"], "action_repeat": action_repeat}
        first_env_steps = int(settings["cycle_after"]) // action_repeat
        train_env = ScenarioCycle(train_env, list(settings["cycle_scenarios"]), cycle_kwargs, first_env_steps)
    for key, term in (
        ("overspeed_penalty", OverspeedPenalty),
        ("jerk_penalty", JerkPenalty),
        ("headway_penalty", HeadwayPenalty),
        ("clearance_penalty", ClearancePenalty),
    ):
        if settings[key] > 0:
            train_env = term(train_env, settings[key])
    return train_env


def _curve_envs(
    args: argparse.Namespace, settings: dict[str, Any] | None, eval_env: gym.Env, action_repeat: int
) -> list[gym.Env]:
    """The curve's envs: ``--env``'s plain env, and with ``curve_on_cycle`` each cycle scenario's (its own kwargs)."""
    envs = [eval_env]
    if settings is not None and settings["curve_on_cycle"]:
        for entry in settings["cycle_scenarios"]:
            env_id, own_kwargs = cycle_entry(entry)
            envs.append(_make_env(args, env_id, **own_kwargs, action_repeat=action_repeat))
    return envs


def _run_one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    factory = CONFIGS[name][1]
    if args.threads:
        th.set_num_threads(args.threads)
    settings = _recommended_settings(args) if name == "sb3av" else None
    # The control rate (action_repeat) is the agent's, in training and evaluation; the reward is the plain env's.
    action_repeat = settings["action_repeat"] if settings is not None else 1
    if factory is None:
        start = time.perf_counter()
        evals = _evaluate_on(None, args, action_repeat)
        return {
            "seed": seed,
            "train_time_s": 0.0,
            "eval_time_s": time.perf_counter() - start,
            **_primary(evals, args),
            "eval": evals,
        }
    th.manual_seed(seed)
    eval_env = _make_env(args, args.env, action_repeat=action_repeat)
    train_env = _training_env(args, settings, action_repeat)
    train_env = Monitor(train_env)
    model = factory(train_env, seed, args)
    if settings is not None and settings["pid_warmup"]:
        model.set_warmup_controller(PIDPurePursuit.from_env(train_env), settings["pid_warmup"] // action_repeat)
    if settings is not None and settings["pid_teacher"]:
        model.set_teacher(
            PIDPurePursuit.from_env(train_env),
            settings["pid_teacher"],
            settings["teacher_q_filter"],
            settings["teacher_clone"],
        )
    keep_top = args.select_top if args.select_episodes else 1
    average = None
    if settings is not None and settings["policy_average_decay"] is not None:
        average = PolicyWeightAverage(settings["policy_average_decay"], start=int(model.learning_starts))
    curve_envs = _curve_envs(args, settings, eval_env, action_repeat)
    callback = _CurveCallback(
        curve_envs if len(curve_envs) > 1 else eval_env,
        args.curve_every,
        args.curve_episodes,
        action_repeat,
        keep_best=args.keep_best,
        keep_top=keep_top,
        average=average,
    )
    start = time.perf_counter()
    # the average is updated before the curve callback evaluates it at the same step
    model.learn(total_timesteps=args.budget // action_repeat, callback=[average, callback] if average else callback)
    wall_time = time.perf_counter() - start
    train_time = wall_time - callback.eval_time_s
    if average is not None:  # the averaged policy is the final one
        model.policy.load_state_dict(average.state_dict())
    if not callback.eval_points or callback.eval_points[-1]["step"] != callback.sim_steps:
        callback._evaluate()
    start = time.perf_counter()
    selection = _select(model, callback, callback.eval_env, args) if args.keep_best and args.select_episodes else None
    best = selection["chosen"] if selection is not None else (callback.top[0] if callback.top else None)
    reported, best_step = "final", callback.sim_steps
    if best is not None and best[1] != callback.sim_steps:
        # the final policy on the training env only (for the record), then the reported best one everywhere
        final = _evaluate_on(model, args, action_repeat, [args.env])
        model.policy.load_state_dict(best[2])
        reported, best_step = "best", best[1]
        evals = _evaluate_on(model, args, action_repeat)
    else:
        evals = final = _evaluate_on(model, args, action_repeat)
    eval_time = time.perf_counter() - start
    if args.save_dir:  # the reported policy, for sb3-av record, enjoy.py and benchmarks/robustness.py
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        model.save(Path(args.save_dir) / f"{name}_seed{seed}.zip")
    train_env.close()
    for env in curve_envs:
        env.close()
    return {
        "seed": seed,
        "train_time_s": round(train_time, 1),
        "wall_time_s": round(wall_time, 1),
        "eval_time_s": round(eval_time, 1),
        "gradient_steps": int(model._n_updates),
        "reported": reported,
        "reported_step": best_step,
        **_primary(evals, args),
        "eval": evals,
        "eval_final": final,
        "curve": callback.eval_points,
        "train_episodes": callback.train_episodes,
        **({"selection": selection["candidates"]} if selection is not None else {}),
    }


def _select(
    model: Any, callback: _CurveCallback, eval_env: gym.Env | list[gym.Env], args: argparse.Namespace
) -> dict[str, Any]:
    """Choose among the ``--select-top`` best curve snapshots on ``--select-episodes`` more episodes of ``--env``.

    Five curve episodes tell 1.0 from 0.8 poorly (a snapshot at 1.0 on the curve can drive 0.80 on 20 episodes); each
    candidate drives ``--select-episodes`` validation episodes (seeds :data:`SELECT_SEED` +, apart from the curve's
    and the final evaluation's), and the best by success, then return, over its curve and validation episodes together
    is reported. The final policy is put back afterwards (the caller evaluates it for the record).
    """
    final_state = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    candidates, best = [], None
    n_curve, n_select = args.curve_episodes, args.select_episodes
    for (curve_success, curve_return), step, state in callback.top:
        model.policy.load_state_dict(state)
        m = evaluate(model, eval_env, n_select, seed=SELECT_SEED)
        pooled = (
            (curve_success * n_curve + m["success_rate"] * n_select) / (n_curve + n_select),
            (curve_return * n_curve + m["mean_return"] * n_select) / (n_curve + n_select),
        )
        candidates.append(
            {
                "step": step,
                "curve_success_rate": curve_success,
                "select_success_rate": m["success_rate"],
                "select_return": m["mean_return"],
                "select_terminations": m["terminations"],
                "pooled_success_rate": pooled[0],
                "pooled_return": pooled[1],
            }
        )
        print(f"  select: step {step}: curve {curve_success:.2f}, validation {m['success_rate']:.2f} {m['terminations']}")
        if best is None or pooled > best[0]:
            best = (pooled, step, state)
    model.policy.load_state_dict(final_state)
    assert best is not None
    for candidate in candidates:
        candidate["chosen"] = candidate["step"] == best[1]
    return {"chosen": best, "candidates": candidates}


def _primary(evals: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The summary on ``--env`` (or the first eval env) at the top level of a run, as before ``--eval-envs``."""
    return evals.get(args.env, evals[args.eval_envs[0]])


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std())


def _row(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"config": name, "description": CONFIGS[name][0], "seeds": [r["seed"] for r in runs]}
    for key in ("success_rate", "route_completion", "mean_return", "train_time_s"):
        row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r[key] for r in runs])
    row["runs"] = runs
    return row


def format_table(rows: list[dict[str, Any]], eval_episodes: int) -> str:
    """The results as a Markdown table (mean ± std over seeds)."""
    lines = [
        f"| config | seeds | success rate ({eval_episodes} episodes) | route completion | return | train wall time (min) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        seeds = ", ".join(str(s) for s in row["seeds"]) if row["config"] != "pid" else "- (deterministic)"
        per_seed = " / ".join(f"{r['success_rate']:.2f}" for r in row["runs"])
        lines.append(
            f"| {row['description']} | {seeds} | {row['success_rate_mean']:.2f} ± {row['success_rate_std']:.2f} ({per_seed}) "
            f"| {row['route_completion_mean']:.3f} ± {row['route_completion_std']:.3f} "
            f"| {row['mean_return_mean']:.1f} ± {row['mean_return_std']:.1f} "
            f"| {row['train_time_s_mean'] / 60:.1f} |"
        )
    if any(len(row["runs"][0].get("eval", {})) > 1 for row in rows):
        lines += ["", format_env_table(rows, eval_episodes)]
    return "\n".join(lines)


def format_env_table(rows: list[dict[str, Any]], eval_episodes: int) -> str:
    """Per evaluation env: success (mean, min and per seed), collisions per km, mean speed and |jerk| (means over seeds)."""
    lines = [
        f"| config | eval env | success ({eval_episodes} episodes, per seed) | min | coll./km | speed m/s | abs jerk m/s^3 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for env_id in row["runs"][0].get("eval", {}):
            per_env = [r["eval"][env_id] for r in row["runs"]]
            success = [e["success_rate"] for e in per_env]
            lines.append(
                f"| {row['description']} | {env_id} | {np.mean(success):.2f} ({' / '.join(f'{v:.2f}' for v in success)}) "
                f"| {min(success):.2f} | {np.mean([e['collisions_per_km'] for e in per_env]):.2f} "
                f"| {np.mean([e['mean_speed_ms'] for e in per_env]):.2f} "
                f"| {np.mean([e['mean_abs_jerk_ms3'] for e in per_env]):.2f} |"
            )
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Success rate and return of the curve evaluations vs env steps; one faint line per seed, bold mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    colors = {"sb3av": "tab:blue", "sb3_default": "tab:orange", "pid": "tab:green"}
    for row in result["rows"]:
        name, color = row["config"], colors.get(row["config"], "tab:gray")
        for ax, key, final_key in ((axes[0], "success_rate", "success_rate"), (axes[1], "return", "mean_return")):
            if name == "pid":
                ax.axhline(row[f"{final_key}_mean"], color=color, ls="--", label=row["description"])
                continue
            curves = [r["curve"] for r in row["runs"] if r.get("curve")]
            for c in curves:
                ax.plot([p["step"] for p in c], [p[key] for p in c], color=color, alpha=0.3, lw=1)
            n = min(len(c) for c in curves)
            steps = [p["step"] for p in curves[0][:n]]
            mean = np.mean([[p[key] for p in c[:n]] for c in curves], axis=0)
            ax.plot(steps, mean, color=color, lw=2, label=f"{row['description']} (mean of {len(curves)} seeds)")
    axes[0].set_ylabel(f"success rate ({result['settings']['curve_episodes']} eval episodes)")
    axes[1].set_ylabel("episode return")
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{result['settings']['env']}: learning curves (deterministic evaluation)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate every configuration of ``args.configs`` for every seed; write JSON (+ PNG)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    result: dict[str, Any] = {
        "settings": settings,
        "recommended": RECOMMENDED,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": th.__version__,
            "capability": th.backends.cpu.get_cpu_capability(),  # AVX512 / AVX2 (ATEN_CPU_CAPABILITY lowers it)
            "native_bfloat16": native_bfloat16("cpu"),
        },
        "rows": [],
        **({"note": args.note} if args.note else {}),
    }
    total_start = time.perf_counter()
    tasks = [(name, seed) for name in args.configs for seed in (args.seeds if CONFIGS[name][1] is not None else [0])]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}

    def record(name: str, run: dict[str, Any], seconds: float) -> None:
        runs[name].append(run)
        runs[name].sort(key=lambda r: r["seed"])
        print(
            f"[{time.strftime('%H:%M:%S')}] {name} seed {run['seed']}: success {run['success_rate']:.2f}, "
            f"route {run['route_completion']:.3f}, return {run['mean_return']:.1f}, "
            f"train {run['train_time_s']:.0f} s, total {seconds:.0f} s",
            flush=True,
        )
        result["rows"] = [_row(n, runs[n]) for n in args.configs if runs[n]]
        result["wall_time_s"] = round(time.perf_counter() - total_start, 1)
        out.write_text(json.dumps(result, indent=1, default=float))

    if args.jobs == 1:
        for name, seed in tasks:
            start = time.perf_counter()
            record(name, _run_one(name, seed, args), time.perf_counter() - start)
    else:  # one process per run, the costliest (SB3's default) first
        tasks.sort(key=lambda t: ["sb3_default", "sb3av", "pid"].index(t[0]) if t[0] in CONFIGS else 0)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            started = time.perf_counter()
            futures = {pool.submit(_run_one, name, seed, args): name for name, seed in tasks}
            for future in as_completed(futures):
                record(futures[future], future.result(), time.perf_counter() - started)
    plot_curves(result, out.with_suffix(".png"))
    return result


#: Settings every part of a merged result shares (the protocol); the compute settings may differ between configs.
PROTOCOL_KEYS = (
    "env",
    "eval_envs",
    "keep_best",
    "budget",
    "eval_episodes",
    "curve_every",
    "curve_episodes",
    "tiny",
    "select_episodes",
    "select_top",
)
#: Protocol settings added since the first result files, with the value those files ran with.
PROTOCOL_DEFAULTS = {"select_episodes": 0, "select_top": 3}
#: Settings the runs of one config share across parts (with its effective RECOMMENDED settings, for sb3av).
CONFIG_KEYS = ("train_freq", "gradient_steps", "batch_size")


#: Settings whose values drive the same run: files written while ``policy_average_decay`` 0.0 meant "off" (before
#: None did) compare equal to today's None; decay 0 averages nothing, so both report the policy itself.
SAME_RUN_VALUES = {"policy_average_decay": {0.0: None}}


#: Settings added to RECOMMENDED after result files were written, with the value those files ran with (where
#: today's RECOMMENDED value differs from it, or may come to).
SETTINGS_BEFORE_THEY_EXISTED = {"pid_teacher": 0.0, "teacher_clone": "action"}


def _effective_settings(part: dict[str, Any]) -> dict[str, Any]:
    """The sb3av settings a result file ran with: its RECOMMENDED and ``--set``; keys added since at the value the
    file ran with (:data:`SETTINGS_BEFORE_THEY_EXISTED`), else at today's default (keys added "off")."""
    settings = {
        **RECOMMENDED,
        **SETTINGS_BEFORE_THEY_EXISTED,
        **part.get("recommended", {}),
        **part["settings"].get("overrides", {}),
    }
    for key, same in SAME_RUN_VALUES.items():
        if key in settings and settings[key] in same:
            settings[key] = same[settings[key]]
    if not settings.get("pid_teacher"):  # without a teacher its filter and clone settings change nothing
        settings["teacher_q_filter"] = RECOMMENDED["teacher_q_filter"]
        settings["teacher_clone"] = RECOMMENDED["teacher_clone"]
    return settings


def merge_results(paths: list[Path]) -> dict[str, Any]:
    """One result from several result files of the same protocol (seeds run in parts, on other CPUs or at other times).

    :raises ValueError: the files differ in the protocol (:data:`PROTOCOL_KEYS`), a config's compute settings or
        sb3av settings differ between files, or a (config, seed) run is in two files.
    """
    parts = [(path, json.loads(Path(path).read_text())) for path in paths]
    first_path, first = parts[0]
    runs: dict[str, list[dict[str, Any]]] = {}
    config_settings: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, part in parts:
        for key in PROTOCOL_KEYS:
            own, firsts = (p["settings"].get(key, PROTOCOL_DEFAULTS.get(key)) for p in (part, first))
            if own != firsts:
                raise ValueError(f"{path} was run with {key}={own!r}, {first_path} with {firsts!r}: not the same protocol")
        for row in part["rows"]:
            name = row["config"]
            own = _config_settings(part, name)
            seen = config_settings.setdefault(name, (path, own))
            if seen[1] != own:
                diff = [k for k in CONFIG_KEYS if own[k] != seen[1][k]]
                if name == "sb3av":
                    diff += [k for k in own["sb3av"] if own["sb3av"][k] != seen[1]["sb3av"].get(k)]
                raise ValueError(f"{name} runs differ between {seen[0]} and {path} in {sorted(diff)}")
            if name == "pid" and name in runs:
                continue  # deterministic: the same episodes give the same numbers; keep the first
            for run in row["runs"]:
                if any(r["seed"] == run["seed"] for r in runs.get(name, [])):
                    raise ValueError(f"{name} seed {run['seed']} is in more than one file (second: {path})")
                runs.setdefault(name, []).append(run)
    order = [name for name in CONFIGS if name in runs]
    for name in order:
        runs[name].sort(key=lambda r: r["seed"])
    return {
        "settings": {key: first["settings"].get(key, PROTOCOL_DEFAULTS.get(key)) for key in PROTOCOL_KEYS},
        "recommended": config_settings["sb3av"][1]["sb3av"] if "sb3av" in config_settings else RECOMMENDED,
        "parts": [
            {
                "file": str(path),
                "configs": [row["config"] for row in part["rows"]],
                "seeds": sorted({s for row in part["rows"] for s in row["seeds"]}),
                "settings": part["settings"],
                "machine": part.get("machine"),
                "wall_time_s": part.get("wall_time_s"),
                "note": part.get("note"),
            }
            for path, part in parts
        ],
        "config_settings": {name: settings for name, (_, settings) in config_settings.items()},
        "rows": [_row(name, runs[name]) for name in order],
    }


def _config_settings(part: dict[str, Any], name: str) -> dict[str, Any]:
    """A config's compute settings (:data:`CONFIG_KEYS`) in a result file, and for ``sb3av`` its effective settings.

    A merged file keeps them per config in ``config_settings``; merged files from before that key have each part's
    own settings in ``parts`` (its top-level ``settings`` hold the protocol only).
    """
    if "config_settings" in part:
        return part["config_settings"][name]
    settings = part["settings"]
    if "parts" in part:
        settings = next(p["settings"] for p in part["parts"] if name in p["configs"])
    own = {key: settings.get(key) for key in CONFIG_KEYS}
    if name == "sb3av":
        own["sb3av"] = _effective_settings(part)
    return own


def _check_overrides(parser: argparse.ArgumentParser, overrides: dict[str, Any]) -> None:
    """Refuse ``--set`` keys and values that would fail later (``parser.error``: a message and exit code 2)."""
    unknown = set(overrides) - set(RECOMMENDED)
    if unknown:
        parser.error(f"--set: unknown keys {sorted(unknown)}; valid: {sorted(RECOMMENDED)}")
    if "action_repeat" in overrides.get("env_kwargs", {}):
        parser.error("--set: give action_repeat as its own key (it applies to the evaluation env too), not in env_kwargs")
    if "learning_rate" in overrides:
        try:
            checked_learning_rate(overrides["learning_rate"])
        except ValueError as error:
            parser.error(f"--set: learning_rate: {error}")
    if overrides.get("policy_average_decay") is not None:
        try:
            PolicyWeightAverage(overrides["policy_average_decay"])
        except ValueError as error:
            parser.error(f"--set: policy_average_decay: {error}")
    for key in ("cycle_after", "pid_warmup"):
        steps = overrides.get(key, 0)
        if not is_int(steps) or steps < 0:
            parser.error(f"--set: {key} must be an integer number of simulation steps >= 0, got {steps!r}")
    try:
        non_negative_number("pid_teacher (0 = off)", overrides.get("pid_teacher", 0.0))
        non_negative_number("smoothness_weight (0 = off)", overrides.get("smoothness_weight", 0.0))
        clone_target("teacher_clone", overrides.get("teacher_clone", CLONE_TARGETS[0]))
    except ValueError as error:
        parser.error(f"--set: {error}")
    if not isinstance(overrides.get("teacher_q_filter", True), bool):
        parser.error(f"--set: teacher_q_filter must be true or false, got {overrides['teacher_q_filter']!r}")
    if not isinstance(overrides.get("curve_on_cycle", False), bool):
        parser.error(f"--set: curve_on_cycle must be true or false, got {overrides['curve_on_cycle']!r}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="LiteScenario0-v0", help="the training env (and the curve evaluations')")
    parser.add_argument(
        "--eval-envs", nargs="+", default=None, help="env ids of the final evaluation (default: --env); the plain envs"
    )
    parser.add_argument(
        "--keep-best",
        action="store_true",
        help="report the policy of the best curve evaluation (success, then return; seeds 20000+) instead of the final one",
    )
    parser.add_argument(
        "--select-episodes",
        type=int,
        default=0,
        help="with --keep-best: drive the --select-top best curve snapshots this many more episodes of --env (seeds "
        "30000+) and report the best over both (0: the best curve evaluation alone)",
    )
    parser.add_argument("--select-top", type=int, default=3, help="candidates of --select-episodes (default 3)")
    parser.add_argument("--budget", type=int, default=10_000, help="environment steps per training run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--eval-episodes", type=int, default=20, help="final evaluation episodes per trained agent")
    parser.add_argument("--curve-every", type=int, default=1250, help="env steps between curve evaluations (0: none)")
    parser.add_argument("--curve-episodes", type=int, default=4)
    parser.add_argument("--train-freq", type=int, default=1, help="env steps between train() calls (both learners)")
    parser.add_argument("--gradient-steps", type=int, default=1, help="gradient steps per train() call (both learners)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of both learners (default: 64 / SB3's 256)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--set", dest="overrides", default="{}", type=json.loads, help="JSON overrides of RECOMMENDED, e.g. '{\"n_steps\": 1}'"
    )
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny nets, batch 16, 120-step episodes")
    parser.add_argument("--out", default="benchmarks/results/learning.json")
    parser.add_argument("--save-dir", default=None, help="save each learner's reported model as <dir>/<config>_seed<k>.zip")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RESULT",
        help="train nothing: merge result files of the same protocol (seeds run in parts) into --out, with tables and curves",
    )
    parser.add_argument("--note", default=None, help="a note stored in the --out file (e.g. what else ran on the CPU)")
    args = parser.parse_args(argv)
    args.eval_envs = args.eval_envs or [args.env]
    _check_overrides(parser, args.overrides)
    for name in ("budget", "eval_episodes", "curve_episodes", "train_freq", "gradient_steps", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.curve_every < 0 or math.isnan(args.curve_every):
        parser.error("--curve-every must be >= 0")
    if args.select_episodes < 0 or args.select_top < 1:
        parser.error("--select-episodes must be >= 0 and --select-top >= 1")
    if args.select_episodes and not (args.keep_best and args.curve_every):
        parser.error("--select-episodes chooses among curve snapshots: it needs --keep-best and --curve-every > 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry: run the benchmark, print the Markdown table, return the result dict."""
    args = _parse(argv)
    if args.merge:
        missing = [str(path) for path in args.merge if not path.is_file()]
        if missing:
            raise SystemExit(f"learning.py --merge: no such result file: {', '.join(missing)}")
        try:
            result = merge_results(args.merge)
        except (ValueError, KeyError, json.JSONDecodeError) as error:
            raise SystemExit(f"learning.py --merge: {error}") from None
        if args.note:
            result["note"] = args.note
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        plot_curves(result, Path(args.out).with_suffix(".png"))
        print(format_table(result["rows"], result["settings"]["eval_episodes"]))
        print(f"\nmerged {len(args.merge)} files -> {args.out}; curves: {Path(args.out).with_suffix('.png')}")
        return result
    result = run_benchmark(args)
    print(format_table(result["rows"], args.eval_episodes))
    print(f"\nwall time {result['wall_time_s'] / 60:.1f} min; curves: {Path(args.out).with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
