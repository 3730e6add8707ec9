"""Metrics for the per-step training path."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric

__all__ = ["StepMean"]


class StepMean(MeanMetric):
    """A weighted mean of scalar tensors whose ``update`` never waits for the device.

    ``torchmetrics.MeanMetric.update`` checks its input for NaNs with a host-side ``if nans.any()``:
    a GPU→CPU synchronization on every training step, which stalls a CUDA-graph step's pipeline (and
    ``nan_strategy="disable"`` also drops the weights). Here ``update`` is two in-place adds on the
    device, and a NaN loss propagates into the epoch mean (a diverged run shows ``nan``) instead of
    being silently removed. Reduction across DDP ranks, ``compute`` and ``reset`` are MeanMetric's.

    ``runs=R``: ``R`` means at once (a batched group's runs, :class:`~catvae.models.stacked.StackedVAE`), each
    ``update`` a value ``[R]`` with one weight shared by the runs (their batches have the same size).
    """

    def __init__(self, runs: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if runs is not None:
            self.add_state("mean_value", default=torch.zeros(runs), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: float = 1.0) -> None:  # type: ignore[override]
        self.mean_value += value.detach().to(self.mean_value.dtype) * weight
        self.weight += weight
