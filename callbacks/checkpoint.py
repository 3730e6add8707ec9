"""Lightning's ``ModelCheckpoint`` for runs that resume in their own directory: ``last.ckpt`` and ``best-*.ckpt``."""

from __future__ import annotations

import warnings

from lightning.pytorch.callbacks import ModelCheckpoint

from .compat import last_saved_step, save_checkpoint_now

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

    def __init__(self, *args, resuming: bool = False, every_n_train_steps: int | None = None,
                 every_n_epochs: int | None = None, **kwargs) -> None:
        super().__init__(*args, every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs, **kwargs)
        self.resuming = resuming
        # the triggers as given (ModelCheckpoint keeps its own in private attributes)
        self.step_trigger, self.epoch_trigger = every_n_train_steps, every_n_epochs

    @classmethod
    def last(cls, every_n_steps: int = 1000, dirpath: str | None = None, resuming: bool = False,
             every_n_epochs: int = 1) -> list[RunCheckpoint]:
        """``last.ckpt`` every ``every_n_steps`` optimizer steps and at the end of every ``every_n_epochs``-th epoch
        (after its validation): two instances writing the same file, because one ``ModelCheckpoint`` rejects step and
        epoch triggers together ("should be mutually exclusive"). Each is a top-1 checkpoint with the fixed
        name ``last`` and no monitor, written at every trigger and replacing itself.
        ``ModelCheckpoint(save_last=True)`` is not used: in Lightning 2.6 it writes ``last.ckpt`` at an
        epoch end only if a top-k checkpoint was written at the same step."""
        common = {"dirpath": dirpath, "filename": "last", "monitor": None, "save_top_k": 1,
                  "enable_version_counter": False, "resuming": resuming}
        return [cls(every_n_train_steps=every_n_steps, **common), cls(every_n_epochs=every_n_epochs, **common)]

    @classmethod
    def best(cls, monitor: str, dirpath: str | None = None, resuming: bool = False) -> RunCheckpoint:
        """The best checkpoint by ``monitor`` (minimized), checked at the end of every validation (so that
        the monitored value is always that of the checkpointed parameters)."""
        return cls(dirpath=dirpath, filename="best-{epoch}-{step}", monitor=monitor, mode="min", save_top_k=1,
                   save_on_train_epoch_end=False, resuming=resuming)

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, computed once (it depends on constructor arguments only): Lightning evaluates
        it, a ``repr`` of five settings, for every callback hook of every step, 2.5 µs each on the CPU of
        docs/performance.md (0.18 µs cached), about 20 µs of host time per step and checkpoint callback."""
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self.__dict__["_state_key"] = super().state_key
        return key

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            if self.resuming:
                warnings.filterwarnings("ignore", message=_DIR_NOT_EMPTY)
            super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.step_trigger
        if not every or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # (last batch: the epoch-end checkpoint follows, after validation and the epoch's metrics; a checkpoint
            # of the last batch alone would resume into a skipped epoch end: Lightning 2.6 does not rerun it)
            return
        spent = _budget_spent(trainer)
        if trainer.global_step % every and not spent:
            return  # not due: skip ModelCheckpoint's per-step bookkeeping (host time of every step)
        with warnings.catch_warnings():
            if not pl_module.automatic_optimization:
                warnings.filterwarnings("ignore", message=_MANUAL_OPTIMIZATION)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if spent and last_saved_step(self) != trainer.global_step and not trainer.sanity_checking:
            # the run's last step, in the middle of an epoch: save it as a step (Lightning resumes it mid-epoch,
            # whatever budget the resumed run has), not as the end of a cut epoch (see on_train_epoch_end)
            save_checkpoint_now(self, trainer, self.format_checkpoint_name({}))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.epoch_trigger and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # an epoch cut short by max_steps: its last step was saved as a step above. Saved here, Lightning
            # would count the cut epoch as a whole one on resume (and skip its remaining batches when the
            # resumed run is bounded by max_epochs)
            return
        super().on_train_epoch_end(trainer, pl_module)
        if self.epoch_trigger and (_budget_spent(trainer) or _last_epoch(trainer)) and not trainer.sanity_checking \
                and last_saved_step(self) != trainer.global_step:
            # the run's last step ends an epoch that is not an every_n_epochs-th one (a batched group's): saved as
            # the epoch's end, as a run saving every epoch saves it. Saved after the fit instead, as a completed
            # epoch, a run resumed from it would start its next epoch with another data order
            save_checkpoint_now(self, trainer, self.format_checkpoint_name({}))


def _budget_spent(trainer) -> bool:
    max_steps = trainer.max_steps
    return max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps


def _last_epoch(trainer) -> bool:
    """In ``on_train_epoch_end``: the epoch ending is the last one ``max_epochs`` allows."""
    max_epochs = trainer.max_epochs
    return max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs
