"""Checkpoints every ``save_freq`` steps, and one more when the run is interrupted (Ctrl-C or SIGTERM).

A signal only sets a flag; the next ``env.step`` boundary writes the checkpoint and stops ``learn()`` cleanly, so
the trainer can still save its final model and close the simulator. A second Ctrl-C interrupts at once
(``KeyboardInterrupt``). Files are written under a temporary name and renamed, so a checkpoint on disk is never
half written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from stable_baselines3.common.callbacks import CheckpointCallback

__all__ = ["InterruptibleCheckpointCallback"]

logger = logging.getLogger(__name__)

_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class InterruptibleCheckpointCallback(CheckpointCallback):
    """SB3's :class:`~stable_baselines3.common.callbacks.CheckpointCallback` that also saves on SIGINT / SIGTERM.

    Files: ``{name_prefix}_{steps}_steps.zip`` and, with ``save_replay_buffer``,
    ``{name_prefix}_replay_buffer_{steps}_steps.pkl`` (and ``..._vecnormalize_...`` with ``save_vecnormalize``),
    as SB3 names them; ``steps`` is the model's ``num_timesteps``.

    :param save_freq: save every ``save_freq`` calls (each call is one step of every env); <= 0: only on a signal.
    :param save_path: folder of the checkpoints.
    :param name_prefix: file name prefix.
    :param save_replay_buffer: also save the replay buffer (large: see the frame-stack buffer for image envs).
    :param save_vecnormalize: also save the ``VecNormalize`` statistics.
    :param handle_signals: install the SIGINT/SIGTERM handlers during ``learn()`` (main thread only).
    :param verbose: 1: log each save.
    """

    def __init__(
        self,
        save_freq: int,
        save_path: str,
        name_prefix: str = "rl_model",
        save_replay_buffer: bool = False,
        save_vecnormalize: bool = False,
        handle_signals: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(save_freq, save_path, name_prefix, save_replay_buffer, save_vecnormalize, verbose)
        self.handle_signals = handle_signals
        #: Name of the signal that stopped training (``"SIGINT"``/``"SIGTERM"``), else None.
        self.interrupted_by: str | None = None
        #: Path of the last model checkpoint written.
        self.last_checkpoint: Path | None = None
        self._pending: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    # ------------------------------------------------------------------ signals
    def _on_training_start(self) -> None:
        self._pending = None
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._request_stop)

    def _on_training_end(self) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self._pending is not None and sig == signal.SIGINT:
            # Second Ctrl-C: the user does not want to wait for the current step.
            self._restore_handlers()
            raise KeyboardInterrupt
        self._pending = sig
        logger.warning("%s received: saving a checkpoint at the next step, then stopping (Ctrl-C again to abort)", sig.name)

    # ------------------------------------------------------------------ saving
    def _on_step(self) -> bool:
        if self._pending is not None:
            self.interrupted_by = self._pending.name
            self.save_checkpoint()
            return False
        if self.save_freq > 0 and self.n_calls % self.save_freq == 0:
            self.save_checkpoint()
        return True

    def save_checkpoint(self) -> Path:
        """Write the model (and the replay buffer / VecNormalize statistics if asked) now.

        :return: the path of the model checkpoint.
        """
        model_path = Path(self._checkpoint_path(extension="zip"))
        _atomic(model_path, self.model.save)
        if self.save_replay_buffer and getattr(self.model, "replay_buffer", None) is not None:
            _atomic(Path(self._checkpoint_path("replay_buffer_", extension="pkl")), self.model.save_replay_buffer)  # type: ignore[attr-defined]
        vec_normalize = self.model.get_vec_normalize_env()
        if self.save_vecnormalize and vec_normalize is not None:
            _atomic(Path(self._checkpoint_path("vecnormalize_", extension="pkl")), vec_normalize.save)
        self.last_checkpoint = model_path
        if self.verbose >= 1:
            logger.info("Saved checkpoint %s", model_path)
        return model_path


def _atomic(path: Path, save: Any) -> None:
    """Call ``save(tmp)`` then rename ``tmp`` to ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    save(str(tmp))
    os.replace(tmp, path)
