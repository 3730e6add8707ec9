"""The data side of the optimization benchmarks: a problem instance, and one optimization step per batch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from estimators.constraints import CheckedInit, integer

from ..loggers import LoggedHParams
from .loader import TensorBatches

__all__ = ["StepsDataModule"]


class StepsDataModule(CheckedInit, LoggedHParams, L.LightningDataModule):
    """A benchmark's problem instance (``problem()``), driven by steps instead of a dataset.

    Each training batch is a dummy (the step index); one "epoch" is ``steps_per_epoch`` optimizer steps
    followed by a validation pass over a single item, in which the task evaluates its exact objective.
    The training iterable is :class:`~catvae.TensorBatches` over ``arange(steps_per_epoch)``, so a run
    stopped mid-epoch resumes at the next step (its ``state_dict`` is saved in checkpoints).

    Subclasses own a problem instance (the points of a GMM, the puzzles of a Sudoku set, ...): they build
    it in :meth:`make_problem` from their own hyperparameters, and the task (the LightningModule, holding
    θ, the objective and the metrics) takes it in its ``setup`` through :meth:`problem`. The same task
    runs on another instance by changing only ``--data``.

    Args:
        steps_per_epoch: optimizer steps between two validations (and epoch-end checkpoints).
    """

    #: a short name of the problem, the first part of the run directory's experiment name.
    run_name: str = "steps"
    #: what each constructor argument accepts (:mod:`estimators.constraints`).
    arg_constraints: dict = {"steps_per_epoch": integer(1)}

    def __init__(self, steps_per_epoch: int = 100) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self._problem = None

    def source_name(self, prefix: str, generated: str) -> str:
        """``<prefix>_<file stem>`` for a problem read from ``hparams.source``, else ``<prefix>_<generated>``."""
        source = self.hparams.get("source")
        return f"{prefix}_{Path(source).stem}" if source else f"{prefix}_{generated}"

    def make_problem(self):
        """The problem instance (built once); none for the base class."""
        return None

    def problem(self):
        """The problem instance, built on first use."""
        if self._problem is None:
            self._problem = self.make_problem()
        return self._problem

    def train_dataloader(self) -> TensorBatches:
        trainer = getattr(self, "trainer", None)
        return TensorBatches(
            torch.arange(self.steps_per_epoch),
            1,
            shuffle=False,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
        )

    def _one(self) -> TensorBatches:
        return TensorBatches(torch.zeros(1, dtype=torch.long), 1, shuffle=False)

    def val_dataloader(self) -> TensorBatches:
        return self._one()

    def test_dataloader(self) -> TensorBatches:
        return self._one()
