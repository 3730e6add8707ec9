"""catvae: categorical VAEs and gradient-estimator comparisons with PyTorch Lightning.

The classes below are imported on first use (PEP 562), so that ``catvae --help`` and a tool's argument errors
answer before torch and Lightning are imported; ``catvae.CategoricalVAE`` (a config's ``class_path``) and
``from catvae import CategoricalVAE`` work as usual.
"""

from __future__ import annotations

import importlib

from . import layout  # noqa: F401  (first: checks that estimators/, callbacks/ on the path are catvae's)

#: each exported name and the submodule that defines it
_EXPORTS = {
    "EstimatorTask": "core",
    "BenchmarkTask": "tasks", "GMMTask": "tasks", "PolynomialTask": "tasks", "SudokuTask": "tasks",
    "CategoricalVAE": "models",
    "GMMDataModule": "data", "MNISTDataModule": "data", "PolynomialDataModule": "data", "StepsDataModule": "data",
    "SudokuDataModule": "data", "TensorBatches": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
