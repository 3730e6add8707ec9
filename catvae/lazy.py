"""Exports imported on first use (PEP 562), for the packages whose classes a config names (``catvae.CategoricalVAE``,
``catvae.data.GMMDataModule``): the name resolves as an attribute, and importing the package imports nothing heavy
(``catvae --help`` answers before torch) and nothing of the modules that import the package back."""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for module ``package`` (its globals: ``namespace``): ``exports`` maps each name
    to the module that defines it (absolute, or relative to ``package`` with a leading dot)."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
