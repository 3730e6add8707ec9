"""The fast training step (CUDA-graph capturable) gives the same results as the default path."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import DATA, needs_mnist

from catvae import CategoricalVAE, MNISTDataModule
from catvae.fast import ReplayOptimizer, StepRunner


def _fit(fast: bool, estimator: str, steps: int = 12, ckpt_path=None, root=None, callbacks=()):
    L.seed_everything(0)
    # the fast step computes train/nelbo_exact every step; with N = 1 both paths draw the same noise
    model = CategoricalVAE(estimator, latent_dim=8, n_categories=4, fast_step=fast, exact_nelbo_every_n_steps=1)
    data = MNISTDataModule(str(DATA), train_subset=1000, batch_size=100, download=False)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=bool(callbacks), enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False, default_root_dir=root,
                        callbacks=list(callbacks))
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer


@needs_mnist
@pytest.mark.parametrize("estimator", ["gumbel", "redge_cov", "redge_max"])
def test_fast_step_matches_default_path(estimator):
    slow, t_slow = _fit(False, estimator)
    fast, t_fast = _fit(True, estimator)
    assert t_slow.global_step == t_fast.global_step == 12  # Lightning still counts the optimizer steps
    torch.testing.assert_close(t_slow.callback_metrics["train/loss_epoch"], t_fast.callback_metrics["train/loss_epoch"])
    torch.testing.assert_close(t_slow.callback_metrics["train/nelbo_exact"],
                               t_fast.callback_metrics["train/nelbo_exact"])
    for key, value in slow.state_dict().items():
        torch.testing.assert_close(value, fast.state_dict()[key], rtol=1e-6, atol=1e-7)


@needs_mnist
def test_fast_step_checkpoint_resumes(tmp_path):
    from callbacks import RunCheckpoint

    _fit(True, "redge_cov", steps=5, root=tmp_path, callbacks=RunCheckpoint.last(5, dirpath=str(tmp_path)))
    path = tmp_path / "last.ckpt"
    state = torch.load(path, weights_only=True)["optimizer_states"][0]  # the safe loader opens it
    assert state["state"] and "exp_avg" in state["state"][0]  # the real Adam state, not the facade's
    resumed, t2 = _fit(True, "redge_cov", steps=8, ckpt_path=path, root=tmp_path)
    straight, t3 = _fit(True, "redge_cov", steps=8, root=tmp_path)
    assert t2.global_step == 8
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(value, resumed.state_dict()[key])


def test_replay_optimizer_delegates_to_the_inner_optimizer():
    p = torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.Adam([p], lr=0.1)
    facade = ReplayOptimizer(inner)
    assert facade.param_groups is inner.param_groups
    calls = []
    assert facade.step(lambda: calls.append(1) or 7) == 7 and calls == [1]
    p.grad = torch.ones(3)
    inner.step()
    assert facade.state_dict()["state"][0]["exp_avg"].abs().sum() > 0
    facade.param_groups[0]["lr"] = 0.5
    assert inner.param_groups[0]["lr"] == 0.5


def test_step_runner_runs_eagerly_off_cuda():
    seen = []
    runner = StepRunner(lambda x: seen.append(x.sum().item()) or {"y": 2 * x})
    out = runner(torch.ones(2))
    assert torch.equal(out["y"], torch.full((2,), 2.0)) and seen == [2.0] and not runner.captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_step_runner_captures_and_replays_on_cuda():
    w = torch.nn.Parameter(torch.zeros(4, device="cuda"))
    opt = torch.optim.Adam([w], lr=0.1, capturable=True)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = ((w - x) ** 2).sum()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    runner = StepRunner(step, warmup=2)
    target = torch.arange(4.0, device="cuda")
    losses = [runner(target)["loss"].item() for _ in range(50)]
    assert runner.captured and losses[-1] < losses[0]
