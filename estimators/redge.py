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

Two implementations give the same results up to float rounding: ``fused=True`` (default) runs the
chain without autograd and back-propagates analytically (Lemma A.3: ``J_φ x̂₀ = Σ``,
``J_x x̂₀ = c_t Σ``), which saves memory and time; ``fused=False`` is the plain autograd
transcription of the equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import rng
from .base import CategoricalEstimator, register
from .constraints import boolean, integer, interval, one_of, optional, unit_interval, validate
from .functional import (
    cov_matvec,
    from_k_major,
    k_major,
    reinmax_grad,
    sample_one_hot,
    softmax,
    straight_through,
    to_k_major,
)

__all__ = ["DiffusionSchedule", "DDIMEstimator", "ReDGE", "ReDGEMax", "ReDGECov", "ReDGEMaxCov", "uniform_t_1"]

ALPHA_END = 1e-4  #: α at t_{n−1} in the authors' schedule (σ ≈ 1).


@dataclass(frozen=True)
class _Step:
    """Constants of one denoiser call at grid time t (and of the DDIM move to the previous time)."""

    alpha: float  # α_t
    sigma: float  # σ_t
    coef: float  # c_t = α_t / σ_t²  (eq. 10, Lemma A.3)
    a: float  # α_s − α_t σ_s/σ_t  (eq. 11), s the previous grid time; unused at t₁
    b: float  # σ_s / σ_t  (eq. 11)


def uniform_t_1(n_steps: int) -> float:
    """``t₁`` of the paper's uniform grid ``t_k = k/(n−1)`` (§4): ``1/(n_steps − 1)``."""
    return 1.0 / (n_steps - 1)


class DiffusionSchedule:
    """The linear α/σ grid of the authors' code, and the per-step constants of eq. (10)-(11).

    ``t_1=None`` (the default) is the paper's uniform grid of §4, ``t_k = k/(n−1)``: ``t₁ = 1/(n − 1)``
    (with the α grid above, α then falls linearly in steps of ``1/(n−1)``); Table 5 gives ``t₁`` only for
    ReDGE-Max, and ``n`` for the others (``../shared/paper/reference-notes.md``, t₁ section).
    ``steps`` is ordered as the sampler runs: from ``t_{n−1}`` (pure noise) down to ``t₁``.
    """

    arg_constraints = {"n_steps": integer(2), "t_1": optional(unit_interval)}

    def __init__(self, n_steps: int, t_1: float | None = None) -> None:
        args = validate(self.arg_constraints, {"n_steps": n_steps, "t_1": t_1})
        self.n_steps = n_steps
        self.t_1 = uniform_t_1(n_steps) if t_1 is None else args["t_1"]
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
        t_1: the last (smallest) positive time, in ``(0, 1]``; ``α_{t₁} = 1 − t₁``; ``None`` (default): the
            paper's uniform grid, ``1/(n_steps − 1)``. Smaller is closer
            to an exact sample but gives vanishing gradients (Prop. 3.1).
        base: ``"standard"`` (§3.2) or ``"fitted"`` (§3.4, App. C.2).
        last_step: ``"st"`` (eq. 15) or ``"reinmax"`` (§3.3, ReDGE-Max).
        var_floor: lower clamp of the fitted variance ``π(1 − π)`` (the authors' code: 0.1).
        hard: one-hot output (default) or the relaxed ``x̂₀(x_{t₁}, t₁)``.
        fused: analytic backward (default) or plain autograd; results agree up to rounding.
    """

    BASES = ("standard", "fitted")
    LAST_STEPS = ("st", "reinmax")
    arg_constraints = {
        **CategoricalEstimator.arg_constraints, **DiffusionSchedule.arg_constraints, "base": one_of(*BASES),
        "last_step": one_of(*LAST_STEPS), "var_floor": interval(0.0, 0.25, low_open=True), "fused": boolean,
    }

    def __init__(
        self,
        n_steps: int = 4,
        t_1: float | None = None,
        base: str = "standard",
        last_step: str = "st",
        var_floor: float = 0.1,
        hard: bool = True,
        fused: bool = True,
    ) -> None:
        super().__init__(hard=hard)
        # var_floor ≤ 1/4: π(1−π) never exceeds 1/4
        validate(self.arg_constraints, {"base": base, "last_step": last_step, "var_floor": var_floor, "fused": fused})
        self.schedule = DiffusionSchedule(n_steps, t_1)
        self.n_steps, self.t_1 = self.schedule.n_steps, self.schedule.t_1
        self.base, self.last_step, self.var_floor, self.fused = base, last_step, float(var_floor), fused

    def _set_hparam(self, name: str, value) -> None:
        if name in ("n_steps", "t_1"):  # the grid's constants depend on both
            self.schedule = DiffusionSchedule(**{"n_steps": self.n_steps, "t_1": self.t_1, name: value})
            self.n_steps, self.t_1 = self.schedule.n_steps, self.schedule.t_1
        else:
            super()._set_hparam(name, value)

    @property
    def exact_draws(self) -> bool:
        # α_{t₁} = 0 at t₁ = 1: x̂₀(x, t₁) = softmax(φ) whatever x, so the hard draw is exact; otherwise
        # it has the discretized chain's law
        return self.hard and self.t_1 == 1.0

    def hparams(self) -> dict:
        """Every constructor argument of the registered class (``var_floor`` only where the base is fitted:
        the standard-base classes do not take it)."""
        extra = {"var_floor": self.var_floor} if self.base == "fitted" else {}
        return {"n_steps": self.n_steps, "t_1": self.t_1, **extra, **super().hparams(), "fused": self.fused}

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:
        if self.fused:
            return _FusedDDIM.apply(logits, self, hard)
        return self._reference(logits, rng.randn(logits.shape, dtype=logits.dtype, device=logits.device), hard)

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
    """The DDIM chain without an autograd graph, back-propagated by hand (Lemma A.3).

    The forward pass runs the operations of :meth:`DDIMEstimator._reference` with fewer full-size
    passes (fused multiply-adds, in-place updates, and for the standard base the factor ``b`` of the
    DDIM move applied lazily as a running scalar), so its values equal the transcription's up to
    rounding. On CPU with few categories it works K-major (:func:`~estimators.functional.k_major`).
    """

    @staticmethod
    def forward(ctx, phi: Tensor, est: DDIMEstimator, hard: bool) -> Tensor:
        shape, km = phi.shape, k_major(phi)
        eps = rng.randn(phi.shape, dtype=phi.dtype, device=phi.device)  # the caller's layout: _reference's noise
        if km:
            phi, eps = to_k_major(phi), to_k_major(eps)
        dim = 0 if km else -1
        fitted = est.base == "fitted"
        steps = est.schedule.steps
        last = len(steps) - 1
        if fitted:  # the moment-matched base of §3.4: μ = softmax(φ), v = max(μ(1 − μ), v_min), λ = 1/v
            mu = torch.softmax(phi, dim)
            pq = torch.addcmul(mu, mu, mu, value=-1.0)  # μ(1 − μ)
            var = pq.clamp_min(est.var_floor)
            lam = var.reciprocal()
            std = var.sqrt()
            x = torch.addcmul(mu, std, eps)  # μ + √v ε
        else:
            x = eps  # our own draw: updated in place
        scale = 1.0  # standard base: the state x_t is scale · x
        probs, centred = [], []
        z = torch.empty_like(phi)  # the denoiser's logits, one buffer for every step (fresh memory costs page faults)
        for i, step in enumerate(steps):
            if fitted:  # eq. (50): φ + c_t λ ⊙ (x − σ_t μ − α_t/2)
                y = torch.add(x, mu, alpha=-step.sigma)
                y.sub_(0.5 * step.alpha)
                centred.append(y)
                torch.addcmul(phi, lam, y, value=step.coef, out=z)
            else:  # eq. (10): φ + c_t x_t
                torch.add(phi, x, alpha=step.coef * scale, out=z)
            x0 = torch.softmax(z, dim)
            probs.append(x0)
            if i < last:  # eq. (11): x_s = a x̂₀ + b x_t
                if fitted:
                    x.mul_(step.b).add_(x0, alpha=step.a)
                else:  # b · scale · (x + a/(b · scale) x̂₀)
                    x.add_(x0, alpha=step.a / (step.b * scale))
                    scale *= step.b
        sample = sample_one_hot(x0, dim) if hard else None
        ctx.est, ctx.hard, ctx.fitted, ctx.km, ctx.shape = est, hard, fitted, km, shape
        saved = probs
        if fitted:
            saved = saved + centred + [eps, mu, pq, lam, std]
        if hard and est.last_step == "reinmax":
            saved = saved + [sample]
        ctx.save_for_backward(*saved)
        out = sample if hard else x0
        return from_k_major(out, shape) if km else out

    @staticmethod
    def backward(ctx, grad: Tensor):
        est, fitted, km = ctx.est, ctx.fitted, ctx.km
        steps = est.schedule.steps
        n = len(steps)
        saved = ctx.saved_tensors
        probs = saved[:n]
        reinmax = ctx.hard and est.last_step == "reinmax"
        if fitted:
            centred = saved[n : 2 * n]
            eps, mu, pq, lam, std = saved[2 * n : 2 * n + 5]
        grad = to_k_major(grad) if km else grad.contiguous()
        dim = 0 if km else -1

        # Last step (t₁): the path through x (Cov_π g, eq. 15) and the direct path to φ.
        x0 = probs[-1]
        u = cov_matvec(x0, grad, dim)  # Cov_π g
        # the direct path to φ: ReinMax (eq. 36) for ReDGE-Max, else the path's own Cov_π g
        dz_phi = reinmax_grad(grad, x0, saved[-1], dim=dim, cov_g=u, center=False) if reinmax else u
        # Gradients are accumulated for the logits z_i of each denoiser call. The gradient with
        # respect to the state x_i is kept as scale · D (a running scalar times a tensor), so that
        # the DDIM move x_{i+1} = a_i q_i + b_i x_i costs one fused update per step.
        dphi = dz_phi.clone() if dz_phi is u else dz_phi
        step = steps[-1]
        if fitted:
            acc_mu = dz_phi * (step.sigma * step.coef)  # Σ σ_i c_i dz_i  (dμ = −λ ⊙ this)
            acc_lam = dz_phi * centred[-1]
            acc_lam.mul_(step.coef)  # Σ c_i y_i ⊙ dz_i  (y_i the centred state)
            D = u.mul_(lam)
            scale = step.coef
        else:
            D, scale = u, step.coef
        if scale == 0.0:  # α_{t₁} = 0 (t₁ = 1): nothing flows back through x_{t₁}
            D.zero_()
            scale = 1.0
        first = 0 if fitted else 1  # the standard base needs no gradient for x_{t_{n−1}} = ε
        u = torch.empty_like(D) if n > 1 else None  # one buffer for every step's Cov product
        for i in range(n - 2, -1, -1):
            step = steps[i]
            q = probs[i]
            # back through q_i = softmax(z_i) (Lemma A.3): dz_i = a_i Cov_{q_i}(scale · D)
            u = cov_matvec(q, D, dim, out=u)
            k = step.a * scale  # dz_i = k · u
            dphi.add_(u, alpha=k)
            if fitted:
                acc_mu.add_(u, alpha=k * step.sigma * step.coef)
                acc_lam.addcmul_(centred[i], u, value=k * step.coef)
            if i >= first:  # dx_i = b_i dx_{i+1} + c_i (λ ⊙) dz_i
                if fitted:
                    D.addcmul_(lam, u, value=k * step.coef / (step.b * scale))
                else:
                    D.add_(u, alpha=k * step.coef / (step.b * scale))
                scale = scale * step.b
        if fitted:  # x_{t_{n−1}} = μ + √v ε, λ = 1/v, v = max(π(1−π), floor), μ = π = softmax(φ)
            dx = D.mul_(scale)
            dmu = torch.addcmul(dx, acc_mu, lam, value=-1.0)
            dvar = torch.mul(dx, eps, out=u) if u is not None else dx * eps
            dvar.div_(std)
            dvar.mul_(0.5)
            acc_lam.mul_(lam).mul_(lam)
            dvar.sub_(acc_lam)
            dvar.addcmul_(mu, dvar, value=-2.0)  # ⊙ (1 − 2μ) = dπ(1−π)/dπ
            dvar.masked_fill_(pq < est.var_floor, 0.0)  # the clamp at v_min
            dmu.add_(dvar)
            dphi.add_(cov_matvec(mu, dmu, dim))
        return (from_k_major(dphi, ctx.shape) if km else dphi), None, None


@register("redge")
class ReDGE(DDIMEstimator):
    """ReDGE (Alg. 1, §3.2-3.3): standard Gaussian base, Straight-Through at the last step.

    Defaults: Table 5 (VAE, GMM, Sudoku), ``n_steps=4`` on the uniform grid (``t_1 = 1/3``); polynomial
    programming: ``n_steps=7`` (``configs/polynomial/estimators/redge.yaml``).
    """

    def __init__(self, n_steps: int = 4, t_1: float | None = None, hard: bool = True, fused: bool = True) -> None:
        super().__init__(n_steps=n_steps, t_1=t_1, base="standard", last_step="st", hard=hard, fused=fused)


@register("redge_max")
class ReDGEMax(DDIMEstimator):
    """ReDGE-Max (§3.3): standard Gaussian base, ReinMax on the direct path of the last step.

    Defaults: Table 5 (VAE, GMM, Sudoku), ``n_steps=10, t_1=0.5``; polynomial programming: ``t_1=0.7``.
    """

    def __init__(self, n_steps: int = 10, t_1: float = 0.5, hard: bool = True, fused: bool = True) -> None:
        super().__init__(n_steps=n_steps, t_1=t_1, base="standard", last_step="reinmax", hard=hard, fused=fused)


@register("redge_cov")
class ReDGECov(DDIMEstimator):
    """ReDGE-Cov (§3.4, App. C.2): moment-matched Gaussian base ``N(π, Diag(max(π(1−π), 0.1)))``.

    Defaults: Table 5 (VAE, GMM, Sudoku), ``n_steps=3`` on the uniform grid (``t_1 = 1/2``); polynomial
    programming: ``n_steps=5`` (``t_1 = 1/4``).
    """

    def __init__(
        self, n_steps: int = 3, t_1: float | None = None, var_floor: float = 0.1, hard: bool = True, fused: bool = True
    ) -> None:
        super().__init__(
            n_steps=n_steps, t_1=t_1, base="fitted", last_step="st", var_floor=var_floor, hard=hard, fused=fused
        )


@register("redge_max_cov")
class ReDGEMaxCov(DDIMEstimator):
    """ReDGE-Max-Cov: the fitted base of ReDGE-Cov with the ReinMax last step of ReDGE-Max.

    Not in the paper nor in the authors' code; the two options compose because they act on
    different parts of the chain (the start and the last step). Defaults: those of ReDGE-Cov.
    """

    def __init__(
        self, n_steps: int = 3, t_1: float | None = None, var_floor: float = 0.1, hard: bool = True, fused: bool = True
    ) -> None:
        super().__init__(
            n_steps=n_steps, t_1=t_1, base="fitted", last_step="reinmax", var_floor=var_floor, hard=hard, fused=fused
        )
