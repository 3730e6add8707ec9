"""``catvae tune``: Optuna studies of each estimator's hyperparameters, every trial an ordinary run."""

from __future__ import annotations

import csv
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT

from catvae.cli import main

GMM = ROOT / "configs" / "gmm" / "k20.yaml"


def _spec(tmp_path, space: str, trials: int = 3, estimators: str = "[st]") -> str:
    path = tmp_path / "tune.yaml"
    path.write_text(f"steps: 40\nseeds: [0]\nsettings: {{k20: {GMM}}}\nestimators: {estimators}\n"
                    "args: [--data.init_args.n_points=40, --data.init_args.steps_per_epoch=10]\n"
                    f"trials: {trials}\nmetric: val/nelbo_nc\n{space}\n")
    return str(path)


def _journal(out):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))


LR = "space: {all: {lr: {low: 0.001, high: 0.3, log: true}}}"


@pytest.mark.parametrize("space, message", [
    ("space: {all: {lr: {low: 0.1, high: 0.01}}}", "range [0.1, 0.01] is empty"),
    ("space: {all: {lr: {low: 0.0, high: 0.1, log: true}}}", "log: true, so its range must be > 0"),
    ("space: {all: {warmup: {low: 1, high: 2}}}", "unknown parameter 'warmup'"),
    ("space: {st: {tau: {low: 1, high: 1}}}", "is empty"),
    ("space: {gumbel: {tau: {low: 0.1, high: 1}}}", "not estimators of the spec"),
    ("space: {}", "space must map estimator labels"),
    (LR + "\nconfirm_seeds: []", "confirm_seeds must be a non-empty list of integers"),
])
def test_a_bad_search_space_is_one_line_before_anything_runs(tmp_path, capsys, space, message):
    out = tmp_path / "out"
    assert main(["tune", _spec(tmp_path, space), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("catvae: error:") and message in err[0], err
    assert not out.exists()


def test_a_tiny_study_runs_continues_and_its_best_config_trains(tmp_path, capsys):
    """3 trials of ST's lr and τ (GMM, 40 steps); the best point as a config that catvae fit takes; a rerun
    continues the study (no new trial at the same --trials, one more at --trials 4)."""
    spec, out = _spec(tmp_path, "space: {st: {lr: {low: 0.001, high: 0.3, log: true}, tau: {low: 0.5, high: 2.0}}}"), \
        tmp_path / "out"
    assert main(["tune", spec, "--out", str(out), "--progress_every", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("k20/st trial") == 3 and "best" in printed
    assert "all studies [#######.............] 1/3, ETA" in printed and "all studies [####################] 3/3" in printed
    study = optuna.load_study(study_name="k20/st", storage=_journal(out))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 3 and len({tuple(t.params.items()) for t in done}) == 3
    assert all(0.001 <= t.params["lr"] <= 0.3 and 0.5 <= t.params["tau"] <= 2.0 for t in done)
    # trial 0 is the default point (Table 5's GMM lr, ST's τ), run to the end (never pruned): tune.md's reference
    first = study.trials[0]
    assert first.params == {"lr": 0.01, "tau": 1.0} and first.user_attrs["default_point"]
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert sum(bool(t.user_attrs.get("default_point")) for t in study.trials) == 1
    best = yaml.safe_load((out / "best" / "k20" / "st.yaml").read_text())
    assert best["model"]["init_args"]["lr"] == pytest.approx(study.best_params["lr"])
    assert best["model"]["init_args"]["estimator"]["init_args"]["tau"] == pytest.approx(study.best_params["tau"])
    table = (out / "tune.md").read_text()
    assert all((out / f"{name}_k20_st.png").stat().st_size > 1000 for name in ("history", "slice", "importance"))
    assert "| k20 | st |" in table and f"| lr=0.01 tau=1 | {first.value:.4g} |" in table, table
    # every trial is an ordinary run with its parameters recorded
    hparams = yaml.safe_load(next((out / "trials" / "k20" / "st" / "trial0").rglob("hparams.yaml")).read_text())
    assert hparams["lr"] == pytest.approx(study.trials[0].params["lr"])
    assert main(["fit", "--config", str(GMM), "--config", str(out / "best" / "k20" / "st.yaml"),
                 "--data.init_args.n_points=40", "--trainer.max_steps=5", "--runs_dir", str(tmp_path / "runs"),
                 "--trainer.enable_progress_bar=false"]) == 0
    capsys.readouterr()
    assert main(["tune", spec, "--out", str(out), "--progress_every", "0"]) == 0
    assert "k20/st trial" not in capsys.readouterr().out  # nothing left to run
    assert main(["tune", spec, "--out", str(out), "--trials", "4", "--progress_every", "0"]) == 0
    assert capsys.readouterr().out.count("k20/st trial 3:") == 1


def test_confirm_reruns_the_default_and_the_best_point_with_fresh_seeds(tmp_path, capsys):
    """--confirm: one compare of ST at Table 5's lr and at the best trial's, with the spec's confirm_seeds (not the
    search's); confirm.md's gain is the default mean minus the tuned mean of the compare's own results."""
    spec, out = _spec(tmp_path, LR + "\nconfirm_seeds: [7, 8]", trials=2), tmp_path / "out"
    assert main(["tune", spec, "--out", str(out), "--confirm", "--parallel", "2", "--progress_every", "0"]) == 0
    capsys.readouterr()
    best_lr = optuna.load_study(study_name="k20/st", storage=_journal(out)).best_params["lr"]
    with open(out / "confirm_k20" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["estimator"], int(r["seed"])) for r in rows) == [("st", 7), ("st", 8), ("st_tuned", 7),
                                                                      ("st_tuned", 8)]
    for r in rows:  # each run trained at its point
        hparams = yaml.safe_load(next((out / "confirm_k20" / r["run_dir"]).parent.rglob("hparams.yaml")).read_text())
        assert hparams["lr"] == pytest.approx(best_lr if r["estimator"] == "st_tuned" else 0.01)
    mean = {label: statistics.mean(float(r["test_nelbo_nc"]) for r in rows if r["estimator"] == label)
            for label in ("st", "st_tuned")}
    with open(out / "confirm.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["test_nelbo_nc_gain"]) == pytest.approx(mean["st"] - mean["st_tuned"])
    assert float(row["test_nelbo_nc_tuned"]) == pytest.approx(mean["st_tuned"])
    assert "| k20 | st | lr=0.01 |" in (out / "confirm.md").read_text()
    assert (out / "slice_k20_st.png").is_file() and not (out / "importance_k20_st.png").exists()  # one parameter
    # rerunning continues: nothing left to train or retrain, the same table
    versions, table = sorted(map(str, (out / "confirm_k20").rglob("version_*"))), (out / "confirm.csv").read_text()
    assert main(["tune", spec, "--out", str(out), "--confirm", "--progress_every", "0"]) == 0
    assert "k20/st trial" not in capsys.readouterr().out
    assert sorted(map(str, (out / "confirm_k20").rglob("version_*"))) == versions
    assert (out / "confirm.csv").read_text() == table


@pytest.mark.slow
def test_two_workers_on_one_journal_finish_the_study_without_loss_or_duplicates(tmp_path):
    spec, out = _spec(tmp_path, LR, trials=4), tmp_path / "out"
    out.mkdir()
    workers = [subprocess.Popen([sys.executable, "-m", "catvae", "tune", spec, "--out", str(out), "--progress_every",
                                 "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    study = optuna.load_study(study_name="k20/st", storage=_journal(out))
    numbers = [t.number for t in study.trials]
    counted = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(numbers) == len(set(numbers)) and len(counted) in (4, 5), [(t.number, t.state) for t in study.trials]
    assert sum("k20/st trial" in log for log in logs) == 2  # both workers ran trials
    lrs = [t.params["lr"] for t in study.trials]
    assert len(set(lrs)) == len(lrs), lrs  # the workers propose different points (not one seed's same draws)
    # each line is about the worker's own finished trial, never the other worker's running one
    assert not any(": running" in log for log in logs), logs


@pytest.mark.slow
def test_a_trial_stopped_by_sigterm_is_failed_and_the_rerun_completes_the_study(tmp_path):
    spec, out = _spec(tmp_path, LR, trials=2), tmp_path / "out"
    worker = subprocess.Popen([sys.executable, "-m", "catvae", "tune", spec, "--out", str(out), "--steps", "3000",
                               "--progress_every", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    log = out / "trials" / "k20" / "st" / "trial0" / "runs" / "k20" / "st" / "seed0" / "log.txt"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "progress: step" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    text = worker.communicate(timeout=300)[0]
    assert worker.returncode == 143, text
    states = [t.state for t in optuna.load_study(study_name="k20/st", storage=_journal(out)).trials]
    assert states == [optuna.trial.TrialState.FAIL], states
    assert main(["tune", spec, "--out", str(out), "--steps", "40", "--progress_every", "0"]) == 0
    trials = optuna.load_study(study_name="k20/st", storage=_journal(out)).trials
    assert [t.state for t in trials][0] == optuna.trial.TrialState.FAIL
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2


def _postgres_binaries():
    """``(initdb, pg_ctl)`` of an installed PostgreSQL server (on PATH, or Debian's /usr/lib/postgresql/*/bin), or
    a reason to skip."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if not all(found):
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        found = (str(versions[-1]), str(versions[-1].with_name("pg_ctl"))) if versions else found
    if not all(found):
        return None, "no PostgreSQL server installed (Debian: apt install postgresql)"
    try:
        import psycopg  # noqa: F401  (the PostgreSQL driver, psycopg 3: catvae[postgres])
    except ImportError:
        return None, "psycopg not installed (pip install 'catvae[postgres]')"
    return found, ""


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own, started for the test in a temporary folder (as the ``postgres`` user when
    the test runs as root: the server refuses root) on a free local port; its URL; stopped and removed after."""
    binaries, reason = _postgres_binaries()
    if binaries is None:
        pytest.skip(reason)
    initdb, pg_ctl = binaries
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server as")
    folder = Path(tempfile.mkdtemp(prefix="catvae-pg-"))
    data = folder / "data"
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user is not None else {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([initdb, "-D", str(data), "-A", "trust", "-U", "catvae", "--no-sync"], check=True,
                   capture_output=True, **as_user)
    subprocess.run([pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"], check=True,
                   capture_output=True, **as_user)
    try:
        yield f"postgresql+psycopg://catvae@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, **as_user)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    """The "many machines" path: two workers with --storage on a real PostgreSQL server (each its own results
    folder, as on two machines) finish one study of 4 trials, none lost or duplicated; the report reads it back."""
    spec = _spec(tmp_path, LR, trials=4)
    workers = [subprocess.Popen([sys.executable, "-m", "catvae", "tune", spec, "--storage", postgres_url, "--out",
                                 str(tmp_path / f"worker{i}"), "--progress_every", "0"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    study = optuna.load_study(study_name="k20/st", storage=postgres_url)
    numbers = [t.number for t in study.trials]
    counted = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(numbers) == len(set(numbers)) and len(counted) in (4, 5), [(t.number, t.state) for t in study.trials]
    assert sum("k20/st trial" in log for log in logs) == 2  # both workers ran trials
    # A worker reports the trials finished when it stops (the other may still finish a better one); the same
    # command on the complete study runs no trial and rewrites the report from all of them.
    again = subprocess.run([sys.executable, "-m", "catvae", "tune", spec, "--storage", postgres_url, "--out",
                            str(tmp_path / "worker0"), "--progress_every", "0"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and "k20/st trial" not in again.stdout, again.stdout + again.stderr
    best = yaml.safe_load((tmp_path / "worker0" / "best" / "k20" / "st.yaml").read_text())
    assert best["model"]["init_args"]["lr"] == pytest.approx(study.best_params["lr"])
