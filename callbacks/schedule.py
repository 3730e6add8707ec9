r"""Anneal an estimator hyperparameter over training steps (a temperature τ, ReDGE's t₁, ...).

The value is a function of the optimizer step only, set before every training batch (and before validation
and testing, at the checkpoint's step): a resumed run gets exactly the values of an uninterrupted one, with
nothing to checkpoint. ``schedule/<hparam>`` is logged.

Shapes, with ``s`` the step and ``T`` = ``steps`` (default: the run's total number of optimizer steps,
``max_steps``, or what ``max_epochs`` amounts to — Lightning's ``estimated_stepping_batches``):

* ``exp``: ``max(end, start · exp(−rate · s))``, the classic Gumbel-Softmax annealing (Jang et al. 2017);
  ``rate`` defaults to ``ln(start/end)/T`` (``end`` reached at ``T``);
* ``linear``: ``start + (end − start) · min(s/T, 1)``;
* ``cosine``: ``end + (start − end) · (1 + cos(π · min(s/T, 1)))/2``.

In YAML (``trainer.callbacks``)::

    - class_path: callbacks.EstimatorSchedule
      init_args: {hparam: tau, start: 1.0, end: 0.1, shape: exp}
"""

from __future__ import annotations

import math

import lightning as L

from estimators.base import ConfigError
from estimators.constraints import integer, one_of, optional, positive, real, text, validate

__all__ = ["EstimatorSchedule"]

SHAPES = ("exp", "linear", "cosine")


class EstimatorSchedule(L.Callback):
    """Set ``module.estimator``'s ``hparam`` from the step before every batch (see the module docstring).

    Args:
        hparam: the estimator's hyperparameter (one of its ``hparams()``), e.g. ``tau`` or ``t_1``.
        start: the value at step 0.
        end: the value at ``steps`` (and after).
        shape: ``exp`` (default), ``linear`` or ``cosine``.
        steps: length of the schedule; default: the run's total number of optimizer steps.
        rate: ``exp`` only, the decay per step (default: reach ``end`` at ``steps``).
    """

    arg_constraints = {"hparam": text, "start": real(), "end": real(), "shape": one_of(*SHAPES),
                       "steps": optional(integer(1)), "rate": optional(positive)}

    def __init__(self, hparam: str = "tau", start: float = 1.0, end: float = 0.1, shape: str = "exp",
                 steps: int | None = None, rate: float | None = None) -> None:
        validate(self.arg_constraints, locals())
        if shape == "exp" and (start <= 0 or end <= 0):
            raise ConfigError(f"EstimatorSchedule: the exp shape needs start and end > 0, got {start}, {end}")
        self.hparam, self.start, self.end, self.shape = hparam, float(start), float(end), shape
        self.steps, self.rate = steps, rate
        self._total = steps

    def value(self, step: int, total: int | None = None) -> float:
        """The scheduled value at optimizer step ``step`` of a schedule of ``total`` steps (default ``steps``)."""
        T = total or self.steps
        if T is None and not (self.shape == "exp" and self.rate is not None):
            raise ValueError("EstimatorSchedule.value needs the schedule's length: pass total or steps")
        if self.shape == "exp":
            rate = self.rate if self.rate is not None else math.log(self.start / self.end) / T
            return max(self.end, self.start * math.exp(-rate * step)) if self.end <= self.start else \
                min(self.end, self.start * math.exp(rate * step))
        frac = min(step / T, 1.0)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * frac
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * frac)) / 2

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Raise :class:`ConfigError` if this schedule cannot run with ``pl_module`` and ``trainer`` (``catvae``
        calls it before anything is written; :meth:`setup` calls it too, for a plain ``Trainer``)."""
        estimator = getattr(pl_module, "estimator", None)
        if estimator is None:
            raise ConfigError(f"EstimatorSchedule needs a module with an estimator; {type(pl_module).__name__} has none")
        if getattr(pl_module.hparams, "fast_step", False):
            raise ConfigError("EstimatorSchedule changes the estimator between steps, but --model.fast_step captures "
                              "the step once (a CUDA graph keeps the first value): drop one of the two")
        for value in (self.end, self.start):  # the name and both ends of the range, before anything runs
            estimator.set_hparam(self.hparam, self._cast(estimator, value))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check(trainer, pl_module)

    def _cast(self, estimator, value: float):
        return int(round(value)) if isinstance(estimator.hparams().get(self.hparam), int) else value

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """Set the value of the current step; ``None`` (nothing set) where the run's length is unknown (a
        test of a run with neither ``steps`` nor ``max_steps``, outside fitting)."""
        if self._total is None:
            if trainer.max_steps is not None and trainer.max_steps > 0:
                self._total = trainer.max_steps
            else:
                try:
                    self._total = int(trainer.estimated_stepping_batches)
                except Exception:  # not fitting: no training data to count
                    return None
        estimator = pl_module.estimator
        value = self._cast(estimator, self.value(trainer.global_step, self._total))
        estimator.set_hparam(self.hparam, value)
        return value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        value = self._apply(trainer, pl_module)
        if value is not None:
            pl_module.log(f"schedule/{self.hparam}", float(value), on_step=True, on_epoch=False, batch_size=1)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._apply(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._apply(trainer, pl_module)
