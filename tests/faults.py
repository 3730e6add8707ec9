"""Fault injection for the run tests, as callbacks the CLI takes: ``--trainer.callbacks+=faults.SignalAt``."""

from __future__ import annotations

import builtins
import os
import signal

import lightning as L
import torch


class SignalAt(L.Callback):
    """Send ``signum`` (default SIGTERM) to this process right after optimizer step ``step``."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
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
