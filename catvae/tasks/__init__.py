"""The optimization benchmarks' common task (:class:`BenchmarkTask`: θ, objective, metrics, one optimizer step per
batch); each benchmark's own task lives in its package of :mod:`catvae.benchmarks` (exported here too, on first use:
the class paths configs hold, ``catvae.tasks.GMMTask``, keep working)."""

from __future__ import annotations

import importlib

from .base import BenchmarkTask

_EXPORTS = {"GMMTask": "catvae.benchmarks.gmm.task", "PolynomialTask": "catvae.benchmarks.polynomial.task",
            "SudokuTask": "catvae.benchmarks.sudoku.task"}

__all__ = ["BenchmarkTask", "GMMTask", "PolynomialTask", "SudokuTask"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
