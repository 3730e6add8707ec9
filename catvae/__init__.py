"""catvae: categorical VAEs and gradient-estimator comparisons with PyTorch Lightning."""

from .core import EstimatorTask
from .data import MNISTDataModule, TensorBatches
from .models import CategoricalVAE

__all__ = ["CategoricalVAE", "EstimatorTask", "MNISTDataModule", "TensorBatches"]
