"""Progress as log lines: what a run shows where no terminal redraws a bar (a sweep's ``log.txt``, CI, ``nohup``)."""

from __future__ import annotations

import math
import os
import sys
import time

from lightning.pytorch.callbacks import ProgressBar

__all__ = ["ProgressLines", "format_duration", "PREFIX"]

#: every line starts with it: what ``catvae compare`` looks for in a run's ``log.txt``
PREFIX = "progress:"
#: the interval when none is given: ``CATVAE_PROGRESS_EVERY`` (seconds; ``compare --progress_every`` sets it for
#: its runs), else this
DEFAULT_EVERY_S = 30.0


def format_duration(seconds: float) -> str:
    """``3h05m`` / ``4m12s`` / ``9s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _value(v) -> str:
    if hasattr(v, "item"):
        v = v.item()
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class ProgressLines(ProgressBar):
    """Lightning's progress bar as one line per event, on stderr::

        progress: step 5,900/60,000 (9.8%) | epoch 9 | 3.95 steps/s | ETA 3h48m | train/loss_epoch 98.31

    A line when training starts, every ``every_s`` seconds of training, after each test, and when training ends
    (finished or stopped). Steps per second count the wall time since this process started training (validation
    and checkpoints included), so the ETA is what the run will take. The metrics are the progress-bar metrics
    (``self.log(..., prog_bar=True)``), as Lightning's bars show them.

    ``catvae fit`` uses it in place of the configured ``TQDMProgressBar`` when stderr is not a terminal (a bar
    redrawn with carriage returns is unreadable in a file); ``catvae compare`` gives it to every run and group, and
    shows their latest line.

    Args:
        every_s: seconds between lines during training; default ``CATVAE_PROGRESS_EVERY`` or 30.
    """

    def __init__(self, every_s: float | None = None) -> None:
        super().__init__()
        if every_s is None:
            every_s = float(os.environ.get("CATVAE_PROGRESS_EVERY") or DEFAULT_EVERY_S)
        if not math.isfinite(every_s) or every_s < 0:
            raise ValueError(f"every_s must be a number of seconds >= 0, got {every_s!r}")
        self.every_s = every_s
        self._enabled = True
        self._t0 = self._last = 0.0
        self._step0 = 0

    # -- Lightning's ProgressBar interface ----------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    # -- lines --------------------------------------------------------------------------------------------
    def line(self, trainer, pl_module, event: str = "") -> str:
        """The progress line now (without :data:`PREFIX`)."""
        step = trainer.global_step
        total = trainer.estimated_stepping_batches
        parts = [f"step {step:,}" + (f"/{int(total):,} ({100 * step / total:.1f}%)" if math.isfinite(total) and total
                                    else "")]
        parts.append(f"epoch {trainer.current_epoch}")
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._step0) / elapsed if elapsed > 0 and step > self._step0 else None
        if rate:
            parts.append(f"{rate:.3g} steps/s")
            if math.isfinite(total) and total > step:
                parts.append(f"ETA {format_duration((total - step) / rate)}")
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        parts += [f"{k} {_value(v)}" for k, v in metrics.items()]
        if event:
            parts.append(event)
        return " | ".join(parts)

    def emit(self, trainer, pl_module, event: str = "") -> None:
        if self._enabled and trainer.is_global_zero:
            print(f"{PREFIX} {self.line(trainer, pl_module, event)}", file=sys.stderr, flush=True)
        self._last = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last = time.perf_counter()
        self._step0 = trainer.global_step
        self.emit(trainer, pl_module, "resumed" if self._step0 else "started")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.perf_counter() - self._last >= self.every_s:
            self.emit(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.emit(trainer, pl_module, f"trained in {format_duration(time.perf_counter() - self._t0)}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.training:
            self.emit(trainer, pl_module, f"stopped ({type(exception).__name__})")

    def on_test_end(self, trainer, pl_module) -> None:
        if self._enabled and trainer.is_global_zero:
            metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
            shown = "".join(f" | {k} {_value(v)}" for k, v in metrics.items())
            print(f"{PREFIX} tested{shown}", file=sys.stderr, flush=True)
