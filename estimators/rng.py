"""Random numbers of the estimators: seeded noise that leaves the caller's streams untouched, and one stream per
run for a stack of independent runs.

Every estimator draws its noise through :func:`rand` and :func:`randn`. Outside :func:`streams` they are
``torch.rand``/``torch.randn`` on the global generator. Inside ``with streams(generators)``, a drawn tensor is
taken to hold ``R = len(generators)`` runs along its first dimension after ``outer`` leading elements (``[*outer,
R, ...]`` in memory order), and run ``r``'s part is drawn from ``generators[r]``, in the order a tensor of run
``r`` alone would be drawn. An estimator called on the stacked logits ``[R, ...]`` of ``R`` runs then uses, for
each run, exactly the numbers it would draw for that run alone from a generator in the same state: the runs
are independent, and each one is the single-run computation (``catvae.models.stacked``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["rand", "randn", "seeded", "streams"]

_runs: list[torch.Generator] | None = None


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None):
    """Run the block with the global RNG (CPU, and ``device`` when it is a CUDA device) seeded with ``seed``;
    the previous states are restored afterwards, so evaluation or diagnostics never perturb training noise."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def streams(generators: Sequence[torch.Generator]):
    """Inside the block, :func:`rand` and :func:`randn` draw run ``r``'s part of a stacked tensor from
    ``generators[r]`` (module docstring)."""
    global _runs
    previous, _runs = _runs, list(generators)
    try:
        yield
    finally:
        _runs = previous


def rand(shape: Sequence[int], dtype: torch.dtype | None = None, device: torch.device | None = None,
         outer: int = 1) -> Tensor:
    """``U(0, 1)`` numbers of ``shape``; ``outer``: elements in front of the run dimension (:func:`streams`)."""
    return _draw(torch.rand, shape, dtype, device, outer)


def randn(shape: Sequence[int], dtype: torch.dtype | None = None, device: torch.device | None = None,
          outer: int = 1) -> Tensor:
    """``N(0, 1)`` numbers of ``shape``; ``outer`` as in :func:`rand`."""
    return _draw(torch.randn, shape, dtype, device, outer)


def _draw(fn, shape, dtype, device, outer: int) -> Tensor:
    if _runs is None:
        return fn(tuple(shape), dtype=dtype, device=device)
    n, runs = math.prod(shape), len(_runs)
    if n % (outer * runs):
        raise ValueError(f"a draw of shape {tuple(shape)} does not split into {outer} x {runs} runs")
    per_run = n // (outer * runs)
    parts = [fn((outer, per_run), generator=g, dtype=dtype, device=device) for g in _runs]
    return torch.stack(parts, dim=1).reshape(tuple(shape))
