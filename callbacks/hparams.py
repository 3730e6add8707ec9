"""TensorBoard's HPARAMS tab: every hyperparameter of a run next to its final metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from .compat import tensorboard_file_writer

__all__ = ["HParamsSummary", "flatten_hparams"]


def flatten_hparams(params: Mapping, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested hyperparameters as ``{"estimator/t_1": 0.5, ...}`` with TensorBoard's value types (numbers,
    strings, booleans); sequences and ``None`` become their text."""
    flat: dict[str, float | int | str | bool] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if str(key).startswith("_"):  # LightningCLI's bookkeeping (_class_path, _instantiator)
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, Sequence) or value is None:
            flat[name] = str(list(value) if value is not None else None)
        else:
            flat[name] = str(value)
    return flat


class HParamsSummary(L.Callback):
    """At the start of a new run, write the module's and datamodule's hyperparameters to every
    ``TensorBoardLogger`` as an HPARAMS session whose metrics are ``metrics`` (default: the module's
    ``hparams_metrics``). TensorBoard shows each run's latest value of those scalars, so the table fills
    in as the run trains and is tested (``catvae test`` logs into the same run directory).

    Lightning's own ``log_hyperparams`` writes this session only with a metric whose value it logs at
    step 0 (``hp_metric``), which would put a made-up point on every curve; here no value is logged.
    """

    def __init__(self, metrics: Sequence[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics is not None else None

    def on_fit_start(self, trainer, pl_module) -> None:
        # a resumed run already has its session (its global_step is not restored yet here: the checkpoint says it)
        if trainer.ckpt_path is not None or trainer.global_step > 0 or not trainer.is_global_zero:
            return
        metrics = self.metrics if self.metrics is not None else list(getattr(pl_module, "hparams_metrics", ()))
        params = dict(pl_module.hparams)
        if trainer.datamodule is not None and getattr(trainer.datamodule, "hparams", None):
            params["data"] = dict(trainer.datamodule.hparams)
        flat = flatten_hparams(params)
        if not flat or not metrics:
            return
        summaries = hparams(flat, {tag: 0.0 for tag in metrics})
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = tensorboard_file_writer(logger.experiment)
                for summary in summaries:
                    writer.add_summary(summary)
