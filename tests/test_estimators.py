"""The estimator library against the paper's identities, exact enumeration and statistical tests."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from scipy import stats

import estimators as E
from estimators import exact, rng
from estimators.functional import conditional_gumbel_logits, cov_matvec, gumbel_noise, reinmax_grad
from estimators.redge import DDIMEstimator, DiffusionSchedule, _Base

ALL = E.available()
REDGE = ["redge", "redge_max", "redge_cov", "redge_max_cov"]
DDIM_OPTIONS = [(b, s) for b in ("standard", "fitted") for s in ("st", "reinmax")]


def quadratic(A: torch.Tensor, b: torch.Tensor):
    """f(x) = vec(x)ᵀ A vec(x) + bᵀ vec(x) over configurations [..., L, K] (non-separable when A couples rows)."""

    def f(x):
        v = x.reshape(*x.shape[:-2], -1)
        return ((v @ A) * v).sum(-1) + v @ b

    return f


def cov(p: torch.Tensor) -> torch.Tensor:
    return torch.diag(p) - torch.outer(p, p)


# ---------------------------------------------------------------- interface, registry, validation


def test_registry_lists_the_estimators():
    assert set(ALL) == {"st", "gumbel", "gumbel_rao", "reinmax", "redge", "redge_max", "redge_cov", "redge_max_cov",
                        "rloo"}
    est = E.build("redge_cov", n_steps=3, t_1=0.5)
    assert isinstance(est, E.ReDGECov) and est.n_steps == 3 and est.t_1 == 0.5
    assert E.get("reinmax") is E.ReinMax


@pytest.mark.parametrize("name", ["redge", "redge_cov", "redge_max_cov"])
@pytest.mark.parametrize("n_steps", [2, 3, 4, 5, 7, 10])
def test_default_t_1_is_the_uniform_grid_of_section_4(name, n_steps):
    """§4: t_k = k/(n−1), k ∈ [0 : n−1]. With the authors' α grid (1, then linearly 1 − t₁ … 1e-4), the
    default t₁ = 1/(n−1) gives α_k = 1 − t_k up to the 1e-4 floor at the end; hparams record the value."""
    est = E.build(name, n_steps=n_steps)
    assert est.t_1 == 1.0 / (n_steps - 1) and est.hparams()["t_1"] == est.t_1
    grid = [k / (n_steps - 1) for k in range(n_steps)]
    assert est.schedule.alphas == pytest.approx([1.0 - t for t in grid], abs=1.01e-4)
    if n_steps > 2:  # (with n = 2, t₁ = 1: one step, α_{t₁} = 0, the exact sampler)
        assert est.schedule.alphas[-1] == pytest.approx(1e-4)
    assert E.ReDGEMax().t_1 == 0.5  # Table 5 gives ReDGE-Max's t₁ explicitly


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("gumbel", {"tau": 0.0}, "tau"),
        ("st", {"tau": -1.0}, "tau"),
        ("reinmax", {"tau": float("nan")}, "tau"),
        ("gumbel_rao", {"k": 0}, "k"),
        ("gumbel_rao", {"k": 2.0}, "k"),
        ("redge", {"n_steps": 1}, "n_steps"),
        ("redge_max", {"n_steps": 2.5}, "n_steps"),
        ("redge", {"t_1": 0.0}, "t_1"),
        ("redge_cov", {"t_1": 1.5}, "t_1"),
        ("redge_cov", {"var_floor": 0.0}, "var_floor"),
        ("redge", {"temperature": 1.0}, "parameters are"),
        ("nope", {}, "unknown estimator"),
    ],
)
def test_bad_hyperparameters_raise_value_error(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        E.build(name, **kwargs)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(5,), (4, 3), (2, 3, 7), (2, 1, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_hard_output_is_exactly_one_hot(name, shape, dtype):
    """Through ``surrogate`` (how models call every estimator) the samples are one-hot and the gradient finite;
    a pathwise estimator's own output carries that gradient, a score-function one refuses to pretend it does."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(shape)).to(dtype).requires_grad_(True)
    est, weight, seen = E.build(name), torch.randn(shape).to(dtype), []

    def f(z):
        seen.append(z)
        return (z * weight).sum(-1)

    est.surrogate(logits, f).sum().backward()
    for out in (seen[0], est(logits.detach())):
        assert out.shape[-len(shape):] == logits.shape and out.dtype == dtype
        assert torch.all((out == 0) | (out == 1)) and torch.all(out.sum(-1) == 1)
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
    if est.pathwise:
        assert seen[0].requires_grad
    else:
        with pytest.raises(RuntimeError, match="surrogate"):
            est(logits)


@pytest.mark.parametrize("name", ALL)
def test_soft_output_is_on_the_simplex(name):
    torch.manual_seed(0)
    out = E.build(name, hard=False)(torch.randn(6, 4, 5))
    assert torch.all(out >= 0) and torch.allclose(out.sum(-1), torch.ones(6, 4))
    assert not torch.all((out == 0) | (out == 1))


@pytest.mark.parametrize("name", ALL)
def test_non_float_logits_rejected(name):
    with pytest.raises(TypeError, match="floating-point"):
        E.build(name)(torch.ones(3, 4, dtype=torch.long))


# ---------------------------------------------------------------- sample laws


@pytest.mark.parametrize("name", ["st", "gumbel", "gumbel_rao", "reinmax"])
def test_exact_samplers_match_softmax_chi_square(name):
    torch.manual_seed(1)
    logits = torch.tensor([[1.0, -0.5, 0.3, -1.2, 0.0], [2.0, 2.0, -3.0, 0.5, 0.1]])
    n = 40_000
    with torch.no_grad():
        x = E.build(name)(logits.expand(n, 2, 5))
    probs = torch.softmax(logits.double(), -1)
    for row in range(2):
        counts = x[:, row].sum(0).double().numpy()
        assert stats.chisquare(counts, probs[row].numpy() * n).pvalue > 1e-3


@pytest.mark.parametrize("K", [5, 20])  # K-major below 16 categories on CPU, last-dim binary search above
def test_sample_one_hot_law_and_layouts(K):
    """Inverse-CDF draws follow ``probs`` (chi-square), and the K-major layout (``dim=0``) draws the
    same sample as the last-dim layout from the same uniforms."""
    from estimators.functional import from_k_major, sample_one_hot, to_k_major

    probs = torch.softmax(torch.linspace(-2.0, 1.5, K), -1)
    n = 40_000
    torch.manual_seed(3)
    x = sample_one_hot(probs.expand(n, 2, K))
    torch.manual_seed(3)
    x_km = from_k_major(sample_one_hot(to_k_major(probs.expand(n, 2, K)), dim=0), x.shape)
    assert torch.equal(x, x_km)
    assert torch.all(x.sum(-1) == 1)
    counts = x.sum((0, 1)).double().numpy()
    expected = probs.double() / probs.double().sum() * 2 * n
    assert stats.chisquare(counts, expected.numpy()).pvalue > 1e-3


def _redge_tv(name: str, n_steps: int, t_1: float, logits: torch.Tensor, n: int = 200_000) -> float:
    with torch.no_grad():
        freq = E.build(name, n_steps=n_steps, t_1=t_1)(logits.expand(n, -1)).mean(0)
    return 0.5 * (freq - torch.softmax(logits, -1)).abs().sum().item()


@pytest.mark.parametrize("name", REDGE)
def test_redge_law_is_exact_at_t1_equal_1(name):
    # α_{t₁} = 0: x̂₀(x, t₁) = softmax(φ), so the hard sample is an exact draw.
    torch.manual_seed(2)
    logits = torch.tensor([1.0, -0.5, 0.3, -1.2])
    n = 40_000
    with torch.no_grad():
        counts = E.build(name, n_steps=2, t_1=1.0)(logits.expand(n, 4)).sum(0).double().numpy()
    assert stats.chisquare(counts, torch.softmax(logits.double(), -1).numpy() * n).pvalue > 1e-3


@pytest.mark.parametrize(
    "name, kwargs",
    [("st", {"tau": 2.0}), ("gumbel", {"tau": 0.5}), ("reinmax", {"tau": 0.3}), ("redge", {"n_steps": 4, "t_1": 1.0}),
     ("redge_cov", {"n_steps": 3, "t_1": 1.0}), ("redge", {"n_steps": 4, "t_1": 0.3}),
     ("redge_max", {"n_steps": 3, "t_1": 0.3}), ("redge_cov", {"n_steps": 3, "t_1": 0.3}), ("gumbel", {"hard": False}),
     ("gumbel_rao", {"k": 3})],
)
def test_exact_draws_flag_matches_the_law_of_the_sample(name, kwargs):
    # `exact_draws` lets a model reuse the estimator's own sample as an exact draw from q: it must be
    # True exactly when the value follows softmax(φ) (chi-square on 40k rows; the approximate laws
    # here are off by TV ≥ 0.03, which 40k draws detect with p < 1e-6)
    est = E.build(name, **kwargs)
    torch.manual_seed(7)
    logits = torch.tensor([1.0, -0.5, 0.3, -1.2])
    n = 40_000
    with torch.no_grad():
        values = est(logits.expand(n, 4))
    if not est.hard:  # a relaxed sample is no draw at all
        assert not est.exact_draws and not torch.all((values == 0) | (values == 1))
        return
    assert est.exact_draws or name.startswith("redge")
    counts = values.sum(0).double().numpy()
    p = stats.chisquare(counts, torch.softmax(logits.double(), -1).numpy() * n).pvalue
    assert (p > 1e-3) if est.exact_draws else (p < 1e-6), (est.exact_draws, p)


@pytest.mark.parametrize("name", REDGE)
def test_redge_law_error_shrinks_with_more_diffusion_steps(name):
    """The hard sample's law is approximate: its TV distance to softmax(φ) comes from the DDIM
    discretization, so it shrinks as the grid is refined (here t₁ = 0.1 fixed)."""
    torch.manual_seed(3)
    logits = torch.tensor([1.0, -0.5, 0.3, -1.2])
    tv = [_redge_tv(name, n, 0.1, logits) for n in (3, 6, 30)]
    print(f"{name}: TV(law, softmax) at t_1=0.1 for n_steps 3/6/30: {tv}")
    assert tv[0] > tv[1] > tv[2]
    assert tv[2] < 0.05 and tv[0] > 0.1


@pytest.mark.parametrize("name", REDGE)
def test_redge_law_error_grows_as_t1_shrinks_at_fixed_steps(name):
    """With the authors' grid and a fixed number of steps, t₁ → 0 makes the last DDIM moves larger
    and stiffer (c_t = α_t/σ_t² explodes), so the law moves *away* from softmax(φ): TV is ~0 at
    t₁ = 1 and grows as t₁ → 0. (The issue expected the opposite; this is what the sampler does.)"""
    torch.manual_seed(4)
    logits = torch.tensor([1.0, -0.5, 0.3, -1.2])
    tv = [_redge_tv(name, 4, t_1, logits, n=400_000) for t_1 in (1.0, 0.3, 0.05)]
    print(f"{name}: TV(law, softmax) at n_steps=4 for t_1 1/0.3/0.05: {tv}")
    assert tv[0] < 0.01 and tv[0] < tv[1] < tv[2]


# ---------------------------------------------------------------- gradient identities


def _per_sample_grad(est, logits, f):
    """Gradient of f(est(φ)) for each row of a batch of identical logits, and the samples."""
    phi = logits.detach().clone().requires_grad_(True)
    x = est(phi)
    (grad,) = torch.autograd.grad(f(x).sum(), phi)
    xs = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xs).sum(), xs)  # ∇ₓf(X) at the returned sample
    return x.detach(), grad, g


def _quadratic_rows(K: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(K, K, generator=gen, dtype=torch.float64)
    b = torch.randn(K, generator=gen, dtype=torch.float64)

    def f(x):  # per-row quadratic, [..., K] -> [...]
        return ((x @ A) * x).sum(-1) + x @ b

    return f


def test_straight_through_is_cov_times_grad_eq4():
    torch.manual_seed(4)
    logits = torch.randn(64, 5, dtype=torch.float64)
    x, grad, g = _per_sample_grad(E.build("st"), logits, _quadratic_rows(5))
    p = torch.softmax(logits, -1)
    expected = torch.stack([cov(p[i]) @ g[i] for i in range(64)])
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("name", ["redge", "redge_cov"])
def test_one_step_redge_equals_straight_through(name):
    torch.manual_seed(5)
    logits = torch.randn(64, 5, dtype=torch.float64)
    x, grad, g = _per_sample_grad(E.build(name, n_steps=2, t_1=1.0), logits, _quadratic_rows(5))
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(grad, torch.stack([cov(p[i]) @ g[i] for i in range(64)]))


def _reinmax_eq5(p, x, g):
    d = (x - p).unsqueeze(-1)
    return 0.5 * (cov(p) + d @ d.T) @ g


def test_reinmax_equals_eq5():
    torch.manual_seed(6)
    logits = torch.randn(64, 5, dtype=torch.float64)
    x, grad, g = _per_sample_grad(E.build("reinmax"), logits, _quadratic_rows(5))
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(grad, torch.stack([_reinmax_eq5(p[i], x[i], g[i]) for i in range(64)]))


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_reinmax_equals_authors_formula_with_temperature(tau):
    """Authors' package: 2 Cov_m g − ½ Cov_π g (mean-centred), m = ½(softmax(φ/τ) + X), as matrices."""
    torch.manual_seed(7)
    logits = torch.randn(32, 4, dtype=torch.float64)
    x, grad, g = _per_sample_grad(E.build("reinmax", tau=tau), logits, _quadratic_rows(4, seed=1))
    p, p_tau = torch.softmax(logits, -1), torch.softmax(logits / tau, -1)
    expected = []
    for i in range(32):
        m = 0.5 * (p_tau[i] + x[i])
        r = 2 * cov(m) @ g[i] - 0.5 * cov(p[i]) @ g[i]
        expected.append(r - r.mean())
    torch.testing.assert_close(grad, torch.stack(expected))


@pytest.mark.parametrize("name", ["redge_max", "redge_max_cov"])
def test_one_step_redge_max_equals_reinmax(name):
    torch.manual_seed(8)
    logits = torch.randn(64, 5, dtype=torch.float64)
    x, grad, g = _per_sample_grad(E.build(name, n_steps=2, t_1=1.0), logits, _quadratic_rows(5))
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(grad, torch.stack([_reinmax_eq5(p[i], x[i], g[i]) for i in range(64)]))


def test_reinmax_is_unbiased_for_quadratic_f_by_enumeration():
    """App. B.2: E_X[ĝ_RM(X)] = ∇F exactly for quadratic f — also with couplings between rows."""
    gen = torch.Generator().manual_seed(9)
    L, K = 3, 3
    A = torch.randn(L * K, L * K, generator=gen, dtype=torch.float64)
    A = A + A.T
    b = torch.randn(L * K, generator=gen, dtype=torch.float64)
    f = quadratic(A, b)
    logits = torch.randn(L, K, generator=gen, dtype=torch.float64)
    configs = exact.configurations(L, K)
    weights = exact.log_prob(logits, configs).exp()
    xs = configs.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xs).sum(), xs)
    p = torch.softmax(logits, -1).expand_as(configs)
    mean = (weights[:, None, None] * reinmax_grad(g, p, configs)).sum(0)
    torch.testing.assert_close(mean, exact.gradient(f, logits))
    # Straight-Through is not unbiased here (its bias is the point of ReinMax).
    st_mean = (weights[:, None, None] * cov_matvec(p, g)).sum(0)
    assert (st_mean - exact.gradient(f, logits)).norm() > 0.1 * exact.gradient(f, logits).norm()


@pytest.mark.parametrize("fitted", [False, True])
def test_denoiser_equals_gaussian_posterior_eq10_eq50(fitted):
    """x̂₀(x,t)_j ∝ π(e_j) N(x; α e_j + σ μ, σ² Diag(v)) — computed from Gaussian densities."""
    torch.manual_seed(10)
    K = 5
    phi = torch.randn(3, K, dtype=torch.float64)
    schedule = DiffusionSchedule(4, 0.5)
    base = _Base(phi, fitted, 0.1)
    mu = base.mu if fitted else torch.zeros_like(phi)
    var = base.var if fitted else torch.ones_like(phi)
    for step in schedule.steps:
        x = torch.randn(3, K, dtype=torch.float64)
        eye = torch.eye(K, dtype=torch.float64)
        means = step.alpha * eye[None] + step.sigma * mu[:, None, :]  # [3, j, K]
        normal = torch.distributions.Normal(means, step.sigma * var[:, None, :].sqrt())
        log_post = torch.log_softmax(phi, -1) + normal.log_prob(x[:, None, :]).sum(-1)
        torch.testing.assert_close(torch.softmax(base.logits(phi, x, step), -1), torch.softmax(log_post, -1))


def test_denoiser_jacobians_lemma_a3():
    """J_φ x̂₀ = Σ_t(x) and J_x x̂₀ = (α_t/σ_t²) Σ_t(x), Σ = Diag(x̂₀) − x̂₀x̂₀ᵀ (standard base)."""
    torch.manual_seed(11)
    phi, x = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    step = DiffusionSchedule(5, 0.3).steps[-1]

    def denoise(phi, x):
        return torch.softmax(_Base(phi, False, 0.1).logits(phi, x, step), -1)

    j_phi, j_x = torch.autograd.functional.jacobian(denoise, (phi, x))
    sigma = cov(denoise(phi, x))
    torch.testing.assert_close(j_phi, sigma)
    torch.testing.assert_close(j_x, step.coef * sigma)
    assert step.coef == pytest.approx(step.alpha / step.sigma**2)


def test_schedule_matches_the_authors_grid():
    s = DiffusionSchedule(4, 0.5)
    assert s.alphas == pytest.approx([1.0, 0.5, (0.5 + 1e-4) / 2, 1e-4])
    assert s.sigmas == pytest.approx([0.0, 0.5, 1 - (0.5 + 1e-4) / 2, 1 - 1e-4])
    assert len(s.steps) == 3  # n − 1 denoiser calls
    assert DiffusionSchedule(2, 0.3).alphas == pytest.approx([1.0, 0.7])


@pytest.mark.parametrize("base, last_step", DDIM_OPTIONS)
@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("n_steps, t_1", [(2, 0.3), (3, 0.3), (7, 0.3), (4, 1.0)])
@pytest.mark.parametrize("K", [2, 6, 20])  # K-major on CPU below 16 categories (functional.k_major), row-major above
def test_fused_chain_equals_autograd_transcription(base, last_step, hard, n_steps, t_1, K):
    x = 2 * torch.randn(8, 5, K, dtype=torch.float64, generator=torch.Generator().manual_seed(n_steps))
    w = torch.randn(8, 5, K, dtype=torch.float64, generator=torch.Generator().manual_seed(99))
    results = []
    for fused in (True, False):
        est = DDIMEstimator(n_steps=n_steps, t_1=t_1, base=base, last_step=last_step, hard=hard, fused=fused)
        torch.manual_seed(12)
        phi = x.clone().requires_grad_(True)
        out = est(phi)
        (out * w).sum().backward()
        results.append((out.detach(), phi.grad))
    assert torch.isfinite(results[0][1]).all()
    # hard: the same one-hot draw; relaxed: the fused pass orders its float operations differently
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0 if hard else 1e-12, atol=0 if hard else 1e-14)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- bias against exact gradients


def _bias_problem():
    gen = torch.Generator().manual_seed(13)
    L, K = 3, 3
    A = torch.randn(L * K, L * K, generator=gen, dtype=torch.float64)
    A = 0.5 * (A + A.T)
    b = torch.randn(L * K, generator=gen, dtype=torch.float64)
    logits = torch.randn(L, K, generator=gen, dtype=torch.float64)
    quad = quadratic(A, b)

    def nonquad(x):  # smooth, non-separable, not quadratic
        return torch.exp(0.3 * quad(x)) + torch.sin(x.reshape(*x.shape[:-2], -1) @ b)

    return logits, quad, nonquad


@pytest.mark.parametrize("name", ALL)
def test_relative_bias_against_exact_gradient(name):
    """Report each estimator's relative bias ‖E[ĝ] − ∇F‖/‖∇F‖ on a non-separable f (L=3, K=3)."""
    torch.manual_seed(14)
    logits, quad, nonquad = _bias_problem()
    n = 400_000
    bias = {}
    for label, f in (("quadratic", quad), ("non-quadratic", nonquad)):
        truth = exact.gradient(f, logits)
        mean, std = exact.estimator_mean_gradient(E.build(name), f, logits, n)
        bias[label] = ((mean - truth).norm() / truth.norm()).item()
        se = (std.norm() / math.sqrt(n) / truth.norm()).item()  # Monte-Carlo standard error
        bias[label + " se"] = se
    print(f"{name}: relative bias {bias}")
    if name == "reinmax":
        assert bias["quadratic"] < 5 * bias["quadratic se"] + 1e-3  # unbiased (App. B.2)
    elif name == "rloo":  # a score-function estimator is unbiased for every f
        assert bias["quadratic"] < 5 * bias["quadratic se"] and bias["non-quadratic"] < 5 * bias["non-quadratic se"]
    else:
        assert bias["quadratic"] > 10 * bias["quadratic se"]  # measurably biased
    assert bias["non-quadratic"] < 1.0  # informative: closer to ∇F than the zero vector


# ---------------------------------------------------------------- Gumbel-Rao (Paulus et al. 2021)


def test_conditional_gumbels_match_rejection_sampling():
    """The truncated-Gumbel construction has the law of φ + G given argmax: each coordinate against the
    draws of plain Gumbel perturbations whose argmax is the conditioned category (two-sample KS tests; over
    seeds 0-9 their 160 p-values were uniform, KS p = 0.89)."""
    torch.manual_seed(0)
    phi = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64)
    for d in range(4):
        z = phi + gumbel_noise(phi.expand(200_000, 4))
        rejected = z[z.argmax(-1) == d][:20_000]
        conditioned = conditional_gumbel_logits(phi, torch.nn.functional.one_hot(torch.tensor(d), 4).double(), 20_000)
        assert (conditioned.argmax(-1) == d).all()
        for i in range(4):
            assert stats.ks_2samp(rejected[:, i].numpy(), conditioned[:, i].numpy()).pvalue > 1e-3, (d, i)


def test_gumbel_rao_has_gumbel_st_expected_gradient_and_less_variance():
    """Tower property: E[GR-MCk] = E[Gumbel-ST] at the same τ (z-test per coordinate, 100k draws each);
    Rao-Blackwellization: the per-draw variance (trace) falls with k; k = 1 has Gumbel-ST's own law."""
    logits, quad, _ = _bias_problem()
    n, tau = 100_000, 0.5
    torch.manual_seed(22)
    ref_mean, ref_std = exact.estimator_mean_gradient(E.GumbelSoftmax(tau=tau), quad, logits, n, chunk=20_000)
    traces = {"gumbel": (ref_std**2).sum().item()}
    for k in (1, 10, 100):
        torch.manual_seed(23 + k)
        mean, std = exact.estimator_mean_gradient(E.GumbelRao(tau=tau, k=k), quad, logits, n, chunk=20_000)
        z = (mean - ref_mean) / ((std**2 + ref_std**2) / n).sqrt().clamp_min(1e-12)
        assert z.abs().max() < 4.5, (k, z)
        traces[k] = (std**2).sum().item()
    print(f"trace of the gradient covariance: {traces}")
    assert traces[1] == pytest.approx(traces["gumbel"], rel=0.05)
    assert traces[10] < 0.8 * traces[1] and traces[100] < 0.97 * traces[10]


# ---------------------------------------------------------------- RLOO (score function)


def test_rloo_is_unbiased_with_a_direct_dependence_and_its_variance_falls_with_s():
    """REINFORCE with a leave-one-out baseline against exact enumeration, for an objective that also depends on
    φ directly (as a VAE's KL term does): z-test per coordinate (200k draws); the per-draw variance (trace)
    falls about as 1/S."""
    logits, quad, _ = _bias_problem()

    def f_of(phi):
        return lambda x: quad(x) + 3.0 * torch.softmax(phi, -1).pow(2).sum((-1, -2))

    truth = exact.gradient(lambda x: f_of(logits)(x), logits)
    phi = logits.detach().requires_grad_(True)
    (truth,) = torch.autograd.grad(exact.expectation(f_of(phi), phi), phi)
    n, traces = 200_000, {}
    for S in (2, 8, 32):
        torch.manual_seed(30 + S)
        moments = exact.Moments()
        while moments.n < n:
            batch = logits.expand(10_000, *logits.shape).clone().requires_grad_(True)
            (g,) = torch.autograd.grad(E.RLOO(n_samples=S).surrogate(batch, f_of(batch)).sum(), batch)
            moments.add(g)
        z = (moments.mean - truth) / (moments.var() / n).sqrt()
        assert z.abs().max() < 4.5, (S, z)
        traces[S] = moments.var().sum().item()
    print(f"RLOO trace of the gradient covariance: {traces}")
    assert traces[8] < 0.5 * traces[2] and traces[32] < 0.5 * traces[8]


def test_rloo_names_a_wrong_objective_shape():
    with pytest.raises(ValueError, match=r"\[S, \*batch\]"):
        E.RLOO().surrogate(torch.randn(4, 3, requires_grad=True), lambda z: z.sum())


# ---------------------------------------------------------------- numerical stability


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("K", [2, 1024])
def test_extreme_logits_and_large_k_are_finite(name, K):
    torch.manual_seed(15)
    logits = (1e4 * torch.randn(16, 3, K)).requires_grad_(True)
    weight = torch.randn_like(logits)
    for hard in (True, False):
        logits.grad = None
        seen = []

        def f(z, seen=seen):
            seen.append(z)
            return (z * weight).sum(-1)

        E.build(name, hard=hard).surrogate(logits, f).sum().backward()
        assert torch.isfinite(seen[0]).all()
        assert torch.isfinite(logits.grad).all()


def test_per_run_streams_draw_each_run_as_alone():
    """``rng.streams``: in a draw ``[*outer, R, ...]`` run r's part is what its generator draws alone, in the same
    order (so a stacked estimator call gives each run its single-run noise); outside, the global generator."""
    def gen(seed):
        return torch.Generator().manual_seed(seed)

    with rng.streams([gen(1), gen(2), gen(3)]):
        u = rng.rand((3, 4, 5))
        k = rng.randn((7, 3, 4, 2), outer=7)
    for r, seed in enumerate((1, 2, 3)):
        g = gen(seed)
        assert torch.equal(u[r], torch.rand((4, 5), generator=g))
        assert torch.equal(k[:, r], torch.randn((7, 4, 2), generator=g))  # the same generator, continuing
    torch.manual_seed(0)
    a = rng.rand((2, 3))
    torch.manual_seed(0)
    assert torch.equal(a, torch.rand((2, 3)))
    with pytest.raises(ValueError, match="does not split into 1 x 2 runs"), rng.streams([gen(1), gen(2)]):
        rng.rand((3, 5))


def test_estimators_draw_only_through_estimators_rng():
    """Every random number of an estimator goes through ``estimators.rng`` (what a batched group's per-run streams
    rely on): no other module of the package calls torch's samplers directly."""
    package = Path(E.__file__).parent
    sampler = re.compile(r"torch\.(rand|randn|randint|rand_like|randn_like|multinomial|bernoulli|normal)\(|"
                         r"\.(uniform_|normal_|exponential_|bernoulli_|random_)\(")
    offenders = [f"{p.name}:{i}" for p in package.glob("*.py") if p.name != "rng.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if sampler.search(line.split("#")[0])]
    assert not offenders, offenders
