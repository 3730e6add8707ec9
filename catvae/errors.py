"""The errors the ``catvae`` command reports on one line, and what their exit status is.

* :class:`ConfigError` (exit 2): a value the user chose is invalid (flag, config entry, file, checkpoint);
  the message names it and the fix. It is defined in :mod:`estimators.base`, the bottom of the import
  graph, so estimators, data, tasks and the CLI raise the same type.
* :class:`TrainingDiverged` (exit 1): the loss or the parameters became non-finite; the last good
  ``last.ckpt`` is kept.
* :class:`NothingToTrain` (exit 0): a resumed run had already reached its budget.

Any other exception is a bug and keeps its traceback.
"""

from estimators.base import ConfigError, NonFiniteLogitsError

__all__ = ["ConfigError", "NonFiniteLogitsError", "NothingToTrain", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The training loss or the model's parameters became NaN or infinite."""


class NothingToTrain(Exception):
    """``catvae fit --ckpt_path ...`` of a run that already reached its ``max_epochs``/``max_steps``."""
