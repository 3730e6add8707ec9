"""The paper's optimization benchmarks as Lightning tasks (§4.1-4.3): each is an
:class:`~catvae.EstimatorTask` holding its parameters θ, its objective and its metrics; the problem
instance comes from the matching data module of :mod:`catvae.data` (one optimizer step per batch)."""

from .base import BenchmarkTask
from .gmm import GMMTask
from .polynomial import PolynomialTask
from .sudoku import SudokuTask

__all__ = ["BenchmarkTask", "GMMTask", "PolynomialTask", "SudokuTask"]
