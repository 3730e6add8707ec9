"""The categorical VAE of §4.4 (Table 3): the model, its batched form and its data (MNIST and drop-ins)."""

from .data import MNISTDataModule
from .images import ImageLogger
from .model import CategoricalVAE, RunLinear, VAEMath
from .stacked import StackedVAE

__all__ = ["CategoricalVAE", "ImageLogger", "MNISTDataModule", "RunLinear", "StackedVAE", "VAEMath"]
