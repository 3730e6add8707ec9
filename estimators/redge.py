r"""ReDGE: categorical reparameterization through a deterministic DDIM sampler (paper §3).

One DDIM core, two independent options:

* ``base`` — the reference distribution ``π₁`` the chain starts from:
  ``"standard"``: ``N(0, I)`` (§3.2) with the closed-form denoiser eq. (10)
  ``x̂₀(x, t) = softmax(φ + α_t x / σ_t²)``;
  ``"fitted"``: the moment-matched ``N(μ, Diag(v))`` of §3.4 with ``μ = π = softmax(φ)``,
  ``v = max(π(1 − π), v_min)`` and the denoiser of App. C.2 eq. (50)
  ``x̂₀(x, t) = softmax(φ + α_t λ ⊙ (x − σ_t μ − α_t/2) / σ_t²)``, ``λ = 1/v``.
  ``μ`` and ``v`` are functions of ``φ``: gradients flow through them.
* ``last_step`` — the gradient of the hard sample drawn at the last step (§3.3):
  ``"st"``: Straight-Through on ``x̂₀(x_{t₁}, t₁)`` (eq. 15);
  ``"reinmax"``: the path through ``x_{t₁}`` keeps Straight-Through (with ``φ`` held fixed in the
  denoiser), the direct path to the denoiser's logits gets ReinMax (eq. 5) — ReDGE-Max.

Schedule (the authors' code): ``n_steps`` grid points ``t₀ = 0 < t₁ < … < t_{n−1}``;
``α = [1, then n − 1 values linearly from 1 − t₁ down to 1e-4]``, ``σ = 1 − α``. Starting from
``x ~ π₁`` at ``t_{n−1}``, each step applies the deterministic DDIM map eq. (11)
``T_{s|t}(x) = (α_s − α_t σ_s/σ_t) x̂₀(x, t) + σ_s x / σ_t`` (their composition is eq. 12), so there
are ``n − 1`` denoiser calls; at ``t₁`` the hard sample ``X ~ Categorical(x̂₀(x_{t₁}, t₁))`` is drawn
and the relaxed sample is ``x̂₀(x_{t₁}, t₁) = T_{0|t₁}(x_{t₁})``.

With ``n_steps = 2`` and ``t₁ = 1`` (one diffusion step, ``α_{t₁} = 0``), ``x̂₀ = softmax(φ)``:
ReDGE is exactly Straight-Through and ReDGE-Max exactly ReinMax (§3.2-3.3).

Two implementations give identical results: ``fused=True`` (default) runs the chain without autograd
and back-propagates analytically (Lemma A.3: ``J_φ x̂₀ = Σ``, ``J_x x̂₀ = c_t Σ``), which saves memory
and time; ``fused=False`` is the plain autograd transcription of the equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import CategoricalEstimator, check_unit, register
from .functional import cov_matvec, reinmax_grad, sample_one_hot, softmax, straight_through

__all__ = ["DiffusionSchedule", "DDIMEstimator", "ReDGE", "ReDGEMax", "ReDGECov", "ReDGEMaxCov"]

ALPHA_END = 1e-4  #: α at t_{n−1} in the authors' schedule (σ ≈ 1).


@dataclass(frozen=True)
class _Step:
    """Constants of one denoiser call at grid time t (and of the DDIM move to the previous time)."""

    alpha: float  # α_t
    sigma: float  # σ_t
    coef: float  # c_t = α_t / σ_t²  (eq. 10, Lemma A.3)
    a: float  # α_s − α_t σ_s/σ_t  (eq. 11), s the previous grid time; unused at t₁
    b: float  # σ_s / σ_t  (eq. 11)


class DiffusionSchedule:
    """The linear α/σ grid of the authors' code, and the per-step constants of eq. (10)-(11).

    ``steps`` is ordered as the sampler runs: from ``t_{n−1}`` (pure noise) down to ``t₁``.
    """

    def __init__(self, n_steps: int, t_1: float) -> None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 2:
            raise ValueError(
                f"n_steps must be an integer >= 2 (the chain makes n_steps−1 denoiser calls), got {n_steps!r}"
            )
        self.n_steps = n_steps
        self.t_1 = check_unit("t_1", t_1)
        tail = torch.linspace(1.0 - self.t_1, ALPHA_END, n_steps - 1, dtype=torch.float64)
        self.alphas = [1.0] + tail.tolist()
        self.sigmas = [1.0 - a for a in self.alphas]
        steps = []
        for t in range(n_steps - 1, 0, -1):
            alpha, sigma = self.alphas[t], self.sigmas[t]
            s_alpha, s_sigma = self.alphas[t - 1], self.sigmas[t - 1]
            steps.append(
                _Step(
                    alpha=alpha,
                    sigma=sigma,
                    coef=alpha / sigma**2,
                    a=s_alpha - alpha * s_sigma / sigma,
                    b=s_sigma / sigma,
                )
            )
        self.steps: tuple[_Step, ...] = tuple(steps)


class _Base:
    """The reference π₁ and the denoiser logits for it (standard: eq. 10; fitted: eq. 50)."""

    def __init__(self, logits: Tensor, fitted: bool, var_floor: float) -> None:
        self.fitted = fitted
        if fitted:
            self.mu = softmax(logits)
            self.pq = self.mu * (1.0 - self.mu)
            self.var = self.pq.clamp_min(var_floor)
            self.lam = self.var.reciprocal()

    def start(self, eps: Tensor) -> Tensor:
        """``x_{t_{n−1}} ~ π₁`` from standard noise ``eps``."""
        return self.mu + self.var.sqrt() * eps if self.fitted else eps

    def logits(self, phi: Tensor, x: Tensor, step: _Step) -> Tensor:
        if not self.fitted:
            return phi + step.coef * x
        return phi + step.coef * self.lam * (x - step.sigma * self.mu - 0.5 * step.alpha)


class DDIMEstimator(CategoricalEstimator):
    r"""The ReDGE family's common core: deterministic DDIM from ``π₁`` to ``π_θ`` (see module doc).

    Args:
        n_steps: grid points ``n >= 2``; the chain makes ``n − 1`` denoiser calls.
        t_1: the last (smallest) positive time, in ``(0, 1]``; ``α_{t₁} = 1 − t₁``. Smaller is closer
            to an exact sample but gives vanishing gradients (Prop. 3.1).
        base: ``"standard"`` (§3.2) or ``"fitted"`` (§3.4, App. C.2).
        last_step: ``"st"`` (eq. 15) or ``"reinmax"`` (§3.3, ReDGE-Max).
        var_floor: lower clamp of the fitted variance ``π(1 − π)`` (the authors' code: 0.1).
        hard: one-hot output (default) or the relaxed ``x̂₀(x_{t₁}, t₁)``.
        fused: analytic backward (default) or plain autograd; results are identical.
    """

    BASES = ("standard", "fitted")
    LAST_STEPS = ("st", "reinmax")

    def __init__(
        self,
        n_steps: int = 4,
        t_1: float = 0.5,
        base: str = "standard",
        last_step: str = "st",
        var_floor: float = 0.1,
        hard: bool = True,
        fused: bool = True,
    ) -> None:
        super().__init__(hard=hard)
        self.schedule = DiffusionSchedule(n_steps, t_1)
        if base not in self.BASES:
            raise ValueError(f"base must be one of {self.BASES}, got {base!r}")
        if last_step not in self.LAST_STEPS:
            raise ValueError(f"last_step must be one of {self.LAST_STEPS}, got {last_step!r}")
        if isinstance(var_floor, bool) or not isinstance(var_floor, (int, float)) or not 0 < var_floor <= 0.25:
            raise ValueError(f"var_floor must be in (0, 0.25] (π(1−π) never exceeds 1/4), got {var_floor!r}")
        if not isinstance(fused, bool):
            raise ValueError(f"fused must be True or False, got {fused!r}")
        self.n_steps, self.t_1 = self.schedule.n_steps, self.schedule.t_1
        self.base, self.last_step, self.var_floor, self.fused = base, last_step, float(var_floor), fused

    def hparams(self) -> dict:
        return {"n_steps": self.n_steps, "t_1": self.t_1, **super().hparams()}

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:
        eps = torch.randn_like(logits)
        if self.fused:
            return _FusedDDIM.apply(logits, eps, self, hard)
        return self._reference(logits, eps, hard)

    # -- plain autograd transcription of the equations (also the oracle for the fused path) --
    def _reference(self, phi: Tensor, eps: Tensor, hard: bool) -> Tensor:
        base = _Base(phi, self.base == "fitted", self.var_floor)
        x = base.start(eps)
        steps = self.schedule.steps
        for step in steps[:-1]:
            x0 = softmax(base.logits(phi, x, step))  # eq. (10) / (50)
            x = step.a * x0 + step.b * x  # eq. (11)
        last = steps[-1]
        logits = base.logits(phi, x, last)
        x0 = softmax(logits)
        if not hard:
            return x0
        with torch.no_grad():
            sample = sample_one_hot(x0)
        if self.last_step == "st":
            return straight_through(sample, x0)  # eq. (15)
        # ReDGE-Max: ST through x with φ fixed in the denoiser ...
        frozen = _Base(phi.detach(), base.fitted, self.var_floor)
        x0_path = softmax(frozen.logits(phi.detach(), x, last))
        # ... and ReinMax (eq. 36 written with autograd, as the authors do) on the direct path.
        direct = base.logits(phi, x.detach(), last)
        p0 = softmax(direct)
        p1 = softmax((torch.log(0.5 * (sample + p0)) - direct).detach() + direct)
        p2 = 2.0 * p1 - 0.5 * p0
        return sample + (x0_path - x0_path.detach()) + (p2 - p2.detach())


class _FusedDDIM(torch.autograd.Function):
    """The DDIM chain without an autograd graph, back-propagated by hand (Lemma A.3)."""

    @staticmethod
    def forward(ctx, phi: Tensor, eps: Tensor, est: DDIMEstimator, hard: bool) -> Tensor:
        base = _Base(phi, est.base == "fitted", est.var_floor)
        x = base.start(eps)
        steps = est.schedule.steps
        probs, states = [], []
        for i, step in enumerate(steps):
            states.append(x)
            logits = base.logits(phi, x, step)
            x0 = softmax(logits)
            probs.append(x0)
            if i < len(steps) - 1:
                x = step.a * x0 + step.b * x
        sample = sample_one_hot(x0) if hard else None
        ctx.est, ctx.hard, ctx.base = est, hard, base
        saved = [eps, *probs] + (states if base.fitted else [])
        if sample is not None:
            saved.append(sample)
        ctx.save_for_backward(*saved)
        return sample.clone() if hard else x0

    @staticmethod
    def backward(ctx, grad: Tensor):
        est, base = ctx.est, ctx.base
        steps = est.schedule.steps
        n = len(steps)
        saved = ctx.saved_tensors
        eps, probs = saved[0], saved[1 : n + 1]
        states = saved[n + 1 : 2 * n + 1] if base.fitted else None
        sample = saved[-1] if ctx.hard else None

        # Last step (t₁): split into the path through x (dz_x) and the direct one (dz_phi).
        x0 = probs[-1]
        dz_x = cov_matvec(x0, grad)
        dz_phi = dz_x
        if ctx.hard and est.last_step == "reinmax":
            dz_phi = reinmax_grad(grad, x0, sample)
        dphi = dz_phi.clone()
        if base.fitted:
            dmu, dlam = torch.zeros_like(grad), torch.zeros_like(grad)
        dx = None
        for i in range(n - 1, -1, -1):
            step = steps[i]
            if i < n - 1:  # x_{t−1} = a q_t + b x_t  (eq. 11): back through q_t = softmax(z_t)
                dz = cov_matvec(probs[i], step.a * dx)
                dz_x = dz_phi = dz
                dphi += dz
                dx = step.b * dx
            if base.fitted:
                scaled = step.coef * base.lam
                dx_new = scaled * dz_x
                dlam += step.coef * (states[i] - step.sigma * base.mu - 0.5 * step.alpha) * dz_phi
                dmu -= step.sigma * scaled * dz_phi
            else:
                dx_new = step.coef * dz_x
            dx = dx_new if dx is None else dx + dx_new
        if base.fitted:  # x_{t_{n−1}} = μ + √v ε, λ = 1/v, v = max(π(1−π), floor), μ = π = softmax(φ)
            dmu += dx
            dvar = dx * eps * 0.5 / base.var.sqrt() - dlam * base.lam * base.lam
            dmu += dvar * (1.0 - 2.0 * base.mu) * (base.pq >= est.var_floor)
            dphi += cov_matvec(base.mu, dmu)
        return dphi, None, None, None


@register("redge")
class ReDGE(DDIMEstimator):
    """ReDGE (Alg. 1, §3.2-3.3): standard Gaussian base, Straight-Through at the last step.

    Table 5 (VAE, GMM, Sudoku): ``n_steps=4``; polynomial programming: ``n_steps=7``; ``t_1=0.5``.
    """

    def __init__(self, n_steps: int = 4, t_1: float = 0.5, hard: bool = True, fused: bool = True) -> None:
        super().__init__(n_steps=n_steps, t_1=t_1, base="standard", last_step="st", hard=hard, fused=fused)


@register("redge_max")
class ReDGEMax(DDIMEstimator):
    """ReDGE-Max (§3.3): standard Gaussian base, ReinMax on the direct path of the last step.

    Table 5: ``n_steps=10, t_1=0.5`` (polynomial programming: ``t_1=0.7``).
    """

    def __init__(self, n_steps: int = 10, t_1: float = 0.5, hard: bool = True, fused: bool = True) -> None:
        super().__init__(n_steps=n_steps, t_1=t_1, base="standard", last_step="reinmax", hard=hard, fused=fused)


@register("redge_cov")
class ReDGECov(DDIMEstimator):
    """ReDGE-Cov (§3.4, App. C.2): moment-matched Gaussian base ``N(π, Diag(max(π(1−π), 0.1)))``.

    Table 5: ``n_steps=3`` (polynomial programming: 5); ``t_1=0.5``.
    """

    def __init__(
        self, n_steps: int = 3, t_1: float = 0.5, var_floor: float = 0.1, hard: bool = True, fused: bool = True
    ) -> None:
        super().__init__(
            n_steps=n_steps, t_1=t_1, base="fitted", last_step="st", var_floor=var_floor, hard=hard, fused=fused
        )


@register("redge_max_cov")
class ReDGEMaxCov(DDIMEstimator):
    """ReDGE-Max-Cov: the fitted base of ReDGE-Cov with the ReinMax last step of ReDGE-Max.

    Not in the paper nor in the authors' code; the two options compose because they act on
    different parts of the chain (the start and the last step).
    """

    def __init__(
        self, n_steps: int = 3, t_1: float = 0.5, var_floor: float = 0.1, hard: bool = True, fused: bool = True
    ) -> None:
        super().__init__(
            n_steps=n_steps, t_1=t_1, base="fitted", last_step="reinmax", var_floor=var_floor, hard=hard, fused=fused
        )
