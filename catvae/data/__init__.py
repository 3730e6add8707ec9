"""The data modules: the generic ones here (``StepsDataModule``, ``TensorBatches``, data folders), and each benchmark's
own, from its package in :mod:`catvae.benchmarks` (exported here too, on first use: the class paths configs hold,
``catvae.data.GMMDataModule``, keep working)."""

from __future__ import annotations

import importlib

from .loader import TensorBatches
from .paths import resolve_data_dir
from .steps import StepsDataModule

_EXPORTS = {"GMMDataModule": "catvae.benchmarks.gmm.data", "MNISTDataModule": "catvae.benchmarks.vae.data",
            "PolynomialDataModule": "catvae.benchmarks.polynomial.data",
            "SudokuDataModule": "catvae.benchmarks.sudoku.data"}

__all__ = ["GMMDataModule", "MNISTDataModule", "PolynomialDataModule", "StepsDataModule", "SudokuDataModule",
           "TensorBatches", "resolve_data_dir"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
