"""Stateless building blocks shared by the estimators.

Notation follows the paper (``../shared/paper/redge.txt``): ``phi`` are logits ``[..., K]``,
``pi = softmax(phi)``, ``X`` a one-hot sample, ``g`` the upstream gradient ``∇ₓf(X)``.
For one categorical row, ``Cov_π(X) = Diag(π) − ππᵀ`` is the Jacobian of ``softmax`` (Lemma A.3), so
``Cov_π(X) g = π ⊙ (g − ⟨π, g⟩)`` costs O(K) and no K×K matrix is ever formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import rng

__all__ = [
    "k_major",
    "to_k_major",
    "from_k_major",
    "rowsum",
    "softmax",
    "log_softmax",
    "sample_one_hot",
    "gumbel_noise",
    "straight_through",
    "cov_matvec",
    "reinmax_grad",
    "LOW_PRECISION",
]

#: dtypes that the estimators up-cast to float32 internally (and cast back on return).
LOW_PRECISION = (torch.float16, torch.bfloat16)

#: on CPU, categorical dimensions below this size are processed "K-major" (see :func:`to_k_major`).
SMALL_K = 16


def k_major(x: Tensor) -> bool:
    """Whether ``x [..., K]`` is better processed K-major: on CPU with ``K < SMALL_K``.

    ATen's CPU softmax and its reductions vectorize along the reduced dimension when it is the last
    one: at ``K < 16`` (fewer floats than an AVX-512 vector) they fall back to slow scalar loops, and
    broadcasting a per-row value ``[..., 1]`` over a short last dimension is slow as well. Laid out as
    ``[K, N]`` every op is a contiguous pass over length-``N`` rows (measured: docs/performance.md,
    "K-major layout"). CUDA kernels do not need this.
    """
    return not x.is_cuda and x.dim() >= 2 and x.shape[-1] < SMALL_K


def to_k_major(x: Tensor) -> Tensor:
    """``[..., K]`` -> contiguous ``[K, N]`` (``N`` the number of rows): the layout of :func:`k_major`."""
    return x.reshape(-1, x.shape[-1]).t().contiguous()


def from_k_major(x: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`to_k_major`: contiguous ``shape = [..., K]`` from ``[K, N]``."""
    return x.t().reshape(shape).contiguous()


def rowsum(x: Tensor, dim: int = -1) -> Tensor:
    """``x.sum(dim, keepdim=True)``: the sum over the categories (``dim=0`` for K-major tensors).

    On CPU with a last dimension ``K <= 4`` it is a product with a ones vector, which torch runs faster
    than its reduction kernel there (docs/performance.md, "Layout-free reductions").
    """
    K = x.shape[dim]
    if dim not in (-1, x.dim() - 1) or x.is_cuda or K > 4 or x.dim() < 2:  # measured: a gain at K=2, a loss at K=10
        return x.sum(dim=dim, keepdim=True)
    return x @ torch.ones(K, 1, dtype=x.dtype, device=x.device)


def softmax(logits: Tensor) -> Tensor:
    """``softmax`` over the last dimension; equal to :func:`torch.softmax` up to rounding.

    Where :func:`k_major` holds, computed in that layout (faster there, transposes included:
    docs/performance.md). Autograd differentiates either form.
    """
    if not k_major(logits):
        return torch.softmax(logits, dim=-1)
    return from_k_major(torch.softmax(to_k_major(logits), dim=0), logits.shape)


def log_softmax(logits: Tensor) -> Tensor:
    """``log_softmax`` over the last dimension, K-major where :func:`k_major` holds (as :func:`softmax`)."""
    if not k_major(logits):
        return torch.log_softmax(logits, dim=-1)
    return from_k_major(torch.log_softmax(to_k_major(logits), dim=0), logits.shape)


def sample_one_hot(probs: Tensor, dim: int = -1) -> Tensor:
    """Exact draw ``X ~ Categorical(probs)`` along ``dim``, as a one-hot tensor of the same shape.

    Inverse-CDF sampling with one uniform per row: ``X = e_j`` with ``j = #{k : F_k < U}``,
    ``F = cumsum(probs)``, so ``P(j) = F_j − F_{j−1} = probs_j``. It needs K times fewer random
    numbers than the Gumbel-max trick. The value is exactly one-hot. The uniforms are drawn in row
    order whatever ``dim``, so a K-major ``probs`` (``dim=0``) gives the transposed same sample.
    """
    shape = list(probs.shape)
    shape[dim] = 1
    u = rng.rand(shape, dtype=probs.dtype, device=probs.device)
    cdf = probs.cumsum(dim=dim)
    if dim in (-1, probs.dim() - 1):  # a binary search per row: the same count, fewer passes at large K
        index = torch.searchsorted(cdf, u)
    else:
        index = (cdf < u).sum(dim=dim, keepdim=True)
    index.clamp_max_(probs.shape[dim] - 1)  # F_K may round below U
    return torch.zeros_like(probs).scatter_(dim, index, 1.0)


def gumbel_noise(like: Tensor) -> Tensor:
    """I.i.d. ``Gumbel(0, 1)`` noise ``G = −log(−log U)`` shaped like ``like``."""
    return -rng.rand(like.shape, dtype=like.dtype, device=like.device).log_().neg_().log_()


def conditional_gumbel_logits(logits: Tensor, sample: Tensor, k: int) -> Tensor:
    r"""``k`` draws of the perturbed logits ``Z = φ + G`` (``G`` i.i.d. ``Gumbel(0, 1)``) conditioned on
    ``argmax Z`` being the one-hot ``sample`` — ``[k, *logits.shape]``, without gradient.

    The truncated-Gumbel construction (Paulus et al. 2021, App. A; Maddison et al. 2014): with
    ``E`` i.i.d. ``Exp(1)``, the maximum is ``Z_D = logsumexp(φ) − log E_D`` (a ``Gumbel(logsumexp φ)``,
    independent of the argmax), and every other coordinate is a ``Gumbel(φ_i)`` truncated below ``Z_D``:
    ``Z_i = −log(e^{−Z_D} + E_i e^{−φ_i})``, computed as ``−logaddexp(−Z_D, log E_i − φ_i)``.
    """
    with torch.no_grad():
        # log E = log(−log U), U ~ Uniform(0, 1): 4-5× faster on CPU than Tensor.exponential_ (measured)
        u = rng.rand((k, *logits.shape), dtype=logits.dtype, device=logits.device, outer=k)
        log_e = u.clamp_min_(torch.finfo(u.dtype).tiny).log_().neg_().log_()
        top = torch.logsumexp(logits, dim=-1, keepdim=True) - (log_e * sample).sum(-1, keepdim=True)
        lower = log_e - logits
        # logaddexp on same-shape operands: with broadcasting its CPU kernel is ~7× slower (measured)
        others = torch.logaddexp((-top).expand_as(lower).contiguous(), lower).neg_()
        return torch.where(sample.bool(), top, others)


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Value of ``hard`` (exactly: ``soft − soft`` is 0 in floating point), gradient of ``soft``."""
    return hard + (soft - soft.detach())


def cov_matvec(probs: Tensor, g: Tensor, dim: int = -1, out: Tensor | None = None) -> Tensor:
    """``Cov_π(X) g = (Diag(π) − ππᵀ) g`` row-wise: the vector-Jacobian product of softmax (Lemma A.3).

    Computed as ``π ⊙ g − π ⟨π, g⟩`` in three passes; ``dim`` is the category dimension; ``out`` (not
    aliasing ``probs`` or ``g``) receives the result instead of a new tensor.
    """
    out = torch.mul(probs, g, out=out) if out is not None else probs * g
    return out.addcmul_(probs, rowsum(out, dim), value=-1.0)


def reinmax_grad(g: Tensor, probs: Tensor, sample: Tensor, probs_tau: Tensor | None = None, dim: int = -1,
                 cov_g: Tensor | None = None, center: bool = True) -> Tensor:
    """ReinMax gradient with respect to the logits, given the upstream gradient ``g`` at ``sample``.

    With ``m = ½(π_τ + X)`` (the mixture ``π(·|X)`` of App. B.1, eq. 36, with ``π`` tempered),
    ``∇φ = 2 Cov_m g − ½ Cov_π g``, as in the authors' ``reinmax`` package; ``2 Cov_m g`` is computed as
    ``(π_τ + X) ⊙ (g − ½⟨π_τ + X, g⟩)``. At ``τ = 1`` (``probs_tau`` is ``None`` or ``probs``), Lemma B.3
    turns this into paper eq. (5)/(37): ``½ {Cov_π(X) + (X − π)(X − π)ᵀ} g``.

    ``dim`` is the category dimension; ``cov_g`` is ``Cov_π g`` when the caller has it already (the fused
    ReDGE-Max backward, whose path through ``x`` needs it too); ``center`` removes the row mean: both
    terms sum to zero over ``K``, and centering keeps that exact in floating point.
    """
    mix = (probs if probs_tau is None else probs_tau) + sample  # 2m
    grad = torch.sub(g, rowsum(mix * g, dim), alpha=0.5).mul_(mix)  # 2 Cov_m g
    grad.sub_(cov_matvec(probs, g, dim) if cov_g is None else cov_g, alpha=0.5)
    return grad - grad.mean(dim=dim, keepdim=True) if center else grad
