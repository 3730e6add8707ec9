"""Save a checkpoint when training is stopped by SIGTERM or Ctrl-C, so it can be resumed."""

from __future__ import annotations

import os
import signal
import threading

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException


class CheckpointOnInterrupt(L.Callback):
    """On SIGTERM (Lightning stops at the end of the current batch) or a first Ctrl-C (turned into
    the same graceful stop), write ``<checkpoint dir>/last.ckpt``; ``--ckpt_path last`` resumes it.
    A second Ctrl-C interrupts at once, without a checkpoint.
    """

    def __init__(self) -> None:
        self._previous = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0 or not _main_thread():
            return

        def handler(signum, frame):
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's graceful stop: checked after each batch
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

        self._previous = signal.signal(signal.SIGINT, handler)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        from .checkpoint import LastCheckpoint

        savers = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)] or [LastCheckpoint()]
        path = savers[0].path(trainer)
        trainer.save_checkpoint(path)
        if trainer.global_rank == 0:
            print(f"\ncatvae: stopped by signal at step {trainer.global_step}; saved {path} "
                  "(resume with --ckpt_path last)", flush=True)

    def _restore(self) -> None:
        if self._previous is not None and _main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
