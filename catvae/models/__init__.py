"""Aliases of the VAE benchmark's models (:mod:`catvae.benchmarks.vae`), kept for the imports and class paths
written before it moved."""

from __future__ import annotations

import importlib

_EXPORTS = {"CategoricalVAE": "catvae.benchmarks.vae.model", "StackedVAE": "catvae.benchmarks.vae.stacked"}

__all__ = ["CategoricalVAE", "StackedVAE"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
