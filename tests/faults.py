"""Fault injection for the run tests, as callbacks the CLI takes: ``--trainer.callbacks+=faults.SignalAt``."""

from __future__ import annotations

import builtins
import os
import signal

import lightning as L
import torch


class SignalAt(L.Callback):
    """Send ``signum`` (default SIGTERM) to this process right after optimizer step ``step`` (with ``only``: only
    in a run of that estimator, for one run of a sweep)."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM), only: str | None = None) -> None:
        self.step, self.signum, self.only = step, signum, only

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.only is not None and getattr(pl_module.estimator, "name", None) != self.only:
            return
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class CrashAt(L.Callback):
    """Raise ``error`` (a builtin exception's name) right after optimizer step ``step``, before any checkpoint
    of that step (a crash, or a bug)."""

    def __init__(self, step: int, error: str = "RuntimeError") -> None:
        self.step, self.error = step, error

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise getattr(builtins, self.error)(f"injected crash after step {self.step}")


class CrashAtEpochEnd(L.Callback):
    """Raise at the end of the epoch that ends with optimizer step ``step``, before its checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected crash at the end of the epoch of step {self.step}")


class PoisonAt(L.Callback):
    """Set the first parameter of the module to NaN right after optimizer step ``step`` (a diverged update); with
    ``run``, only that run's slice of it (a batched group's first dimension)."""

    def __init__(self, step: int, run: int | None = None) -> None:
        self.step, self.run = step, run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                param = next(pl_module.parameters())
                (param if self.run is None else param[self.run]).fill_(float("nan"))


class KillAt(L.Callback):
    """SIGKILL this process (nothing runs after it: no handler, no flush) at one point of the training step or
    epoch that ends with optimizer step ``step``:

    * ``"step"``: right after the optimizer step (``on_train_batch_end``, before the step's checkpoint);
    * ``"validation"``: inside the validation that follows that step (after its first batch);
    * ``"before_epoch_checkpoint"``: at the epoch's end, before its checkpoint (``on_train_epoch_end`` of a plain
      callback, which Lightning runs before the checkpoint callbacks);
    * ``"after_epoch_checkpoint"``: at the epoch's end, after its checkpoint was requested and before Lightning
      hands the epoch's means to the loggers (its logger connector's ``update_train_epoch_metrics``);
    * ``"after_step_checkpoint"``: after that step's checkpoint was requested, before the step's metrics are
      logged (the logger connector's ``update_train_step_metrics``)."""

    def __init__(self, step: int, where: str = "step") -> None:
        self.step, self.where = step, where

    def _kill(self, trainer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_start(self, trainer, pl_module) -> None:
        name = {"after_epoch_checkpoint": "update_train_epoch_metrics",
                "after_step_checkpoint": "update_train_step_metrics"}.get(self.where)
        if name:
            connector = trainer._logger_connector
            original = getattr(connector, name)

            def wrapped(*args, **kwargs):
                self._kill(trainer)
                return original(*args, **kwargs)

            setattr(connector, name, wrapped)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.where == "step":
            self._kill(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.where == "validation" and trainer.training is False and trainer.state.fn == "fit":
            self._kill(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.where == "before_epoch_checkpoint":
            self._kill(trainer)
