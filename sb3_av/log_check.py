"""``sb3-av check-logs RUN_DIR``: verify a run's gradient diagnostics from its TensorBoard events.

Checks, per TensorBoard run (each folder holding ``events.out.tfevents.*`` files under RUN_DIR):

- every clipped group's AFTER-clip norm stays at or below its max_norm (logged as ``debug/{group}_max_grad_norm``);
- the actor MLP's norms are positive (the "actor MLP grad = 0" bug of logging on critic-only steps);
- the number of explosion alerts: warnings are reported, critical alerts fail the check.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sb3_av.grad_clip import CLIP_EPS, GROUP_NAMES

__all__ = ["CheckResult", "add_check_logs_arguments", "check_run", "find_event_dirs", "load_scalars", "run_check_logs_command"]

#: Relative slack on ``AFTER <= max_norm``: the clip coefficient is max_norm / (norm + 1e-6), and float32 rounding.
RELATIVE_TOLERANCE = 1e-4


class UnreadableRunError(Exception):
    """The run folder does not exist or holds no readable gradient diagnostics."""


@dataclass
class CheckResult:
    """The outcome of the checks on one TensorBoard run.

    :param run: the folder of the event files.
    :param lines: human-readable report lines.
    :param failures: the failed checks (empty: all passed).
    :param alert_counts: number of alert events by level.
    """

    run: Path
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    alert_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.failures


def find_event_dirs(run_dir: Path) -> list[Path]:
    """Folders under ``run_dir`` (itself included) that hold TensorBoard event files, sorted."""
    return sorted({path.parent for path in run_dir.rglob("events.out.tfevents.*")})


def load_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard events in ``event_dir``: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its INFO lines ("No path found after ...") are noise

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def check_run(event_dir: Path) -> CheckResult:
    """Run the checks on the event files of one folder.

    :raises UnreadableRunError: when the folder holds no gradient diagnostics (``debug/*_grad_norm_*`` tags).
    """
    scalars = load_scalars(event_dir)
    result = CheckResult(run=event_dir)
    present = [group for group in GROUP_NAMES if f"debug/{group}_grad_norm_AFTER_clip" in scalars]
    if not present:
        raise UnreadableRunError(
            f"{event_dir}: no gradient diagnostics (debug/*_grad_norm_* tags); was the run trained with an sb3-av "
            "clipped algorithm and GradientMonitorCallback?"
        )
    for group in present:
        after = [value for _, value in scalars[f"debug/{group}_grad_norm_AFTER_clip"]]
        before = [value for _, value in scalars.get(f"debug/{group}_grad_norm_BEFORE_clip", [])]
        limits = scalars.get(f"debug/{group}_max_grad_norm")
        line = f"{group:<11} max BEFORE {max(before, default=float('nan')):10.4g}  max AFTER {max(after):10.4g}"
        if limits:
            max_norm = limits[-1][1]
            bound = max_norm * (1 + RELATIVE_TOLERANCE) + CLIP_EPS
            worst = max(after)
            verdict = "ok" if worst <= bound else "FAIL"
            line += f"  max_norm {max_norm:8.4g}  {verdict}"
            if worst > bound:
                result.failures.append(f"{group}: AFTER-clip norm {worst:.6g} exceeds max_norm {max_norm:.6g}")
        else:
            line += "  (measured only)"
        result.lines.append(line)

    actor_mlp = scalars.get("debug/actor_mlp_grad_norm_BEFORE_clip", [])
    if not actor_mlp:
        result.failures.append("actor_mlp: no norms logged (the actor never updated?)")
        result.lines.append("actor_mlp norms positive: FAIL (none logged)")
    else:
        zeros = [step for step, value in actor_mlp if not value > 0]
        if zeros:
            result.failures.append(
                f"actor_mlp: norm <= 0 at {len(zeros)} of {len(actor_mlp)} points (first at step {zeros[0]})"
            )
        result.lines.append(f"actor_mlp norms positive: {'FAIL' if zeros else 'ok'} ({len(actor_mlp)} points)")

    for level in ("warning", "critical"):
        result.alert_counts[level] = len(scalars.get(f"alerts/gradient_explosion_{level}", []))
    result.lines.append(f"alerts: {result.alert_counts['warning']} warning, {result.alert_counts['critical']} critical")
    if result.alert_counts["critical"]:
        steps = [step for step, _ in scalars["alerts/gradient_explosion_critical"]]
        result.failures.append(f"{result.alert_counts['critical']} critical gradient alert(s), first at step {steps[0]}")
    return result


def add_check_logs_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sb3-av check-logs``."""
    parser.add_argument("run_dir", type=Path, help="a run folder (TensorBoard log dir); searched recursively for event files")


def run_check_logs_command(args: argparse.Namespace) -> int:
    """Run ``sb3-av check-logs``: 0 when every check passes, 1 when one fails, 2 for an unreadable run folder."""
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        print(f"sb3-av check-logs: {run_dir} is not a folder", file=sys.stderr)
        return 2
    event_dirs = find_event_dirs(run_dir)
    if not event_dirs:
        print(f"sb3-av check-logs: no TensorBoard event files under {run_dir}", file=sys.stderr)
        return 2
    results = []
    for event_dir in event_dirs:
        try:
            results.append(check_run(event_dir))
        except UnreadableRunError as error:
            print(f"sb3-av check-logs: {error}", file=sys.stderr)
        except Exception as error:  # a corrupt event file: report it, do not crash
            print(f"sb3-av check-logs: cannot read {event_dir}: {error}", file=sys.stderr)
    if not results:
        return 2
    for result in results:
        print(f"== {result.run}")
        for line in result.lines:
            print(f"  {line}")
        for failure in result.failures:
            print(f"  FAILED: {failure}")
    failed = [result for result in results if not result.ok]
    print(f"{len(results) - len(failed)} run(s) passed, {len(failed)} failed")
    return 1 if failed else 0
