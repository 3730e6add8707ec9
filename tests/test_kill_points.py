"""Nothing lost at any kill point (issue 23 §0, §1, §1c).

A run killed with SIGKILL (no handler, no flush) at each point of a step and of an epoch end, then resumed with
``--ckpt_path last``: every epoch metric of the straight run is present in the TensorBoard events *and* in
``metrics.csv`` with the same value at the same step, and the final parameters are bitwise the straight run's.
The same for a batched group. SIGTERM and Ctrl-C at the same points are in ``test_runs.py`` (INTERRUPTIONS).
Then the table of budgets (``max_steps`` and ``max_epochs`` together, stopped at an epoch end or mid-epoch): a
resumed run stops where the straight run stops. Then checkpoint checksums: a changed byte is one line, and the
previous good checkpoint is offered and resumes.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT, needs_mnist
from test_runs import CONFIGS, args, last, load, scalars, spawn, version

from catvae.cli import main

LOGGERS = ["--config", str(CONFIGS / "loggers" / "tensorboard_and_csv.yaml")]
EPOCH_METRICS = ("train/loss_epoch", "train/nelbo_exact", "val/nelbo")
BUDGETS = {"epochs": ["--trainer.max_epochs=3"], "steps": ["--trainer.max_steps=30", "--trainer.max_epochs=-1"]}


def csv_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every value of ``metrics.csv``, the latest per step."""
    out: dict[str, dict[int, float]] = {}
    with open(folder / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    out.setdefault(key, {})[int(row["step"])] = float(value)
    return out


def _common(runs: Path, budget: str) -> list[str]:
    return args(runs, *LOGGERS, *BUDGETS[budget], "--checkpoint_every_n_steps=3")


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict:
    """Per budget: three uninterrupted epochs of 10 steps, TensorBoard and CSV: (events, csv, parameters)."""
    out = {}
    for budget in BUDGETS:
        runs = tmp_path_factory.mktemp(f"straight_{budget}")
        assert main(["fit", *_common(runs, budget)]) == 0
        out[budget] = scalars(version(runs)), csv_scalars(version(runs)), load(last(runs))["state_dict"]
    return out


KILL_POINTS = {  # KillAt(step, where); last.ckpt every 3 steps and at every epoch end (10 steps per epoch)
    "mid-epoch, after a step": (4, "step"),
    "after a step checkpoint, before its step metrics": (6, "after_step_checkpoint"),
    "at an epoch end, before its checkpoint": (10, "before_epoch_checkpoint"),
    "right after the epoch-end checkpoint": (10, "after_epoch_checkpoint"),
    "right after the second epoch-end checkpoint": (20, "after_epoch_checkpoint"),
    "inside validation": (20, "validation"),
}
CASES = [("epochs", case) for case in KILL_POINTS] + [
    ("steps", "right after the epoch-end checkpoint"), ("steps", "inside validation")]


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("budget, case", CASES)
def test_a_run_killed_at_any_point_and_resumed_logs_and_ends_as_the_straight_run(straight_runs, tmp_path, budget, case):
    step, where = KILL_POINTS[case]
    runs = tmp_path / "runs"
    common = _common(runs, budget)
    proc = spawn(["fit", *common, "--trainer.callbacks+=faults.KillAt", f"--trainer.callbacks.step={step}",
                  f"--trainer.callbacks.where={where}"])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == -signal.SIGKILL, out[-2000:]
    assert load(last(runs))["global_step"] <= step  # no checkpoint got ahead of the kill
    assert main(["fit", *common, "--ckpt_path=last"]) == 0
    events, rows, params = straight_runs[budget]
    got_events, got_rows = scalars(version(runs)), csv_scalars(version(runs))
    for tag in EPOCH_METRICS:
        assert got_events[tag] == events[tag], ("tensorboard", tag)
        assert got_rows[tag] == rows[tag], ("csv", tag)
    final = load(last(runs))
    assert final["global_step"] == 30
    for key, value in final["state_dict"].items():
        assert torch.equal(value, params[key]), key


_GROUP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from faults import KillAt
    from test_batched import _tiny_args
    from catvae.compare import batched as B
    from pathlib import Path
    tmp = Path({tmp!r})
    specs = [(0, "redge_cov"), (1, "gumbel")]
    callbacks = [KillAt({step}, {where!r})] if {step} else []
    B.fit_group([_tiny_args(tmp, s, e, 30) for s, e in specs], tmp / "group", "k", callbacks=callbacks)
""")


def _group(tmp: Path, step: int = 0, where: str = "step") -> subprocess.CompletedProcess:
    code = _GROUP.format(tests=str(ROOT / "tests"), tmp=str(tmp), step=step, where=where)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _group_runs(tmp: Path) -> dict:
    out = {}
    for seed, est in [(0, "redge_cov"), (1, "gumbel")]:
        folder = next((tmp / "runs" / est / f"seed{seed}").glob("*/version_*"))
        out[est] = scalars(folder), load(folder / "checkpoints" / "last.ckpt")
    return out


@needs_mnist
@pytest.mark.slow
def test_a_batched_group_killed_and_resumed_logs_and_ends_as_the_straight_group(tmp_path):
    """Killed right after the group's epoch-end checkpoint. A group's module writes its runs' epoch means before
    the checkpoint (unlike Lightning's own logging), so here the deferred write guards TensorBoard's buffer, and
    the test guards the group's resume through deferred checkpoints (a SIGTERM mid-epoch: test_batched.py)."""
    step, where = 10, "after_epoch_checkpoint"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _group(straight)
    assert done.returncode == 0, done.stderr[-2000:]
    stopped = _group(killed, step, where)
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr[-2000:]
    resumed = _group(killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _group_runs(straight), _group_runs(killed)
    for est in a:
        for tag in ("train/loss_epoch", "val/nelbo"):
            assert b[est][0][tag] == a[est][0][tag], (est, tag)
        assert b[est][1]["global_step"] == 30
        for name, value in a[est][1]["state_dict"].items():
            assert torch.equal(b[est][1]["state_dict"][name], value), (est, name)


# ---------------------------------------------------------------- budgets: max_steps and max_epochs together

STOPS = [  # (max_steps, max_epochs, signal after step): the straight run stops at min(max_steps, 10 * max_epochs)
    (20, 2, 10), (20, 3, 10), (30, 3, 10), (25, 3, 10), (25, 3, 20), (20, 2, 4), (15, 3, 10), (-1, 2, 10), (30, -1, 10),
]


@needs_mnist
@pytest.mark.parametrize("max_steps, max_epochs, stop", STOPS)
def test_a_run_stopped_anywhere_resumes_to_the_straight_runs_stopping_point(tmp_path, max_steps, max_epochs, stop):
    runs = tmp_path / "runs"
    common = args(runs, f"--trainer.max_steps={max_steps}", f"--trainer.max_epochs={max_epochs}",
                  "--checkpoint_every_n_steps=3")
    assert main(["fit", *common, "--trainer.callbacks+=faults.SignalAt", f"--trainer.callbacks.step={stop}"]) == 143
    assert load(last(runs))["global_step"] == stop
    assert main(["fit", *common, "--ckpt_path=last"]) == 0
    limits = [s for s in (max_steps, 10 * max_epochs) if s > 0]
    final = load(last(runs))
    assert final["global_step"] == min(limits)
    assert final["epoch"] == (min(limits) - 1) // 10


# ---------------------------------------------------------------- checksums


@needs_mnist
def test_a_changed_checkpoint_is_one_line_and_the_previous_good_one_resumes(tmp_path, capsys):
    runs = tmp_path / "runs"
    common = args(runs, "--trainer.max_epochs=-1", "--checkpoint_every_n_steps=3")
    assert main(["fit", *common, "--trainer.max_steps=7"]) == 0
    folder = last(runs).parent
    assert subprocess.run(["sha256sum", "-c", "last.ckpt.sha256", "previous.ckpt.sha256"], cwd=folder,
                          capture_output=True).returncode == 0  # the sidecars are sha256sum's format
    previous_step = load(folder / "previous.ckpt")["global_step"]
    assert previous_step == 6
    data = bytearray(last(runs).read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # 4 KiB of zeros inside the tensor data
    last(runs).write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert main(["fit", *common, "--trainer.max_steps=9", "--ckpt_path=last"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("catvae: error: checkpoint") and "does not match its checksum" in err[0]
    assert f"--ckpt_path {folder / 'previous.ckpt'}" in err[0]
    assert {p: p.read_bytes() for p in folder.iterdir()} == before  # nothing changed
    assert main(["fit", *common, "--trainer.max_steps=9", f"--ckpt_path={folder / 'previous.ckpt'}"]) == 0
    assert load(last(runs))["global_step"] == 9
