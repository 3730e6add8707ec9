"""catvae: categorical VAEs and gradient-estimator comparisons with PyTorch Lightning.

The classes below are imported on first use (PEP 562), so that ``catvae --help`` and a tool's argument errors
answer before torch and Lightning are imported; ``catvae.CategoricalVAE`` (a config's ``class_path``) and
``from catvae import CategoricalVAE`` work as usual.
"""

from __future__ import annotations

import os

# Intel MKL (torch's CPU BLAS on x86) picks its kernels by the memory alignment of the operands unless told
# not to, so a run resumed from a checkpoint (tensors loaded at other addresses) drifted from the uninterrupted run
# by float rounding on AVX-512 CPUs (seen: tests/test_kill_points.py, 8 cases, on a Xeon with AVX-512; AVX2 machines
# agreed). STRICT makes MKL's results independent of alignment on a given CPU (Intel's "conditional numerical
# reproducibility"); set before torch is imported. A user's own MKL_CBWR wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

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
