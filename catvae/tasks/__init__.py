"""The optimization benchmarks' common task (:class:`BenchmarkTask`: θ, objective, metrics, one optimizer step per
batch); each benchmark's own task lives in its package of :mod:`catvae.benchmarks` (exported here too, on first use:
the class paths configs hold, ``catvae.tasks.GMMTask``, keep working)."""

from __future__ import annotations

from ..lazy import lazy_exports
from .base import BenchmarkTask

_EXPORTS = {"GMMTask": "catvae.benchmarks.gmm.task", "PolynomialTask": "catvae.benchmarks.polynomial.task",
            "SudokuTask": "catvae.benchmarks.sudoku.task"}

__all__ = ["BenchmarkTask", "GMMTask", "PolynomialTask", "SudokuTask"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
