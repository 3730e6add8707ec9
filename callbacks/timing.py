"""Epoch time and training throughput, measured without waiting for the device inside an epoch."""

from __future__ import annotations

import time

import lightning as L
import torch


def device_clock(pl_module) -> float:
    """``time.perf_counter()`` once ``pl_module``'s device has finished its queued work (CUDA), for epoch times."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
    return time.perf_counter()


class Throughput(L.Callback):
    """Logs, once per training epoch, ``time/epoch_s`` (wall time of the epoch, its validation pass and
    checkpoints included) and ``time/samples_per_s`` (training samples of the epoch, all ranks, per
    second of training time: the epoch without its validation).

    The device is synchronized only where the loop already waits for it (epoch and validation
    boundaries), never per step. Lightning's ``ThroughputMonitor`` is not used for that reason: it calls
    ``torch.cuda.synchronize()`` after every training batch, which serializes the host's work for the
    next step (about 0.36 ms per step of ``catvae fit``'s loop, ``docs/performance.md``) with the
    device's, the cost a CUDA-graph step exists to hide. Every epoch is measured, however few steps it has.
    A run resumed in the middle of an epoch logs that epoch's ``time/samples_per_s`` over the steps it
    ran, and no ``time/epoch_s`` for it (only part of the epoch ran in this process).
    """

    def __init__(self) -> None:
        self._epoch_t0: float | None = None
        self._partial_t0 = self._val_t0 = self._val_s = 0.0
        self._samples = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._epoch_t0, self._val_s, self._samples = None, 0.0, 0
        self._partial_t0 = device_clock(pl_module)  # a resumed epoch has no epoch start in this process


    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_t0 = device_clock(pl_module)
        self._val_s, self._samples = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += len(batch) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val_t0 = device_clock(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val_s += device_clock(pl_module) - self._val_t0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = device_clock(pl_module)
        if self._epoch_t0 is not None:
            pl_module.log("time/epoch_s", now - self._epoch_t0, on_step=False, on_epoch=True)
        train_s = now - (self._epoch_t0 if self._epoch_t0 is not None else self._partial_t0) - self._val_s
        if self._samples and train_s > 0:
            pl_module.log("time/samples_per_s", self._samples / train_s, on_step=False, on_epoch=True)
