"""Stateless building blocks shared by the estimators.

Notation follows the paper (``../shared/paper/redge.txt``): ``phi`` are logits ``[..., K]``,
``pi = softmax(phi)``, ``X`` a one-hot sample, ``g`` the upstream gradient ``∇ₓf(X)``.
For one categorical row, ``Cov_π(X) = Diag(π) − ππᵀ`` is the Jacobian of ``softmax`` (Lemma A.3), so
``Cov_π(X) g = π ⊙ (g − ⟨π, g⟩)`` costs O(K) and no K×K matrix is ever formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "rowsum",
    "softmax",
    "sample_one_hot",
    "gumbel_noise",
    "straight_through",
    "cov_matvec",
    "reinmax_grad",
    "LOW_PRECISION",
]

#: dtypes that the estimators up-cast to float32 internally (and cast back on return).
LOW_PRECISION = (torch.float16, torch.bfloat16)

#: on CPU, last dimensions up to this size use the elementwise softmax (see :func:`softmax`).
SMALL_K = 16


def rowsum(x: Tensor) -> Tensor:
    """``x.sum(dim=-1, keepdim=True)``; on CPU with a short last dimension, as a product with a ones
    vector, which torch runs 2-5× faster than its reduction kernel there (76 vs 16 us at [200, 48, 2])."""
    K = x.shape[-1]
    if x.is_cuda or K > 4 or x.dim() < 2:  # measured: a gain at K = 2, a loss at K = 10
        return x.sum(dim=-1, keepdim=True)
    return x @ torch.ones(K, 1, dtype=x.dtype, device=x.device)


def softmax(logits: Tensor) -> Tensor:
    """``softmax`` over the last dimension; same values as :func:`torch.softmax`.

    On CPU with a short last dimension, torch's softmax kernel is several times slower than the
    three elementwise/reduction ops below (measured: 260 vs 124 us at [200, 48, 2]); elsewhere the
    native kernel is used. Autograd differentiates either form.
    """
    if logits.is_cuda or logits.shape[-1] > SMALL_K:
        return torch.softmax(logits, dim=-1)
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return e / rowsum(e)


def _softmax_(logits: Tensor) -> Tensor:
    """:func:`softmax` reusing the storage of ``logits`` where it can (bitwise the same values).

    For the fused, autograd-free code paths only: ``logits`` must be a temporary the caller owns.
    """
    if logits.is_cuda or logits.shape[-1] > SMALL_K:
        return torch.softmax(logits, dim=-1)
    logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
    return logits.div_(rowsum(logits))


def sample_one_hot(probs: Tensor) -> Tensor:
    """Exact draw ``X ~ Categorical(probs)`` row-wise, as a one-hot tensor of the same shape.

    Inverse-CDF sampling with one uniform per row: ``X = e_j`` with ``j = #{k : F_k < U}``,
    ``F = cumsum(probs)``, so ``P(j) = F_j − F_{j−1} = probs_j``. It needs K times fewer random
    numbers than the Gumbel-max trick. The value is exactly one-hot.
    """
    u = torch.rand(probs.shape[:-1] + (1,), dtype=probs.dtype, device=probs.device)
    index = (probs.cumsum(dim=-1) < u).sum(dim=-1, keepdim=True).clamp_max_(probs.shape[-1] - 1)
    return torch.zeros_like(probs).scatter_(-1, index, 1.0)


def gumbel_noise(like: Tensor) -> Tensor:
    """I.i.d. ``Gumbel(0, 1)`` noise ``G = −log(−log U)`` shaped like ``like``."""
    return -torch.rand_like(like).log_().neg_().log_()


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Value of ``hard`` (exactly: ``soft − soft`` is 0 in floating point), gradient of ``soft``."""
    return hard + (soft - soft.detach())


def cov_matvec(probs: Tensor, g: Tensor) -> Tensor:
    """``Cov_π(X) g = (Diag(π) − ππᵀ) g`` row-wise: the vector-Jacobian product of softmax (Lemma A.3)."""
    out = g - rowsum(probs * g)
    return out.mul_(probs)


def reinmax_grad(g: Tensor, probs: Tensor, sample: Tensor, probs_tau: Tensor | None = None) -> Tensor:
    """ReinMax gradient with respect to the logits, given the upstream gradient ``g`` at ``sample``.

    With ``m = ½(π_τ + X)`` (the mixture ``π(·|X)`` of App. B.1, eq. 36, with ``π`` tempered),
    ``∇φ = 2 Cov_m g − ½ Cov_π g`` minus its row mean, as in the authors' ``reinmax`` package.
    At ``τ = 1`` (``probs_tau`` is ``None`` or ``probs``), Lemma B.3 turns this into paper eq. (5)/(37):
    ``½ {Cov_π(X) + (X − π)(X − π)ᵀ} g``.
    """
    mixture = 0.5 * ((probs if probs_tau is None else probs_tau) + sample)
    grad = 2.0 * cov_matvec(mixture, g) - 0.5 * cov_matvec(probs, g)
    # Both terms already sum to zero over K; removing the mean keeps that exact in floating point.
    return grad - grad.mean(dim=-1, keepdim=True)
