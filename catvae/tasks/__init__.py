"""The paper's optimization benchmarks as Lightning tasks (§4.1-4.3): each is an
:class:`~catvae.EstimatorTask` holding its parameters θ and objective, driven by
:class:`StepsDataModule` (no dataset: one dummy batch per optimizer step)."""

from .gmm import GMMTask
from .polynomial import PolynomialTask
from .steps import StepsDataModule
from .sudoku import SudokuTask

__all__ = ["GMMTask", "PolynomialTask", "StepsDataModule", "SudokuTask"]
