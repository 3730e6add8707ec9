"""``compare --batched``: many runs as one stacked model (catvae.models.stacked, catvae.compare.batched).

The acceptance of the batched sweep: (a) a group of one run trains as the single-run step does, (b) runs of a
group are independent, (c) a group of 2 seeds x 3 estimators lands where the separate runs land, (d) an
interrupted and resumed group equals an uninterrupted one, and the sweep's results folder is the unbatched one.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA, ROOT, needs_mnist
from faults import PoisonAt, SignalAt
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks import DurableCheckpointIO
from catvae import CategoricalVAE, gpu_check
from catvae.cli import main
from catvae.compare import batched as B
from catvae.compare import load_spec
from catvae.compare.execute import collect
from catvae.errors import TrainingDiverged
from catvae.fast import StepRunner
from catvae.models.stacked import StackedVAE, upgrade_group_checkpoint
from catvae.runs import load_checkpoint
from estimators.base import ConfigError
from estimators.rng import seeded

SPEC = ROOT / "configs" / "compare"
D = 24  # pixels of the synthetic data


def _model(seed: int, estimator: str, latent_dim: int = 6) -> tuple[CategoricalVAE, dict]:
    """A small VAE built under ``seed`` as ``catvae fit`` builds one, and the noise state right after."""
    torch.manual_seed(seed)
    model = CategoricalVAE(estimator=estimator, latent_dim=latent_dim, n_categories=3, encoder_hidden=(32,),
                           decoder_hidden=(32,), image_size=D)
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return model, state


def _data(seed: int, steps: int, batch: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + seed)
    return (torch.rand(steps, batch, D, generator=gen) > 0.5).float()


def _single(seed: int, estimator: str, data: torch.Tensor) -> tuple[CategoricalVAE, list[float]]:
    """The single-run training step (CategoricalVAE.make_step: loss, exact NELBO, backward, Adam) on ``data``."""
    model, state = _model(seed, estimator)
    torch.set_rng_state(state["torch"])
    step = model.make_step(model.adam())
    return model, [float(step(x)["loss"]) for x in data]


def _stacked(specs: list[tuple[int, str]], data: list[torch.Tensor]) -> tuple[StackedVAE, list[list[float]]]:
    """The stacked step of StackedVAE (make_step: losses, exact NELBOs, backward, one Adam)."""
    built = [_model(seed, est) for seed, est in specs]
    group = StackedVAE([m for m, _ in built], [s for _, s in built])
    step = group.make_step(group.configure_optimizers())
    losses = [step(x)["loss"].tolist() for x in torch.stack(data, dim=1)]
    return group, [list(col) for col in zip(*losses)]


@pytest.mark.parametrize("estimator", ["redge_cov", "gumbel", "rloo", "gumbel_rao"])
@pytest.mark.parametrize("runs", [1, 3])
def test_a_group_trains_each_run_as_the_single_run_step(estimator, runs):
    """(a) 120 steps of a group of one run (baddbmm, its noise stream, its estimator), and of three seeds of one
    estimator (one estimator call on their stacked logits, each run's noise from its own stream), against the
    single-run step on the same data and noise: the same parameters to float tolerance (on this CPU a group of one is
    equal, a block of three within 3e-8)."""
    seeds = list(range(runs))
    group, group_losses = _stacked([(s, estimator) for s in seeds], [_data(s, 120) for s in seeds])
    for r, seed in enumerate(seeds):
        single, single_losses = _single(seed, estimator, _data(seed, 120))
        for name, value in single.state_dict().items():
            torch.testing.assert_close(group.run_state_dict(r)[name], value, rtol=1e-5, atol=1e-6)
        assert statistics.mean(single_losses[-20:]) < statistics.mean(single_losses[:20])  # it trained
        torch.testing.assert_close(torch.tensor(group_losses[r]), torch.tensor(single_losses), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("change", ["seed", "data", "estimator", "score-function estimator"])
def test_changing_one_run_leaves_the_others_bitwise_unchanged(change):
    """(b) Runs 0 and 2 of a group of three, after 30 steps, whatever run 1's seed, data or estimator. Runs 0 and 1
    share an estimator, so they are one estimator call on their stacked logits: changing run 1's estimator shrinks
    run 0's call to one run, and (gumbel) grows run 2's to two."""
    steps = 30
    base = [(0, "redge_cov"), (1, "redge_cov"), (2, "gumbel")]
    data = [_data(s, steps) for s, _ in base]
    other = list(base)
    other_data = list(data)
    if change == "seed":
        other[1] = (7, "redge_cov")
    elif change == "data":
        other_data[1] = _data(99, steps)
    else:
        other[1] = (1, "gumbel" if change == "estimator" else "rloo")
    a, _ = _stacked(base, data)
    b, _ = _stacked(other, other_data)
    for r in (0, 2):
        for name, value in a.run_state_dict(r).items():
            assert torch.equal(b.run_state_dict(r)[name], value), (r, name)
    assert not torch.equal(a.run_state_dict(1)["encoder.0.weight"], b.run_state_dict(1)["encoder.0.weight"])


def test_a_group_of_two_seeds_by_three_estimators_lands_within_seed_noise_of_separate_runs():
    """(c) 300 steps: each estimator's mean loss over the last 50 steps, in the group and trained separately,
    differ by less than twice the spread over seeds (its standard error, generously)."""
    steps, seeds, ests = 300, [0, 1], ["redge_cov", "gumbel", "reinmax"]
    specs = [(s, e) for e in ests for s in seeds]
    _, group_losses = _stacked(specs, [_data(s, steps) for s, _ in specs])
    for e in ests:
        grouped = [statistics.mean(group_losses[specs.index((s, e))][-50:]) for s in seeds]
        separate = [statistics.mean(_single(s, e, _data(s, steps))[1][-50:]) for s in seeds]
        noise = statistics.stdev(separate)
        assert abs(statistics.mean(grouped) - statistics.mean(separate)) <= 2 * noise + 1e-3, (e, grouped, separate)
        assert statistics.mean(separate) < _single(0, e, _data(0, 1))[1][0]  # the runs trained


def test_the_group_test_pass_draws_what_each_runs_own_test_draws():
    """StackedVAE.test_step (test/nelbo, test/log_likelihood of every run in one pass) against each run's
    CategoricalVAE evaluated alone under its test RNG (eval_rng of batch 0): equal to float rounding."""
    specs = [(0, "redge_cov"), (1, "gumbel"), (2, "gumbel")]
    built = [_model(seed, est) for seed, est in specs]
    group = StackedVAE([m for m, _ in built], [st for _, st in built])
    x = _data(5, 1, batch=32)[0]
    group.test_step(x, 0)
    for r, (model, _) in enumerate(built):
        with seeded(model.eval_seed):
            nelbo, ll = model.nelbo(x).mean(), model.log_likelihood(x).mean()
        torch.testing.assert_close(group.test_nelbo.compute()[r], nelbo, rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(group.test_ll.compute()[r], ll, rtol=1e-6, atol=1e-4)
    assert group.n_importance_samples == 100 and float(group.test_ll.weight) == 32


def test_a_stack_refuses_runs_of_different_architectures():
    with pytest.raises(ConfigError, match="must share latent_dim"):
        StackedVAE([_model(0, "st")[0], _model(0, "st", latent_dim=5)[0]])


def test_groups_are_cut_per_setting_and_by_memory(monkeypatch):
    runs = load_spec(SPEC / "table3.yaml")
    groups = B.plan(runs, {"l48_k2": 8, "l30_k10": 24, "l32_k64": 5})
    assert [len(g) for g in groups] == [8, 8, 8, 24, 5, 5, 5, 5, 4]
    assert all(len({r.setting for r in g}) == 1 for g in groups)
    assert [r for g in groups for r in g] == runs  # every run once, in spec order
    model = CategoricalVAE(latent_dim=32, n_categories=64)
    per_run = B.run_bytes(model, 200)
    assert per_run > 4 * 4 * sum(p.numel() for p in model.parameters())  # parameters, gradient, Adam, activations
    template = B.Template(model, type("DM", (), {"batch_size": 200})(), None, {}, Path("."))
    monkeypatch.setattr(B, "_trainer_config", lambda t: {"accelerator": "cpu"})
    monkeypatch.setattr(B, "available_bytes", lambda device: 10 * per_run + 1)
    assert B.group_size(template) == 10  # at L=32, K=64 the CPU cache cap is 10 as well
    monkeypatch.setattr(B, "available_bytes", lambda device: 100 * per_run + 1)
    assert B.group_size(template) == B.CPU_GROUP_LATENT_BYTES // (200 * 32 * 64 * 4) == 10
    assert B.group_size(template, limit=3) == 3
    monkeypatch.setattr(B, "available_bytes", lambda device: 1)
    assert B.group_size(template) == 1


def _tiny_args(tmp: Path, seed: int, estimator: str, steps: int) -> list[str]:
    return ["--config", str(ROOT / "configs/mnist/l48_k2.yaml"), f"--model.estimator={estimator}",
            "--model.init_args.encoder_hidden=[64]", "--model.init_args.decoder_hidden=[64]",
            "--data.train_subset=1000", "--data.batch_size=100", "--data.eval_batch_size=500",
            "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--model.n_importance_samples=2",
            "--trainer.log_every_n_steps=5", "--trainer.enable_progress_bar=false",
            "--runs_dir", str(tmp / "runs"), "--experiment_name", f"{estimator}/seed{seed}",
            "--seed_everything", str(seed), "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1"]


def _run_states(tmp: Path, specs) -> dict:
    out = {}
    for seed, est in specs:
        ckpt = load_checkpoint(next((tmp / "runs" / est / f"seed{seed}").glob("*/version_*/checkpoints/last.ckpt")))
        out[(seed, est)] = ckpt
    return out


def _differences(a, b, path: str = "checkpoint", rtol: float = 0.0, atol: float = 0.0) -> list[str]:
    """Where two checkpoints (nested dicts and lists of tensors and values) differ: the same keys, types, dtypes and
    shapes, values equal (floating-point tensors to ``rtol``/``atol``, bitwise by default)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in (_differences(a[k], b[k], f"{path}[{k!r}]", rtol, atol)
                                                         if k in a and k in b else [f"{path}[{k!r}] in one only"])]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]", rtol, atol)]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and (
            torch.allclose(a, b, rtol=rtol, atol=atol) if a.is_floating_point() else torch.equal(a, b))
    else:
        same = type(a) is type(b) and a == b
    return [] if same else [path]


@needs_mnist
@pytest.mark.parametrize("budgets", [[11, 13], [20], ["2 epochs"]], ids=["resumed-mid-epoch", "steps-end-an-epoch",
                                                                           "max-epochs"])
def test_a_group_writes_the_run_checkpoint_that_catvae_fit_writes(tmp_path, budgets):
    """A group of one run writes the run's ``last.ckpt`` that ``catvae fit`` of the run alone writes, entry for
    entry (integer tensors bitwise, floating ones to the tolerance of a group of one's step, which on the CPUs tried
    is equality, as in test_a_group_trains_each_run_as_the_single_run_step): parameters, Adam, noise, epoch means
    and their update counts, loop progress and the position in the data, hyperparameters, Lightning's own entries;
    all but the callbacks' states, which belong to the group's folder. Trained to step 11 and resumed to 13 (past an
    epoch end, mid-epoch); ending at the end of an epoch, by max_steps or max_epochs (10 steps an epoch), which the
    group checkpoints as an epoch end (as a run saving every epoch does), so that a run continued from it draws the
    data order of a straight run. (A group of one trains through its epoch ends: its means are one-element tensors,
    which torchmetrics' ``compute`` squeezes.)"""
    def args(tmp: Path, budget) -> list[str]:
        steps = budget if isinstance(budget, int) else -1
        return [*_tiny_args(tmp, 0, "gumbel", steps), *([] if steps > 0 else ["--trainer.max_epochs", "2"])]

    spec = [(0, "gumbel")]
    for budget in budgets:
        B.fit_group([args(tmp_path / "group", budget)], tmp_path / "group" / "group", "k", test=False)
    assert main(["fit", *args(tmp_path / "alone", budgets[-1])]) == 0
    grouped, alone = (_run_states(tmp_path / t, spec)[spec[0]] for t in ("group", "alone"))
    assert grouped.pop("callbacks") == {} and alone.pop("callbacks")
    assert grouped["global_step"] == (13 if len(budgets) > 1 else 20)
    assert _differences(grouped, alone, rtol=1e-5, atol=1e-6) == []


@needs_mnist
@pytest.mark.slow
def test_an_interrupted_and_resumed_group_equals_an_uninterrupted_one(tmp_path):
    """(d) SIGTERM after step 13 (mid-epoch: 10 steps per epoch), then the group resumed from its last.ckpt:
    every run's final checkpoint (parameters, Adam, noise) and epoch curves equal the uninterrupted group's."""
    specs = [(0, "redge_cov"), (1, "gumbel"), (0, "rloo")]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    B.fit_group([_tiny_args(straight, s, e, 25) for s, e in specs], straight / "group", "k")
    fit = [_tiny_args(stopped, s, e, 25) for s, e in specs]
    with pytest.raises(SIGTERMException):
        B.fit_group(fit, stopped / "group", "k", callbacks=[SignalAt(13)])
    assert load_checkpoint(stopped / "group/checkpoints/last.ckpt")["global_step"] == 13
    halfway = _run_states(stopped, specs)
    assert all(c["global_step"] == 13 for c in halfway.values())  # the runs' own checkpoints exist when stopped
    B.fit_group(fit, stopped / "group", "k")
    _assert_same_runs(straight, stopped, specs, steps=25)


def _assert_same_runs(straight: Path, resumed: Path, specs, steps: int, logged_from: int = 0) -> None:
    """Every run's final checkpoint (parameters, Adam, noise) and gumbel/seed1's epoch curves (from step
    ``logged_from``: what ``resumed``'s own logs hold) are equal."""
    a, b = _run_states(straight, specs), _run_states(resumed, specs)
    for key in specs:
        assert a[key]["global_step"] == b[key]["global_step"] == steps
        for name, value in a[key]["state_dict"].items():
            assert torch.equal(b[key]["state_dict"][name], value), (key, name)
        assert torch.equal(a[key]["catvae_rng"]["torch"], b[key]["catvae_rng"]["torch"])
        assert _differences(a[key]["catvae_metrics"], b[key]["catvae_metrics"]) == []  # update counts too
        for i, state in a[key]["optimizer_states"][0]["state"].items():
            assert torch.equal(b[key]["optimizer_states"][0]["state"][i]["exp_avg_sq"], state["exp_avg_sq"])
    run = load_spec(SPEC / "quick.yaml")[0]
    curves = [{tag: [(step, v) for step, v in points if step >= logged_from] for tag, points in
               collect(next((t / "runs" / "gumbel" / "seed1").glob("*/version_*")), run)["curves"].items()}
              for t in (straight, resumed)]
    assert curves[0]["train/loss_epoch"] == curves[1]["train/loss_epoch"]
    assert len(curves[0]["train/loss_epoch"]) == len([e for e in (9, 19, 24) if e >= logged_from])
    assert curves[0]["val/nelbo"] == curves[1]["val/nelbo"]


#: a group stopped by SIGTERM at step 13 (of 25) under the code before the group became the VAE's own layers
#: (commit 8b557a4: parameters ``stacked.<i>``, epoch sums as raw buffers), written by
#: ``tests/data/make_group_layout1.py`` run in a checkout of that commit
LAYOUT1 = Path(__file__).parent / "data" / "group_layout1"
LAYOUT1_ARGS = ["--model.init_args.latent_dim=4", "--model.init_args.encoder_hidden=[2]",
                "--model.init_args.decoder_hidden=[2]"]


@needs_mnist
@pytest.mark.slow
def test_a_group_stopped_under_the_old_checkpoint_layout_resumes_as_an_uninterrupted_group(tmp_path):
    """A sweep interrupted before the one-model change resumes under today's code: the old group checkpoint's keys
    are renamed on load (``upgrade_group_checkpoint``), and every run ends bitwise where the same group ends when
    resumed from the same state saved in today's layout (its parameters under the VAE's names, the same tensors).
    Not against a group trained from step 0 here: the fixture's first 13 steps were computed on another CPU, whose
    kernels (AVX2 vs AVX-512) round differently (seen: that comparison failed on an AVX-512 machine)."""
    specs = [(0, "redge_cov"), (1, "gumbel"), (0, "rloo")]
    old = load_checkpoint(LAYOUT1 / "checkpoints" / "last.ckpt")
    assert "stacked.0" in old["state_dict"]  # the old layout
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    names = [n for n, _ in B.build_template(_tiny_args(straight, *specs[0], 25) + LAYOUT1_ARGS).model.named_parameters()]
    values = [old["state_dict"][f"stacked.{i}"] for i in range(len(names))]
    new = upgrade_group_checkpoint(old, names)
    assert "stacked.0" not in new["state_dict"] and all(torch.equal(new["state_dict"][n], v) for n, v in zip(names, values))
    shutil.copytree(LAYOUT1, straight / "group")
    DurableCheckpointIO().save_checkpoint(new, straight / "group" / "checkpoints" / "last.ckpt")
    B.fit_group([_tiny_args(straight, s, e, 25) + LAYOUT1_ARGS for s, e in specs], straight / "group", "k")
    shutil.copytree(LAYOUT1, stopped / "group")
    B.fit_group([_tiny_args(stopped, s, e, 25) + LAYOUT1_ARGS for s, e in specs], stopped / "group", "k")
    _assert_same_runs(straight, stopped, specs, steps=25, logged_from=13)  # steps 0-12 were logged elsewhere


@needs_mnist
@pytest.mark.slow
def test_a_diverged_run_is_left_out_and_the_others_train_on_unchanged(tmp_path, capsys):
    """Run 1's weights set to NaN after step 6: the estimator's check catches its logits at step 6, the run is left
    out (no checkpoint, recorded in group.json), and runs 0 and 2 end bitwise where they end without the fault;
    when every run diverges the group stops with TrainingDiverged."""
    specs = [(0, "gumbel"), (1, "redge"), (2, "st")]
    straight, poisoned = tmp_path / "straight", tmp_path / "poisoned"
    B.fit_group([_tiny_args(straight, s, e, 15) for s, e in specs], straight / "group", "k")
    B.fit_group([_tiny_args(poisoned, s, e, 15) for s, e in specs], poisoned / "group", "k",
                callbacks=[PoisonAt(6, run=1)])
    assert "run 1 of the group (redge) diverged: its posterior logits became non-finite at step 6" in \
        capsys.readouterr().err
    assert B.diverged_runs(poisoned / "group") == {1: 6}
    assert not list((poisoned / "runs" / "redge").rglob("last.ckpt"))
    a, b = _run_states(straight, [specs[0], specs[2]]), _run_states(poisoned, [specs[0], specs[2]])
    for key in (specs[0], specs[2]):
        assert b[key]["global_step"] == 15
        for name, value in a[key]["state_dict"].items():
            assert torch.equal(b[key]["state_dict"][name], value), (key, name)
    with pytest.raises(TrainingDiverged, match="every run of the group diverged"):
        B.fit_group([_tiny_args(tmp_path / "all", s, e, 15) for s, e in specs], tmp_path / "all" / "group", "k",
                    callbacks=[PoisonAt(6)])


@needs_mnist
@pytest.mark.slow
def test_batched_quick_sweep_gives_the_unbatched_results_folder(quick_sweep, tmp_path, capsys):
    """``compare --batched --quick`` end to end, run by the GPU recipe's table mode (``make gpu-table3``: its
    tables copied to --out): the same runs folder layout, results.csv columns and values (to float rounding: the
    group's test pass draws what ``catvae test`` draws for each run) as the unbatched sweep; a run's last.ckpt is
    an ordinary CategoricalVAE checkpoint (``catvae fit --ckpt_path`` continues it); a rerun has nothing to do."""
    spec = tmp_path / "quick_seed0.yaml"  # the quick spec with the unbatched sweep's one seed
    spec.write_text(f"base: {SPEC / 'quick.yaml'}\nquick: {{seeds: [0]}}\n")
    (tmp_path / "data" / "MNIST").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw").symlink_to(DATA / "MNIST" / "raw")
    out, work = tmp_path / "out", tmp_path / "work"
    # a deadline far above the work (issue 23: no test bounded by the machine's speed)
    assert gpu_check.main(["--out", str(out), "--work", str(work), "--data_dir", str(tmp_path / "data"), "--table3",
                           str(spec), "--setting", "l48_k2", "--quick", "--deadline_s", "3000"]) == 0
    assert "3 to run in 1 group(s) (largest l48_k2: 3 runs)" in (work / "quick_seed0_l48_k2.txt").read_text()
    assert "ok quick_seed0 l48_k2" in (out / "summary.txt").read_text()
    # what comes back from a device call: within its limits, the tables on their own and in the archive
    assert gpu_check.returnable(out) == [] and {p.name for p in out.iterdir()} == {
        "summary.txt", "report.txt", "results.tgz", "results.md", "results.csv"}
    with tarfile.open(out / "results.tgz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert not [n for n in names if n.endswith(".ckpt")] and sum(n.endswith("result.json") for n in names) == 3
    plain, batched = quick_sweep, work / "quick_seed0_l48_k2_quick"
    # the unpacked archive is a results folder that --collect assembles
    assert main(["compare", str(spec), "--quick", "--collect", str(tmp_path / "unpacked" / batched.name),
                 "--out", str(tmp_path / "collected")]) == 0
    rows = [[{k: v for k, v in r.items() if k != "run_dir"} for r in csv.DictReader(open(p / "results.csv"))]
            for p in (tmp_path / "collected", out)]
    assert rows[0] == rows[1] and len(rows[0]) == 3  # the same table (the run folders are where each one lies)
    assert (batched / "groups").is_dir()
    rows = [list(csv.DictReader(open(p / "results.csv"))) for p in (plain, batched)]
    assert [r["estimator"] for r in rows[1]] == ["st", "gumbel", "redge_cov"] and rows[0][0].keys() == rows[1][0].keys()
    for p, b in zip(*rows):
        for col in ("train_loss", "train_nelbo_exact", "test_nelbo", "test_log_likelihood"):
            assert float(b[col]) == pytest.approx(float(p[col]), rel=1e-5), col
        assert float(b["epoch_s"]) > 0

    def layout(folder):
        # all but the logs and, unbatched only, the best-by-validation checkpoint (module docstring of batched), and
        # previous.ckpt (the last.ckpt before the final one: a single run writes several, a group's run one)
        return {str(f.relative_to(folder)) for f in (folder / "runs").rglob("*") if "events" not in f.name
                and f.suffix != ".yaml" and f.name != "log.txt" and not f.name.startswith(("best-", "previous."))}

    assert layout(plain) == layout(batched)
    assert {p.name for p in plain.glob("*.png")} == {p.name for p in batched.glob("*.png")}
    result = json.loads((batched / "runs/l48_k2/redge_cov/seed0/result.json").read_text())
    assert len(result["curves"]["train/loss_epoch"]) == 3 and len(result["curves"]["val/nelbo"]) == 3
    # the run's own checkpoint, resumed by the ordinary single-run command for 10 more steps
    run = load_spec(SPEC / "quick.yaml", quick=True, seeds=[0])[2]
    assert main(["fit", *run.cli_args(batched), "--trainer.max_steps", "40", "--trainer.max_epochs", "-1",
                 "--ckpt_path", "last"]) == 0
    assert load_checkpoint(batched / result["run_dir"] / "checkpoints/last.ckpt")["global_step"] == 40
    capsys.readouterr()
    assert main(["compare", str(spec), "--quick", "--out", str(batched), "--batched"]) == 0
    assert "3 already finished, 0 to run in 0 group(s)" in capsys.readouterr().out


def test_batched_options_are_checked(tmp_path, capsys):
    spec = str(SPEC / "quick.yaml")
    for bad, fragment in ((["--group-size", "2"], "needs --batched"), (["--batched", "--group-size", "0"], ">= 1"),
                          (["--batched", "--parallel", "2"], "drop --parallel")):
        assert main(["compare", spec, "--out", str(tmp_path), *bad]) == 2
        assert fragment in capsys.readouterr().err
    assert main(["compare", str(SPEC / "table3.yaml"), "--out", str(tmp_path / "t3"), "--batched", "--group-size", "20",
                 "--dry-run"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("group ")]
    sizes = [int(x.split(", ")[1].split()[0]) for x in lines]  # at most 20 (and 10 at L=32, K=64 on a CPU)
    assert sum(sizes) == 72 and max(sizes) == 20 and sizes[:2] == [20, 4]
    assert lines[0].startswith(f"group 1/{len(lines)} (l48_k2, 20 runs): st/seed0, st/seed1, st/seed2, gumbel/seed0")
    assert not (tmp_path / "t3" / "runs").exists()
    gmm = tmp_path / "gmm.yaml"
    gmm.write_text(f"steps: 5\nsettings: {{k20: {ROOT / 'configs/gmm/k20.yaml'}}}\nestimators: [st]\n"
                   "metrics: [{tag: test/nelbo_nc}]\ncurves: []\n")
    assert main(["compare", str(gmm), "--out", str(tmp_path / "gmm"), "--batched"]) == 2
    assert "stacks CategoricalVAE runs; this spec trains GMMTask" in capsys.readouterr().err
    assert not list((tmp_path / "gmm").glob("runs/*"))  # refused before anything ran


@needs_mnist
@pytest.mark.slow
def test_the_fast_step_group_trains_as_the_default_one_and_its_runs_resume_alone(tmp_path):
    """``fast_step`` (the step that StepRunner captures in a CUDA graph on a GPU; eager here, through manual
    optimization and ReplayOptimizer): the same per-run checkpoints as the default group, and a run's checkpoint
    resumes in the single-run ``catvae fit`` (fast_step too) for 5 more steps."""
    specs = [(0, "redge"), (1, "reinmax")]
    default, fast = tmp_path / "default", tmp_path / "fast"
    B.fit_group([_tiny_args(default, s, e, 12) for s, e in specs], default / "group", "k")
    fast_args = [[*_tiny_args(fast, s, e, 12), "--model.init_args.fast_step=true"] for s, e in specs]
    B.fit_group(fast_args, fast / "group", "k")
    a, b = _run_states(default, specs), _run_states(fast, specs)
    for key in specs:
        assert b[key]["global_step"] == 12
        for name, value in a[key]["state_dict"].items():
            assert torch.equal(b[key]["state_dict"][name], value), (key, name)
    more = [arg if arg != "12" else "17" for arg in fast_args[1]]
    assert main(["fit", *more, "--ckpt_path", "last"]) == 0
    assert _run_states(fast, specs)[(1, "reinmax")]["global_step"] == 17


def _cuda_group(specs, steps: int, capture: bool) -> StackedVAE:
    built = [_model(seed, est) for seed, est in specs]
    group = StackedVAE([m for m, _ in built], [s for _, s in built]).cuda()
    optimizer = torch.optim.Adam(group.parameters(), lr=group.lr, capturable=True)
    device = torch.device("cuda")
    runner = StepRunner(group.make_step(optimizer), capture=capture,
                        generators=(lambda: group.streams.generators(device)) if capture else None)
    for x in torch.stack([_data(s, steps) for s, _ in specs], dim=1).cuda():
        runner(x)
    assert runner.captured == capture
    return group


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_a_captured_group_step_equals_the_eager_one_and_keeps_runs_independent_on_cuda():
    """On a GPU: 20 steps of a group replayed from one CUDA graph (each run's noise from its own graph-safe
    generator state) equal the eager steps, noise states included; and changing run 3's seed leaves the
    captured runs 0-2 bitwise unchanged."""
    specs = [(0, "redge_cov"), (1, "gumbel"), (2, "rloo"), (3, "reinmax")]
    eager, captured = _cuda_group(specs, 20, False), _cuda_group(specs, 20, True)
    for r in range(len(specs)):
        for name, value in eager.run_state_dict(r).items():
            torch.testing.assert_close(captured.run_state_dict(r)[name], value, rtol=1e-4, atol=1e-5)
        assert torch.equal(captured.streams.states[r]["cuda"], eager.streams.states[r]["cuda"])
    other = _cuda_group([*specs[:3], (9, "reinmax")], 20, True)
    for r in range(3):
        for name, value in captured.run_state_dict(r).items():
            assert torch.equal(other.run_state_dict(r)[name], value), (r, name)


BATCHED_REFUSALS = {  # spec args, a phrase of the one-line error: refused by the sweep, before any group starts
    "bf16 precision": (["--trainer.precision=bf16-mixed"], "--batched trains in float32"),
    "an extra callback": (["--trainer.callbacks+=callbacks.EstimatorSchedule"], "does not run the callbacks EstimatorSchedule"),
    "per-seed data": (["--data.init_args.train_subset=100{seed}"], "must share their data"),
    "gradient accumulation": (["--trainer.accumulate_grad_batches=2"], "--trainer.accumulate_grad_batches 2"),
    "gradient clipping": (["--trainer.gradient_clip_val=1.0"], "--trainer.gradient_clip_val 1.0"),
    "two devices with DDP": (["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"],
                             "--batched trains a group on one device"),
}


@needs_mnist
@pytest.mark.parametrize("case", list(BATCHED_REFUSALS))
def test_batched_refuses_what_it_cannot_stack_before_any_group_runs(tmp_path, capsys, case):
    extra, message = BATCHED_REFUSALS[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "steps": 5, "seeds": [0, 1], "settings": {"l48_k2": str(ROOT / "configs/mnist/l48_k2.yaml")},
        "estimators": [{"name": "st"}, {"name": "gumbel"}], "args": ["--data.train_subset=1000", *extra]}))
    capsys.readouterr()
    assert main(["compare", str(spec), "--out", str(tmp_path / "out"), "--batched"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("catvae: error:")]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert not (tmp_path / "out" / "groups").exists() and not (tmp_path / "out" / "runs").exists()
