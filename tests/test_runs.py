"""Runs a researcher can trust: fault injection for everything that writes.

Signals and exit codes, epoch metrics across resumes at several interruption points, the best checkpoint
across a resume, concurrent runs, corrupt and malicious checkpoints, a table of bad inputs (one line, exit 2,
nothing written), loggers, hyperparameters, non-finite training, and `compare` stopped and killed.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA, ROOT, needs_mnist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import estimators
from catvae.benchmarks import BENCHMARKS
from catvae.cli import main
from catvae.errors import TrainingDiverged
from catvae.runs import checkpoint_score, resolve_checkpoint

CONFIGS = ROOT / "configs"
RUN = Path("mnist_l48_k2") / "redge_cov"


def args(runs: Path, *extra: str) -> list[str]:
    """A small L=48, K=2 ReDGE-Cov run: 1,000 images in batches of 100 (10 steps per epoch)."""
    return [
        "--config", str(CONFIGS / "mnist" / "l48_k2.yaml"), "--config", str(CONFIGS / "estimators" / "redge_cov.yaml"),
        "--runs_dir", str(runs), "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=2", "--data.train_subset=1000", "--data.batch_size=100",
        "--data.eval_batch_size=500", "--model.n_importance_samples=4", "--trainer.log_every_n_steps=5", *extra,
    ]


def version(runs: Path, n: int = 0) -> Path:
    return runs / RUN / f"version_{n}"


def last(runs: Path, n: int = 0) -> Path:
    return version(runs, n) / "checkpoints" / "last.ckpt"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # everything catvae writes opens safely


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run directory, the latest value per step (all event files: fit, resumes, test)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in events.Tags()["scalars"]:
        for e in events.Scalars(tag):
            out.setdefault(tag, {})[e.step] = e.value
    return out


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), **kwargs.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "catvae", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, **kwargs)


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert path.exists(), proc.communicate()[0][-3000:]


# ---------------------------------------------------------------- 1. a stopped run is not a finished run


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_writes_last_ckpt_and_exits_128_plus_the_signal(tmp_path, signum, code, name):
    runs = tmp_path / "runs"
    proc = spawn(["fit", *args(runs, "--trainer.max_epochs=1000", "--checkpoint_every_n_steps=3")])
    wait_for(last(runs), proc)
    proc.send_signal(signum)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == code, out[-2000:]
    assert f"catvae: stopped by {name} at step" in out and "Traceback" not in out
    step = load(last(runs))["global_step"]
    assert step >= 3
    assert main(["fit", *args(runs, f"--trainer.max_steps={step + 2}", "--ckpt_path=last")]) == 0
    assert load(last(runs))["global_step"] == step + 2


# ---------------------------------------------------------------- 2. metrics across a resume

EPOCH_METRICS = ("train/loss_epoch", "train/nelbo_exact", "val/nelbo")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[dict, dict]:
    """Three uninterrupted epochs of 10 steps: the scalars and the final parameters."""
    runs = tmp_path_factory.mktemp("straight")
    assert main(["fit", *args(runs, "--trainer.max_epochs=3", "--checkpoint_every_n_steps=3")]) == 0
    return scalars(version(runs)), load(last(runs))["state_dict"]


INTERRUPTIONS = {  # fault callback and its arguments; last.ckpt is every 3 steps and at every epoch end
    "SIGTERM mid-epoch": ("SignalAt", ["--trainer.callbacks.step=4"], 143),
    "SIGTERM at the last step of an epoch": ("SignalAt", ["--trainer.callbacks.step=10"], 143),
    "Ctrl-C mid-epoch": ("SignalAt", ["--trainer.callbacks.step=13", "--trainer.callbacks.signum=2"], 130),
    "crash right after an epoch-end checkpoint": ("CrashAt", ["--trainer.callbacks.step=11"], None),
    "crash mid-epoch after a step checkpoint": ("CrashAt", ["--trainer.callbacks.step=14"], None),
    "crash at an epoch end before its checkpoint": ("CrashAtEpochEnd", ["--trainer.callbacks.step=20"], None),
}


BUDGETS = {"epochs": ["--trainer.max_epochs=3"], "steps": ["--trainer.max_steps=30", "--trainer.max_epochs=-1"]}
# a step budget makes Lightning treat every resume as a restart within an epoch: the epoch-boundary cases
STEP_BUDGET_CASES = ["SIGTERM mid-epoch", "SIGTERM at the last step of an epoch",
                     "crash right after an epoch-end checkpoint", "crash at an epoch end before its checkpoint"]


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("budget, case", [("epochs", case) for case in INTERRUPTIONS] +
                         [("steps", case) for case in STEP_BUDGET_CASES])
def test_interrupted_and_resumed_runs_log_the_straight_runs_metrics(straight, tmp_path, budget, case):
    fault, fault_args, code = INTERRUPTIONS[case]
    runs = tmp_path / "runs"
    common = args(runs, *BUDGETS[budget], "--checkpoint_every_n_steps=3")
    injected = ["fit", *common, f"--trainer.callbacks+=faults.{fault}", *fault_args]
    if code is None:
        with pytest.raises(RuntimeError, match="injected crash"):
            main(injected)
    else:
        assert main(injected) == code
    assert main(["fit", *common, "--ckpt_path=last"]) == 0
    expected, params = straight
    got = scalars(version(runs))
    for tag in EPOCH_METRICS:
        assert got[tag] == expected[tag], tag  # the same values at the same steps, float for float
    for key, value in load(last(runs))["state_dict"].items():
        assert torch.equal(value, params[key]), key


@needs_mnist
@pytest.mark.parametrize("first", [16, 20])
def test_a_step_budget_extended_at_or_within_an_epoch_end_gives_the_straight_run(straight, tmp_path, first):
    """A run stopped by max_steps (at an epoch end, or within an epoch) and extended with a larger max_steps:
    the straight run's values at the same steps and its parameters."""
    runs = tmp_path / "runs"
    budget = ["--trainer.max_epochs=-1", "--checkpoint_every_n_steps=3"]
    assert main(["fit", *args(runs, *budget, f"--trainer.max_steps={first}")]) == 0
    assert main(["fit", *args(runs, *budget, "--trainer.max_steps=30", "--ckpt_path=last")]) == 0
    got, expected = scalars(version(runs)), straight[0]
    for tag in EPOCH_METRICS:
        assert {s: v for s, v in got[tag].items() if s in expected[tag]} == expected[tag], tag
        assert set(got[tag]) - set(expected[tag]) <= {first - 1}  # the cut epoch's own mean
    for key, value in load(last(runs))["state_dict"].items():
        assert torch.equal(value, straight[1][key]), key


@needs_mnist
def test_a_budget_extended_run_finishes_its_cut_epoch(straight, tmp_path):
    """Stopped by max_steps mid-epoch (step 16 of 30), then resumed for 3 epochs: the straight run's values at
    all of its steps and its parameters; the first part also logged the mean of its cut epoch at step 15."""
    runs = tmp_path / "runs"
    assert main(["fit", *args(runs, "--trainer.max_epochs=3", "--trainer.max_steps=16")]) == 0
    assert load(last(runs))["global_step"] == 16
    assert main(["fit", *args(runs, "--trainer.max_epochs=3", "--ckpt_path=last")]) == 0
    got, expected = scalars(version(runs)), straight[0]
    for tag in EPOCH_METRICS:
        assert {s: v for s, v in got[tag].items() if s in expected[tag]} == expected[tag], tag
        assert set(got[tag]) - set(expected[tag]) <= {15}
    for key, value in load(last(runs))["state_dict"].items():
        assert torch.equal(value, straight[1][key]), key


@needs_mnist
def test_best_checkpoint_survives_a_resume_and_best_is_chosen_by_score(tmp_path):
    runs = tmp_path / "runs"
    assert main(["fit", *args(runs, "--trainer.max_epochs=3", "--trainer.callbacks+=faults.SignalAt",
                              "--trainer.callbacks.step=20")]) == 143
    assert main(["fit", *args(runs, "--trainer.max_epochs=3", "--ckpt_path=last")]) == 0
    best = list((version(runs) / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    val = scalars(version(runs))["val/nelbo"]
    score = checkpoint_score(load(best[0]))
    assert score == pytest.approx(min(val.values()))
    step = int(re.search(r"step=(\d+)", best[0].name).group(1))
    assert val[step - 1] == pytest.approx(score)  # logged at the last step of its epoch
    # a newer file with a worse recorded score does not win
    worse = load(best[0])
    for state in worse["callbacks"].values():
        if state.get("monitor"):
            state["current_score"] = torch.tensor(score + 100.0)
    torch.save(worse, best[0].parent / "best-epoch=9-step=99.ckpt")
    assert resolve_checkpoint(runs / RUN, "best")[0] == best[0]


@needs_mnist
def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["fit", *args(runs, "--trainer.max_epochs=1")]) == 0
    before = snapshot(runs)
    capsys.readouterr()
    assert main(["fit", *args(runs, "--trainer.max_epochs=1", "--ckpt_path=last")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "already reached max_epochs=1" in err[-1] and "--trainer.max_epochs" in err[-1]
    assert snapshot(runs) == before


# ---------------------------------------------------------------- 3. Lightning's machinery


@needs_mnist
@pytest.mark.slow
def test_a_normal_run_its_resume_and_its_test_print_no_warnings(tmp_path):
    runs = tmp_path / "runs"
    for sub, extra in (("fit", ["--trainer.max_epochs=2"]), ("fit", ["--trainer.max_epochs=3", "--ckpt_path=last"]),
                       ("test", ["--ckpt_path=last", "--trainer.limit_test_batches=1"])):
        proc = spawn([sub, *args(runs, *extra)])
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out[-2000:]
        warnings = [line for line in out.splitlines() if re.search(r"warn|\.py:\d+: ", line, re.I)]
        assert not warnings, warnings


@needs_mnist
def test_csv_logger_runs_in_the_run_directory_and_keeps_its_rows_on_resume(tmp_path):
    runs = tmp_path / "runs"
    csv_config = ["--config", str(CONFIGS / "loggers" / "csv.yaml")]
    assert main(["fit", *args(runs, *csv_config, "--trainer.max_steps=3")]) == 0
    assert main(["fit", *args(runs, *csv_config, "--trainer.max_steps=12", "--ckpt_path=last")]) == 0
    rows = (version(runs) / "metrics.csv").read_text().splitlines()
    steps = {int(r.split(",")[rows[0].split(",").index("step")]) for r in rows[1:]}
    assert min(steps) < 3 <= max(steps)  # rows of the first part and of the resumed part
    assert not (tmp_path / "lightning_logs").exists() and not list(version(runs).glob("events*"))


@needs_mnist
def test_hparams_and_tensorboard_hparams_tab_carry_the_estimator(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    runs = tmp_path / "runs"
    assert main(["fit", *args(runs, "--trainer.max_steps=2")]) == 0
    hparams = yaml.safe_load((version(runs) / "hparams.yaml").read_text())
    assert hparams["estimator"] == {"name": "redge_cov", "n_steps": 3, "t_1": 0.5, "var_floor": 0.1, "hard": True,
                                    "fused": True}
    events = EventAccumulator(str(version(runs))).Reload()
    sessions, metrics = {}, []
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            sessions = {k: v.string_value or v.number_value for k, v in data.session_start_info.hparams.items()}
        if data.HasField("experiment"):
            metrics = [m.name.tag for m in data.experiment.metric_infos]
    assert sessions["estimator/name"] == "redge_cov" and sessions["estimator/var_floor"] == pytest.approx(0.1)
    assert {"train/loss_epoch", "val/nelbo", "test/nelbo", "test/log_likelihood"} <= set(metrics)


@needs_mnist
@pytest.mark.parametrize("after", [[], ["--config", str(CONFIGS / "estimators" / "redge_cov.yaml")]])
def test_readme_registry_name_with_init_args_records_the_class(tmp_path, after):
    """The README's example; also after another estimator's config, none of whose arguments carry over."""
    runs = tmp_path / "runs"
    assert main(["fit", "--config", str(CONFIGS / "mnist" / "l30_k10.yaml"), *after, "--model.estimator", "redge_max",
                 "--model.estimator.init_args.t_1", "0.3", *args(runs, "--trainer.max_steps=1")[4:],
                 "--trainer.limit_val_batches=0"]) == 0
    config = yaml.safe_load((runs / "mnist_l30_k10" / "redge_max" / "version_0" / "config.yaml").read_text())
    assert config["model"]["init_args"]["estimator"] == {
        "class_path": "estimators.ReDGEMax", "init_args": {"n_steps": 10, "t_1": 0.3, "hard": True, "fused": True}}


def test_default_callbacks_are_config_that_the_trainer_flags_and_a_config_override(tmp_path, capsys):
    """The progress bar, learning-rate monitor, throughput and HPARAMS callbacks are the default of
    trainer.callbacks: recorded in config.yaml, replaced by a config's list; --trainer.logger false and
    --trainer.enable_progress_bar false drop what Lightning would refuse; the checkpoints stay."""
    runs = tmp_path / "runs"
    poly = ["--config", str(CONFIGS / "polynomial" / "p2.yaml"), "--data.init_args.steps_per_epoch=5",
            "--trainer.max_steps=3", "--trainer.enable_model_summary=false", "--runs_dir", str(runs)]
    folder = runs / "polynomial_p2" / "redge"
    assert main(["fit", *poly]) == 0
    config = yaml.safe_load((folder / "version_0" / "config.yaml").read_text())
    assert [c["class_path"] for c in config["trainer"]["callbacks"]] == [
        "lightning.pytorch.callbacks.TQDMProgressBar", "lightning.pytorch.callbacks.LearningRateMonitor",
        "callbacks.Throughput", "callbacks.HParamsSummary"]
    assert "lr-Adam" in scalars(folder / "version_0")
    (tmp_path / "none.yaml").write_text("trainer:\n  callbacks: []\n")
    assert main(["fit", *poly, "--config", str(tmp_path / "none.yaml")]) == 0
    assert "lr-Adam" not in scalars(folder / "version_1") and (folder / "version_1/checkpoints/last.ckpt").is_file()
    assert main(["fit", *poly, "--trainer.logger=false", "--trainer.enable_progress_bar=false"]) == 0
    assert (folder / "version_2/checkpoints/last.ckpt").is_file()
    assert main(["test", *poly, "--trainer.enable_progress_bar=false", "--ckpt_path=last"]) == 0
    capsys.readouterr()
    assert main(["fit", *poly, "--trainer.callbacks+=callbacks.GradientDiagnostics"]) == 2  # needs a VAE-like task
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GradientDiagnostics needs a task" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == ["version_0", "version_1", "version_2"]


# ---------------------------------------------------------------- 4. concurrent runs


@needs_mnist
@pytest.mark.slow
def test_simultaneous_runs_each_get_their_own_directory(tmp_path):
    runs = tmp_path / "runs"
    procs = [spawn(["fit", *args(runs, "--trainer.max_steps=3", "--trainer.limit_val_batches=1")]) for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[-1500:] for o in outs]
    folders = sorted(p.name for p in (runs / RUN).iterdir())
    assert folders == ["version_0", "version_1", "version_2"]
    for folder in folders:
        assert len(list((runs / RUN / folder).glob("events.out.tfevents*"))) == 1
        assert (runs / RUN / folder / "config.yaml").is_file()
        assert load(runs / RUN / folder / "checkpoints" / "last.ckpt")["global_step"] == 3


# ---------------------------------------------------------------- 5. bad input: one line, exit 2, nothing written


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("trained") / "runs"
    assert main(["fit", *args(runs, "--trainer.max_steps=2")]) == 0
    return runs


def _bad_data(tmp_path: Path) -> Path:
    raw = tmp_path / "bad" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (DATA / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes()[:1000] if f.name.startswith("train-images") else f.read_bytes())
    return tmp_path / "bad"


BAD_FIT = {  # extra arguments, a phrase of the expected one-line message
    "unknown estimator": (["--model.estimator=nope"], "unknown estimator 'nope'"),
    "t_1 out of range": (["--model.estimator.init_args.t_1=1.5"], "t_1 must be in (0, 1]"),
    "t_1 nan": (["--model.estimator.init_args.t_1=nan"], "--model.init_args.estimator.init_args.t_1"),
    "n_steps not an integer": (["--model.estimator.init_args.n_steps=2.5"], "n_steps: expected int, got 2.5"),
    "n_steps too small": (["--model.estimator.init_args.n_steps=1"], "n_steps must be an integer >= 2"),
    "unknown estimator argument": (["--model.estimator.init_args.nosuch=1"], "'nosuch' is not accepted by"),
    "var_floor out of range": (["--model.estimator.init_args.var_floor=0.5"], "var_floor must be in (0, 0.25]"),
    "tau zero": (["--model.estimator=gumbel", "--model.estimator.init_args.tau=0"], "tau must be a finite number > 0"),
    "lr not a number": (["--model.init_args.lr=abc"], "--model.init_args.lr: expected float, got abc"),
    "lr inf": (["--model.init_args.lr=inf"], "--model.init_args.lr"),
    "lr negative": (["--model.init_args.lr=-1"], "lr must be a finite number > 0"),
    "K < 2": (["--model.init_args.n_categories=1"], "n_categories must be an integer >= 2"),
    "K a bool": (["--model.init_args.n_categories=true"], "n_categories: expected int"),
    "L < 1": (["--model.init_args.latent_dim=0"], "latent_dim must be an integer >= 1"),
    "hidden size 0": (["--model.init_args.encoder_hidden=[0]"], "encoder_hidden must be a list of layer sizes"),
    "unknown activation": (["--model.init_args.activation=foo"], "activation must be one of"),
    "no importance samples": (["--model.init_args.n_importance_samples=0"], "n_importance_samples must be"),
    "exact NELBO period < 0": (["--model.init_args.exact_nelbo_every_n_steps=-1"], "exact_nelbo_every_n_steps"),
    "unknown model argument": (["--model.init_args.nosuch=1"], "'nosuch' is not accepted by catvae.CategoricalVAE"),
    "unknown model class": (["--model=catvae.Nope"], "catvae.Nope"),
    "binarize foo": (["--data.init_args.binarize=foo"], "--data.init_args.binarize"),
    "batch size 0": (["--data.init_args.batch_size=0"], "batch_size must be an integer >= 1"),
    "batch size a bool": (["--data.init_args.batch_size=true"], "batch_size: expected int"),
    "eval batch size < 0": (["--data.init_args.eval_batch_size=-1"], "eval_batch_size must be an integer >= 1"),
    "val_size < 0": (["--data.init_args.val_size=-1"], "val_size must be an integer in"),
    "subset below one batch": (["--data.train_subset=100", "--data.batch_size=200"], "smaller than batch_size"),
    "missing data": (["--data.data_dir={tmp}/nowhere", "--data.download=false"], "MNIST files not found"),
    "corrupt data": (["--data.data_dir={bad}", "--data.download=false"], "they are corrupt"),
    "malformed YAML": (["--config={tmp}/bad.yaml"], "Problems parsing config"),
    "YAML with a tab": (["--config={tmp}/tab.yaml"], "Problems parsing config"),
    "missing config file": (["--config={tmp}/nope.yaml"], "File does not exist"),
    "unknown flag": (["--nosuch=1"], "unrecognized arguments: --nosuch=1"),
    "max_epochs -2": (["--trainer.max_epochs=-2"], "`max_epochs` must be a non-negative integer or -1"),
    "max_steps -5": (["--trainer.max_steps=-5"], "`max_steps` must be a non-negative integer or -1"),
    "devices 0": (["--trainer.devices=0"], "devices"),
    "unknown accelerator": (["--trainer.accelerator=foo"], "invalid accelerator name"),
    "unknown precision": (["--trainer.precision=foo"], "--trainer.precision"),
    "limit_val_batches -1": (["--trainer.limit_val_batches=-1"], "limit_val_batches"),
    "seed not a number": (["--seed_everything=abc"], "--seed_everything: expected bool or int"),
    "fast_step with DDP": (["--model.init_args.fast_step=true", "--trainer.strategy=ddp", "--trainer.devices=2",
                            "--trainer.accelerator=cpu"], "fast_step runs on a single device"),
    "optimizer not an optimizer": (["--model.init_args.optimizer=torch.nn.Linear"], "--model.init_args.optimizer"),
    "unknown optimizer argument": (["--model.init_args.optimizer=torch.optim.SGD",
                                    "--model.init_args.optimizer.init_args.nosuch=1"],
                                   "'nosuch' is not accepted by torch.optim.SGD"),
    "scheduler with fast_step": (["--model.init_args.fast_step=true", "--model.init_args.lr_scheduler=torch.optim."
                                  "lr_scheduler.StepLR", "--model.init_args.lr_scheduler.init_args.step_size=1"],
                                 "fast_step replays one captured step"),
    "checkpoint period 0": (["--checkpoint_every_n_steps=0"], "--checkpoint_every_n_steps must be an integer >= 1"),
    "runs_dir under a file": (["--runs_dir={tmp}/file/runs"], "cannot create the run directory"),
    "runs_dir unwritable": (["--runs_dir=/proc/catvae-runs"], "cannot create the run directory"),
    "missing checkpoint": (["--ckpt_path={tmp}/none.ckpt"], "does not exist"),
    "corrupt checkpoint": (["--ckpt_path={tmp}/junk.ckpt"], "is corrupt or not a checkpoint"),
    "truncated checkpoint": (["--ckpt_path={tmp}/truncated.ckpt"], "is corrupt or not a checkpoint"),
    "no last checkpoint": (["--ckpt_path=last", "--experiment_name=fresh"], "no last checkpoint"),
    "no best checkpoint": (["--ckpt_path=best", "--experiment_name=fresh"], "no best checkpoint"),
    "mismatched checkpoint": (["--ckpt_path={good}", "--model.init_args.n_categories=3"],
                              "checkpoint does not match the model"),
    "changed checkpoint": (["--ckpt_path={tmp}/changed/last.ckpt"], "does not match its checksum last.ckpt.sha256"),
    "experiment name leaves runs_dir": (["--experiment_name=../../x"], "--experiment_name '../../x' cannot be a folder"),
    "experiment name absolute": (["--experiment_name={tmp}/x"], "cannot be a folder name"),
    "experiment name empty": (["--experiment_name="], "--experiment_name '' cannot be a folder name"),
    "experiment name with ..": (["--experiment_name=a/../../b"], "cannot be a folder name"),
}
BAD_TOOLS = {
    "bench: unknown device": (["bench", "estimators", "--device", "nosuch"], "is not a device"),
    "bench: zero rounds": (["bench", "step", "--rounds", "0", "--device", "cpu"], "--rounds must be >= 1"),
    "bench: bad shape": (["bench", "estimators", "--shapes", "48by2", "--device", "cpu"], "is not LxK"),
    "bench: unknown estimator": (["bench", "estimators", "--estimators", "nope"], "unknown estimator nope; registered: "),
    "compare: missing spec": (["compare", "{tmp}/nope.yaml"], "does not exist"),
    "compare: zero steps": (["compare", str(CONFIGS / "compare" / "quick.yaml"), "--steps", "0"], "--steps must be"),
    "compare: out under a file": (["compare", str(CONFIGS / "compare" / "quick.yaml"), "--out", "{tmp}/file/out"],
                                  "cannot create the results folder"),
    "compare: zero parallel": (["compare", str(CONFIGS / "compare" / "quick.yaml"), "--parallel", "0"],
                               "--parallel must be >= 1"),
    "compare: parallel not a number": (["compare", str(CONFIGS / "compare" / "quick.yaml"), "--parallel", "x"],
                                       "invalid int value: 'x'"),
    "unknown tool flag": (["bench", "estimators", "--nosuch"], "unrecognized arguments: --nosuch"),
    "compare: seeds not integers": (["compare", str(CONFIGS / "compare" / "quick.yaml"), "--seeds", "a,b"],
                                     "--seeds a,b: expected integers"),
    "analyze: out under a file": (["analyze", "--out", "{tmp}/file/o"], "cannot create the folder {tmp}/file/o of --out"),
    "analyze: probs nan": (["analyze", "--probs", "nan,1", "--out", "{tmp}/o"], "--probs 'nan,1'"),
    "compare: setting leaves --out": (["compare", "{tmp}/setting.yaml", "--out", "{tmp}/out"],
                                      "setting '../../../x' cannot be a folder name"),
    "compare: label leaves --out": (["compare", "{tmp}/label.yaml", "--out", "{tmp}/out"],
                                    "estimator label '../x' cannot be a folder name"),
    "compare: absolute label": (["compare", "{tmp}/abs_label.yaml", "--out", "{tmp}/out"],
                                "estimator label '/tmp/x' cannot be a folder name"),
}


def _escaping_specs(tmp_path: Path) -> None:
    """Compare specs whose setting or label would be a path outside --out."""
    base = {"steps": 2, "seeds": [0], "settings": {"l48_k2": str(CONFIGS / "mnist" / "l48_k2.yaml")},
            "estimators": [{"name": "st"}]}
    for name, change in (("setting", {"settings": {"../../../x": str(CONFIGS / "mnist" / "l48_k2.yaml")}}),
                         ("label", {"estimators": [{"name": "st", "label": "../x"}]}),
                         ("abs_label", {"estimators": [{"name": "st", "label": "/tmp/x"}]})):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**base, **change}))


def _prepare_bad_files(tmp_path: Path, trained: Path) -> dict:
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    (tmp_path / "truncated.ckpt").write_bytes(last(trained).read_bytes()[:4000])
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "tab.yaml").write_text("trainer:\n\tmax_epochs: 2\n")
    (tmp_path / "file").write_text("a file, not a folder")
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("last.ckpt", "last.ckpt.sha256"):
        (changed / name).write_bytes((last(trained).parent / name).read_bytes())
    data = bytearray((changed / "last.ckpt").read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)
    (changed / "last.ckpt").write_bytes(bytes(data))
    return {"tmp": tmp_path, "good": last(trained), "bad": tmp_path / "bad"}


def _one_line_error(capsys, rc: int, message: str) -> None:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("catvae: error:")]
    assert rc == 2, err[-2000:]
    assert len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err and "usage:" not in err


@needs_mnist
@pytest.mark.parametrize("case", list(BAD_FIT))
def test_bad_fit_input_is_one_line_exit_2_and_writes_nothing(case, trained, tmp_path, capsys):
    extra, message = BAD_FIT[case]
    names = _prepare_bad_files(tmp_path, trained)
    if case == "corrupt data":
        _bad_data(tmp_path)
    before, outside = snapshot(trained), sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    rc = main(["fit", *args(trained, "--trainer.max_steps=1"), *[e.format(**names) for e in extra]])
    _one_line_error(capsys, rc, message)
    assert snapshot(trained) == before  # nothing written before is touched, no new file anywhere in the runs
    assert sorted(p.name for p in tmp_path.iterdir()) == outside


def test_fast_step_refuses_float16_mixed_precision():
    """On a GPU, 16-mixed scales the loss outside the captured step (on CPU Lightning runs bf16 instead)."""
    from types import SimpleNamespace

    from catvae import CategoricalVAE
    from estimators.base import ConfigError

    model = CategoricalVAE("gumbel", latent_dim=2, n_categories=3, fast_step=True)
    model.check_trainer(SimpleNamespace(world_size=1, precision="bf16-mixed"))
    with pytest.raises(ConfigError, match="does not support --trainer.precision 16-mixed"):
        model.check_trainer(SimpleNamespace(world_size=1, precision="16-mixed"))


@pytest.mark.parametrize("case", list(BAD_TOOLS))
def test_bad_tool_input_is_one_line_exit_2(case, tmp_path, capsys):
    argv, message = BAD_TOOLS[case]
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "folder.png").mkdir()
    _escaping_specs(tmp_path)
    before = sorted(tmp_path.parent.rglob("*"))
    capsys.readouterr()
    _one_line_error(capsys, main([a.format(tmp=tmp_path) for a in argv]), message.format(tmp=tmp_path))
    assert sorted(tmp_path.parent.rglob("*")) == before  # nothing written, inside or outside --out


@needs_mnist
def test_a_bug_keeps_its_traceback(tmp_path):
    """Only ConfigError (user-fixable) becomes the one-line error; any other exception, a ValueError
    included, propagates (the console shows its traceback)."""
    with pytest.raises(ValueError, match="injected crash after step 1"):
        main(["fit", *args(tmp_path / "runs", "--trainer.max_steps=3", "--trainer.callbacks+=faults.CrashAt",
                           "--trainer.callbacks.step=1", "--trainer.callbacks.error=ValueError")])


@pytest.mark.parametrize("build, message", [
    (lambda: __import__("catvae").CategoricalVAE(lr="abc"), "lr must be a finite number > 0, got 'abc'"),
    (lambda: __import__("catvae").CategoricalVAE(lr=float("inf")), "lr must be a finite number > 0"),
    (lambda: __import__("catvae").CategoricalVAE(encoder_hidden=[0]), "encoder_hidden"),
    (lambda: __import__("catvae").MNISTDataModule(batch_size=True), "batch_size must be an integer >= 1"),
    (lambda: __import__("catvae").GMMTask(init_logit_std=float("inf")), "init_logit_std must be a finite number"),
    (lambda: __import__("catvae").PolynomialTask(p=float("nan")), "p must be a finite number >= 1"),
    (lambda: __import__("catvae").GMMDataModule(sigma_0=0), "sigma_0 must be a finite number > 0"),
    (lambda: __import__("catvae").SudokuDataModule(n_clues=10), "n_clues must be an integer in [17, 81]"),
    (lambda: __import__("catvae").SudokuTask(lr=0), "lr must be a finite number > 0"),
    (lambda: estimators.build("redge", t_1=float("nan")), "t_1 must be in (0, 1]"),
])
def test_python_api_rejects_bad_values_with_config_error(build, message):
    from estimators.base import ConfigError

    with pytest.raises(ConfigError) as err:
        build()
    assert message in str(err.value)


@needs_mnist
def test_corrupt_last_checkpoint_is_the_same_one_line_error(trained, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["fit", *args(runs, "--trainer.max_steps=2")]) == 0
    last(runs).write_bytes(last(runs).read_bytes()[:3000])
    before = snapshot(runs)
    capsys.readouterr()
    for sub in ("fit", "test"):
        _one_line_error(capsys, main([sub, *args(runs, "--ckpt_path=last")]), "does not match its checksum")
    (last(runs).parent / "last.ckpt.sha256").unlink()  # a file without a sidecar: the loader itself finds it corrupt
    before = snapshot(runs)
    for sub in ("fit", "test"):
        _one_line_error(capsys, main([sub, *args(runs, "--ckpt_path=last")]), "is corrupt or not a checkpoint")
    assert snapshot(runs) == before  # no config.fit.yaml, no event file added to the old run


# ---------------------------------------------------------------- issue 17: loading never runs code


class _Marker:
    """Unpickling this runs ``touch <path>``: the shape of a malicious checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@needs_mnist
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("how", ["explicit path", "last"])
def test_a_malicious_checkpoint_is_refused_and_never_runs(trained, tmp_path, capsys, subcommand, how):
    marker = tmp_path / "pwned"
    evil = load(last(trained))
    evil["payload"] = _Marker(marker)
    runs = tmp_path / "runs"
    if how == "last":
        last(runs).parent.mkdir(parents=True)
        torch.save(evil, last(runs))
        ckpt = "last"
    else:
        torch.save(evil, tmp_path / "evil.ckpt")
        ckpt = str(tmp_path / "evil.ckpt")
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main([subcommand, *args(runs, "--trainer.max_steps=3"), "--ckpt_path", ckpt])
    _one_line_error(capsys, rc, "needs unsafe unpickling (posix.system), which can run code: refused")
    assert not marker.exists()
    assert snapshot(tmp_path) == before


@needs_mnist
def test_load_from_checkpoint_rebuilds_the_task_with_the_safe_loader(trained, tmp_path):
    import pickle

    from catvae import CategoricalVAE

    model = CategoricalVAE.load_from_checkpoint(last(trained))  # written by the CLI (LightningCLI's hparams)
    assert model.estimator.name == "redge_cov" and model.estimator.var_floor == 0.1 and model.latent_dim == 48
    evil = load(last(trained))
    evil["payload"] = _Marker(tmp_path / "pwned")
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        CategoricalVAE.load_from_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()


@needs_mnist
def test_trust_checkpoint_opts_in_to_the_full_unpickler(trained, tmp_path, capsys):
    """A checkpoint with an object the safe loader does not allow (here a date) loads only with the opt-in."""
    runs = tmp_path / "runs"
    assert main(["fit", *args(runs, "--trainer.max_steps=2")]) == 0
    old = load(last(runs))
    old["written_on"] = datetime.date(2025, 1, 1)
    torch.save(old, last(runs))
    (last(runs).parent / "last.ckpt.sha256").unlink()  # a file from elsewhere, without catvae's sidecar
    capsys.readouterr()
    _one_line_error(capsys, main(["fit", *args(runs, "--trainer.max_steps=3", "--ckpt_path=last")]),
                    "needs unsafe unpickling (datetime.date)")
    assert main(["fit", *args(runs, "--trainer.max_steps=3", "--ckpt_path=last", "--trust_checkpoint=true")]) == 0
    assert load(last(runs))["global_step"] == 3


# ---------------------------------------------------------------- non-finite values


def test_estimators_refuse_non_finite_logits_on_cpu_and_give_nan_rows_without_validation():
    logits = torch.randn(4, 3, 5)
    logits[1, 2, 0] = float("nan")
    logits[3, 0, 4] = float("inf")
    for name in estimators.available():
        est = estimators.build(name)
        with pytest.raises(estimators.base.NonFiniteLogitsError, match="2 of 60 entries"):
            est(logits)
        est.validate_args = False
        z = est(logits.clone().requires_grad_(est.pathwise))  # a score-function sample carries no gradient
        bad = torch.zeros(4, 3, dtype=torch.bool)
        bad[1, 2] = bad[3, 0] = True
        assert torch.isnan(z[bad]).all(), name  # never a finite one-hot for a row with a non-finite logit
        assert (z[~bad].sum(-1) == 1).all() and ((z[~bad] == 0) | (z[~bad] == 1)).all(), name
    huge = torch.full((4, 3, 5), 3e38)  # finite, but its sum overflows: the exact check lets it through
    assert (estimators.build("st")(huge).sum(-1) == 1).all()
    estimators.CategoricalEstimator.set_default_validate_args(False)
    try:
        assert torch.isnan(estimators.build("st")(logits)[1, 2]).all()
    finally:
        estimators.CategoricalEstimator.set_default_validate_args(None)


def test_a_non_finite_cpu_loss_stops_training():
    from catvae import CategoricalVAE

    model = CategoricalVAE("gumbel", latent_dim=2, n_categories=3)
    model.check_finite_loss(torch.tensor(1.0))
    with pytest.raises(TrainingDiverged, match="became nan at step 0"):
        model.check_finite_loss(torch.tensor(float("nan")))


@needs_mnist
def test_a_diverged_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    runs = tmp_path / "runs"
    rc = main(["fit", *args(runs, "--trainer.max_epochs=2", "--checkpoint_every_n_steps=1",
                            "--trainer.callbacks+=faults.PoisonAt", "--trainer.callbacks.step=5")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("catvae: error:")]
    assert rc == 1 and len(lines) == 1 and "training diverged at step 5" in lines[0], err[-2000:]
    assert f"the last good state is {last(runs)} (step 4): resume it with --ckpt_path last" in lines[0]
    good = load(last(runs))
    assert good["global_step"] == 4  # the state after step 5 was refused
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


# ---------------------------------------------------------------- checkpoints of every kind open safely


def test_every_task_writes_checkpoints_the_safe_loader_opens(tmp_path, monkeypatch):
    monkeypatch.setenv("CATVAE_DATA_DIR", str(tmp_path / "data"))
    for bench in (b for b in BENCHMARKS.values() if not b.needs_data):  # every benchmark (the VAE's: test_vae)
        config, extra = bench.config(bench.smoke_setting), bench.smoke
        runs = tmp_path / bench.name
        assert main(["fit", "--config", str(config),
                     "--config", str(CONFIGS / "estimators" / "redge.yaml"), "--runs_dir", str(runs),
                     "--trainer.max_steps=4", "--data.init_args.steps_per_epoch=3",
                     "--trainer.enable_progress_bar=false", *extra]) == 0
        for path in runs.rglob("*.ckpt"):
            ckpt = load(path)
            assert ckpt["global_step"] in (3, 4) and "catvae_metrics" in ckpt, path


# ---------------------------------------------------------------- compare: stopped, killed, resumed


def _compare_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "steps": 40, "seeds": [0], "settings": {"l48_k2": str(CONFIGS / "mnist" / "l48_k2.yaml")},
        "estimators": [{"name": "st"}],
        "args": ["--data.train_subset=1000", "--data.batch_size=100", "--trainer.limit_val_batches=1",
                 "--trainer.limit_test_batches=1", "--data.eval_batch_size=200", "--model.n_importance_samples=2",
                 "--checkpoint_every_n_steps=2"],
    }))
    return spec


def _compare(spec: Path, out: Path) -> subprocess.Popen:
    return spawn(["compare", str(spec), "--out", str(out)])


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@needs_mnist
@pytest.mark.slow
def test_a_stopped_compare_records_nothing_as_finished_and_resumes(tmp_path):
    spec, out = _compare_spec(tmp_path), tmp_path / "out"
    run = out / "runs" / "l48_k2" / "st" / "seed0"
    proc = _compare(spec, out)
    wait_for(run / "st" / "version_0" / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=180)[0]
    assert proc.returncode == 143, log[-2000:]
    assert not (run / "result.json").exists()
    assert not _processes_mentioning(str(out))
    step = load(run / "st" / "version_0" / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < step < 40
    proc = _compare(spec, out)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-2000:]
    assert "--ckpt_path last" in (run / "log.txt").read_text()
    assert load(run / "st" / "version_0" / "checkpoints" / "last.ckpt")["global_step"] == 40
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",40," in rows[1]


@needs_mnist
@pytest.mark.slow
def test_a_killed_compare_takes_its_runs_with_it(tmp_path):
    spec, out = _compare_spec(tmp_path), tmp_path / "out"
    run = out / "runs" / "l48_k2" / "st" / "seed0"
    proc = _compare(spec, out)
    wait_for(run / "st" / "version_0" / "checkpoints" / "last.ckpt", proc)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 60
    while _processes_mentioning(str(out)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_mentioning(str(out))  # the run got SIGTERM, checkpointed and exited
    assert not (run / "result.json").exists()
    assert load(run / "st" / "version_0" / "checkpoints" / "last.ckpt")["global_step"] > 0


@needs_mnist
@pytest.mark.slow
def test_a_sweep_whose_run_was_stopped_alone_says_so_and_exits_non_zero(tmp_path):
    """SIGTERM to one run's process (not to the sweep): the other run finishes, the sweep exits 1 naming the
    stopped run, and results.md lists it as not finished."""
    spec, out = _compare_spec(tmp_path), tmp_path / "out"
    data = yaml.safe_load(spec.read_text())
    data["estimators"], data["steps"] = [{"name": "st"}, {"name": "gumbel"}], 10
    data["args"] += ["--trainer.callbacks+=faults.SignalAt", "--trainer.callbacks.step=5",
                     "--trainer.callbacks.only=st"]
    spec.write_text(yaml.safe_dump(data))
    proc = _compare(spec, out)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1, log[-2000:]
    assert "l48_k2/st/seed0: stopped by SIGTERM before it finished" in log
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "gumbel" in rows[1]
    assert "Not finished (1)" in (out / "results.md").read_text() and "l48_k2/st/seed0" in (out / "results.md").read_text()


@needs_mnist
@pytest.mark.parametrize("field", ["optimizer", "lr_scheduler"])
@pytest.mark.parametrize("tool", ["sample", "analyze", "bench variance"])
def test_a_checkpoint_naming_a_module_is_refused_before_it_is_imported(trained, tmp_path, monkeypatch, capsys,
                                                                        field, tool):
    """Recorded hyperparameters naming ``evilmod.Opt``: a module on sys.path that writes a marker when imported."""
    marker = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Opt: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    evil = load(last(trained))
    evil["hyper_parameters"][field] = {"class_path": "evilmod.Opt", "init_args": {}}
    torch.save(evil, tmp_path / "evil.ckpt")
    argv = {"sample": ["sample", "--out", str(tmp_path / "s.png")], "analyze": ["analyze", "--out", str(tmp_path / "a")],
            "bench variance": ["bench", "variance"]}[tool]
    capsys.readouterr()
    rc = main([*argv, "--ckpt_path", str(tmp_path / "evil.ckpt")])
    _one_line_error(capsys, rc, f"{field}: evilmod.Opt is not in torch.optim")
    assert not marker.exists() and "evilmod" not in sys.modules
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "a").exists()


@needs_mnist
@pytest.mark.parametrize("extra", [["--experiment_name=../x"], ["--ckpt_path={tmp}/nonexistent.ckpt"],
                                   ["--data.data_dir={tmp}/none", "--data.download=false"],
                                   ["--data.data_dir={tmp}/none", "--data.download=true"]])
def test_an_error_before_training_prints_only_its_line_and_leaves_nothing(tmp_path, extra):
    """No "Seed set to 0", no GPU/TPU lines: the error alone; no run folder and no data folder left behind (the
    download goes through a proxy that refuses it, as without network)."""
    runs = tmp_path / "runs"
    offline = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    proc = spawn(["fit", *args(runs, "--trainer.max_steps=1"), *[e.format(tmp=tmp_path) for e in extra]], env=offline)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2 and len(out.strip().splitlines()) == 1 and out.startswith("catvae: error:"), out
    assert not out.rstrip().endswith(":") and ":)" not in out  # no dangling colon from a download error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_mnist
@pytest.mark.parametrize("out, message", [("{tmp}/file/s.png", "--out's folder {tmp}/file is a file, not a folder"),
                                          ("{tmp}/folder.png", "{tmp}/folder.png is a folder")])
def test_sample_refuses_an_output_it_cannot_write_in_one_line(trained, tmp_path, capsys, out, message):
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "folder.png").mkdir()
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    rc = main(["sample", "--ckpt_path", str(last(trained)), "--out", out.format(tmp=tmp_path)])
    _one_line_error(capsys, rc, message.format(tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == before


@needs_mnist
@pytest.mark.parametrize("flag", [["--trainer.limit_val_batches=1"], ["--trainer.limit_val_batches", "1"]])
def test_a_batch_limit_of_one_is_one_batch_not_all_of_them(tmp_path, flag):
    """jsonargparse reads Lightning's Union[float, int] float first: 1 would become 1.0, "100 % of the batches" (the
    whole 10k test set, as `compare --quick` did). One validation batch of 500 images here."""
    runs = tmp_path / "runs"
    assert main(["fit", *args(runs, "--trainer.max_steps=10"), *flag]) == 0  # one epoch, one validation
    assert set(scalars(version(runs))["val/n_examples"].values()) == {500.0}
