"""Every private part of Lightning, torchmetrics, TensorBoard, argparse/jsonargparse and PyTorch that catvae uses,
in one module.

``pyproject.toml`` declares version ranges; none of what is here is a public API of those packages, so a release
may rename or drop it without notice, and a run would then fail, or worse resume wrongly. So: every such access
in catvae goes through a function of this module (a test scans the source for any other), and :data:`PRIVATE`
lists each one with the public API that was looked for and why it does not do. ``tests/test_compat.py`` checks
every entry against the installed versions, one test per entry, failing with the entry's name, its user and the
installed version when a release changes it.

Prefer a public API: each entry here was measured or read as having none (the ``why`` of its entry).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OVERRIDDEN", "PRIVATE", "Private", "attached_trainer", "cli_config_value", "csv_filesystem",
           "last_saved_step", "logger_experiment", "logging_step", "metric_reductions", "metric_state_defaults",
           "parser_actions", "request_stop", "save_checkpoint_now", "set_logger_experiment", "set_logging_step",
           "set_update_count", "tensorboard_file_writer", "torch_dispatch_mode", "tree_leaves"]


@dataclass(frozen=True)
class Private:
    """A private attribute catvae uses: ``owner`` (``module:Class`` or ``module``), ``name``, who uses it and why
    no public API does, and ``probe``: an object of ``owner`` that must have ``name`` (a callable building one, or
    ``None`` when the class or module itself must)."""

    owner: str
    name: str
    used_by: str
    why: str
    probe: Callable[[], object] | None = None

    def resolve(self) -> object:
        module, _, cls = self.owner.partition(":")
        target = importlib.import_module(module)
        return getattr(target, cls) if cls else target

    def check(self) -> None:
        """Raise ``AssertionError`` naming the entry if the installed package no longer has it."""
        target = self.probe() if self.probe is not None else self.resolve()
        if not hasattr(target, self.name):
            package = self.owner.split(".")[0].split(":")[0]
            version = getattr(importlib.import_module(package), "__version__", "?")
            raise AssertionError(f"{self.owner}.{self.name} is gone in the installed {package} {version}; "
                                 f"{self.used_by} relies on it ({self.why}): adapt callbacks/compat.py")


def _checkpoint():
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint()


def _trainer():
    import lightning as L

    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def _mean():
    from torchmetrics import MeanMetric

    return MeanMetric()


def _loop():
    return _trainer().fit_loop.epoch_loop


def _writer():
    import tempfile

    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(tempfile.mkdtemp())


def _signal_connector():
    return _trainer()._signal_connector


def _csv_logger():
    import tempfile

    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(tempfile.mkdtemp())


def _parser():
    import argparse

    return argparse.ArgumentParser()


#: the private attributes catvae reads or writes (through the functions below)
PRIVATE: tuple[Private, ...] = (
    Private("lightning.pytorch.callbacks:ModelCheckpoint", "_last_global_step_saved",
            "callbacks.RunCheckpoint, compare.batched",
            "the step of the last checkpoint written; ModelCheckpoint has no public getter", _checkpoint),
    Private("lightning.pytorch.callbacks:ModelCheckpoint", "_save_checkpoint", "callbacks.RunCheckpoint",
            "write the run's last step mid-epoch with ModelCheckpoint's bookkeeping (trainer.save_checkpoint "
            "would not update the saved step, and the epoch-end trigger would write it again)"),
    Private("lightning.pytorch.trainer.connectors.signal_connector:_SignalConnector", "received_sigterm",
            "callbacks.CheckpointOnInterrupt",
            "stop the loops as Lightning's SIGTERM handler does when no handler is installed (not the main thread)",
            _signal_connector),
    Private("lightning.pytorch:Trainer", "_signal_connector", "callbacks.CheckpointOnInterrupt", "see received_sigterm",
            _trainer),
    Private("lightning.pytorch:LightningModule", "_trainer", "catvae.core.EstimatorTask",
            "the trainer if attached, else None (LightningModule.trainer raises when detached)",
            lambda: __import__("lightning").LightningModule()),
    Private("lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop", "_batches_that_stepped",
            "catvae.core.EstimatorTask",
            "Lightning 2.6 leaves the logging step one ahead after a step-bounded resume from an epoch-end checkpoint",
            _loop),
    Private("torchmetrics:Metric", "_defaults", "catvae.core.EstimatorTask",
            "the metric's state names and their reset values (metric_state is the current values only)", _mean),
    Private("torchmetrics:Metric", "_reductions", "catvae.core.EstimatorTask",
            "how each state reduces across ranks, to restore a checkpointed state on rank 0 only", _mean),
    Private("torchmetrics:Metric", "_update_count", "catvae.core.EstimatorTask",
            "restore update_count (read-only property) with a resumed epoch's states", _mean),
    Private("torch.utils.tensorboard:SummaryWriter", "_get_file_writer", "callbacks.HParamsSummary",
            "write the hparams plugin's summaries with the run's own writer (add_hparams opens a new run folder)",
            _writer),
    Private("argparse:ArgumentParser", "_actions", "catvae.runner.CatVAECLI",
            "find the --ckpt_path action to replace its help (argparse has no public action lookup)", _parser),
    Private("lightning.pytorch.cli:LightningCLI", "_get", "catvae.runner.CatVAECLI",
            "read a subcommand's config section (the config's layout differs with and without subcommands)"),
    Private("lightning.fabric.loggers.csv_logs:_ExperimentWriter", "_fs", "catvae.loggers.CSVLogger",
            "the writer's filesystem, to continue an existing metrics.csv", lambda: _csv_logger().experiment),
    Private("lightning.pytorch.loggers:CSVLogger", "_fs", "catvae.loggers.CSVLogger",
            "the logger's filesystem, as Lightning's own experiment property uses it", lambda: _csv_logger()),
    Private("lightning.pytorch.loggers:CSVLogger", "_experiment", "catvae.loggers.CSVLogger",
            "the logger's writer: catvae's experiment property makes an appending one where Lightning's makes its own",
            lambda: _csv_logger()),
    Private("torch.utils._python_dispatch", "TorchDispatchMode", "catvae.fast, catvae.bench",
            "see every ATen call of a step (what CUDA-graph capture refuses; the bytes a step moves); not public"),
    Private("torch.utils._pytree", "tree_leaves", "catvae.bench", "the tensors in an operation's output"),
)

#: private methods of framework classes that catvae's subclasses override (a release that renames one leaves the
#: override silently unused: ``tests/test_compat.py`` checks they still exist, with the arguments we take)
OVERRIDDEN: tuple[Private, ...] = (
    Private("lightning.pytorch.cli:LightningCLI", "_prepare_subcommand_parser", "catvae.runner.CatVAECLI",
            "catvae's --ckpt_path help in the subcommand's parser (no public hook sees the subcommand parsers)"),
    Private("lightning.pytorch.cli:LightningCLI", "_parse_ckpt_path", "catvae.runner.CatVAECLI",
            "keep the config as given: LightningCLI would merge the checkpoint's hyperparameters into it"),
    Private("lightning.fabric.loggers.csv_logs:_ExperimentWriter", "_check_log_dir_exists", "catvae.loggers._AppendingWriter",
            "continue an existing metrics.csv instead of deleting it on a resume"),
)


# -- the accessors ---------------------------------------------------------------------------------------------
def last_saved_step(callback) -> int:
    """The global step of the last checkpoint ``callback`` (a ``ModelCheckpoint``) wrote."""
    return callback._last_global_step_saved


def save_checkpoint_now(callback, trainer, filepath: str) -> None:
    """Have ``callback`` (a ``ModelCheckpoint``) write ``filepath`` now, with its own bookkeeping."""
    callback._save_checkpoint(trainer, filepath)


def request_stop(trainer) -> None:
    """Set the flag Lightning's SIGTERM handler sets (the loops raise ``SIGTERMException`` at their next check)."""
    trainer._signal_connector.received_sigterm = True


def attached_trainer(module):
    """``module``'s trainer, or ``None`` when it is not attached to one."""
    return getattr(module, "_trainer", None)


def logging_step(loop) -> int:
    """The step a training epoch loop logs at."""
    return loop._batches_that_stepped


def set_logging_step(loop, step: int) -> None:
    loop._batches_that_stepped = step


def metric_state_defaults(metric) -> dict:
    """``{state name: reset value}`` of a torchmetrics ``Metric``."""
    return metric._defaults


def metric_reductions(metric) -> dict:
    """``{state name: reduction across ranks}`` of a torchmetrics ``Metric``."""
    return metric._reductions


def set_update_count(metric, count: int) -> None:
    metric._update_count = int(count)


def tensorboard_file_writer(experiment):
    """The event-file writer of a ``SummaryWriter`` (opened again if it was closed)."""
    return experiment._get_file_writer()


def parser_actions(parser) -> list:
    """The actions of an ``argparse`` (or jsonargparse) parser."""
    return parser._actions


def cli_config_value(cli, config, key: str, default=None):
    """``config[key]`` of the running subcommand of a ``LightningCLI``."""
    return cli._get(config, key, default=default)


def csv_filesystem(obj):
    """The filesystem of Lightning's ``CSVLogger`` or of its ``_ExperimentWriter``."""
    return obj._fs


def logger_experiment(logger):
    """The experiment a Lightning ``CSVLogger`` made so far (``None`` before its first use)."""
    return logger._experiment


def set_logger_experiment(logger, experiment) -> None:
    logger._experiment = experiment


def torch_dispatch_mode() -> type:
    """``torch.utils._python_dispatch.TorchDispatchMode``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def tree_leaves(tree) -> list:
    """``torch.utils._pytree.tree_leaves``."""
    from torch.utils import _pytree

    return _pytree.tree_leaves(tree)
