"""The VAE's image geometry comes from the data: a data module of another shape (generated 16×16 binary images,
defined here and nowhere else) trains, tests, logs image grids and samples with no change outside its module."""

from __future__ import annotations

import lightning as L
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from catvae.cli import main
from catvae.runs import load_checkpoint

SIDE = 16


class Rectangles(L.LightningDataModule):
    """16×16 binary images, each one random filled rectangle; a training and a test set."""

    image_shape = (SIDE, SIDE)

    def __init__(self, n_train: int = 256, n_test: int = 64, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def _images(self, n: int, gen: torch.Generator) -> torch.Tensor:
        corners = torch.randint(0, SIDE, (n, 4), generator=gen)
        top, bottom = corners[:, :2].sort(dim=1).values.unbind(1)
        left, right = corners[:, 2:].sort(dim=1).values.unbind(1)
        rows, cols = torch.arange(SIDE)[None, :, None], torch.arange(SIDE)[None, None, :]
        inside = (rows >= top[:, None, None]) & (rows <= bottom[:, None, None]) \
            & (cols >= left[:, None, None]) & (cols <= right[:, None, None])
        return inside.float().view(n, SIDE * SIDE)

    def setup(self, stage: str | None = None) -> None:
        gen = torch.Generator().manual_seed(self.hparams.seed)
        self.train_x, self.test_x = self._images(self.hparams.n_train, gen), self._images(self.hparams.n_test, gen)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_x, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.test_x, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return self.val_dataloader()


def test_a_data_module_of_another_shape_trains_tests_logs_images_and_samples(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--model=CategoricalVAE", "--model.init_args.estimator=gumbel", "--model.init_args.latent_dim=4",
            "--model.init_args.n_categories=3", "--model.init_args.encoder_hidden=[32]",
            "--model.init_args.decoder_hidden=[32]", "--model.init_args.n_importance_samples=2",
            f"--data={__name__}.Rectangles", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
            "--runs_dir", str(runs), "--experiment_name", "rectangles", "--seed_everything=0"]
    assert main(["fit", *args]) == 0
    run = next(runs.glob("rectangles/gumbel/version_*"))
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(ckpt)
    assert saved["hyper_parameters"]["image_shape"] == [SIDE, SIDE]  # given by the data module, recorded
    assert saved["state_dict"]["encoder.0.weight"].shape == (32, SIDE * SIDE)
    assert saved["catvae_data"]["class_path"] == f"{__name__}.Rectangles"
    assert main(["test", *args, "--ckpt_path", str(ckpt)]) == 0
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    grid = events.Images("images/prior_samples")[-1]  # 32 samples, 8 per row, 2 px padding
    assert (grid.width, grid.height) == (8 * (SIDE + 2) + 2, 4 * (SIDE + 2) + 2)
    recon = events.Images("images/reconstructions")[-1]  # the first validation batch above its reconstructions
    assert (recon.width, recon.height) == (32 * (SIDE + 2) + 2, 2 * (SIDE + 2) + 2)
    capsys.readouterr()
    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt_path", str(ckpt), "-n", "4", "--out", str(out)]) == 0
    assert "4 Rectangles test images" in capsys.readouterr().out
    assert Image.open(out).size == (2 * (SIDE + 2) + 2,) * 2
    assert Image.open(tmp_path / "grid_reconstructions.png").size == (2 * (SIDE + 2) + 2, 4 * (SIDE + 2) + 2)
