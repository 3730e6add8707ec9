"""``last.ckpt`` every N training steps and at the end of every epoch."""

from __future__ import annotations

import os

import lightning as L


class LastCheckpoint(L.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_steps`` optimizer steps and after each epoch
    (after its validation), always to the same file, so ``--ckpt_path last`` finds the newest state.

    ``dirpath`` defaults to the trainer's checkpoint directory (``<log_dir>/checkpoints``).
    """

    FILENAME = "last.ckpt"

    def __init__(self, every_n_steps: int = 1000, dirpath: str | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.dirpath = every_n_steps, dirpath

    def path(self, trainer) -> str:
        if self.dirpath is None:
            ckpt = trainer.checkpoint_callback
            base = ckpt.dirpath if ckpt is not None and ckpt.dirpath else os.path.join(trainer.log_dir, "checkpoints")
            self.dirpath = base
        return os.path.join(self.dirpath, self.FILENAME)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0 and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path(trainer))
