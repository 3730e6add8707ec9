"""callbacks.EstimatorSchedule: annealed estimator hyperparameters, exact across a resume."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ROOT

import estimators as E
from callbacks import EstimatorSchedule
from catvae.cli import main
from estimators.base import ConfigError


def test_shapes_start_end_and_the_classic_exponential():
    exp = EstimatorSchedule("tau", 1.0, 0.1, "exp", steps=100)
    assert exp.value(0) == 1.0 and exp.value(100) == pytest.approx(0.1) and exp.value(500) == 0.1
    classic = EstimatorSchedule("tau", 1.0, 0.5, "exp", steps=10, rate=1e-2)  # max(τ_min, τ₀ exp(−r s))
    assert classic.value(30) == pytest.approx(math.exp(-0.3)) and classic.value(1000) == 0.5
    lin, cos = EstimatorSchedule("t_1", 0.9, 0.3, "linear", steps=60), EstimatorSchedule("t_1", 0.9, 0.3, "cosine", steps=60)
    assert lin.value(30) == pytest.approx(0.6) and cos.value(30) == pytest.approx(0.6) and cos.value(60) == pytest.approx(0.3)
    values = [cos.value(s) for s in range(61)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_changing_t1_rebuilds_the_grid_exactly():
    """set_hparam("t_1") gives the estimator a fresh ReDGE at the new t₁ would be: same grid, same samples and
    gradients from the same noise."""
    est, fresh = E.ReDGE(n_steps=5), E.ReDGE(n_steps=5, t_1=0.2)
    est.set_hparam("t_1", 0.2)
    assert est.schedule.alphas == fresh.schedule.alphas and est.hparams() == fresh.hparams()
    logits = torch.randn(7, 4, dtype=torch.float64)
    outs = []
    for e in (est, fresh):
        torch.manual_seed(3)
        phi = logits.clone().requires_grad_(True)
        z = e(phi)
        (g,) = torch.autograd.grad((z * torch.arange(4.0, dtype=torch.float64)).sum(), phi)
        outs.append((z, g))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    with pytest.raises(ValueError, match="t_1"):
        est.set_hparam("t_1", 1.5)
    with pytest.raises(ConfigError, match="no hyperparameter 'tau'"):
        est.set_hparam("tau", 0.5)


def _fit(tmp_path, *extra):
    return main(["fit", "--config", str(ROOT / "configs/polynomial/p2.yaml"),
                 "--config", str(ROOT / "configs/polynomial/estimators/gumbel.yaml"),
                 "--data.init_args.steps_per_epoch", "10", "--model.init_args.samples_per_step", "8",
                 "--trainer.max_steps", "30", "--checkpoint_every_n_steps", "3", "--runs_dir", str(tmp_path / "runs"),
                 "--trainer.enable_progress_bar", "false", *extra])


ANNEAL = ["--trainer.callbacks+=callbacks.EstimatorSchedule", "--trainer.callbacks.hparam=tau",
          "--trainer.callbacks.start=2.0", "--trainer.callbacks.end=0.1", "--trainer.callbacks.shape=cosine"]


def _theta(tmp_path, name):
    ckpt = torch.load(tmp_path / "runs" / name / "gumbel/version_0/checkpoints/last.ckpt", weights_only=True)
    return ckpt["state_dict"]["theta"]


def test_an_annealed_run_resumes_exactly_and_differs_from_a_constant_one(tmp_path):
    assert _fit(tmp_path, *ANNEAL, "--experiment_name", "straight") == 0
    with pytest.raises(RuntimeError, match="injected crash"):
        _fit(tmp_path, *ANNEAL, "--experiment_name", "resumed", "--trainer.callbacks+=faults.CrashAt",
             "--trainer.callbacks.step=14")
    assert _fit(tmp_path, *ANNEAL, "--experiment_name", "resumed", "--ckpt_path", "last") == 0
    assert _fit(tmp_path, "--experiment_name", "constant") == 0
    assert torch.equal(_theta(tmp_path, "straight"), _theta(tmp_path, "resumed"))
    assert not torch.equal(_theta(tmp_path, "straight"), _theta(tmp_path, "constant"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs/straight/gumbel/version_0")).Reload()
    logged = {e.step: e.value for e in events.Scalars("schedule/tau")}
    schedule = EstimatorSchedule("tau", 2.0, 0.1, "cosine", steps=30)
    assert logged and all(v == pytest.approx(schedule.value(s), rel=1e-6) for s, v in logged.items())


@pytest.mark.parametrize("extra, fragment", [
    (["--trainer.callbacks.hparam=n_samples"], "no hyperparameter 'n_samples'"),
    (["--trainer.callbacks.end=-1.0"], "exp shape needs start and end > 0"),
    (["--model.init_args.fast_step=true"], "fast_step"),
])
def test_bad_schedules_are_one_line(tmp_path, capsys, extra, fragment):
    anneal = ["--trainer.callbacks+=callbacks.EstimatorSchedule", "--trainer.callbacks.hparam=tau", *extra]
    if "fast_step" in extra[0]:
        args = ["fit", "--config", str(ROOT / "configs/mnist/l48_k2.yaml"), "--config", str(ROOT / "configs/quick.yaml"),
                *anneal, "--trainer.max_steps=2", "--runs_dir", str(tmp_path / "runs")]
        code = main(args)
    else:
        code = _fit(tmp_path, *anneal)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_the_length_defaults_to_the_runs_own_steps_from_max_epochs(tmp_path):
    """Without steps or max_steps the schedule spans the run as max_epochs makes it (Lightning's
    estimated_stepping_batches): 2 epochs of 10 steps reach ``end`` at step 20."""
    assert _fit(tmp_path, *ANNEAL, "--trainer.max_steps", "-1", "--trainer.max_epochs", "2",
                "--trainer.log_every_n_steps", "1", "--experiment_name", "epochs") == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs/epochs/gumbel/version_0")).Reload()
    logged = {e.step: e.value for e in events.Scalars("schedule/tau")}
    schedule = EstimatorSchedule("tau", 2.0, 0.1, "cosine")
    assert max(logged) == 19 and all(v == pytest.approx(schedule.value(s, 20), rel=1e-6) for s, v in logged.items())
