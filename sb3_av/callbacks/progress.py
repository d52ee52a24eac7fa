"""Where a training run is: steps, steps/s, time left and success rates, as a bar or as log lines.

On a terminal :class:`ProgressCallback` draws a tqdm bar; anywhere else (a CI log, ``nohup ... > train.log``) a bar
would be thousands of carriage returns, so it writes one plain line every ``interval_s`` seconds instead::

    step 4,000/20,000 (20%) | 31.2 steps/s | ETA 8:33 | success 0.45 (20 episodes) | eval success 0.60 (step 2,500)

The success rate is the mean ``is_success`` of the recent training episodes (SB3's ``model.ep_success_buffer``, the
value it logs as ``rollout/success_rate``); the evaluation's is that of the last evaluation of an
:class:`~stable_baselines3.common.callbacks.EvalCallback`, when one is given.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from tqdm import tqdm

__all__ = ["ProgressCallback", "format_duration"]


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above; ``?`` for an unknown (infinite or NaN) duration.

    :param seconds: a duration (s), rounded up to the second.
    """
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(max(0, math.ceil(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressCallback(BaseCallback):
    """Show the progress of ``learn()``: a tqdm bar on a terminal, else one line every ``interval_s`` seconds.

    Each report has the step counter and the run's target (a resumed run counts on from its model's steps), the
    speed since the previous report (steps/s; the last line: over the whole run), the time left at that speed, the
    success rate of the recent training episodes and that of the last evaluation of ``eval_callback``. A last line
    (or the final bar) is written when training ends.

    :param interval_s: seconds between two lines (and between two updates of the bar's success rates).
    :param stream: where to write (default: ``sys.stdout`` at training start).
    :param bar: True: a bar, False: lines, None: a bar exactly when ``stream`` is a terminal.
    :param eval_callback: an evaluation callback whose last success rate is shown; it records success rates when it
        has a ``log_path`` and the env reports ``is_success``.
    :param clock: monotonic time in seconds (default :func:`time.monotonic`); the tests pass their own.
    """

    def __init__(
        self,
        interval_s: float = 15.0,
        stream: TextIO | None = None,
        bar: bool | None = None,
        eval_callback: EvalCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not (math.isfinite(interval_s) and interval_s >= 0):
            raise ValueError(f"interval_s must be a finite number >= 0 (seconds), got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.stream = stream
        self.bar = bar
        self.eval_callback = eval_callback
        self._clock = clock
        #: The bar, when one is drawn (closed: ``pbar.disable``).
        self.pbar: tqdm | None = None
        self._target = 0
        self._start = (0.0, 0)  # (time, steps) at training start
        self._last_report = (0.0, 0)  # (time, steps) of the previous report
        self._open = False

    # ------------------------------------------------------------------------------------------- hooks
    def _on_training_start(self) -> None:
        self.stream = self.stream if self.stream is not None else sys.stdout
        # learn() turned total_timesteps into the absolute target (a resumed model continues its count).
        self._target = int(self.locals["total_timesteps"])
        steps = int(self.model.num_timesteps)
        self._start = self._last_report = (self._clock(), steps)
        use_bar = self.bar if self.bar is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        if use_bar:
            self.pbar = tqdm(
                total=self._target, initial=steps, unit="step", file=self.stream, dynamic_ncols=True, smoothing=0.05
            )
        self._open = True

    def _on_step(self) -> bool:
        now = self._clock()
        if self.pbar is not None:
            self.pbar.update(self.num_timesteps - self.pbar.n)
        if now - self._last_report[0] >= self.interval_s:
            self._report(now, self._last_report)
        return True

    def _on_training_end(self) -> None:
        if self._open:  # the last line: the speed over the whole run
            self._report(self._clock(), self._start)
        self.close()

    # ----------------------------------------------------------------------------------------- reports
    def close(self) -> None:
        """Close the bar (idempotent; also for a run that an interrupt or a crash ended inside ``learn()``)."""
        if self.pbar is not None:
            self.pbar.close()  # idempotent
        self._open = False

    def success_rates(self) -> tuple[float | None, int, float | None, int | None]:
        """The success rates shown.

        :return: (mean ``is_success`` of the recent training episodes or None, how many episodes,
            the last evaluation's success rate or None, the step of that evaluation or None).
        """
        buffer = getattr(self.model, "ep_success_buffer", None) or ()
        train = float(np.mean(buffer)) if len(buffer) > 0 else None
        evaluation = self.eval_callback
        if evaluation is None or not evaluation.evaluations_successes:
            return train, len(buffer), None, None
        return train, len(buffer), float(np.mean(evaluation.evaluations_successes[-1])), evaluation.evaluations_timesteps[-1]

    def _report(self, now: float, since: tuple[float, int]) -> None:
        """Write a line (or update the bar's success rates); the speed is measured since ``since`` (time, steps)."""
        then, steps_then = since
        steps = int(self.num_timesteps)
        speed = (steps - steps_then) / (now - then) if now > then else math.nan
        self._last_report = (now, steps)
        train, episodes, evaluation, eval_step = self.success_rates()
        parts = [] if train is None else [f"success {train:.2f} ({episodes} episodes)"]
        if evaluation is not None:
            parts.append(f"eval success {evaluation:.2f} (step {eval_step:,})")
        if self.pbar is not None:
            self.pbar.set_postfix_str(" | ".join(parts), refresh=False)
            return
        remaining = max(self._target - steps, 0)
        eta = remaining / speed if speed > 0 else (0.0 if remaining == 0 else math.inf)
        share = 100.0 * steps / self._target if self._target > 0 else 100.0
        rate = f"{speed:.1f} steps/s" if math.isfinite(speed) else "- steps/s"
        line = " | ".join([f"step {steps:,}/{self._target:,} ({share:.0f}%)", rate, f"ETA {format_duration(eta)}", *parts])
        assert self.stream is not None  # set at training start
        self.stream.write(line + "\n")
        self.stream.flush()
