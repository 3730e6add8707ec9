"""``catvae analyze``: the t₁ / n sweep of the ReDGE family against the exact gradient."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import ROOT, needs_mnist

import estimators
from catvae.analyze import analyze, law_error, make_objective, measure, parse_probs, polynomial_task
from catvae.cli import main
from estimators import exact

PI = "0.6,0.3,0.1"


def _row(rows, name, n=None, t=None):
    (row,) = [r for r in rows if r["estimator"] == name and r["n_steps"] == n and r["t_1"] == t]
    return row


def test_end_to_end_on_a_tiny_pi(tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", "--out", str(out), "--probs", PI, "--t1", "0.5,1/3", "--n-steps", "2,4",
                 "--estimators", "redge,redge_cov", "--draws", "300", "--quiet"]) == 0
    assert "11 configurations" in capsys.readouterr().out
    with (out / "analysis.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["estimator"] for r in rows[:3]] == ["st", "gumbel", "reinmax"]
    swept = {(r["estimator"], int(r["n_steps"]), round(float(r["t_1"]), 6)) for r in rows[3:]}
    assert swept == {(e, n, round(t, 6)) for e in ("redge", "redge_cov") for n in (2, 4) for t in (0.5, 1 / 3)}
    assert all(0 <= float(r["tv"]) <= 1 and -1 <= float(r["cos"]) <= 1 for r in rows)
    md = (out / "analysis.md").read_text()
    assert "--probs 0.6,0.3,0.1" in md and md.count("\n| redge |") == 4
    assert (out / "analysis.png").read_bytes()[:4] == b"\x89PNG"


def test_one_step_at_t1_one_is_straight_through():
    """§3.2: with n = 2 and t₁ = 1 the relaxed sample is softmax(φ), so ReDGE is Straight-Through. The two
    mean gradients are independent Monte-Carlo estimates of the same vector: their relative biases differ
    by at most the distance between them (triangle inequality), which we bound by 5 noise floors each."""
    probs = parse_probs("0.5,0.3,0.2;0.1,0.6,0.3")
    f = make_objective("quadratic", 2, 3, seed=1)
    rows = analyze(probs, f, [1.0], [2], ["redge"], ["st"], draws=4000, seed=0)
    st, redge = _row(rows, "st"), _row(rows, "redge", 2, 1.0)
    assert abs(st["rel_bias"] - redge["rel_bias"]) < 5 * (st["noise_floor"] + redge["noise_floor"])
    assert redge["rel_std"] == pytest.approx(st["rel_std"], rel=0.1)
    assert redge["tv"] < 4 * redge["tv_floor"]  # exact draws: the law is π


def test_the_gradient_vanishes_as_t1_goes_to_zero():
    """Prop. 3.1: as t₁ → 0 the Jacobian of the DDIM map vanishes almost surely: every draw's gradient is ~0,
    so the relative bias tends to 1 and the spread to 0, while at t₁ = 1/2 the gradient points the right way."""
    probs = parse_probs(PI)
    f = make_objective("quadratic", 1, 3, seed=0)
    rows = analyze(probs, f, [1e-3, 0.5], [3], ["redge", "redge_cov"], [], draws=2000, seed=0)
    for name in ("redge", "redge_cov"):
        small, mid = _row(rows, name, 3, 1e-3), _row(rows, name, 3, 0.5)
        assert small["rel_bias"] == pytest.approx(1.0, abs=1e-3) and small["rel_std"] < 1e-3
        assert mid["cos_mean"] > 0.9 and mid["rel_bias"] < 0.5


def test_exact_draws_sit_at_the_tv_floor():
    """The floor is E TV of M exact draws (normal approximation): averaged over 40 seeds of 2,000 draws
    from π, the empirical TV is within 10% of it."""
    probs = parse_probs("0.5,0.3,0.2;0.7,0.2,0.1")
    tvs, floors = [], []
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(probs, 2000, replacement=True, generator=g).T
        tv, floor = law_error(torch.nn.functional.one_hot(idx, 3).double(), probs)
        tvs.append(tv)
        floors.append(floor)
    assert sum(tvs) / len(tvs) == pytest.approx(floors[0], rel=0.1)


def test_polynomial_objective_is_the_benchmarks_eq16():
    """analyze's polynomial f is the benchmark task's: E f under π (enumerated) equals the task's closed form
    F(θ) = (1/L) Σ (1 − q_i) c^p + q_i (1 − c)^p of §4.1, with the data module's c (the paper's 0.45)."""
    probs = parse_probs("0.3,0.7;0.8,0.2;0.5,0.5")
    f = make_objective("polynomial", 3, 2, seed=0, p=1.5)
    task = polynomial_task(3, 1.5)
    assert task.c == 0.45
    q = probs[:, 1]
    closed = ((1 - q) * 0.45**1.5 + q * 0.55**1.5).mean()
    assert exact.expectation(f, probs.log()).item() == pytest.approx(closed.item(), abs=1e-12)
    assert task.objective(probs.log().float()).item() == pytest.approx(closed.item(), rel=1e-6)


def test_measure_agrees_with_the_diagnostics_definition():
    """For Straight-Through on a linear f(x) = ⟨w, x⟩ every draw's gradient is Σ w (Σ the softmax Jacobian)
    whatever the hard sample, and that is the exact gradient: zero bias, zero spread, cosine 1."""
    probs = parse_probs(PI)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def f(x):
        return (x * w).sum((-1, -2))

    ref = exact.gradient(f, probs.log()).flatten()
    stats = measure(estimators.build("st"), probs.log(), f, ref, draws=500, seed=0)
    assert stats["rel_bias"] < 1e-12 and stats["rel_std"] < 1e-12 and stats["cos"] == pytest.approx(1.0)


@pytest.mark.parametrize("args, fragment", [
    (["--probs", "0.5,0.6"], "sum to 1"),
    (["--probs", "a,b"], "not a list of numbers"),
    (["--probs", "0.5,0.5;1"], "same number"),
    (["--t1", "0,0.5"], "(0, 1]"),
    (["--n_steps", "1"], ">= 2"),
    (["--estimators", "redge,st"], "unknown estimator"),
    (["--objective", "polynomial", "--K", "3"], "K=2"),
    (["--L", "30", "--K", "4"], "too many configurations"),
    (["--draws", "1"], "at least 2"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "an"
    assert main(["analyze", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("catvae: error:") and fragment in err[0]
    assert not out.exists()


def test_any_estimator_can_be_a_reference():
    """RLOO (score function, unbiased) as a reference: through surrogate it gets a gradient, and its bias sits at
    the Monte-Carlo floor; --tau reaches only the estimators that have a temperature."""
    probs = parse_probs(PI)
    rows = analyze(probs, make_objective("quadratic", 1, 3, seed=0), [], [], [], ["rloo", "gumbel_rao"], draws=2000,
                   seed=0, tau=0.7)
    rloo = _row(rows, "rloo")
    assert rloo["rel_bias"] < 5 * rloo["noise_floor"] and rloo["tv"] < 4 * rloo["tv_floor"]
    assert _row(rows, "gumbel_rao")["cos"] > 0


@needs_mnist
def test_a_trained_models_posterior(tmp_path, capsys):
    """--ckpt_path: π = q(z|x) of one test image of a (small) trained VAE, f = −log p(x|z); a model whose K^L is
    too large for enumeration is one line."""
    from catvae.analyze import vae_posterior

    runs = tmp_path / "runs"
    common = ["fit", "--config", str(ROOT / "configs/mnist/l48_k2.yaml"), "--runs_dir", str(runs),
              "--trainer.enable_progress_bar=false", "--trainer.max_steps=3", "--data.train_subset=1000",
              "--data.batch_size=100", "--data.eval_batch_size=500", "--trainer.limit_val_batches=1",
              "--model.n_importance_samples=2"]
    assert main([*common, "--model.init_args.latent_dim=4", "--model.init_args.n_categories=3",
                 "--experiment_name", "small"]) == 0
    ckpt = str(runs / "small/gumbel/version_0/checkpoints/last.ckpt")
    probs, f, what = vae_posterior(ckpt, 2)
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(-1), torch.ones(4, dtype=torch.float64))
    assert f(torch.nn.functional.one_hot(torch.zeros(5, 4, dtype=torch.long), 3).double()).shape == (5,)
    out = tmp_path / "an"
    assert main(["analyze", "--ckpt_path", ckpt, "--example", "2", "--t1", "0.5", "--n-steps", "4", "--estimators",
                 "redge", "--draws", "200", "--quiet", "--out", str(out)]) == 0
    assert "test image 2" in (out / "analysis.md").read_text()
    capsys.readouterr()
    assert main([*common, "--experiment_name", "big"]) == 0
    capsys.readouterr()
    assert main(["analyze", "--ckpt_path", str(runs / "big/gumbel/version_0/checkpoints/last.ckpt"), "--out",
                 str(tmp_path / "no")]) == 2
    assert "use a model with a smaller latent space" in capsys.readouterr().err
