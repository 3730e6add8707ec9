"""The data of every task: MNIST for the VAE, and the problem instances of the optimization benchmarks."""

from .gmm import GMMDataModule
from .loader import TensorBatches
from .mnist import MNISTDataModule
from .paths import resolve_data_dir
from .polynomial import PolynomialDataModule
from .steps import StepsDataModule
from .sudoku import SudokuDataModule

__all__ = ["GMMDataModule", "MNISTDataModule", "PolynomialDataModule", "StepsDataModule", "SudokuDataModule",
           "TensorBatches", "resolve_data_dir"]
