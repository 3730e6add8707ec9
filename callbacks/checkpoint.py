"""Lightning's ``ModelCheckpoint`` for runs that resume in their own directory: ``last.ckpt`` and ``best-*.ckpt``."""

from __future__ import annotations

import warnings

from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["RunCheckpoint"]

# The two warnings of ModelCheckpoint that are false alarms for a run that resumes in place; see RunCheckpoint.
_DIR_NOT_EMPTY = r"Checkpoint directory .* exists and is not empty"
_MANUAL_OPTIMIZATION = r"Using ModelCheckpoint with manual optimization"


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose directory belongs to one run, which resumes in it.

    Build them with :meth:`last` (``last.ckpt``, written every N training steps and at every epoch end)
    and :meth:`best` (``best-epoch=E-step=S.ckpt``, the checkpoint with the lowest monitored value; its
    score is recorded in the file's callback state, where ``--ckpt_path best`` reads it). Both are plain
    ``ModelCheckpoint`` configurations; the class differs from its parent only in two warnings it does
    not let through, each a false alarm here:

    * "Checkpoint directory ... exists and is not empty", when built with ``resuming=True``: the run
      resumes from a checkpoint in that very directory (Lightning cannot tell a resume in place from a
      clash of two runs; catvae gives every new run a fresh directory, so a clash cannot happen);
    * "Using ModelCheckpoint with manual optimization and every_n_train_steps, but no pre-optimization
      state was saved", for ``--model.fast_step``, whose whole step (update included) is one unit: the
      state after the update, with the step counted, is exactly what the checkpoint must hold.
    """

    def __init__(self, *args, resuming: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resuming = resuming

    @classmethod
    def last(cls, every_n_steps: int = 1000, dirpath: str | None = None, resuming: bool = False) -> list[RunCheckpoint]:
        """``last.ckpt`` every ``every_n_steps`` optimizer steps and at the end of every epoch (after its
        validation): two instances writing the same file, because one ``ModelCheckpoint`` rejects step and
        epoch triggers together ("should be mutually exclusive"). Each is a top-1 checkpoint with the fixed
        name ``last`` and no monitor, written at every trigger and replacing itself.
        ``ModelCheckpoint(save_last=True)`` is not used: in Lightning 2.6 it writes ``last.ckpt`` at an
        epoch end only if a top-k checkpoint was written at the same step."""
        common = {"dirpath": dirpath, "filename": "last", "monitor": None, "save_top_k": 1,
                  "enable_version_counter": False, "resuming": resuming}
        return [cls(every_n_train_steps=every_n_steps, **common), cls(every_n_epochs=1, **common)]

    @classmethod
    def best(cls, monitor: str, dirpath: str | None = None, resuming: bool = False) -> RunCheckpoint:
        """The best checkpoint by ``monitor`` (minimized), checked at the end of every validation (so that
        the monitored value is always that of the checkpointed parameters)."""
        return cls(dirpath=dirpath, filename="best-{epoch}-{step}", monitor=monitor, mode="min", save_top_k=1,
                   save_on_train_epoch_end=False, resuming=resuming)

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            if self.resuming:
                warnings.filterwarnings("ignore", message=_DIR_NOT_EMPTY)
            super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._every_n_train_steps and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # the epoch-end checkpoint follows (after validation and the epoch's metrics); a checkpoint of the
            # last batch alone would resume into a skipped epoch end (Lightning 2.6 does not rerun its hooks)
            return None
        if pl_module.automatic_optimization:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MANUAL_OPTIMIZATION)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
