"""catvae installs three top-level packages: ``catvae``, ``estimators`` and ``callbacks``.

Why not ``catvae.estimators``: the project's layout keeps the estimators (pure PyTorch, usable without
Lightning) and the callbacks as top-level packages, and every config and every run's ``config.yaml`` names
their classes by those paths (``estimators.ReDGECov``, ``callbacks.Throughput``). Renaming them would break
those files. The price: another installed distribution with a top-level ``estimators`` or ``callbacks``
module collides with them (a ``callbacks.py`` module is shadowed by catvae's package; a ``callbacks/``
package overwrites catvae's files, or catvae overwrites its, whichever pip installs last). :func:`check`
turns the case where catvae is the one broken into one ``ImportError`` naming the module and the fix,
instead of an error about a missing name deep inside an import. Install catvae in its own virtual
environment (the README's ``make setup`` does). Importing ``catvae`` runs the check (this module first).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

__all__ = ["COMPANIONS", "check"]

#: the top-level packages that ship with catvae; each sets ``__distribution__ = "catvae"``.
COMPANIONS = ("estimators", "callbacks")


def check() -> None:
    """Raise ``ImportError`` if a companion package on the path is another distribution's. Read from the source
    of the module that an import would find (its ``__distribution__`` line), without importing it: ``catvae
    --help`` stays free of torch."""
    for name in COMPANIONS:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        try:
            text = Path(origin).read_text(errors="replace") if origin and origin.endswith(".py") else ""
        except OSError:
            text = ""
        if not re.search(r'^__distribution__ = "catvae"', text, re.M):
            where = origin or (list(spec.submodule_search_locations or []) if spec is not None else "not found")
            raise ImportError(f"the top-level module {name!r} ({where}) is not catvae's: another installed package "
                              f"provides one. Install catvae in its own virtual environment (python -m venv), or "
                              f"uninstall the other package and reinstall catvae")


check()
