"""Gradient diagnostics: known-bias cases against exact enumeration, the REINFORCE-LOO reference, the callback."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import estimators
from callbacks.diagnostics import GradientDiagnostics, gradient_diagnostics, reference_gradient
from catvae import CategoricalVAE

B, LAT, K = 3, 3, 4


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, LAT, K, generator=g, dtype=torch.float64)
    w = torch.randn(B, LAT, K, generator=g, dtype=torch.float64)
    return logits, w


def test_straight_through_is_unbiased_on_linear_f():
    """ST's gradient of a linear f is Cov(X)·w = ∇E[f]: zero bias (paper §2)."""
    torch.manual_seed(0)
    logits, w = _problem()
    stats, kind = gradient_diagnostics(estimators.build("st"), logits, lambda z: (z * w).sum((-1, -2)), n_draws=64)
    s = stats["logits"]
    assert kind == "exact"
    assert s["rel_bias"] < 1e-6 and s["cos"] > 1 - 1e-6  # exactly the true gradient, every draw


def test_straight_through_is_biased_on_nonlinear_f():
    torch.manual_seed(0)
    logits, w = _problem()

    def f(z):  # quadratic in z: ST's first-order surrogate is biased
        return ((z * w).sum((-1, -2)) - 1.5) ** 2

    st, kind = gradient_diagnostics(estimators.build("st"), logits, f, n_draws=4000)
    assert kind == "exact"
    s = st["logits"]
    assert s["rel_bias"] > 0.1 and s["rel_bias"] > 10 * s["noise_floor"], s
    assert s["cos_mean"] < 0.999


def test_rloo_reference_is_unbiased_on_an_enumerable_case():
    torch.manual_seed(0)
    logits, w = _problem(1)
    logits.requires_grad_(True)

    def f(z):
        return torch.sin(3 * (z * w).sum((-1, -2))) + (z[..., 0] * w[..., 1]).sum(-1) ** 2

    (g_exact,), kind = reference_gradient(logits, f, [logits], "exact")
    assert kind == "exact"
    # average of independent REINFORCE-LOO references: mean error shrinks like 1/sqrt(n)
    refs = torch.stack([reference_gradient(logits, f, [logits], "rloo", samples=2000)[0][0] for _ in range(20)])
    err_mean = (refs.mean(0) - g_exact).norm() / g_exact.norm()
    err_one = ((refs - g_exact).flatten(1).norm(dim=1) / g_exact.norm()).mean()
    assert err_mean < 0.05, (err_mean, err_one)
    assert err_mean < 0.5 * err_one  # the error is noise (averages out), not bias


def test_exact_reference_matches_estimators_exact_per_example():
    logits, w = _problem(2)
    logits.requires_grad_(True)
    f = lambda z: ((z * w).sum((-1, -2)) - 0.5) ** 2  # noqa: E731
    (g,), _ = reference_gradient(logits, f, [logits], "exact")
    for b in range(B):  # J = mean_b E[f_b]: example b's block is (1/B) ∇ E[f_b]
        fb = lambda z, b=b: ((z * w[b]).sum((-1, -2)) - 0.5) ** 2  # noqa: E731
        torch.testing.assert_close(g[b], estimators.exact.gradient(fb, logits[b]) / B)


class _Tiny(torch.utils.data.Dataset):
    def __init__(self):
        self.x = (torch.rand(64, 784, generator=torch.Generator().manual_seed(0)) > 0.7).float()

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.x[16 * i:16 * (i + 1)]


@pytest.mark.parametrize("L_, K_, kind", [(3, 3, "exact"), (20, 2, "rloo")])
def test_callback_on_a_vae_logs_per_group(tmp_path, L_, K_, kind):
    torch.manual_seed(0)
    model = CategoricalVAE("st", latent_dim=L_, n_categories=K_, encoder_hidden=(32,), decoder_hidden=(32,))
    model.configure_callbacks = lambda: []
    cb = GradientDiagnostics(every_n_steps=2, n_draws=8, batch_size=4, reference_samples=64)
    loader = torch.utils.data.DataLoader(_Tiny(), batch_size=None)
    trainer = L.Trainer(max_steps=3, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, loader)
    assert [s for s, _ in cb.history] == [0, 2]
    metrics = cb.history[-1][1]
    for group in ("logits", "encoder", "decoder"):
        for m in ("rel_bias", "rel_std", "cos"):
            assert torch.isfinite(torch.tensor(metrics[f"diag/{kind}/{group}/{m}"]))
    assert metrics[f"diag/{kind}/decoder/rel_std"] > 0  # the decoder sees sampled z: its gradient is random


def test_callback_does_not_change_training():
    """The diagnostic draws from its own RNG: training with and without it gives the same weights."""
    weights = []
    for callbacks in ([], [GradientDiagnostics(every_n_steps=1, n_draws=4, batch_size=2)]):
        torch.manual_seed(0)
        model = CategoricalVAE("gumbel", latent_dim=3, n_categories=3, encoder_hidden=(16,), decoder_hidden=(16,))
        model.configure_callbacks = lambda: []
        trainer = L.Trainer(max_steps=3, callbacks=callbacks, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(model, torch.utils.data.DataLoader(_Tiny(), batch_size=None))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
