"""Driving metrics of episodes, in simulation time: one definition for training logs and evaluation.

:class:`EpisodeMetrics` accumulates an env's ``info`` dicts over one episode; the TensorBoard callbacks
(:mod:`sb3_av.callbacks.driving_metrics`) and :func:`evaluate` both use it, so a metric name means the same
everywhere. ``evaluate(policy, env, n_episodes)`` runs N episodes of a model or the classical baseline and
aggregates them; ``python enjoy.py`` and ``sb3-av evaluate`` are its command line (:mod:`sb3_av.zoo.enjoy`).

Metrics over N episodes: success rate (route completed without a collision), route completion (0..1),
collisions per km (collisions / distance driven), off-road rate (episodes ended off road), mean speed
(distance / simulation time, m/s), mean |lateral offset| (m, over steps), mean |longitudinal jerk|
(m/s^3, from the speed in simulation time), episode length (steps and simulated seconds), mean return.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_av.baselines import PIDPurePursuit

__all__ = ["METRIC_COLUMNS", "EpisodeMetrics", "evaluate", "format_metrics_table"]


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


class EpisodeMetrics:
    """One episode's driving metrics, accumulated from the ``info`` dicts of a driving env.

    Call :meth:`start` with the reset ``info`` (optional: without it the episode starts at rest at time 0 and
    the jerk is not measured), :meth:`add` after each step, :meth:`finish` at the end. Keys an env does not
    report are left out of the result, so envs outside the driving contract give only ``return`` and ``steps``.
    """

    def __init__(self) -> None:
        self.start()

    def start(self, info: Mapping[str, Any] | None = None) -> None:
        """Begin an episode.

        :param info: the ``info`` of ``env.reset()``: its ``speed_ms`` and ``sim_time_s`` start the speed series.
        """
        self._return = 0.0
        self._steps = 0
        self._terms: dict[str, float] = defaultdict(float)
        self._speeds = [float(info.get("speed_ms", 0.0))] if info is not None else []
        self._times = [float(info.get("sim_time_s", 0.0))] if info is not None else []
        self._start_time_s = self._times[0] if self._times else 0.0
        self._abs_lateral: list[float] = []
        self._collision = False
        self._off_road = False
        self._last: Mapping[str, Any] = {}

    def add(self, info: Mapping[str, Any], reward: float = 0.0) -> None:
        """Add one step.

        :param info: the step's ``info``.
        :param reward: the step's reward (for the return).
        """
        self._return += float(reward)
        self._steps += 1
        for name, value in (info.get("reward_terms") or {}).items():
            self._terms[name] += float(value)
        if self._times and "speed_ms" in info and "sim_time_s" in info:
            self._speeds.append(float(info["speed_ms"]))
            self._times.append(float(info["sim_time_s"]))
        if "lateral_offset_m" in info:
            self._abs_lateral.append(abs(float(info["lateral_offset_m"])))
        self._collision = self._collision or bool(info.get("collision", False))
        self._off_road = self._off_road or bool(info.get("off_road", False))
        self._last = info

    def finish(self) -> dict[str, Any]:
        """The metrics of the episode (the last :meth:`add`-ed ``info`` is its end); then :meth:`start` again.

        :return: ``return``, ``steps``, and where the env reports them: ``sim_time_s`` (s), ``distance_m``,
            ``mean_speed_ms`` (distance / simulation time, m/s), ``route_completion``, ``is_success``,
            ``collision`` and ``off_road`` (any step), ``termination``, ``mean_abs_lateral_offset_m``,
            ``sum_abs_lateral_offset_m``, ``sum_abs_jerk`` and ``n_jerk`` (|jerk| terms, m/s^3), ``reward_terms``
            (name -> sum over the episode).
        """
        last = self._last
        result: dict[str, Any] = {"return": self._return, "steps": self._steps}
        if "sim_time_s" in last:
            result["sim_time_s"] = float(last["sim_time_s"]) - self._start_time_s
        if "distance_m" in last:
            result["distance_m"] = float(last["distance_m"])
        if "sim_time_s" in result and "distance_m" in result:
            result["mean_speed_ms"] = result["distance_m"] / result["sim_time_s"] if result["sim_time_s"] > 0 else 0.0
        if "route_completion" in last:
            result["route_completion"] = float(last["route_completion"])
        if "is_success" in last:
            result["is_success"] = bool(last["is_success"])
        if "collision" in last:
            result["collision"] = self._collision
        if "off_road" in last:
            result["off_road"] = self._off_road
        if "termination" in last:
            result["termination"] = last["termination"]
        if self._abs_lateral:
            result["mean_abs_lateral_offset_m"] = float(np.mean(self._abs_lateral))
            result["sum_abs_lateral_offset_m"] = float(np.sum(self._abs_lateral))
        result.update(self._jerk())
        if self._terms:
            result["reward_terms"] = dict(self._terms)
        self.start()
        return result

    def _jerk(self) -> dict[str, Any]:
        """Sum and count of |longitudinal jerk| (m/s^3) from the speed series; none without increasing times."""
        v, t = np.asarray(self._speeds), np.asarray(self._times)
        if len(v) < 3 or not np.all(np.diff(t) > 0):
            return {"sum_abs_jerk": 0.0, "n_jerk": 0} if len(v) else {}
        dt = np.diff(t)
        jerk = np.diff(np.diff(v) / dt) / dt[1:]
        return {"sum_abs_jerk": float(np.sum(np.abs(jerk))), "n_jerk": len(jerk)}


def _episode(policy: Any, env: gym.Env, seed: int | None, deterministic: bool) -> dict[str, Any]:
    """Run one episode; its :meth:`EpisodeMetrics.finish` result with the ``seed``."""
    obs, info = env.reset(seed=seed)
    metrics = EpisodeMetrics()
    metrics.start(info)
    controller = isinstance(policy, PIDPurePursuit)
    if controller:
        policy.reset()
    while True:
        action = policy.act(obs, info) if controller else policy.predict(obs, deterministic=deterministic)[0]
        obs, reward, terminated, truncated, info = env.step(action)
        metrics.add(info, float(reward))
        if terminated or truncated:
            return {"seed": seed, **metrics.finish()}


def evaluate(
    policy_or_model: Any,
    env: gym.Env | Sequence[gym.Env],
    n_episodes: int,
    seed: int | None = None,
    deterministic: bool = True,
) -> dict[str, Any]:
    """Run N episodes and return driving metrics (simulation time, distance driven).

    :param policy_or_model: an SB3 model (anything with ``predict(obs, deterministic=...)``) or a
        :class:`~sb3_av.baselines.PIDPurePursuit` (given each step's ``info``).
    :param env: a (non-vectorised) driving env of the contract, or several: episode ``i`` then drives
        ``env[i % len(env)]`` (a mix of scenarios, the same at every call), and each episode records its ``env_index``.
    :param n_episodes: number of episodes, >= 1.
    :param seed: episode ``i`` is reset with ``seed + i`` (reproducible); None: unseeded.
    :param deterministic: deterministic actions for models.
    :return: ``success_rate``, ``route_completion``, ``collisions_per_km`` (NaN when nothing was driven),
        ``off_road_rate``, ``mean_speed_ms`` (distance / simulation time over all episodes),
        ``mean_abs_lateral_offset_m``, ``mean_abs_jerk_ms3``, ``episode_length_steps``, ``episode_length_s``,
        ``mean_return``, ``std_return``, ``distance_km``, ``collisions``, ``n_episodes``, ``terminations``
        (reason -> count) and ``episodes`` (per episode: :meth:`EpisodeMetrics.finish` and the seed).
    :raises ValueError: ``n_episodes < 1``, or no env.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    envs = list(env) if isinstance(env, Sequence) else [env]
    if not envs:
        raise ValueError("evaluate needs at least one env")
    episodes = [
        _episode(policy_or_model, envs[i % len(envs)], None if seed is None else seed + i, deterministic)
        for i in range(n_episodes)
    ]
    if len(envs) > 1:
        for i, episode in enumerate(episodes):
            episode["env_index"] = i % len(envs)
    return {"n_episodes": n_episodes, **_aggregate(episodes), "episodes": episodes}


def _aggregate(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics over episodes: rates and means per episode, speed and collisions per distance, jerk per term."""
    distance_m = sum(e["distance_m"] for e in episodes)
    sim_time = sum(e["sim_time_s"] for e in episodes)
    steps = sum(e["steps"] for e in episodes)
    collisions = sum(int(e["collision"]) for e in episodes)
    n_jerk = sum(e["n_jerk"] for e in episodes)
    returns = [e["return"] for e in episodes]
    return {
        "success_rate": float(np.mean([e["is_success"] for e in episodes])),
        "route_completion": float(np.mean([e["route_completion"] for e in episodes])),
        "collisions_per_km": collisions / (distance_m / 1000.0) if distance_m > 0 else math.nan,
        "off_road_rate": float(np.mean([e["off_road"] for e in episodes])),
        "mean_speed_ms": distance_m / sim_time if sim_time > 0 else 0.0,
        "mean_abs_lateral_offset_m": sum(e.get("sum_abs_lateral_offset_m", 0.0) for e in episodes) / steps,
        "mean_abs_jerk_ms3": sum(e["sum_abs_jerk"] for e in episodes) / n_jerk if n_jerk else 0.0,
        "episode_length_steps": steps / len(episodes),
        "episode_length_s": sim_time / len(episodes),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "distance_km": distance_m / 1000.0,
        "collisions": collisions,
        "terminations": dict(Counter(str(e.get("termination")) for e in episodes)),
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
