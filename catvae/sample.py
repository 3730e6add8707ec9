"""``catvae sample``: look at a trained VAE without TensorBoard — prior samples and reconstructions as PNG grids.

* ``<out>``: ``n`` images decoded from the prior, ``z ~ Uniform`` over the ``K^L`` one-hot codes (the
  model's ``p(z)``), shown as the decoder's pixel probabilities ``σ(η(z))``;
* ``<out stem>_reconstructions.png``: the first ``n`` test images of the checkpoint's dataset (binarized as
  in training, threshold 0.5) in odd rows, under each one its reconstruction ``σ(η(z))`` with ``z ~ q(z|x)``
  (one exact posterior draw).

The checkpoint is opened with PyTorch's safe loader, like every checkpoint catvae reads.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from estimators.base import ConfigError
from estimators.functional import sample_one_hot
from estimators.rng import seeded

from .benchmarks.vae import CategoricalVAE, MNISTDataModule
from .runs import load_checkpoint, make_folder

__all__ = ["DataRecord", "load_vae", "run", "sample"]


def sample(model: CategoricalVAE, x: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prior samples [n, 1, H, W], originals and reconstructions interleaved by rows [2n, 1, H, W])``, ``(H, W)``
    the model's ``image_shape``."""
    nrow = math.ceil(math.sqrt(n))
    with torch.no_grad(), seeded(seed):
        codes = torch.randint(model.n_categories, (n, model.latent_dim))
        prior = torch.sigmoid(model.decode(torch.nn.functional.one_hot(codes, model.n_categories).float()))
        z = sample_one_hot(torch.softmax(model.encode(x), -1))
        recon = torch.sigmoid(model.decode(z))
    pairs = []
    for start in range(0, n, nrow):  # a row of originals, then the row of their reconstructions
        pairs += [x[start:start + nrow], recon[start:start + nrow]]
    shape = (-1, 1, *model.image_shape)
    return prior.reshape(shape), torch.cat(pairs).reshape(shape)


def load_vae(path: str, trust: bool = False) -> tuple[CategoricalVAE, DataRecord]:
    """A trained :class:`CategoricalVAE` (eval mode) and the data it was trained on (:class:`DataRecord`), from a
    checkpoint read with the safe loader; a checkpoint of anything else is a one-line :class:`ConfigError`."""
    ckpt = load_checkpoint(Path(path), trust=trust)
    task = (ckpt.get("catvae_task") or {}).get("class")
    if task != CategoricalVAE.__qualname__:
        raise ConfigError(f"checkpoint {path} holds {'a ' + task if task else 'no catvae'} model; this needs a "
                          "CategoricalVAE checkpoint (runs/<mnist_...>/...)")
    model = CategoricalVAE.load_from_checkpoint(path, weights_only=not trust).eval()
    return model, DataRecord.of(ckpt)


class DataRecord:
    """The data module a checkpoint was trained on: its class (``catvae_data``, recorded by every catvae
    checkpoint; :class:`~catvae.data.MNISTDataModule` for those written before) and its arguments (Lightning's
    ``datamodule_hyper_parameters``)."""

    def __init__(self, class_path: str, init_args: dict) -> None:
        self.class_path, self.init_args = class_path, init_args

    @classmethod
    def of(cls, ckpt: dict) -> DataRecord:
        path = (ckpt.get("catvae_data") or {}).get("class_path", f"{MNISTDataModule.__module__}.MNISTDataModule")
        return cls(path, dict(ckpt.get("datamodule_hyper_parameters") or {}))

    @property
    def name(self) -> str:
        """What the data is called in messages (its ``run_name``, e.g. the dataset: ``mnist``)."""
        return str(self.init_args.get("dataset") or self.class_path.rpartition(".")[2])

    def test_images(self, n: int, data_dir: str | None = None, download: bool = True) -> torch.Tensor:
        """The first ``n`` images of the data module's test set, as the model is tested on them, ``[n, D]``; the
        module is rebuilt with the recorded arguments, its ``data_dir`` (if it has one) ``data_dir`` or its default
        (``$CATVAE_DATA_DIR``, else ``./data``: the recorded folder is the training machine's), ``download`` as
        given."""
        module, _, name = self.class_path.rpartition(".")
        try:
            data_class = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise ConfigError(f"the checkpoint's data module {self.class_path} cannot be imported; install the "
                              "package that defines it") from None
        params = inspect.signature(data_class).parameters
        args = {k: v for k, v in self.init_args.items() if k in params}
        args.update({k: v for k, v in (("data_dir", data_dir), ("download", download)) if k in params})
        data = data_class(**args)
        data.prepare_data()
        data.setup("test")
        batches, count = [], 0
        for batch in data.test_dataloader():
            batches.append(batch)
            count += len(batch)
            if count >= n:
                break
        return torch.cat(batches)[:n].float()


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name, e.g. --out grid.png")
    for path in (out, out.with_name(f"{out.stem}_reconstructions.png")):
        if path.is_dir():
            raise ConfigError(f"--out {out}: {path} is a folder; pass another file name")
    model, data = load_vae(args.ckpt_path, args.trust_checkpoint)
    x = data.test_images(args.n, args.data_dir)
    make_folder(out.parent, "--out's folder")  # after the inputs are checked: a bad one leaves no folder
    prior, pairs = sample(model, x, len(x) if len(x) < args.n else args.n, args.seed)
    nrow = math.ceil(math.sqrt(args.n))
    recon_path = out.with_name(f"{out.stem}_reconstructions.png")
    save_image(make_grid(prior, nrow=nrow, padding=2, pad_value=0.5), out)
    save_image(make_grid(pairs, nrow=nrow, padding=2, pad_value=0.5), recon_path)
    print(f"catvae sample: {len(prior)} prior samples -> {out}; {len(x)} {data.name} test images and their "
          f"reconstructions -> {recon_path}")
    return 0


