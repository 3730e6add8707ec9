"""A stopped run writes ``last.ckpt`` and says it stopped: SIGTERM and Ctrl-C end training at a clean point."""

from __future__ import annotations

import os
import signal
import threading
from typing import ClassVar

from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .compat import request_stop

__all__ = ["CheckpointOnInterrupt"]


class CheckpointOnInterrupt(Checkpoint):
    """Stop training at a clean point on SIGTERM or a first Ctrl-C, and write ``last.ckpt``.

    Lightning handles SIGTERM itself: its handler sets a flag that the loops check, and they raise
    ``SIGTERMException``. This callback decides *when* Lightning sees the flag, and saves the state:

    * the signal is forwarded to Lightning's handler at the end of the current training step, or, if
      that step ends an epoch, at the end of the epoch (after its validation, epoch metrics and
      checkpoints). Lightning alone would stop in the middle of that validation, and a resumed run
      would skip the rest of it: that epoch's ``val/nelbo`` would be missing;
    * a first Ctrl-C (SIGINT) takes the same path (Lightning would raise ``KeyboardInterrupt`` wherever
      the main thread is, possibly between a backward and its optimizer step); a second Ctrl-C
      interrupts at once;
    * ``last.ckpt`` is written next to the run's other checkpoints: at the end of the epoch when the stop
      falls there (a ``Checkpoint`` callback's epoch end runs after the task logged the epoch's means, so
      the file is the same as the epoch-end ``last.ckpt`` of :class:`RunCheckpoint`; Lightning resumes
      such a file correctly whether the run is bounded by epochs or by steps, which is not true of a file
      written after the epoch is marked complete), else on ``SIGTERMException`` only.
      ``OnExceptionCheckpoint`` is not used: it saves on *every* exception (a crash or a diverged loss
      would overwrite the last good ``last.ckpt`` with a half-updated or non-finite state) and deletes
      its file at teardown.

    :attr:`received` then holds the signal that stopped the run; ``catvae fit`` exits with 128 + that
    signal (130 for Ctrl-C, 143 for SIGTERM), so a stopped run is never taken for a finished one.
    Signals are handled on rank 0's main thread; other DDP ranks are stopped by Lightning's launcher.
    """

    #: the signal that stopped the last training run of this process (``None``: not stopped by a signal).
    received: ClassVar[int | None] = None

    def __init__(self) -> None:
        self._pending: int | None = None
        self._previous: dict[int, object] = {}
        self._saved_step: int | None = None

    # -- signal handling ------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        CheckpointOnInterrupt.received = None
        self._pending = self._saved_step = None
        if trainer.global_rank != 0 or not _main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self._pending is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self._pending is None:
            self._pending = signum

    def _forward(self, trainer) -> None:
        """Hand the pending stop to Lightning, whose loops then raise ``SIGTERMException`` at their next check."""
        if self._pending is None or trainer.received_sigterm:
            return
        lightning_handler = self._previous.get(signal.SIGTERM)
        if callable(lightning_handler):
            lightning_handler(signal.SIGTERM, None)
        else:  # no Lightning handler installed (e.g. not the main thread): set its flag directly
            request_stop(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._pending is not None and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._forward(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._pending is None or trainer.received_sigterm:
            return
        self._save(trainer)
        self._forward(trainer)  # checked by the fit loop once the epoch, its validation and checkpoints are done

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    # -- the checkpoint ---------------------------------------------------------------------------------
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        pending = self._pending
        self._restore()
        if not isinstance(exception, SIGTERMException):
            # where the run stopped and the checkpoint it keeps, for the one-line report of the command
            path = self._path(trainer)
            exception.stopped_at = {"step": trainer.global_step, "checkpoint": path if os.path.isfile(path) else None}
            return
        CheckpointOnInterrupt.received = signal.SIGINT if pending == signal.SIGINT else signal.SIGTERM
        path = self._save(trainer) if self._saved_step != trainer.global_step else self._path(trainer)
        if trainer.global_rank == 0:
            name = "Ctrl-C" if pending == signal.SIGINT else "SIGTERM"
            print(f"\ncatvae: stopped by {name} at step {trainer.global_step}; saved {path} "
                  "(resume with --ckpt_path last)", flush=True)

    @staticmethod
    def _path(trainer) -> str:
        return os.path.join(_checkpoint_dir(trainer), "last.ckpt")

    def _save(self, trainer) -> str:
        path = self._path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        self._saved_step = trainer.global_step
        return path

    def _restore(self) -> None:
        if _main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous = {}


def _checkpoint_dir(trainer) -> str:
    """The directory of the run's ``last.ckpt`` checkpoint callback, else ``<log_dir>/checkpoints``."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.filename == "last" and callback.dirpath:
            return callback.dirpath
    return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
