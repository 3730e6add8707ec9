"""Binarized MNIST (the paper's §4.4 data) or an MNIST-format drop-in (Fashion-MNIST, Kuzushiji-MNIST), held as
one tensor on the training device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torchvision.datasets import KMNIST, MNIST, FashionMNIST

from estimators.base import ConfigError
from estimators.constraints import CheckedInit, boolean, integer, one_of, optional, text, validate

from ...data.loader import TensorBatches
from ...data.paths import resolve_data_dir
from ...loggers import LoggedHParams
from ...runs import remove_empty

__all__ = ["DATASETS", "MNISTDataModule", "resolve_data_dir", "load_mnist"]

Binarize = Literal["threshold", "dynamic", "none"]
SIZES = {True: 60_000, False: 10_000}
#: the images' height and width (every dataset of :data:`DATASETS`)
IMAGE_SHAPE = (28, 28)
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: the datasets in MNIST's idx format (same sizes and file names), by ``--data.dataset`` name: torchvision's
#: classes, each reading ``<root>/<ClassName>/raw/``.
DATASETS = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "kmnist": KMNIST}


def _cause(err: Exception) -> str:
    """One line for a failed read or download: torchvision's download error lists each mirror it tried and what
    each gave (``Tried <url>, got:`` / ``<urlopen error ...>``); the first mirror's URL and error are kept."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    tried = next((i for i, line in enumerate(lines) if line.startswith("Tried ")), None)
    if tried is not None and tried + 1 < len(lines):
        url = lines[tried].removeprefix("Tried ").split(",")[0]
        text = f"{lines[tried + 1].strip('<>')} from {url}; no network?"
    else:
        text = lines[0].rstrip(":") if lines else ""
    return f"{type(err).__name__}: {text}"[:200]


def load_mnist(root: Path, train: bool, download: bool, dataset: str = "mnist") -> Tensor:
    """The images of an MNIST-format dataset (:data:`DATASETS`) as a uint8 tensor ``[N, 28·28]`` from
    torchvision's files under ``root/<ClassName>/raw`` (``root/MNIST/raw`` for MNIST)."""
    cls = DATASETS[dataset]
    raw = root / cls.__name__ / "raw"
    present = all((raw / name).is_file() for name in FILES)
    created = [p for p in (raw, raw.parent, root) if not p.exists()]
    try:
        data = cls(str(root), train=train, download=download and not present)
    except Exception as err:  # missing files, network errors, corrupt or truncated files
        remove_empty(created)  # a failed download leaves nothing behind
        cause = _cause(err)
        if present:
            raise ConfigError(f"could not read the {cls.__name__} files in {raw} ({cause}): they are corrupt; "
                            "delete them to re-download, or replace them with a valid copy") from None
        if download:
            raise ConfigError(f"{cls.__name__} files not found in {raw} and the download failed ({cause}); put the "
                              f"four idx files there, or point --data.data_dir / CATVAE_DATA_DIR at a folder with "
                              f"{cls.__name__}/raw/") from None
        raise ConfigError(f"{cls.__name__} files not found in {raw}; put the four idx files there, or point "
                          f"--data.data_dir / CATVAE_DATA_DIR at a folder containing {cls.__name__}/raw/") from None
    images = data.data
    if images.shape != (SIZES[train], *IMAGE_SHAPE) or images.dtype != torch.uint8:
        raise ConfigError(
            f"{cls.__name__} {'training' if train else 'test'} images in {raw} have shape {tuple(images.shape)}, expected "
            f"{(SIZES[train], *IMAGE_SHAPE)}: the files are corrupt; delete them to re-download or replace them"
        )
    return images.reshape(len(images), -1)


def _bernoulli(batch: Tensor, gen: torch.Generator) -> Tensor:
    return (torch.rand(batch.shape, generator=gen, device=batch.device) < batch).to(batch.dtype)


class MNISTDataModule(CheckedInit, LoggedHParams, L.LightningDataModule):
    """MNIST (or an MNIST-format dataset) for the categorical VAE, with the whole dataset resident on the
    training device.

    Args:
        data_dir: folder holding ``MNIST/raw/`` (torchvision layout; ``FashionMNIST/raw/``, ``KMNIST/raw/`` for
            the others). Default: ``$CATVAE_DATA_DIR``, else ``./data``.
        batch_size: training batch size (paper: 200, i.e. 300 steps per epoch on 60k images).
        eval_batch_size: validation/test batch size.
        binarize: ``threshold`` (pixel > 0.5, the paper's), ``dynamic`` (a fresh Bernoulli draw of
            every pixel each epoch), or ``none`` (grey levels in [0, 1] as targets).
        val_size: 0 (default, as the paper) validates on the official 10k test images; N > 0 holds
            out the last N training images for validation and trains on the rest.
        train_subset: train on the first N images only (quick runs); ``None`` uses all.
        download: download the files when missing (needs network access).
        seed: seed of the shuffling and of dynamic binarization; ``None`` (default): the run's seed (``catvae fit``
            writes ``--seed_everything``'s value here, so config.yaml records it; used directly, the seed of
            Lightning's ``seed_everything``, else 0), so the seeds of a sweep see different data orders, as in
            the authors' script. Give it to pin the order across seeds.
        dataset: ``mnist`` (default, the paper's), ``fashion_mnist`` or ``kmnist``: the same idx format, sizes
            and 28×28 grey levels, binarized the same way; downloaded by torchvision where the network allows.
    """

    #: the images' shape: what the VAE's input and output size and the image grids follow (``catvae fit`` gives it
    #: to the model as ``image_shape``; another image data module declares its own)
    image_shape = IMAGE_SHAPE

    arg_constraints = {"data_dir": optional(text), "dataset": one_of(*DATASETS), "batch_size": integer(1),
                       "eval_batch_size": integer(1),
                       "binarize": one_of("threshold", "dynamic", "none"), "val_size": integer(0, SIZES[True] - 1),
                       "download": boolean, "seed": optional(integer(0))}

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 200,
        eval_batch_size: int = 1000,
        binarize: Binarize = "threshold",
        val_size: int = 0,
        train_subset: int | None = None,
        download: bool = True,
        seed: int | None = None,
        dataset: str = "mnist",
    ) -> None:
        super().__init__()
        validate({"train_subset": optional(integer(1, SIZES[True] - val_size))}, {"train_subset": train_subset})
        if train_subset is not None and train_subset < batch_size:
            raise ConfigError(f"train_subset ({train_subset}) is smaller than batch_size ({batch_size}): not one full "
                              "training batch (the last partial batch is dropped); raise train_subset or lower batch_size")
        self.save_hyperparameters()
        self.root = resolve_data_dir(data_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.binarize, self.val_size, self.train_subset = binarize, val_size, train_subset
        self.download, self.seed, self.dataset = download, seed, dataset
        self.train_x = self.val_x = self.test_x = None

    @property
    def run_name(self) -> str:
        """The data's part of the run directory's experiment name (:func:`catvae.runs.experiment_name`)."""
        return self.dataset

    def data_files(self) -> list[Path]:
        """The dataset's files this module reads (what a run records in its ``versions.txt``)."""
        return [self.root / DATASETS[self.dataset].__name__ / "raw" / name for name in FILES]

    def prepare_data(self) -> None:
        for train in (True, False):
            load_mnist(self.root, train, self.download, self.dataset)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _prepare(self, images: Tensor, device: torch.device) -> Tensor:
        x = images.to(device=device, dtype=torch.float32).div_(255.0)
        return (x > 0.5).float() if self.binarize == "threshold" else x

    def setup(self, stage: str | None = None) -> None:
        device = self._device()
        if self.train_x is None or self.train_x.device != device:
            train = self._prepare(load_mnist(self.root, True, False, self.dataset), device)
            if self.val_size:
                train, self.val_x = train[: -self.val_size], train[-self.val_size :]
            self.train_x = train[: self.train_subset] if self.train_subset else train
            self.test_x = self._prepare(load_mnist(self.root, False, False, self.dataset), device)
            if not self.val_size:
                self.val_x = self.test_x
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if len(self.train_x) // world < self.batch_size:
            raise ConfigError(f"{len(self.train_x)} training images over {world} process(es) do not fill one batch of "
                              f"{self.batch_size}; use more images or a smaller --data.batch_size")

    def _loader(self, data: Tensor, train: bool) -> TensorBatches:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return TensorBatches(
            data,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0)),
            drop_last=train,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None and train else None,
            transform=_bernoulli if self.binarize == "dynamic" else None,
        )

    def train_dataloader(self) -> TensorBatches:
        return self._loader(self.train_x, True)

    def val_dataloader(self) -> TensorBatches:
        return self._loader(self.val_x, False)

    def test_dataloader(self) -> TensorBatches:
        return self._loader(self.test_x, False)

    def predict_dataloader(self) -> TensorBatches:
        return self._loader(self.test_x, False)
