"""Metrics for the per-step training path."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from callbacks.compat import set_update_count

__all__ = ["StepMean", "step_means"]


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

    def means(self) -> Tensor:
        """The ``R`` means of a ``runs=R`` metric, of shape ``[R]`` for ``R = 1`` too (``compute``, as every
        torchmetrics metric's, squeezes a one-element result to a scalar)."""
        return self.compute().reshape(self.mean_value.shape)

    def load_run(self, states: dict[str, Tensor], r: int, update_count: int | None = None) -> None:
        """Make this single mean run ``r``'s part of a ``runs=R`` mean's saved ``states`` (``mean_value`` ``[R]``,
        the shared ``weight``) after ``update_count`` updates (the runs' shared count; unknown — a group
        checkpoint written before it was recorded — as one update if any was made)."""
        self.reset()
        self.mean_value = states["mean_value"][r].to(self.mean_value).clone()
        self.weight = states["weight"].to(self.weight).clone()
        self.set_update_count(int(self.weight > 0) if update_count is None else update_count)

    def set_update_count(self, count: int) -> None:
        """Set the number of updates behind the saved states put back (``compute`` warns when it is 0; torchmetrics
        has no public setter for it, hence :mod:`callbacks.compat`)."""
        set_update_count(self, count)


def step_means(module: torch.nn.Module) -> dict[str, StepMean]:
    """The :class:`StepMean` submodules of ``module`` by name (a task's epoch means, which its checkpoints carry)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, StepMean)}
