"""catvae: categorical VAEs and gradient-estimator comparisons with PyTorch Lightning."""

from . import layout  # noqa: F401  (first: checks that estimators/, callbacks/ on the path are catvae's)
from .core import EstimatorTask
from .data import GMMDataModule, MNISTDataModule, PolynomialDataModule, StepsDataModule, SudokuDataModule, TensorBatches
from .models import CategoricalVAE
from .tasks import BenchmarkTask, GMMTask, PolynomialTask, SudokuTask

__all__ = [
    "BenchmarkTask",
    "CategoricalVAE",
    "EstimatorTask",
    "GMMDataModule",
    "GMMTask",
    "MNISTDataModule",
    "PolynomialDataModule",
    "PolynomialTask",
    "StepsDataModule",
    "SudokuDataModule",
    "SudokuTask",
    "TensorBatches",
]
