"""The data side of the optimization benchmarks: they have no dataset, only optimization steps."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from estimators.base import check_int

from ..core import EstimatorSpec, EstimatorTask
from ..data.loader import TensorBatches
from ..metrics import StepMean

__all__ = ["BenchmarkTask", "StepsDataModule"]


class BenchmarkTask(EstimatorTask):
    """A benchmark task: validation and test evaluate the exact objective once (``evaluate``).

    Its training objective is logged with :meth:`log_train_objective`: ``<tag>_step`` every step and
    ``<tag>_epoch``, the mean over the epoch, accumulated in a metric whose state travels in the
    checkpoint (a resumed epoch reports the same mean as an uninterrupted one).
    """

    #: the tag of the training objective (``<tag>_step``, ``<tag>_epoch``).
    train_tag: str = "train/loss"

    def __init__(self, estimator: EstimatorSpec) -> None:
        super().__init__(estimator)
        self.train_objective = StepMean()

    def log_train_objective(self, value: Tensor) -> None:
        value = value.detach()
        self.train_objective.update(value)
        self.log(f"{self.train_tag}_step", value, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self) -> None:
        if self.train_objective.update_called:
            self.log(f"{self.train_tag}_epoch", self.train_objective, prog_bar=True)

    def evaluate(self, stage: str, batch_idx: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluate("val", batch_idx)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluate("test", batch_idx)


class StepsDataModule(L.LightningDataModule):
    """Drives an optimization benchmark: each training batch is a dummy (the step index).

    The benchmark tasks (:class:`~catvae.tasks.PolynomialTask`, :class:`~catvae.tasks.GMMTask`,
    :class:`~catvae.tasks.SudokuTask`) hold their problem and parameters θ themselves and ignore the
    batch; one "epoch" is ``steps_per_epoch`` optimizer steps followed by a validation pass over a
    single item, in which the task evaluates its exact objective. The training iterable is
    :class:`~catvae.TensorBatches` over ``arange(steps_per_epoch)``, so a run stopped mid-epoch
    resumes at the next step (its ``state_dict`` is saved in checkpoints).

    Args:
        steps_per_epoch: optimizer steps between two validations (and epoch-end checkpoints).
    """

    def __init__(self, steps_per_epoch: int = 100) -> None:
        super().__init__()
        check_int("steps_per_epoch", steps_per_epoch, 1)
        self.save_hyperparameters()
        self.steps_per_epoch = steps_per_epoch

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
