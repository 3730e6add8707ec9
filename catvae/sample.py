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
import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from estimators.functional import sample_one_hot
from estimators.rng import seeded

from .data.mnist import load_mnist
from .data.paths import resolve_data_dir
from .errors import ConfigError
from .models import CategoricalVAE
from .runs import load_checkpoint, make_folder

__all__ = ["binarized_test_images", "load_vae", "run", "sample"]


def sample(model: CategoricalVAE, x: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prior samples [n, 1, 28, 28], originals and reconstructions interleaved by rows [2n, 1, 28, 28])``."""
    nrow = math.ceil(math.sqrt(n))
    with torch.no_grad(), seeded(seed):
        codes = torch.randint(model.n_categories, (n, model.latent_dim))
        prior = torch.sigmoid(model.decode(torch.nn.functional.one_hot(codes, model.n_categories).float()))
        z = sample_one_hot(torch.softmax(model.encode(x), -1))
        recon = torch.sigmoid(model.decode(z))
    pairs = []
    for start in range(0, n, nrow):  # a row of originals, then the row of their reconstructions
        pairs += [x[start:start + nrow], recon[start:start + nrow]]
    return prior.reshape(n, 1, 28, 28), torch.cat(pairs).reshape(-1, 1, 28, 28)


def load_vae(path: str, trust: bool = False) -> tuple[CategoricalVAE, str]:
    """A trained :class:`CategoricalVAE` (eval mode) and the name of its dataset, from a checkpoint read with the
    safe loader; a checkpoint of anything else is a one-line :class:`ConfigError`."""
    ckpt = load_checkpoint(Path(path), trust=trust)
    task = (ckpt.get("catvae_task") or {}).get("class")
    if task != CategoricalVAE.__qualname__:
        raise ConfigError(f"checkpoint {path} holds {'a ' + task if task else 'no catvae'} model; this needs a "
                          "CategoricalVAE checkpoint (runs/<mnist_...>/...)")
    model = CategoricalVAE.load_from_checkpoint(path, weights_only=not trust).eval()
    return model, (ckpt.get("datamodule_hyper_parameters") or {}).get("dataset", "mnist")


def binarized_test_images(dataset: str, n: int, data_dir: str | None = None, download: bool = True) -> torch.Tensor:
    """The first ``n`` test images of ``dataset``, binarized at 0.5, ``[n, 784]`` (downloaded where missing, as
    ``fit`` does, unless ``download`` is false)."""
    images = load_mnist(resolve_data_dir(data_dir), False, download, dataset)[:n]
    return (images.float() / 255.0 > 0.5).float()


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError(f"-n must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: expected a .png file name, e.g. --out grid.png")
    for path in (out, out.with_name(f"{out.stem}_reconstructions.png")):
        if path.is_dir():
            raise ConfigError(f"--out {out}: {path} is a folder; pass another file name")
    model, dataset = load_vae(args.ckpt_path, args.trust_checkpoint)
    x = binarized_test_images(dataset, args.n, args.data_dir)
    make_folder(out.parent, "--out's folder")  # after the inputs are checked: a bad one leaves no folder
    prior, pairs = sample(model, x, len(x) if len(x) < args.n else args.n, args.seed)
    nrow = math.ceil(math.sqrt(args.n))
    recon_path = out.with_name(f"{out.stem}_reconstructions.png")
    save_image(make_grid(prior, nrow=nrow, padding=2, pad_value=0.5), out)
    save_image(make_grid(pairs, nrow=nrow, padding=2, pad_value=0.5), recon_path)
    print(f"catvae sample: {len(prior)} prior samples -> {out}; {len(x)} {dataset} test images and their "
          f"reconstructions -> {recon_path}")
    return 0


