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
@pytest.mark.parametrize("estimator", ["gumbel", "redge_cov", "redge_max", "rloo", "gumbel_rao"])
def test_fast_step_matches_default_path(estimator):
    """Every kind of estimator: relaxations, ReDGE, a score-function estimator with several exact draws (RLOO),
    and a Rao-Blackwellized one (Gumbel-Rao)."""
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
    assert all(a is b for a, b in zip(facade.param_groups, inner.param_groups, strict=True))  # shared groups
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


@needs_mnist
@pytest.mark.parametrize("fast", [False, True])
def test_no_host_sync_per_training_step(tmp_path, monkeypatch, fast):
    """Outside Lightning's logging steps and epoch ends, nothing reads a tensor back (.item()): each such read
    waits for the device and would serialize a captured GPU step with the host's work."""
    import contextlib
    import os

    from lightning.pytorch.loggers import TensorBoardLogger

    from catvae.runner import default_callbacks, fit_callbacks

    reads: dict[int, int] = {}
    step = {"now": None}
    item = torch.Tensor.item

    def counted(self):
        if step["now"] is not None:
            reads[step["now"]] = reads.get(step["now"], 0) + 1
        return item(self)

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            step["now"] = trainer.global_step

        def on_train_epoch_end(self, *args):
            step["now"] = None

    monkeypatch.setattr(torch.Tensor, "item", counted)
    L.seed_everything(0)
    model = CategoricalVAE("redge_cov", latent_dim=8, n_categories=4, fast_step=fast)
    data = MNISTDataModule(str(DATA), train_subset=2000, batch_size=100, download=False)  # 20 steps per epoch
    trainer = L.Trainer(max_epochs=2, logger=TensorBoardLogger(tmp_path), log_every_n_steps=5, limit_val_batches=1,
                        enable_model_summary=False, callbacks=[Window(), *default_callbacks(),
                                                               *fit_callbacks(model.monitor, 1000, str(tmp_path))])
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        trainer.fit(model, data)
    logging_steps = {s for s in range(40) if (s + 1) % 5 == 0}
    assert reads and set(reads) <= logging_steps, reads  # the logger's writes, and the epoch ends (steps 19, 39)


@needs_mnist
@pytest.mark.parametrize("saved", [{"capturable": True, "fused": None}, {"capturable": False, "fused": True},
                                   {"capturable": False, "fused": None, "foreach": True}])
@pytest.mark.parametrize("fast", [False, True])
def test_resume_keeps_the_current_optimizer_kernel(tmp_path, saved, fast):
    """A checkpoint written by another path or device (e.g. a GPU's capturable Adam) resumes with the kernel
    flags of the optimizer built here, not those in the file."""
    from callbacks import RunCheckpoint

    _fit(fast, "gumbel", steps=4, root=tmp_path, callbacks=RunCheckpoint.last(4, dirpath=str(tmp_path)))
    path = tmp_path / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    for group in ckpt["optimizer_states"][0]["param_groups"]:
        group.update(saved)
    torch.save(ckpt, path)
    model, trainer = _fit(fast, "gumbel", steps=6, ckpt_path=path, root=tmp_path)
    assert trainer.global_step == 6
    fresh = model.adam(capturable=fast and model.device.type == "cuda").param_groups[0]  # the fast path's, on CUDA
    for group in (model._step_optimizer if fast else trainer.optimizers[0]).param_groups:
        assert {k: group[k] for k in ("capturable", "fused", "foreach")} == \
            {k: fresh[k] for k in ("capturable", "fused", "foreach")}


@needs_mnist
def test_a_second_fit_steps_its_own_optimizer(tmp_path):
    """fit twice on one module: the second fit's step updates the second fit's Adam. On a GPU the first fit's
    graph holds the first Adam, so the second fit must build a new runner (on CPU the step runs eagerly)."""
    from callbacks import RunCheckpoint

    model, _ = _fit(True, "gumbel", steps=3, root=tmp_path)
    first, first_runner = model._step_optimizer, model._runner
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=RunCheckpoint.last(2, dirpath=str(tmp_path / "second")))
    trainer.fit(model, MNISTDataModule(str(DATA), train_subset=1000, batch_size=100, download=False))
    assert model._step_optimizer is not first and model._runner is not first_runner
    state = torch.load(tmp_path / "second" / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    assert state and float(state[0]["step"]) == 2  # the new optimizer took both steps
