"""The baseline estimators of the paper's comparisons (Straight-Through, Gumbel-Softmax, ReinMax) and
Gumbel-Rao, the Rao-Blackwellized Gumbel-Softmax ST."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import CategoricalEstimator, register
from .constraints import integer, positive, validate
from .functional import (
    conditional_gumbel_logits,
    gumbel_noise,
    reinmax_grad,
    sample_one_hot,
    softmax,
    straight_through,
)

__all__ = ["StraightThrough", "GumbelSoftmax", "GumbelRao", "ReinMax"]


class _ExactWithTemperature(CategoricalEstimator):
    """What the three baselines share: a temperature ``tau > 0`` and, when hard, an exact draw from
    ``softmax(φ)`` as the value (``exact_draws``)."""

    arg_constraints = {**CategoricalEstimator.arg_constraints, "tau": positive}

    def __init__(self, tau: float, hard: bool = True) -> None:
        super().__init__(hard=hard)
        self.tau = validate(self.arg_constraints, {"tau": tau})["tau"]

    @property
    def exact_draws(self) -> bool:
        return self.hard

    def hparams(self) -> dict:
        return {"tau": self.tau, **super().hparams()}


@register("st")
class StraightThrough(_ExactWithTemperature):
    r"""Hard Straight-Through (paper eq. 4).

    Value: ``X ~ Categorical(softmax(φ))`` (exact draw). Gradient: that of ``softmax(φ/τ)``, i.e.
    ``(1/τ) Cov_{π_τ}(X) ∇ₓf(X)``; at ``τ = 1`` exactly eq. (4): ``Cov_π(X) ∇ₓf(X)``.
    ``hard=False`` returns ``softmax(φ/τ)`` (the surrogate ``f(E[X])`` of §2 at ``τ = 1``).

    Args:
        tau: temperature of the surrogate softmax, ``> 0`` (Table 5: 1.0).
        hard: return one-hot samples (default) or the relaxed ``softmax(φ/τ)``.
    """

    def __init__(self, tau: float = 1.0, hard: bool = True) -> None:
        super().__init__(tau=tau, hard=hard)

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:
        soft = softmax(logits / self.tau if self.tau != 1.0 else logits)
        if not hard:
            return soft
        with torch.no_grad():
            sample = sample_one_hot(soft if self.tau == 1.0 else softmax(logits))
        return straight_through(sample, soft)



@register("gumbel")
class GumbelSoftmax(_ExactWithTemperature):
    r"""Gumbel-Softmax / Concrete relaxation (§2), with Straight-Through when hard.

    ``Y = softmax((φ + G)/τ)`` with i.i.d. ``G ~ Gumbel(0, 1)``. ``hard=False`` returns ``Y`` (the
    Concrete sample); ``hard=True`` returns ``one_hot(argmax(φ + G))`` (an exact draw from
    ``softmax(φ)`` by the Gumbel-max trick) with the gradient of ``Y`` — what
    ``torch.nn.functional.gumbel_softmax(hard=True)`` computes.

    Args:
        tau: temperature ``τ > 0`` (Table 5, VAE: 0.5).
        hard: Straight-Through Gumbel (default) or the soft Concrete sample.
    """

    def __init__(self, tau: float = 0.5, hard: bool = True) -> None:
        super().__init__(tau=tau, hard=hard)

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:
        perturbed = logits + gumbel_noise(logits)
        soft = softmax(perturbed / self.tau)
        if not hard:
            return soft
        index = perturbed.detach().argmax(dim=-1, keepdim=True)
        sample = torch.zeros_like(logits).scatter_(-1, index, 1.0)
        return straight_through(sample, soft)


@register("gumbel_rao")
class GumbelRao(GumbelSoftmax):
    r"""Gumbel-Rao, GR-MCk (Paulus et al. 2021, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
    Gradient Estimator", eq. 5-6).

    Value: ``D = one_hot(argmax(φ + G))``, ``G ~ Gumbel(0, 1)``: an exact draw from ``softmax(φ)``, as
    Gumbel-Softmax ST. Gradient: the Gumbel-Softmax ST Jacobian averaged over ``k`` draws of the noise
    conditioned on that argmax, ``(1/k) Σ_j ∂ softmax((φ + G_j)/τ)/∂φ`` with ``G_j = Z_j − φ`` held fixed and
    ``Z_j ~ φ + G | argmax = D`` (:func:`~estimators.functional.conditional_gumbel_logits`). By the tower
    property its expectation is Gumbel-ST's at the same ``τ``; its variance is lower and falls with ``k``
    (Rao-Blackwellization: the limit ``k → ∞`` is ``E[∂ softmax((φ + G)/τ)/∂φ | D]``). ``k = 1`` has the law of
    Gumbel-ST itself. ``hard=False`` returns the Concrete sample, as Gumbel-Softmax.

    Args:
        tau: temperature ``τ > 0`` (default 0.5, Gumbel-Softmax's VAE value in Table 5, so the two compare
            at the same τ).
        k: number of conditional noise draws ``>= 1`` (default 10; the paper uses 10-1000).
        hard: one-hot samples with the GR-MCk gradient (default) or the Concrete sample.
    """

    arg_constraints = {**GumbelSoftmax.arg_constraints, "k": integer(1)}

    def __init__(self, tau: float = 0.5, k: int = 10, hard: bool = True) -> None:
        super().__init__(tau=tau, hard=hard)
        self.k = validate(self.arg_constraints, {"k": k})["k"]

    def hparams(self) -> dict:
        return {"k": self.k, **super().hparams()}

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:
        if not hard:
            return super()._sample(logits, hard)
        with torch.no_grad():
            index = (logits + gumbel_noise(logits)).argmax(dim=-1, keepdim=True)
            sample = torch.zeros_like(logits).scatter_(-1, index, 1.0)
            noise = conditional_gumbel_logits(logits, sample, self.k) - logits  # G_j, held fixed
        soft = softmax((logits + noise) / self.tau).mean(0)
        return straight_through(sample, soft)


class _ReinMaxFunction(torch.autograd.Function):
    """Value: a one-hot ``X ~ Categorical(softmax(φ))``; backward: :func:`~estimators.functional.reinmax_grad`."""

    @staticmethod
    def forward(ctx, logits: Tensor, tau: float) -> Tensor:
        probs = softmax(logits)
        probs_tau = softmax(logits / tau) if tau != 1.0 else None
        sample = sample_one_hot(probs)
        ctx.save_for_backward(probs, sample, probs_tau)
        return sample

    @staticmethod
    def backward(ctx, grad: Tensor):
        probs, sample, probs_tau = ctx.saved_tensors
        return reinmax_grad(grad, probs, sample, probs_tau), None


@register("reinmax")
class ReinMax(_ExactWithTemperature):
    r"""ReinMax (Liu et al., 2023), paper eq. (5) and App. B.

    Value: ``X ~ Categorical(softmax(φ))`` (``τ`` does not change the sample). Gradient, with
    ``g = ∇ₓf(X)``, ``π = softmax(φ)``, ``π_τ = softmax(φ/τ)``, ``m = ½(π_τ + X)``:
    ``2 Cov_m g − ½ Cov_π g`` (eq. 36 with the authors' temperature). At ``τ = 1`` this is eq. (5):
    ``½ {Cov_π(X) + (X − π)(X − π)ᵀ} g``, unbiased for quadratic ``f`` (App. B.2).
    ``hard=False`` returns ``softmax(φ/τ)`` with its ordinary gradient (ReinMax has no relaxed
    sample of its own).

    Args:
        tau: temperature ``τ > 0`` of ``π_τ`` (Table 5: 1.0).
        hard: one-hot samples with the ReinMax gradient (default), or ``softmax(φ/τ)``.
    """

    def __init__(self, tau: float = 1.0, hard: bool = True) -> None:
        super().__init__(tau=tau, hard=hard)

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:
        if not hard:
            return softmax(logits / self.tau)
        return _ReinMaxFunction.apply(logits, self.tau)

