r"""Anneal an estimator hyperparameter over training steps (a temperature τ, ReDGE's t₁, ...).

The value is a function of the optimizer step only, set before every training batch (and before validation
and testing, at the checkpoint's step): a resumed run gets exactly the values of an uninterrupted one, with
nothing to checkpoint. ``schedule/<hparam>`` is logged.

Shapes, with ``s`` the step and ``T`` = ``steps`` (default: the trainer's ``max_steps``):

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

from estimators.constraints import ConfigError, integer, one_of, optional, positive, real, text, validate

__all__ = ["EstimatorSchedule"]

SHAPES = ("exp", "linear", "cosine")


class EstimatorSchedule(L.Callback):
    """Set ``module.estimator``'s ``hparam`` from the step before every batch (see the module docstring).

    Args:
        hparam: the estimator's hyperparameter (one of its ``hparams()``), e.g. ``tau`` or ``t_1``.
        start: the value at step 0.
        end: the value at ``steps`` (and after).
        shape: ``exp`` (default), ``linear`` or ``cosine``.
        steps: length of the schedule; default: the trainer's ``max_steps``.
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

    def value(self, step: int) -> float:
        """The scheduled value at optimizer step ``step``."""
        T = self.steps
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
        if self.steps is None:
            if trainer.max_steps is None or trainer.max_steps < 1:
                raise ConfigError("EstimatorSchedule: give init_args.steps, or train with --trainer.max_steps")
            self.steps = trainer.max_steps
        self._apply(trainer, pl_module)  # checks the name and the first value now, before anything runs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check(trainer, pl_module)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        estimator = pl_module.estimator
        value = self.value(trainer.global_step)
        if isinstance(estimator.hparams().get(self.hparam), int) and not isinstance(value, bool):
            value = int(round(value))
        estimator.set_hparam(self.hparam, value)
        return value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        value = self._apply(trainer, pl_module)
        pl_module.log(f"schedule/{self.hparam}", float(value), on_step=True, on_epoch=False, batch_size=1)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._apply(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._apply(trainer, pl_module)
