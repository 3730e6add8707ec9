"""Seeded noise that leaves the caller's random streams untouched."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None):
    """Run the block with the global RNG (CPU, and ``device`` when it is a CUDA device) seeded with ``seed``;
    the previous states are restored afterwards, so evaluation or diagnostics never perturb training noise."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
