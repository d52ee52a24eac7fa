"""Driving metrics and reward terms from the env's ``info`` to the logger (TensorBoard, CSV), per episode.

Training episodes go to ``driving/*`` and ``reward_terms/*``; evaluation episodes (:class:`DrivingEvalCallback`)
to ``eval/*`` and ``eval/reward_terms/*``. Each value is a mean over the episodes finished since the last dump.
Envs that do not follow the driving env contract (no ``reward_terms`` etc. in ``info``) log nothing extra.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

__all__ = ["DrivingEvalCallback", "DrivingMetricsCallback", "EpisodeMetrics"]


class EpisodeMetrics:
    """Accumulates one env's ``info`` dicts over an episode and returns the episode's metrics.

    Metrics (when the info key exists): ``route_completion`` (0..1, at the end), ``collision_rate`` and
    ``off_road_rate`` (1 if any step reported it), ``success_rate`` (``is_success`` at the end), ``distance_m``,
    ``episode_sim_time_s`` (simulation time, s), ``mean_speed_ms`` (mean over steps, m/s), and
    ``reward_terms/<name>``: the sum of each weighted term over the episode.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the current episode."""
        self._terms: dict[str, float] = defaultdict(float)
        self._speeds: list[float] = []
        self._collision = False
        self._off_road = False

    def add(self, info: dict[str, Any]) -> None:
        """Add one step's ``info``."""
        for name, value in (info.get("reward_terms") or {}).items():
            self._terms[name] += float(value)
        if "speed_ms" in info:
            self._speeds.append(float(info["speed_ms"]))
        self._collision = self._collision or bool(info.get("collision", False))
        self._off_road = self._off_road or bool(info.get("off_road", False))

    def finish(self, info: dict[str, Any]) -> dict[str, float]:
        """The metrics of the episode whose last step's ``info`` is given (already :meth:`add`-ed); then reset.

        :return: metric name -> value; empty for an env without the driving info keys.
        """
        metrics: dict[str, float] = {}
        if "route_completion" in info:
            metrics["route_completion"] = float(info["route_completion"])
        if "collision" in info:
            metrics["collision_rate"] = float(self._collision)
        if "off_road" in info:
            metrics["off_road_rate"] = float(self._off_road)
        if "is_success" in info and "route_completion" in info:
            metrics["success_rate"] = float(bool(info["is_success"]))
        if "distance_m" in info:
            metrics["distance_m"] = float(info["distance_m"])
        if "sim_time_s" in info:
            metrics["episode_sim_time_s"] = float(info["sim_time_s"])
        if self._speeds:
            metrics["mean_speed_ms"] = float(np.mean(self._speeds))
        for name, total in self._terms.items():
            metrics[f"reward_terms/{name}"] = total
        self.reset()
        return metrics


class DrivingMetricsCallback(BaseCallback):
    """Log the driving metrics and reward terms of training episodes (see :class:`EpisodeMetrics`).

    Tags: ``driving/<metric>`` and ``reward_terms/<name>``, averaged over the episodes finished since the
    last logger dump (SB3 dumps every ``log_interval`` episodes).

    :param verbose: unused, for SB3's signature.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._episodes: list[EpisodeMetrics] = []

    def _init_callback(self) -> None:
        self._episodes = [EpisodeMetrics() for _ in range(self.training_env.num_envs)]

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        dones = self.locals.get("dones", np.zeros(len(infos), dtype=bool))
        for i, (info, done) in enumerate(zip(infos, dones, strict=False)):
            self._episodes[i].add(info)
            if done:
                for name, value in self._episodes[i].finish(info).items():
                    tag = name if name.startswith("reward_terms/") else f"driving/{name}"
                    self.logger.record_mean(tag, value)
        return True


class DrivingEvalCallback(EvalCallback):
    """SB3's :class:`~stable_baselines3.common.callbacks.EvalCallback` that also logs the driving metrics of the
    evaluation episodes as ``eval/<metric>`` and ``eval/reward_terms/<name>`` (same arguments as EvalCallback)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._eval_episodes: dict[int, EpisodeMetrics] = defaultdict(EpisodeMetrics)

    def _on_step(self) -> bool:
        self._eval_episodes.clear()
        return super()._on_step()

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        super()._log_success_callback(locals_, globals_)
        info = locals_["info"]
        episode = self._eval_episodes[locals_["i"]]
        episode.add(info)
        if locals_["done"]:
            for name, value in episode.finish(info).items():
                self.logger.record_mean(f"eval/{name}", value)
