"""The data modules: the generic ones here (``StepsDataModule``, ``TensorBatches``, data folders), and each benchmark's
own, from its package in :mod:`catvae.benchmarks` (exported here too, on first use: the class paths configs hold,
``catvae.data.GMMDataModule``, keep working)."""

from __future__ import annotations

from ..lazy import lazy_exports
from .loader import TensorBatches
from .paths import resolve_data_dir
from .steps import StepsDataModule

_EXPORTS = {"GMMDataModule": "catvae.benchmarks.gmm.data", "MNISTDataModule": "catvae.benchmarks.vae.data",
            "PolynomialDataModule": "catvae.benchmarks.polynomial.data",
            "SudokuDataModule": "catvae.benchmarks.sudoku.data"}

__all__ = ["GMMDataModule", "MNISTDataModule", "PolynomialDataModule", "StepsDataModule", "SudokuDataModule",
           "TensorBatches", "resolve_data_dir"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
