"""Learning curves of run folders as PNG: return, success rate and gradient norms (``sb3-av plot RUN_DIR...``).

Reads what ``train.py`` writes in a run folder (no TensorBoard needed):

- ``*.monitor.csv``: training episodes (return ``r``, length ``l``, ``is_success`` for the driving envs);
- ``evaluations.npz``: evaluation returns and successes (``--eval-freq``);
- ``progress.csv``: the logger's rows, with ``debug/<group>_grad_norm_{BEFORE,AFTER}_clip`` from the gradient
  monitor and ``time/step`` (the step of each row).

Several runs are overlaid, one colour per run.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sb3_av.grad_clip import GROUP_NAMES

__all__ = ["GRAD_GROUPS", "RunCurves", "add_plot_arguments", "load_run_curves", "plot_runs", "run_plot_command"]

#: Gradient groups drawn in the gradient panel (BEFORE clip solid, AFTER clip dashed): :data:`sb3_av.grad_clip.GROUP_NAMES`.
GRAD_GROUPS: tuple[str, ...] = GROUP_NAMES


@dataclass
class RunCurves:
    """The curves of one run folder; every series is ``(steps, values)`` as float arrays of equal length.

    :param name: label (the folder name).
    :param train_return: return of each training episode at the step it ended.
    :param train_success: ``is_success`` (0/1) of each training episode (empty for envs without it).
    :param eval_return: mean evaluation return at each evaluation step.
    :param eval_success: evaluation success rate at each evaluation step (empty without successes).
    :param grad_norms: tag (e.g. ``critic_cnn_grad_norm_BEFORE_clip``) -> series.
    """

    name: str
    train_return: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.empty(0), np.empty(0)))
    train_success: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.empty(0), np.empty(0)))
    eval_return: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.empty(0), np.empty(0)))
    eval_success: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.empty(0), np.empty(0)))
    grad_norms: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """True when the folder held no curve at all."""
        series = [self.train_return, self.eval_return, *self.grad_norms.values()]
        return all(len(x) == 0 for x, _ in series)


def _read_monitors(run_dir: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rows: list[dict[str, str]] = []
    for path in sorted(run_dir.glob("*monitor.csv")):
        with path.open() as f:
            f.readline()  # the JSON header line of SB3's Monitor
            rows.extend(csv.DictReader(f))
    rows.sort(key=lambda r: float(r.get("t") or 0.0))  # several envs: order episodes by wall time
    lengths = np.array([float(r["l"]) for r in rows])
    steps = np.cumsum(lengths)
    returns = np.array([float(r["r"]) for r in rows])
    success_rows = [(s, r["is_success"]) for s, r in zip(steps, rows, strict=True) if r.get("is_success") not in (None, "")]
    success = (
        np.array([s for s, _ in success_rows], dtype=float),
        np.array([float(v in ("True", "1", "1.0", "true")) for _, v in success_rows]),
    )
    return (steps, returns), success


def _read_evaluations(run_dir: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    path = run_dir / "evaluations.npz"
    empty = (np.empty(0), np.empty(0))
    if not path.is_file():
        return empty, empty
    data = np.load(path)
    steps = data["timesteps"].astype(float)
    returns = (steps, data["results"].mean(axis=1)) if len(steps) else empty
    successes = data["successes"] if "successes" in data.files else np.empty((0, 0))
    success = (steps, successes.mean(axis=1).astype(float)) if successes.size and len(successes) == len(steps) else empty
    return returns, success


def _read_grad_norms(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = run_dir / "progress.csv"
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step_text = row.get("time/step") or row.get("time/total_timesteps")
        if not step_text:
            continue
        for group in GRAD_GROUPS:
            for when in ("BEFORE", "AFTER"):
                tag = f"{group}_grad_norm_{when}_clip"
                text = row.get(f"debug/{tag}")
                if text:
                    xs, ys = series.setdefault(tag, ([], []))
                    xs.append(float(step_text))
                    ys.append(float(text))
    return {tag: (np.array(xs), np.array(ys)) for tag, (xs, ys) in series.items()}


def load_run_curves(run_dir: str | Path) -> RunCurves:
    """Read the curves of one run folder.

    :raises FileNotFoundError: when the folder does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found")
    train_return, train_success = _read_monitors(run_dir)
    eval_return, eval_success = _read_evaluations(run_dir)
    return RunCurves(
        name=run_dir.name,
        train_return=train_return,
        train_success=train_success,
        eval_return=eval_return,
        eval_success=eval_success,
        grad_norms=_read_grad_norms(run_dir),
    )


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (fewer at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    cumsum = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumsum[1:] - cumsum[np.arange(1, len(values) + 1) - counts]) / counts


def plot_runs(runs: list[RunCurves], out: str | Path, smooth: int = 20, title: str | None = None) -> Path:
    """Draw the three panels (return, success rate, gradient norms) for the runs and save a PNG.

    :param runs: curves of one or more runs.
    :param out: output ``.png`` path (parent folders are created).
    :param smooth: moving-average window over training episodes.
    :param title: figure title (default: the run names).
    :return: the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 11), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        x, y = run.train_return
        if len(x):
            axes[0].plot(x, _smooth(y, smooth), color=color, label=f"{run.name} train (mean of {smooth} episodes)")
        x, y = run.eval_return
        if len(x):
            axes[0].plot(x, y, "o--", color=color, label=f"{run.name} eval")
        x, y = run.train_success
        if len(x):
            axes[1].plot(x, _smooth(y, smooth), color=color, label=f"{run.name} train")
        x, y = run.eval_success
        if len(x):
            axes[1].plot(x, y, "o--", color=color, label=f"{run.name} eval")
        for j, group in enumerate(GRAD_GROUPS):
            # Gradient panel: one colour per group, one marker per run; BEFORE clip solid, AFTER clip dotted.
            for when, style in (("BEFORE", "-"), ("AFTER", ":")):
                series = run.grad_norms.get(f"{group}_grad_norm_{when}_clip")
                if series is not None and len(series[0]):
                    label = f"{run.name} {group} {when.lower()} clip"
                    axes[2].plot(
                        *series, style, marker="os^vD"[i % 5], markersize=3, color=colors[j % len(colors)], label=label
                    )
    axes[0].set_ylabel("episode return")
    axes[1].set_ylabel("success rate")
    axes[1].set_ylim(-0.05, 1.05)
    axes[2].set_ylabel("gradient L2 norm (window max)")
    if any(len(x) and np.all(y > 0) for run in runs for x, y in run.grad_norms.values()):
        axes[2].set_yscale("log")
    axes[2].set_xlabel("environment steps")
    for ax, what in zip(axes, ("return", "success rate", "gradient norms"), strict=True):
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.grid(alpha=0.3)
    fig.suptitle(title or ", ".join(run.name for run in runs))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sb3-av plot`` options to a parser."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by train.py")
    parser.add_argument(
        "-o", "--output", help="PNG path (default: RUN_DIR/learning_curves.png for one run, ./learning_curves.png for several)"
    )
    parser.add_argument("--smooth", type=int, default=20, help="moving-average window over training episodes (default: 20)")
    parser.add_argument("--title", help="figure title")


def run_plot_command(args: argparse.Namespace) -> int:
    """Run ``sb3-av plot``: write the PNG and print its path; 2 with a one-line message on bad input."""
    if args.smooth < 1:
        return _fail(f"--smooth must be >= 1, got {args.smooth}")
    runs = []
    for run_dir in args.run_dirs:
        try:
            run = load_run_curves(run_dir)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            return _fail(f"{run_dir}: {exc}")
        if run.is_empty():
            return _fail(
                f"{run_dir}: no monitor.csv, evaluations.npz or progress.csv with data; is it a run folder of train.py?"
            )
        runs.append(run)
    default = Path(args.run_dirs[0]) / "learning_curves.png" if len(runs) == 1 else Path("learning_curves.png")
    out = plot_runs(runs, args.output or default, smooth=args.smooth, title=args.title)
    print(out)
    return 0


def _fail(message: str) -> int:
    print(f"sb3-av plot: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # ``python -m sb3_av.plotting RUN_DIR...`` = ``sb3-av plot RUN_DIR...``
    _parser = argparse.ArgumentParser(prog="python -m sb3_av.plotting", description=__doc__.splitlines()[0])
    add_plot_arguments(_parser)
    sys.exit(run_plot_command(_parser.parse_args()))
