"""The VAE's image grids of reconstructions and prior samples in TensorBoard (its own callback: it needs the VAE's
``forward``, ``generate`` and ``image_shape``, so it lives with the VAE, not in the generic ``callbacks/``)."""

from __future__ import annotations

import lightning as L
import torch
from torchvision.utils import make_grid

from estimators.constraints import integer, validate


class ImageLogger(L.Callback):
    """Every ``every_n_epochs`` validation epochs (and after the final one), log reconstructions of a fixed validation batch
    (originals above, reconstructions below) and decoded prior samples as image grids.

    Works with any module that has ``forward(x) -> pixel probabilities``, ``generate(n)`` and ``image_shape``
    (``(height, width)`` of its flat images, unless ``image_shape`` is given here), and a logger with a TensorBoard
    ``SummaryWriter`` as ``experiment``; other loggers are skipped.
    """

    def __init__(self, every_n_epochs: int = 10, n_images: int = 32, image_shape: tuple[int, int] | None = None) -> None:
        validate({"every_n_epochs": integer(1), "n_images": integer(1)}, locals())
        self.every_n_epochs, self.n_images, self.image_shape = every_n_epochs, n_images, image_shape
        self._batch: torch.Tensor | None = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and self._batch is None:
            self._batch = batch[: self.n_images].detach()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = getattr(trainer.logger, "experiment", None)
        if trainer.sanity_checking or self._batch is None or not hasattr(writer, "add_image"):
            return
        final = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if trainer.current_epoch % self.every_n_epochs and not final:
            return
        with torch.no_grad(), pl_module.eval_rng(-1):
            recon = pl_module(self._batch)
            samples = pl_module.generate(self.n_images)
        shape = (-1, 1, *(self.image_shape or pl_module.image_shape))
        pair = torch.cat([self._batch.view(shape), recon.view(shape)])
        step = trainer.global_step
        writer.add_image("images/reconstructions", make_grid(pair.float().cpu(), nrow=len(self._batch)), step)
        writer.add_image("images/prior_samples", make_grid(samples.view(shape).float().cpu(), nrow=8), step)
