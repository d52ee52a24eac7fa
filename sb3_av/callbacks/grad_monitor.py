"""GradientMonitorCallback: gradient-norm scalars and explosion alerts in TensorBoard."""

from __future__ import annotations

import logging
import math

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat

from sb3_av.grad_stats import GradNormWindow, NetworkSummary

__all__ = ["GradientMonitorCallback", "alert_thresholds"]

logger = logging.getLogger(__name__)

WARNING_TAG = "alerts/gradient_explosion_warning"
CRITICAL_TAG = "alerts/gradient_explosion_critical"


def alert_thresholds(
    max_norm: float | None, warning_ratio: float, critical_ratio: float, warning_abs: float, critical_abs: float
) -> tuple[float, float]:
    """Warning and critical BEFORE-clip thresholds of a group.

    :param max_norm: the group's max_norm; when None, the absolute thresholds apply.
    :return: (warning, critical) thresholds.
    """
    if max_norm is None:
        return warning_abs, critical_abs
    return warning_ratio * max_norm, critical_ratio * max_norm


class GradientMonitorCallback(BaseCallback):
    """Log the gradient norms a clipped sb3-av algorithm measured and raise explosion alerts.

    Every ``dump_freq`` calls (environment steps of the VecEnv) it records, for the window since the last dump:

    - ``debug/{group}_grad_norm_{BEFORE,AFTER}_clip``: max over the window, for each group;
    - ``debug/{actor,critic}_grad_norm_{BEFORE,AFTER}_clip``: the same for the whole network;
    - ``debug/{actor,critic}_grad_clip_ratio`` and ``debug/{group}_grad_clip_ratio``: mean of AFTER / BEFORE;
    - ``debug/{actor,critic}_nonfinite_grad_steps``: optimizer steps skipped for NaN/Inf gradients;

    then dumps the logger, so the diagnostics appear even when episodes are long. Actor groups are recorded only
    from steps that updated the actor (a window without one records none, never a 0 caused by ``policy_delay``).

    After every step it judges the new BEFORE-clip norms (AFTER norms are bounded by the clip and could never
    alarm): above ``warning_ratio * max_norm`` (``warning_abs`` for a group without max_norm) records
    ``alerts/gradient_explosion_warning``, above ``critical_ratio * max_norm`` (``critical_abs``) or a
    non-finite gradient records ``alerts/gradient_explosion_critical``, each with the offending norm (inf
    for non-finite) and a logged warning naming the group and the step. Alerts are events, written to TensorBoard
    only when raised and at once (the other values keep their ``dump_freq`` cadence); :attr:`alert_counts` counts
    them.

    :param dump_freq: record and dump the window every this many callback calls (environment steps).
    :param warning_ratio: warning when BEFORE > warning_ratio * max_norm.
    :param critical_ratio: critical when BEFORE > critical_ratio * max_norm.
    :param warning_abs: warning threshold of a group without max_norm.
    :param critical_abs: critical threshold of a group without max_norm.
    :param verbose: 1 to also print alerts through SB3's logger output.
    """

    def __init__(
        self,
        dump_freq: int = 1000,
        warning_ratio: float = 2.0,
        critical_ratio: float = 10.0,
        warning_abs: float = 100.0,
        critical_abs: float = 1000.0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if dump_freq < 1:
            raise ValueError(f"dump_freq must be >= 1, got {dump_freq}")
        if not 0 < warning_ratio <= critical_ratio:
            raise ValueError(f"need 0 < warning_ratio <= critical_ratio, got {warning_ratio}, {critical_ratio}")
        if not 0 < warning_abs <= critical_abs:
            raise ValueError(f"need 0 < warning_abs <= critical_abs, got {warning_abs}, {critical_abs}")
        self.dump_freq = dump_freq
        self.warning_ratio = warning_ratio
        self.critical_ratio = critical_ratio
        self.warning_abs = warning_abs
        self.critical_abs = critical_abs
        #: Alerts raised so far, by level.
        self.alert_counts = {"warning": 0, "critical": 0}

    @property
    def _window(self) -> GradNormWindow:
        return self.model.grad_norms  # type: ignore[attr-defined]

    def _init_callback(self) -> None:
        if not isinstance(getattr(self.model, "grad_norms", None), GradNormWindow):
            raise TypeError(
                f"GradientMonitorCallback needs an sb3-av clipped algorithm (ClippedTD3, ClippedDDPG, ClippedSAC, "
                f"ClippedTQC), got {type(self.model).__name__}"
            )
        # The limits, so that `sb3-av check-logs` can compare AFTER norms with them.
        for group, max_norm in self._window.max_norms.items():
            if max_norm is not None:
                self.logger.record(f"debug/{group}_max_grad_norm", max_norm)

    def _on_step(self) -> bool:
        self._check_alerts()
        if self.n_calls % self.dump_freq == 0:
            self._record_window()
        return True

    def _on_training_end(self) -> None:
        self._check_alerts()
        self._record_window()

    def _record_window(self) -> None:
        summaries = self._window.pop_dump()
        if not summaries:
            return
        for network, summary in summaries.items():
            _record_summary(self.logger, network, summary)
        self._dump()

    def _dump(self) -> None:
        # progress.csv rows need the step too: SB3 records it only in its own dumps
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)

    def _check_alerts(self) -> None:
        raised: dict[str, list[tuple[str, float, int]]] = {"warning": [], "critical": []}
        for summary in self._window.pop_alert().values():
            for index, group in enumerate(summary.groups):
                if summary.nonfinite_groups[index] > 0:
                    raised["critical"].append((group, math.inf, summary.first_nonfinite_update))
                    continue
                before = float(summary.max_before[index])
                if not np.isfinite(before):
                    continue
                warning, critical = alert_thresholds(
                    self._window.max_norms.get(group),
                    self.warning_ratio,
                    self.critical_ratio,
                    self.warning_abs,
                    self.critical_abs,
                )
                update = int(summary.max_before_update[index])
                if before > critical:
                    raised["critical"].append((group, before, update))
                elif before > warning:
                    raised["warning"].append((group, before, update))
        if not (raised["warning"] or raised["critical"]):
            return
        for level, tag in (("warning", WARNING_TAG), ("critical", CRITICAL_TAG)):
            if raised[level]:
                self.alert_counts[level] += 1
                self._write_event(tag, max(value for _, value, _ in raised[level]))
                details = ", ".join(f"{group}={value:.4g} (update {update})" for group, value, update in raised[level])
                logger.warning("Gradient explosion %s at timestep %d: BEFORE-clip norm %s", level, self.num_timesteps, details)

    def _write_event(self, tag: str, value: float) -> None:
        """Write one alert straight to TensorBoard at the current step.

        An alert is an event: going through ``logger.record`` + ``dump`` would also flush every other pending value
        (SB3's running means) at an arbitrary step, and a second alert before the next dump would overwrite the first.
        """
        for output in self.logger.output_formats:
            if isinstance(output, TensorBoardOutputFormat):
                output.writer.add_scalar(tag, value, self.num_timesteps)
                output.writer.flush()


def _record_summary(sb3_logger, network: str, summary: NetworkSummary) -> None:
    for index, group in enumerate(summary.groups):
        if np.isfinite(summary.max_before[index]):
            sb3_logger.record(f"debug/{group}_grad_norm_BEFORE_clip", float(summary.max_before[index]))
            sb3_logger.record(f"debug/{group}_grad_norm_AFTER_clip", float(summary.max_after[index]))
        if np.isfinite(summary.ratio_mean[index]):
            sb3_logger.record(f"debug/{group}_grad_clip_ratio", float(summary.ratio_mean[index]))
    if np.isfinite(summary.total_max_before):
        sb3_logger.record(f"debug/{network}_grad_norm_BEFORE_clip", summary.total_max_before)
        sb3_logger.record(f"debug/{network}_grad_norm_AFTER_clip", summary.total_max_after)
    if np.isfinite(summary.total_ratio_mean):
        sb3_logger.record(f"debug/{network}_grad_clip_ratio", summary.total_ratio_mean)
    sb3_logger.record(f"debug/{network}_nonfinite_grad_steps", summary.nonfinite_steps)
