"""catvae: categorical VAEs and gradient-estimator comparisons with PyTorch Lightning.

The classes below are imported on first use (PEP 562), so that ``catvae --help`` and a tool's argument errors
answer before torch and Lightning are imported; ``catvae.CategoricalVAE`` (a config's ``class_path``) and
``from catvae import CategoricalVAE`` work as usual.
"""

from __future__ import annotations

from . import layout  # noqa: F401  (first: checks that estimators/, callbacks/ on the path are catvae's)
from .lazy import lazy_exports

#: each exported name and the submodule that defines it
_EXPORTS = {
    "EstimatorTask": "core", "BenchmarkTask": "tasks", "StepsDataModule": "data", "TensorBatches": "data",
    "BENCHMARKS": "benchmarks",
    "GMMTask": "benchmarks.gmm", "GMMDataModule": "benchmarks.gmm",
    "PolynomialTask": "benchmarks.polynomial", "PolynomialDataModule": "benchmarks.polynomial",
    "SudokuTask": "benchmarks.sudoku", "SudokuDataModule": "benchmarks.sudoku",
    "CategoricalVAE": "benchmarks.vae", "MNISTDataModule": "benchmarks.vae", "StackedVAE": "benchmarks.vae",
    "ImageLogger": "benchmarks.vae",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, {k: f".{v}" for k, v in _EXPORTS.items()}, globals())
