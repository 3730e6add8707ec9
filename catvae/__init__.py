"""catvae: categorical VAEs and gradient-estimator comparisons with PyTorch Lightning."""

from .core import EstimatorTask
from .data import MNISTDataModule, TensorBatches
from .models import CategoricalVAE
from .tasks import GMMTask, PolynomialTask, StepsDataModule, SudokuTask

__all__ = [
    "CategoricalVAE",
    "EstimatorTask",
    "GMMTask",
    "MNISTDataModule",
    "PolynomialTask",
    "StepsDataModule",
    "SudokuTask",
    "TensorBatches",
]
