"""Throughput and epoch-time logging."""

from __future__ import annotations

import time

import lightning as L
import torch


class Throughput(L.Callback):
    """Logs ``time/samples_per_s`` (progress bar) and ``time/epoch_s`` (wall time of each training epoch).

    Throughput is averaged over ``window`` steps; on CUDA the device is synchronized only at the
    window boundary, so the measurement does not serialize every step.
    """

    def __init__(self, window: int = 50) -> None:
        self.window = window
        self._t0 = self._epoch_t0 = 0.0
        self._samples = 0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._epoch_t0 = self._t0 = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += len(batch) * trainer.world_size
        if (batch_idx + 1) % self.window == 0:
            self._sync(pl_module)
            now = time.perf_counter()
            pl_module.log("time/samples_per_s", self._samples / (now - self._t0), prog_bar=True, on_step=True,
                          on_epoch=False)
            self._t0, self._samples = now, 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        pl_module.log("time/epoch_s", time.perf_counter() - self._epoch_t0, on_step=False, on_epoch=True)
