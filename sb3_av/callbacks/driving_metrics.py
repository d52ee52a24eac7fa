"""Driving metrics and reward terms from the env's ``info`` to the logger (TensorBoard, CSV), per episode.

Training episodes go to ``driving/*`` and ``reward_terms/*``; evaluation episodes (:class:`DrivingEvalCallback`)
to ``eval/*`` and ``eval/reward_terms/*``. Each value is a mean over the episodes finished since the last dump.
The metrics are :class:`~sb3_av.evaluation.EpisodeMetrics`', the same as ``evaluate()``'s (``mean_speed_ms`` is
distance over simulation time). Envs that do not follow the driving env contract log nothing extra.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.logger import Logger

from sb3_av.evaluation import EpisodeMetrics

__all__ = ["LOGGED_METRICS", "DrivingEvalCallback", "DrivingMetricsCallback", "EpisodeMetrics"]

#: :meth:`EpisodeMetrics.finish` key -> logged name (a mean over episodes, so the 0/1 flags become rates).
LOGGED_METRICS: dict[str, str] = {
    "route_completion": "route_completion",
    "collision": "collision_rate",
    "off_road": "off_road_rate",
    "is_success": "success_rate",
    "distance_m": "distance_m",
    "sim_time_s": "episode_sim_time_s",
    "mean_speed_ms": "mean_speed_ms",
}


def _record(logger: Logger, episode: dict[str, Any], metrics_prefix: str, terms_prefix: str) -> None:
    """Record a finished episode: ``<metrics_prefix><name>`` and ``<terms_prefix>reward_terms/<term>``."""
    for key, name in LOGGED_METRICS.items():
        if key in episode:
            logger.record_mean(f"{metrics_prefix}{name}", float(episode[key]))
    for term, total in episode.get("reward_terms", {}).items():
        logger.record_mean(f"{terms_prefix}reward_terms/{term}", total)


class DrivingMetricsCallback(BaseCallback):
    """Log the driving metrics and reward terms of training episodes (see :class:`EpisodeMetrics`).

    Tags: ``driving/<metric>`` (:data:`LOGGED_METRICS`) and ``reward_terms/<name>``, averaged over the episodes
    finished since the last logger dump (SB3 dumps every ``log_interval`` episodes).

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
        for episode, info, done in zip(self._episodes, infos, dones, strict=False):
            episode.add(info)
            if done:
                _record(self.logger, episode.finish(), "driving/", "")
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
        episode = self._eval_episodes[locals_["i"]]
        episode.add(locals_["info"])
        if locals_["done"]:
            _record(self.logger, episode.finish(), "eval/", "eval/")
