"""Exact expectations and gradients by enumerating all ``K^L`` configurations (small problems only).

``f`` maps a batch of one-hot configurations ``[N, L, K]`` to values ``[N]``; ``logits`` is ``[L, K]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["MAX_CONFIGS", "Moments", "configurations", "estimator_mean_gradient", "expectation", "gradient",
           "log_prob"]

#: largest ``K^L`` these helpers accept (memory: MAX_CONFIGS × L × K values).
MAX_CONFIGS = 2**20


def _check(L: int, K: int) -> None:
    if L < 1 or K < 1:
        raise ValueError(f"need L >= 1 and K >= 1, got L={L}, K={K}")
    if K**L > MAX_CONFIGS:
        raise ValueError(f"K^L = {K}^{L} exceeds {MAX_CONFIGS} configurations: too large to enumerate")


def configurations(L: int, K: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """All ``K^L`` one-hot configurations, ``[K^L, L, K]``, in lexicographic order."""
    _check(L, K)
    index = torch.tensor(list(itertools.product(range(K), repeat=L)), device=device).reshape(-1, L)
    return torch.nn.functional.one_hot(index, K).to(dtype)


def log_prob(logits: Tensor, configs: Tensor) -> Tensor:
    """``log π_θ(x)`` of each configuration under the factorized categorical (paper eq. 2)."""
    return (configs * torch.log_softmax(logits, dim=-1)).sum(dim=(-1, -2))


def expectation(f: Callable[[Tensor], Tensor], logits: Tensor) -> Tensor:
    """``F(θ) = Σₓ f(x) π_θ(x)`` (paper eq. 1), differentiable with respect to ``logits``."""
    L, K = logits.shape
    configs = configurations(L, K, logits.dtype, logits.device)
    return (f(configs) * log_prob(logits, configs).exp()).sum()


def gradient(f: Callable[[Tensor], Tensor], logits: Tensor) -> Tensor:
    """The exact ``∇_φ F`` with respect to the logits ``[L, K]`` (paper eq. 3 with f independent of θ)."""
    logits = logits.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(expectation(f, logits), logits)
    return grad


class Moments:
    """Running mean and variance of Monte-Carlo draws of a tensor (sums of values and of squares, in the
    draws' dtype): ``add`` a batch of draws ``[m, ...]``, read ``mean`` and ``var`` (``ddof=1``: unbiased)."""

    def __init__(self) -> None:
        self.n, self.total, self.total_sq = 0, None, None

    def add(self, draws: Tensor) -> None:
        total, total_sq = draws.sum(0), (draws * draws).sum(0)
        self.total = total if self.total is None else self.total + total
        self.total_sq = total_sq if self.total_sq is None else self.total_sq + total_sq
        self.n += len(draws)

    @property
    def mean(self) -> Tensor:
        return self.total / self.n

    def var(self, ddof: int = 1) -> Tensor:
        """``(Σx² − n·mean²)/(n − ddof)``, clamped at 0 against rounding."""
        return ((self.total_sq - self.n * self.mean**2) / max(self.n - ddof, 1)).clamp_min(0)


def estimator_mean_gradient(estimator, f: Callable[[Tensor], Tensor], logits: Tensor, n_samples: int,
                            chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Monte-Carlo mean and per-draw standard deviation of an estimator's gradient.

    Draws ``n_samples`` independent estimates ``∇_φ estimator.surrogate(φ, f)`` (``∇_φ f(estimator(φ))`` for a
    pathwise estimator; batched in chunks) and returns ``(mean [L, K], std [L, K])`` (the population standard
    deviation of the draws).
    """
    L, K = logits.shape
    moments = Moments()
    while moments.n < n_samples:
        m = min(chunk, n_samples - moments.n)
        phi = logits.detach().expand(m, L, K).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(estimator.surrogate(phi, f).sum(), phi)
        moments.add(g)
    return moments.mean, moments.var(ddof=0).sqrt()
