"""Host-side windows of gradient-norm statistics, filled once per ``train()`` call (no torch, no SB3).

A clipped algorithm adds the norms of every optimizer step of a ``train()`` call in one batch, after a
single device-to-host copy. Two independent accumulators read the same stream: the *dump* window, summarised
and reset when the gradient monitor writes TensorBoard scalars, and the *alert* window, checked and reset
by the monitor after every environment step so that an explosion is reported at the step it happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["GradNormWindow", "NetworkSummary"]


@dataclass
class NetworkSummary:
    """Statistics of one network (actor or critic) over a window of optimizer steps.

    :param groups: names of the network's parameter groups, in column order.
    :param steps: number of optimizer steps seen (finite or not).
    :param max_before: per group, max BEFORE-clip norm over finite steps (nan when none).
    :param max_before_update: per group, the update index (``_n_updates``) of that max.
    :param max_after: per group, max AFTER-clip norm over finite steps.
    :param ratio_mean: per group, mean of AFTER / BEFORE over finite steps with BEFORE > 0.
    :param total_max_before: max BEFORE norm of the whole network.
    :param total_max_after: max AFTER norm of the whole network.
    :param total_ratio_mean: mean AFTER / BEFORE of the whole network.
    :param nonfinite_steps: steps skipped because a gradient was NaN/Inf.
    :param nonfinite_groups: per group, how many of those steps had a non-finite norm in that group.
    :param first_nonfinite_update: update index of the first skipped step (-1 when none).
    """

    groups: tuple[str, ...]
    steps: int = 0
    max_before: np.ndarray = field(default_factory=lambda: np.zeros(0))
    max_before_update: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    max_after: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ratio_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    total_max_before: float = float("nan")
    total_max_after: float = float("nan")
    total_ratio_mean: float = float("nan")
    nonfinite_steps: int = 0
    nonfinite_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first_nonfinite_update: int = -1


class _Accumulator:
    """Running reductions of one network's step norms, reset on demand."""

    def __init__(self, groups: tuple[str, ...]) -> None:
        self.groups = groups
        self.reset()

    def reset(self) -> None:
        n = len(self.groups)
        self.steps = 0
        self.max_before = np.full(n, -np.inf)
        self.max_before_update = np.full(n, -1, dtype=np.int64)
        self.max_after = np.full(n, -np.inf)
        self.ratio_sum = np.zeros(n)
        self.ratio_count = np.zeros(n, dtype=np.int64)
        self.total_max_before = -np.inf
        self.total_max_after = -np.inf
        self.total_ratio_sum = 0.0
        self.total_ratio_count = 0
        self.nonfinite_steps = 0
        self.nonfinite_groups = np.zeros(n, dtype=np.int64)
        self.first_nonfinite_update = -1

    def add(self, updates: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        self.steps += len(updates)
        finite_rows = np.isfinite(before).all(axis=1)
        if not finite_rows.all():
            bad = ~finite_rows
            self.nonfinite_steps += int(bad.sum())
            self.nonfinite_groups += (~np.isfinite(before[bad])).sum(axis=0)
            if self.first_nonfinite_update < 0:
                self.first_nonfinite_update = int(updates[bad][0])
        before, after, updates = before[finite_rows], after[finite_rows], updates[finite_rows]
        if len(updates) == 0:
            return
        best_row = before.argmax(axis=0)
        best = before[best_row, np.arange(before.shape[1])]
        improved = best > self.max_before
        self.max_before = np.where(improved, best, self.max_before)
        self.max_before_update = np.where(improved, updates[best_row], self.max_before_update)
        self.max_after = np.maximum(self.max_after, after.max(axis=0))
        positive = before > 0
        self.ratio_sum += np.where(positive, after / np.where(positive, before, 1.0), 0.0).sum(axis=0)
        self.ratio_count += positive.sum(axis=0)
        total_before = np.sqrt(np.square(before).sum(axis=1))
        total_after = np.sqrt(np.square(after).sum(axis=1))
        self.total_max_before = max(self.total_max_before, float(total_before.max()))
        self.total_max_after = max(self.total_max_after, float(total_after.max()))
        total_positive = total_before > 0
        self.total_ratio_sum += float((total_after[total_positive] / total_before[total_positive]).sum())
        self.total_ratio_count += int(total_positive.sum())

    def summary(self) -> NetworkSummary:
        def finite_or_nan(values: np.ndarray) -> np.ndarray:
            return np.where(np.isfinite(values), values, np.nan)

        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(self.ratio_count > 0, self.ratio_sum / np.maximum(self.ratio_count, 1), np.nan)
        return NetworkSummary(
            groups=self.groups,
            steps=self.steps,
            max_before=finite_or_nan(self.max_before),
            max_before_update=self.max_before_update.copy(),
            max_after=finite_or_nan(self.max_after),
            ratio_mean=ratio,
            total_max_before=float(finite_or_nan(np.array(self.total_max_before))),
            total_max_after=float(finite_or_nan(np.array(self.total_max_after))),
            total_ratio_mean=self.total_ratio_sum / self.total_ratio_count if self.total_ratio_count else float("nan"),
            nonfinite_steps=self.nonfinite_steps,
            nonfinite_groups=self.nonfinite_groups.copy(),
            first_nonfinite_update=self.first_nonfinite_update,
        )


class GradNormWindow:
    """The gradient-norm statistics an algorithm keeps for the gradient monitor.

    :param groups: network name ("actor", "critic") -> its group names, in the column order of :meth:`add`.
    :param max_norms: group name -> max_norm (None: measure only).
    """

    def __init__(self, groups: dict[str, tuple[str, ...]], max_norms: dict[str, float | None]) -> None:
        self.groups = {network: tuple(names) for network, names in groups.items()}
        self.max_norms = dict(max_norms)
        self._dump = {network: _Accumulator(names) for network, names in self.groups.items()}
        self._alert = {network: _Accumulator(names) for network, names in self.groups.items()}
        #: Total optimizer steps skipped because of non-finite gradients, per network (never reset).
        self.nonfinite_total = dict.fromkeys(self.groups, 0)

    def add(self, network: str, updates: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        """Add the norms of several optimizer steps of one network.

        :param network: "actor" or "critic".
        :param updates: ``(k,)`` update index of each step.
        :param before: ``(k, n_groups)`` BEFORE-clip norms (NaN/Inf for a skipped, non-finite step).
        :param after: ``(k, n_groups)`` AFTER-clip norms.
        """
        if len(updates) == 0:
            return
        self._dump[network].add(updates, before, after)
        self._alert[network].add(updates, before, after)
        self.nonfinite_total[network] += int((~np.isfinite(before).all(axis=1)).sum())

    def pop_dump(self) -> dict[str, NetworkSummary]:
        """Summaries of the networks that took at least one step since the last call, then reset."""
        return _pop(self._dump)

    def pop_alert(self) -> dict[str, NetworkSummary]:
        """Summaries for alert checks since the last call, then reset (independent of :meth:`pop_dump`)."""
        return _pop(self._alert)


def _pop(accumulators: dict[str, _Accumulator]) -> dict[str, NetworkSummary]:
    result = {}
    for network, accumulator in accumulators.items():
        if accumulator.steps:
            result[network] = accumulator.summary()
            accumulator.reset()
    return result
