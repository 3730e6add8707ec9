"""Aliases of the VAE benchmark's models (:mod:`catvae.benchmarks.vae`), kept for the imports and class paths
written before it moved."""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {"CategoricalVAE": "catvae.benchmarks.vae.model", "StackedVAE": "catvae.benchmarks.vae.stacked"}

__all__ = ["CategoricalVAE", "StackedVAE"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
