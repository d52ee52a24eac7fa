"""What a run folder holds and how to find its model (rl-zoo's layout).

``logs/<algo>/<env id>_<n>/``: ``<env id>.zip`` (final model), ``best_model.zip`` (best evaluation),
``rl_model_<steps>_steps.zip`` (checkpoints), ``replay_buffer.pkl`` / ``rl_model_replay_buffer_<steps>_steps.pkl``
(with ``--save-replay-buffer``), ``evaluations.npz``, ``progress.csv``, ``*.monitor.csv`` and
``<env id>/{config.yml,args.yml,command.txt}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunInfo", "find_checkpoints", "read_run_info", "resolve_model_path"]

_CHECKPOINT_RE = re.compile(r"^rl_model_(\d+)_steps\.zip$")


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Checkpoints of a run folder, sorted by step: ``[(steps, path), ...]``."""
    found = []
    for path in Path(run_dir).glob("rl_model_*_steps.zip"):
        match = _CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _final_models(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("*.zip") if p.name != "best_model.zip" and not _CHECKPOINT_RE.match(p.name))


def resolve_model_path(run_dir: str | Path, prefer: str = "best") -> Path:
    """The model file of a run folder.

    :param run_dir: a run folder (``logs/td3/LiteScenario0-v0_1``).
    :param prefer: ``"best"``: ``best_model.zip``, else the final model, else the last checkpoint;
        ``"last"``: the final model, else the last checkpoint, else ``best_model.zip``.
    :return: the path of an existing ``.zip``.
    :raises FileNotFoundError: when the folder does not exist or holds no model.
    :raises ValueError: for another ``prefer``.
    """
    run_dir = Path(run_dir)
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer must be 'best' or 'last', got {prefer!r}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found")
    best = run_dir / "best_model.zip"
    checkpoints = find_checkpoints(run_dir)
    last = [*_final_models(run_dir), *([checkpoints[-1][1]] if checkpoints else [])]
    candidates = [best, *last] if prefer == "best" else [*last, best]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no model in {run_dir} (expected best_model.zip, <env id>.zip or rl_model_<steps>_steps.zip)")


@dataclass(frozen=True)
class RunInfo:
    """What a run folder says about itself.

    :param algo: ``--algo`` of the run.
    :param env_id: ``--env`` of the run.
    :param hyperparams: the checked hyperparameters (``config.yml``).
    :param args: the command line arguments (``args.yml``).
    """

    algo: str
    env_id: str
    hyperparams: dict[str, Any]
    args: dict[str, Any]

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """The env kwargs the run trained with (config's, updated by ``--env-kwargs``)."""
        return dict(self.hyperparams.get("env_kwargs") or {})


def read_run_info(run_dir: str | Path) -> RunInfo:
    """Read ``<env id>/args.yml`` and ``config.yml`` of a run folder.

    :raises FileNotFoundError: when they are missing (not a folder written by ``train.py``).
    :raises ValueError: when a file is not YAML, not a mapping, or ``args.yml`` lacks ``algo`` or ``env``.
    """
    run_dir = Path(run_dir)
    args_files = sorted(run_dir.glob("*/args.yml"))
    if not args_files:
        raise FileNotFoundError(f"{run_dir}: no <env id>/args.yml; is it a run folder written by train.py?")
    args = _read_mapping(args_files[0])
    missing = [key for key in ("algo", "env") if not args.get(key)]
    if missing:
        raise ValueError(
            f"{args_files[0]}: no {' and no '.join(repr(key) for key in missing)} entry; "
            "it is not the args.yml of a train.py run (or was edited)"
        )
    config_file = args_files[0].with_name("config.yml")
    hyperparams = _read_mapping(config_file) if config_file.is_file() else {}
    return RunInfo(algo=str(args["algo"]), env_id=str(args["env"]), hyperparams=hyperparams, args=args)


def _read_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file: an empty one).

    :raises ValueError: naming the file, for broken YAML or another structure.
    """
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(content).__name__}")
    return content
