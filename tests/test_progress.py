"""Progress of long work (issue 27 §1): a run's progress lines, ``catvae fit``'s bar off a terminal, a sweep's live
lines from its runs' and groups' ``log.txt``."""

from __future__ import annotations

import re
import sys

import pytest
from conftest import ROOT, needs_mnist

from callbacks import ProgressLines
from callbacks.progress import PREFIX, format_duration
from catvae.cli import main
from catvae.compare.watch import Watch, latest_line

POLY = ["--config", str(ROOT / "configs" / "polynomial" / "p2.yaml"), "--data.init_args.steps_per_epoch=5",
        "--trainer.enable_model_summary=false"]
STEP = re.compile(r"^progress: step (\d+)/(\d+) \((\d+\.\d)%\) \| epoch (\d+)")


def progress_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(PREFIX)]


def test_format_duration():
    assert [format_duration(s) for s in (9.4, 252, 3 * 3600 + 5 * 60 + 59, float("inf"), None)] == \
        ["9s", "4m12s", "3h05m", "?", "?"]


def test_a_fit_off_a_terminal_prints_progress_lines_with_rate_eta_and_metrics(tmp_path, capsys):
    """stderr is not a terminal under pytest: the default TQDM bar becomes ProgressLines; with a 0 s interval a
    line per step, steps counting up to the budget, the share, the rate and the ETA, the progress-bar metrics; a
    started line and a trained line; a resumed run says so and counts on from its checkpoint's step."""
    runs = str(tmp_path / "runs")
    every = ["--trainer.callbacks+=callbacks.ProgressLines", "--trainer.callbacks.every_s=0"]
    assert main(["fit", *POLY, "--runs_dir", runs, "--trainer.max_steps=7", *every]) == 0
    lines = progress_lines(capsys.readouterr().err)
    assert lines[0].endswith("| started") and "trained in" in lines[-1]
    steps = [int(STEP.match(ln).group(1)) for ln in lines]
    assert steps == [0, *range(1, 8), 7]  # started, one per step, trained
    assert all(STEP.match(ln).group(2) == "7" for ln in lines)
    assert "ETA" in lines[3] and "steps/s" in lines[3] and "train/loss_epoch" in lines[-1] and "val/objective" in lines[-1]
    assert STEP.match(lines[-1]).group(3) == "100.0"
    assert main(["fit", *POLY, "--runs_dir", runs, "--trainer.max_steps=9", "--ckpt_path=last", *every]) == 0
    lines = progress_lines(capsys.readouterr().err)
    assert lines[0].startswith("progress: step 7/9") and lines[0].endswith("resumed")
    assert main(["test", *POLY, "--runs_dir", runs, "--ckpt_path=last"]) == 0
    assert progress_lines(capsys.readouterr().err)[-1].startswith("progress: tested | test/objective ")


def test_the_default_bar_stays_a_tqdm_bar_on_a_terminal(tmp_path, monkeypatch):
    from conftest import RecordTrainer
    from lightning.pytorch.callbacks import TQDMProgressBar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["fit", *POLY, "--runs_dir", str(tmp_path / "runs"), "--trainer.max_steps=2",
                 "--trainer.callbacks+=conftest.RecordTrainer"]) == 0
    assert isinstance(RecordTrainer.last.progress_bar_callback, TQDMProgressBar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert main(["fit", *POLY, "--runs_dir", str(tmp_path / "runs"), "--trainer.max_steps=2",
                 "--trainer.callbacks+=conftest.RecordTrainer"]) == 0
    assert type(RecordTrainer.last.progress_bar_callback) is ProgressLines


def test_progress_lines_interval_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.setenv("CATVAE_PROGRESS_EVERY", "2.5")
    assert ProgressLines().every_s == 2.5 and ProgressLines(0).every_s == 0
    with pytest.raises(ValueError, match="every_s"):
        ProgressLines(-1)


def test_watch_shows_the_newest_line_of_each_log_once(tmp_path):
    import io

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("progress: step 1/9 | old, before the watch\n")
    stream = io.StringIO()
    watch = Watch(0, stream)
    watch.add("run a", a)
    watch.add("run b", b)  # no log yet
    assert watch.poll() == []
    with open(a, "a") as f:
        f.write("Seed set to 0\nprogress: step 2/9 | x\nsome warning\nprogress: step 3/9 | y\n")
    assert watch.poll() == ["  run a: step 3/9 | y"] and watch.poll() == []
    b.write_text("progress: step 5/5 | trained in 1s\n")
    watch.remove("run a")
    assert watch.poll() == ["  run b: step 5/5 | trained in 1s"]
    assert stream.getvalue().splitlines() == ["  run a: step 3/9 | y", "  run b: step 5/5 | trained in 1s"]
    assert latest_line(tmp_path / "missing.txt") is None


@needs_mnist
@pytest.mark.slow
def test_a_batched_group_logs_progress_while_it_trains_and_the_sweep_shows_it(tmp_path, capsys):
    """A group of two small runs (120 steps) with a 0.05 s interval: its log.txt holds progress lines at steps
    before the end (written while it trained; CI saw 138 steps/s, so 40 steps at 0.2 s gave only one), with the
    group's loss range; the sweep printed them as they came, under the group's name."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"""steps: 120
seeds: [0]
settings: {{tiny: {ROOT / 'configs/mnist/l48_k2.yaml'}}}
estimators: [{{name: st}}, {{name: gumbel}}]
args: ["--model.init_args.encoder_hidden=[64]", "--model.init_args.decoder_hidden=[64]", --data.train_subset=1000,
       --data.batch_size=100, --data.eval_batch_size=500, --trainer.limit_val_batches=1,
       --trainer.limit_test_batches=1, --model.n_importance_samples=2]
""")
    out = tmp_path / "out"
    assert main(["compare", str(spec), "--out", str(out), "--batched", "--progress_every", "0.05"]) == 0
    log = next((out / "groups" / "tiny").glob("*/log.txt")).read_text()
    steps = [int(m.group(1)) for m in map(STEP.match, progress_lines(log)) if m]
    assert steps[0] == 0 and steps[-1] == 120 and len([s for s in steps if 0 < s < 120]) >= 2
    assert steps == sorted(steps)
    assert "train/loss_epoch_min" in progress_lines(log)[-2]
    printed = capsys.readouterr()
    shown = [ln for ln in printed.out.splitlines() if ln.startswith("  group 1/1 (2 runs of tiny): step")]
    assert len(shown) >= 2
    assert "Seed set" not in printed.out + printed.err  # the templates sized in the sweep's process print nothing
