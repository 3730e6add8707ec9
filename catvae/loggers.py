"""Loggers that keep what a resumed run already wrote, the hyperparameters they record, and Lightning's console lines
held until a run starts."""

from __future__ import annotations

import contextlib
import csv
import logging

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from callbacks.compat import csv_filesystem, logger_experiment, set_logger_experiment

__all__ = ["CSVLogger", "LoggedHParams", "ReleaseHeldLogs", "drop_held_logs", "hold_lightning_logs", "release_held_logs"]

#: the loggers whose INFO lines Lightning prints before a run starts ("Seed set to 0", "GPU available: ...")
_LIGHTNING = ("lightning.pytorch", "lightning.fabric")
_held: list[logging.LogRecord] = []
_saved: dict[str, tuple[list[logging.Handler], bool]] = {}


class _Hold(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _held.append(record)


def release_held_logs() -> None:
    """Print the lines :func:`hold_lightning_logs` holds (through Lightning's own handlers) and stop holding."""
    if not _saved:
        return
    for name, (handlers, propagate) in _saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
    _saved.clear()
    records = list(_held)
    _held.clear()
    for record in records:
        logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def hold_lightning_logs():
    """Hold Lightning's console lines until the run starts (:class:`ReleaseHeldLogs`) or the command succeeds; an
    error before then drops them, so that it prints one line (``catvae: error: ...``) and nothing else."""
    if _saved:  # already holding (a command inside a command)
        yield
        return
    for name in _LIGHTNING:
        logger = logging.getLogger(name)
        _saved[name] = (logger.handlers[:], logger.propagate)
        logger.handlers, logger.propagate = [_Hold()], False
    try:
        yield
    except BaseException:
        _held.clear()
        release_held_logs()
        raise
    release_held_logs()


def drop_held_logs() -> None:
    """Forget the lines held so far (a tool that built runs without running them: ``compare --batched`` sizing its
    groups in the sweep's process; the runs print their own lines where they run)."""
    _held.clear()


class ReleaseHeldLogs(L.Callback):
    """Print the held lines once the trainer sets up (data prepared and set up: the errors a user can cause before
    a run are behind)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        release_held_logs()


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        fs = csv_filesystem(self)
        if fs.isfile(self.metrics_file_path):
            with fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` for runs that resume in their own directory.

    Lightning's (2.6) deletes the ``metrics.csv`` it finds in its directory when it starts, so resuming a
    run would lose every row logged before the interruption. This one appends to it (rewriting the
    header when new columns appear, as Lightning's does). ``catvae fit`` uses it wherever the config
    names Lightning's ``CSVLogger``.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if logger_experiment(self) is None:
            csv_filesystem(self).makedirs(self.root_dir, exist_ok=True)
            set_logger_experiment(self, _AppendingWriter(log_dir=self.log_dir))
        return logger_experiment(self)


class LoggedHParams:
    """Mixin for a LightningModule or LightningDataModule: the hyperparameters the loggers record (``hparams.yaml``,
    Lightning's ``hparams_initial``) without LightningCLI's ``_instantiator`` entry (the name of its own
    instantiation function: nothing about the run; catvae rebuilds a task from its hyperparameters without it)."""

    @property
    def hparams_initial(self):
        initial = super().hparams_initial
        initial.pop("_instantiator", None)
        return initial
