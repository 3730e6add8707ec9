"""``catvae compare``: a sweep end to end through ``catvae fit``/``test``, its tables and plots, resuming."""

from __future__ import annotations

import csv
import inspect
import json

import pytest
import yaml
from conftest import ROOT, needs_mnist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from catvae import CategoricalVAE
from catvae.benchmarks.gmm import GMMTask
from catvae.cli import main
from catvae.compare import Run, load_spec, write_markdown
from catvae.compare.execute import finished
from catvae.compare.spec import Metric
from estimators.base import ConfigError

SPEC = ROOT / "configs" / "compare"


def test_specs_expand_to_runs():
    runs = load_spec(SPEC / "table3.yaml")
    assert len(runs) == 8 * 3 * 3 and {r.steps for r in runs} == {60000}  # the seven of Table 3 and Gumbel-Rao
    assert {r.setting for r in runs} == {"l48_k2", "l30_k10", "l32_k64"}
    cov = next(r for r in runs if r.label == "redge_cov")  # an estimator config file of the spec
    assert cov.name == "redge_cov" and cov.estimator_args() == ["--config", str(ROOT / "configs/estimators/redge_cov.yaml")]
    quick = load_spec(SPEC / "quick.yaml", quick=True)
    assert len(quick) == 6 and quick[0].steps < 100 and "--data.train_subset=1000" in quick[0].args
    assert quick[0].key() != load_spec(SPEC / "quick.yaml")[0].key()


def test_spec_estimators_by_config_file_or_by_name_with_variants(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("steps: 10\nsettings: [configs/mnist/l48_k2.yaml]\nestimators:\n"
                    f"  - {ROOT / 'configs/polynomial/estimators/redge_max.yaml'}\n"
                    "  - {config: configs/estimators/redge_max.yaml, label: redge_max_vae}\n"
                    "  - {name: redge, init_args: {t_1: 0.3}, label: redge_t0.3}\n")
    runs = load_spec(spec)
    assert [(r.label, r.name) for r in runs] == [("redge_max", "redge_max"), ("redge_max_vae", "redge_max"),
                                                 ("redge_t0.3", "redge")]
    assert runs[2].estimator_args() == ["--model.estimator=redge", "--model.estimator.init_args.t_1=0.3"]
    assert len({r.key() for r in runs}) == 3


def test_bad_spec_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\nsettings: [configs/mnist/l48_k2.yaml]\nestimators: [{name: redge, init_args: {t_1: 2}}]\n")
    assert main(["compare", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("catvae: error: ") and "t_1 must be in" in err[0]


#: the VAE's columns (CategoricalVAE.compare_defaults), as a VAE sweep's runs carry them
VAE_METRICS = tuple(Metric(m["column"], m["tag"], m["header"], m.get("lower", True))
                    for m in CategoricalVAE.compare_defaults["metrics"])


def test_markdown_bolds_the_best_mean_over_seeds(tmp_path):
    runs = [Run("s", [], lab, "st", {}, seed, 10, metrics=VAE_METRICS) for lab in ("a", "b") for seed in (0, 1)]
    res = [{"estimator": r.label, "setting": "s", "seed": r.seed, "train_loss": v, "train_nelbo_exact": v + 1,
            "test_nelbo": v + 2, "test_log_likelihood": -v, "epoch_s": 1.0, "ms_per_step": 10.0}
           for r, v in zip(runs, (100.0, 102.0, 90.0, 91.0))]
    write_markdown(res, runs, tmp_path / "r.md", "t", "cmd")
    text = (tmp_path / "r.md").read_text()
    assert "| b | **90.50 ± 0.71** | **91.50 ± 0.71** | **92.50 ± 0.71** | **-90.50 ± 0.71** |" in text
    assert "| a | 101.00 ± 1.41 |" in text
    # b's seeds spread over a's mean: a tie, no bold, both marked
    res[3]["train_loss"] = 115.0  # b: 90, 115 -> 102.50 ± 17.68 against a: 101.00 ± 1.41
    write_markdown(res, runs, tmp_path / "r.md", "t", "cmd")
    text = (tmp_path / "r.md").read_text()
    assert "| a | 101.00 ± 1.41 ≈ |" in text and "| b | 102.50 ± 17.68 ≈ | **91.50 ± 0.71** |" in text


def test_markdown_lists_the_hyperparameters_the_runs_recorded(tmp_path):
    runs = [Run(s, [], "redge", "redge", {}, 0, 10) for s in ("s1", "s2")] + [Run("s1", [], "st", "st", {"tau": 2.0}, 0, 10)]
    res = [{"estimator": "redge", "setting": "s1", "seed": 0, "params": {"n_steps": 4, "t_1": 1 / 3}},
           {"estimator": "redge", "setting": "s2", "seed": 0, "params": {"n_steps": 20, "t_1": 1 / 19}}]
    write_markdown(res, runs, tmp_path / "r.md", "t", "cmd")
    text = (tmp_path / "r.md").read_text()
    assert "| redge | redge | s1: n_steps=4 t_1=0.3333; s2: n_steps=20 t_1=0.05263 |" in text  # resolved, per setting
    assert "| st | st | tau=2.0 |" in text  # no finished run: the spec's overrides


def test_a_spec_names_its_columns_figures_and_per_seed_arguments(tmp_path, capsys):
    """Any task: the benchmark specs declare their metrics (the VAE's are the default), figures and a note;
    {seed} in args is the run's seed; a GMM sweep runs end to end through fit and test."""
    spec = tmp_path / "gmm.yaml"
    spec.write_text(f"steps: 20\nseeds: [3]\nsettings: {{k20: {ROOT / 'configs/gmm/k20.yaml'}}}\n"
                    f"estimators: [{ROOT / 'configs/estimators/reinmax.yaml'}]\n"
                    "args: ['--data.init_args.data_seed={seed}', --data.init_args.n_points=60,"
                    " --data.init_args.steps_per_epoch=10]\n"
                    "note: a note\nmetrics:\n  - {tag: test/nelbo_nc, header: exact NELBO}\n"
                    "  - {tag: test/accuracy, header: accuracy, lower: false}\n"
                    "  - {tag: train/nelbo_window_std, header: spread, rank: false}\n"
                    "curves: [{tag: val/nelbo_nc, title: exact NELBO}]\n")
    (run,) = load_spec(spec)
    assert [m.column for m in run.metrics] == ["test_nelbo_nc", "test_accuracy", "train_nelbo_window_std"]
    assert "--data.init_args.data_seed=3" in run.cli_args(tmp_path) and run.note == "a note"
    out = tmp_path / "out"
    assert main(["compare", str(spec), "--out", str(out)]) == 0
    assert "exact NELBO" in capsys.readouterr().out  # the progress line shows the spec's first columns
    row = next(csv.DictReader(open(out / "results.csv")))
    assert float(row["test_nelbo_nc"]) > 0 and 0 < float(row["test_accuracy"]) <= 1 and row["train_nelbo_window_std"]
    md = (out / "results.md").read_text()
    assert "a note" in md and "| k20 exact NELBO | k20 accuracy | k20 spread |" in md
    row = next(line for line in md.splitlines() if line.startswith("| reinmax |"))
    assert row.count("**") == 4  # the two ranked columns are bold (one estimator), the spread is not
    assert (out / "curves_val_nelbo_nc.png").is_file()
    for bad, message in [("metrics: [{header: x}]", "metrics must be"), ("curves: [1]", "curves must be")]:
        spec.write_text(f"steps: 2\nsettings: [{ROOT / 'configs/gmm/k20.yaml'}]\nestimators: [st]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_spec(spec)


def test_a_spec_without_columns_takes_its_tasks_compare_defaults(tmp_path):
    """The columns, figures, note and --quick arguments a spec leaves out are its task's (``compare_defaults`` of the
    class its settings train: the VAE's for an MNIST setting), nothing from another benchmark; a spec's own
    ``metrics:`` replace them and drop the task's note."""
    spec = tmp_path / "vae.yaml"
    spec.write_text(f"steps: 20\nsettings: [{ROOT / 'configs/mnist/l48_k2.yaml'}]\nestimators: [st]\n")
    (run,) = load_spec(spec, quick=True, steps=5)
    defaults = CategoricalVAE.compare_defaults
    assert [m.tag for m in run.metrics] == [m["tag"] for m in defaults["metrics"]]
    assert [m.column for m in run.metrics][0] == "train_loss" and run.note == " ".join(defaults["note"].split())
    assert run.args == defaults["quick"]["args"] and [c.tag for c in run.curves] == [c["tag"] for c in defaults["curves"]]
    spec.write_text(spec.read_text() + "metrics: [{tag: test/nelbo, header: NELBO}]\n")
    (run,) = load_spec(spec)
    assert [m.column for m in run.metrics] == ["test_nelbo"] and run.note == "" and run.args == []
    spec.write_text(f"steps: 20\nsettings: [{ROOT / 'configs/gmm/k20.yaml'}]\nestimators: [st]\n")
    (run,) = load_spec(spec, quick=True)
    # a GMM sweep gets the GMM task's own columns and none of the VAE's quick arguments
    assert [m.tag for m in run.metrics] == [m["tag"] for m in GMMTask.compare_defaults["metrics"]] and run.args == []


@needs_mnist
@pytest.mark.slow
def test_quick_sweep_end_to_end_and_resume(quick_sweep, capsys):
    out = quick_sweep  # one seed keeps the sweep near a minute on a 2-core CPU (each run is a fresh `catvae` process)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["estimator"] for r in rows] == ["st", "gumbel", "redge_cov"]
    for r in rows:
        for col in ("train_loss", "train_nelbo_exact", "test_nelbo", "epoch_s"):
            assert 50 < float(r[col]) < 800 if col != "epoch_s" else float(r[col]) > 0, (col, r)
        assert float(r["test_log_likelihood"]) < 0
        assert (out / r["run_dir"] / "checkpoints" / "last.ckpt").is_file()
    assert (out / "runs" / "l48_k2" / "redge_cov" / "seed0" / "redge_cov" / "version_0").is_dir()
    md = (out / "results.md").read_text()
    assert "| redge_cov |" in md and "**" in md and "Runtime" in md
    line = next(x for x in md.splitlines() if x.startswith("| redge_cov | redge_cov |"))
    assert "n_steps=3" in line and "t_1=0.5" in line and "var_floor=0.1" in line  # as the runs recorded them
    assert (out / "curves_train_loss_epoch.png").stat().st_size > 1000
    result = json.loads((out / "runs" / "l48_k2" / "st" / "seed0" / "result.json").read_text())
    assert len(result["curves"]["train/loss_epoch"]) == 3  # 30 steps, 10 per epoch
    # --quick validates on 1 batch of 200 (not the whole 10k test set: issue 27 §2)
    events = EventAccumulator(str(out / result["run_dir"])).Reload()
    assert {e.value for e in events.Scalars("val/n_examples")} == {200.0}
    # the run's log moved while it trained: progress lines to the end of the budget, then its test metrics
    log = (out / "runs" / "l48_k2" / "st" / "seed0" / "log.txt").read_text()
    assert "progress: step 0/30 (0.0%) | epoch 0 | started" in log and "progress: step 30/30 (100.0%)" in log
    assert "progress: tested | test/nelbo " in log

    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.ckpt")}
    capsys.readouterr()
    assert main(["compare", str(SPEC / "quick.yaml"), "--quick", "--seeds", "0", "--out", str(out)]) == 0
    assert "3 already finished, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.ckpt")} == before
    assert list(csv.DictReader(open(out / "results.csv"))) == rows


def test_a_spec_can_start_from_a_base_spec(tmp_path):
    """``base:`` reads another spec's keys and replaces the ones it names (a reduced budget of a full protocol);
    a cycle is a one-line error."""
    full = load_spec(SPEC / "sudoku_table2.yaml")
    reduced = load_spec(SPEC / "sudoku_table2_cpu.yaml")
    assert [r.label for r in reduced] == [r.label for r in full] and reduced[0].metrics == full[0].metrics
    assert reduced[0].args == ["--data.init_args.n_puzzles=400"] and full[0].args == []
    assert reduced[0].key() != full[0].key()
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\nsteps: 1\n")
    with pytest.raises(ConfigError, match="refers back to itself"):
        load_spec(a)
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_spec(tmp_path / "c.yaml")


def test_a_run_is_keyed_by_the_values_its_configs_give_not_their_text(tmp_path):
    """A results folder still matches its spec from a clone or a worktree, after a comment or a layout change,
    and after a value moves from a config file to the class default it equals (configs de-duplicated); a
    changed value, or a changed default, is another run."""
    spec = "steps: 5\nsettings: {{k20: {cfg}}}\nestimators: [st]\n"
    here = load_spec(_write(tmp_path / "a.yaml", spec.format(cfg=ROOT / "configs/gmm/k20.yaml")))[0]
    moved = tmp_path / "elsewhere" / "k20.yaml"
    moved.parent.mkdir()
    text = (ROOT / "configs/gmm/k20.yaml").read_text()
    moved.write_text("# a comment\n" + text.replace("  init_args:", "  init_args:  # edited\n", 1))
    assert load_spec(_write(tmp_path / "b.yaml", spec.format(cfg=moved)))[0].key() == here.key()
    lr = inspect.signature(GMMTask).parameters["lr"].default
    config = yaml.safe_load(text)
    config["model"].setdefault("init_args", {})["lr"] = lr  # as a file that states the default
    moved.write_text(yaml.safe_dump(config))
    stated = load_spec(_write(tmp_path / "c.yaml", spec.format(cfg=moved)))[0].key()
    del config["model"]["init_args"]["lr"]  # as a file that leaves it to the class
    moved.write_text(yaml.safe_dump(config))
    assert load_spec(_write(tmp_path / "d.yaml", spec.format(cfg=moved)))[0].key() == stated
    config["model"]["init_args"]["lr"] = lr * 3
    moved.write_text(yaml.safe_dump(config))
    assert load_spec(_write(tmp_path / "e.yaml", spec.format(cfg=moved)))[0].key() != stated


def test_every_shipped_spec_gives_each_run_its_own_key():
    """Two runs of one spec never share a key (estimators that build alike, e.g. ST and ReinMax at τ = 1, differ by
    their name), nor a folder."""
    for path in sorted(SPEC.glob("*.yaml")):
        runs = load_spec(path)
        assert len({r.key() for r in runs}) == len(runs), path.name
        assert len({r.experiment for r in runs}) == len(runs), path.name


def test_a_result_recorded_under_the_old_text_key_is_kept_and_rekeyed(tmp_path):
    """A finished run whose result.json holds the key an older catvae wrote (the config files' text) is still
    finished while the files are unchanged, and gets today's key; any other key is refused in one line."""
    spec = _write(tmp_path / "s.yaml", f"steps: 5\nsettings: {{k20: {ROOT / 'configs/gmm/k20.yaml'}}}\nestimators: [st]\n")
    run = load_spec(spec)[0]
    out = tmp_path / "out"
    run.folder(out).mkdir(parents=True)
    marker = run.folder(out) / "result.json"
    record = {"key": run.legacy_key(), "run_dir": "x", **{m.column: 1.0 for m in run.metrics},
              "curves": {c.tag: [] for c in run.curves}}
    marker.write_text(json.dumps(record))
    assert finished(run, out)["key"] == run.key()
    assert json.loads(marker.read_text())["key"] == run.key() != run.legacy_key()
    marker.write_text(json.dumps({**record, "key": "0" * 16}))
    with pytest.raises(ConfigError, match="made with other arguments"):
        finished(run, out)


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.slow
@needs_mnist
def test_beyond_the_paper_quick_sweep_trains_gumbel_rao_and_rloo(tmp_path, capsys):
    """Gumbel-Rao and the score-function RLOO train and test like the paper's estimators, here in one batched group
    (compare --batched: Gumbel-Rao's k draws per row and RLOO's own objective inside a stack; the unbatched path of
    both: test_vae, test_tasks)."""
    out = tmp_path / "beyond"
    assert main(["compare", str(SPEC / "beyond.yaml"), "--quick", "--out", str(out), "--batched"]) == 0
    with (out / "results.csv").open() as fh:
        rows = {r["estimator"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"gumbel", "gumbel_rao_k1", "gumbel_rao", "gumbel_rao_k100", "rloo_s2", "rloo", "rloo_s32"}
    assert all(float(r["test_nelbo"]) > 0 for r in rows.values())
    assert "| rloo_s32 | rloo | hard=True n_samples=32 |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_two_shards_then_collect_assemble_one_table(tmp_path, capsys):
    """--shard i/N takes the runs i mod N (disjoint, covering); --collect assembles the shards' folders into one
    table and names the runs still missing (exit 1) until every shard has finished."""
    spec = tmp_path / "gmm.yaml"
    spec.write_text(f"steps: 20\nseeds: [0, 1]\nsettings: {{k20: {ROOT / 'configs/gmm/k20.yaml'}}}\n"
                    "estimators: [st, reinmax]\nargs: ['--data.init_args.n_points=50']\n"
                    "metrics: [{tag: test/nelbo_nc, header: exact NELBO}]\ncurves: []\n")
    shards = [tmp_path / "shard0", tmp_path / "shard1"]
    assert main(["compare", str(spec), "--shard", "0/2", "--out", str(shards[0])]) == 0
    assert "shard 0/2: 2/2 of its runs finished" in capsys.readouterr().out
    assert not (shards[0] / "results.md").exists()
    assert {p.parent.parent.name + "/" + p.parent.name for p in shards[0].glob("runs/k20/*/*/result.json")} == \
        {"st/seed0", "reinmax/seed0"}
    table = tmp_path / "table"
    assert main(["compare", str(spec), "--collect", str(shards[0]), "--out", str(table)]) == 1
    err = capsys.readouterr().err
    assert "k20/st/seed1: not finished" in err and "k20/reinmax/seed1: not finished" in err
    assert main(["compare", str(spec), "--shard", "1/2", "--out", str(shards[1])]) == 0
    capsys.readouterr()
    assert main(["compare", str(spec), "--collect", *map(str, shards), "--out", str(table)]) == 0
    with (table / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["estimator"], r["seed"]) for r in rows) == [("reinmax", "0"), ("reinmax", "1"), ("st", "0"),
                                                                 ("st", "1")]
    assert "4/4 runs finished" in (table / "results.md").read_text()
    assert not (table / "runs").exists()  # nothing trained there
    for bad, fragment in ((["--shard", "2/2"], "0 <= i < N"), (["--shard", "x"], "expected i/N"),
                          (["--shard", "0/2", "--collect"], "one or the other"),
                          (["--collect", str(tmp_path / "nope")], "no such folder")):
        assert main(["compare", str(spec), "--out", str(table), *bad]) == 2
        assert fragment in capsys.readouterr().err


def test_fourteen_curves_are_told_apart_whatever_the_active_style(tmp_path):
    """More labels than colours: (colour, line style) pairs stay distinct, even under a style whose colour cycle
    is shorter than ten (ggplot's has seven; Optuna's figures switch to it); tune's figures leave the style as
    they found it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catvae.compare.report import plot_curves
    from catvae.compare.spec import Curve, Run

    labels = [f"e{k}" for k in range(14)]
    runs = [Run("s", [], label, "st", {}, 0, 10, curves=(Curve("val/x", "x"),)) for label in labels]
    results = [{"setting": "s", "estimator": label, "curves": {"val/x": [[1, k + 1.0], [2, k + 0.5]]}}
               for k, label in enumerate(labels)]
    seen = []
    original = plt.Figure.savefig

    def capture(fig, *args, **kwargs):
        seen.extend((matplotlib.colors.to_hex(line.get_color()), line.get_linestyle())
                    for line in fig.axes[0].get_lines())
        return original(fig, *args, **kwargs)

    with plt.style.context("ggplot"):
        plt.Figure.savefig = capture
        try:
            assert plot_curves(results, runs, tmp_path)
        finally:
            plt.Figure.savefig = original
    assert len(seen) == 14 and len(set(seen)) == 14, seen


def test_tune_figures_give_the_style_back(tmp_path):
    import matplotlib
    import optuna

    from catvae.tune import _figures

    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1.0, log=True) ** 2 + 0.1, n_trials=4)
    before = dict(matplotlib.rcParams)
    _figures(study, tmp_path, "s", "val/x")
    assert dict(matplotlib.rcParams) == before
    assert (tmp_path / "history_s.png").is_file() and (tmp_path / "slice_s.png").is_file()
