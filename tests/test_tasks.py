"""The optimization benchmarks of §4.1-4.3: exact objectives, the Sudoku checker, generator and
parser, and short runs through Lightning and the ``catvae`` CLI."""

from __future__ import annotations

import inspect
import itertools
import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import estimators
from catvae.benchmarks import BENCHMARKS
from catvae.data import GMMDataModule, PolynomialDataModule, SudokuDataModule
from catvae.data.sudoku import GROUPS, count_solutions, generate_puzzles, load_puzzles, parse_puzzle, violations
from catvae.tasks import GMMTask, PolynomialTask, SudokuTask
from catvae.tasks.gmm import clustering_accuracy
from estimators.base import ConfigError
from estimators.functional import sample_one_hot

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
PUZZLE = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"


def fit(task, data, steps: int) -> None:
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu")
    trainer.fit(task, datamodule=data)


def polynomial(*args, **kwargs) -> PolynomialTask:
    return PolynomialTask(*args, **kwargs).attach(PolynomialDataModule().problem())


def gmm(estimator, data: dict | None = None, **kwargs) -> tuple[GMMTask, GMMDataModule]:
    module = GMMDataModule(**(data or {}), steps_per_epoch=50)
    return GMMTask(estimator, **kwargs).attach(module.problem()), module


def sudoku(estimator, data: dict | None = None, **kwargs) -> tuple[SudokuTask, SudokuDataModule]:
    module = SudokuDataModule(**(data or {}))
    return SudokuTask(estimator, **kwargs).attach(module.problem()), module


# ------------------------------------------------------------------------------ polynomial (§4.1)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("relaxation", ["none", "linear"])
def test_polynomial_exact_objective_matches_monte_carlo(p, relaxation):
    torch.manual_seed(0)
    task = polynomial("st", p=p, relaxation=relaxation, init_std=1.5)
    probs = torch.softmax(task.theta.detach(), -1)
    n = 20_000
    values = task.f(sample_one_hot(probs.expand(n, *probs.shape)))
    exact = task.objective().item()
    assert abs(values.mean().item() - exact) < 4 * values.std().item() / math.sqrt(n) + 1e-6
    # the estimator's forward value is an exact draw: its Monte-Carlo loss agrees as well
    with torch.no_grad():
        mc = torch.stack([task.sample_loss(2000) for _ in range(5)]).mean().item()
    assert abs(mc - exact) < 0.01 * exact
    # the optimum c^p is attained by all mass on e_1; the worst value (1 - c)^p by all mass on e_2
    sure = torch.tensor([[30.0, -30.0]]).expand(task.length, 2)
    assert task.objective(sure).item() == pytest.approx(task.optimum, rel=1e-6)
    assert task.objective(-sure).item() == pytest.approx((1 - task.c) ** p, rel=1e-6)
    assert task.optimum == pytest.approx(0.45**p)


def test_polynomial_training_reaches_the_optimum_with_reinmax():
    torch.manual_seed(0)
    data = PolynomialDataModule(steps_per_epoch=50)
    task = PolynomialTask(estimators.ReinMax(tau=1.0), p=2.0, samples_per_step=64).attach(data.problem())
    start = task.objective().item()
    assert start == pytest.approx((0.45**2 + 0.55**2) / 2)
    fit(task, data, 150)
    assert task.objective().item() < start - 0.03  # start 0.2525, optimum 0.2025


# ------------------------------------------------------------------------------------- GMM (§4.2)


def test_gmm_objective_matches_direct_enumeration():
    """F in closed form, and its Monte-Carlo forms' expectation, against the sum over all K^N assignments; with
    ``mc_terms`` every sample's value is the integrand of F itself, log q − log p(y|z) − log p_z − log p_m."""
    torch.manual_seed(0)
    data = {"n_points": 4, "n_components": 3, "dim": 2, "sigma_0": 3.0, "sigma_y": 1.5, "data_seed": 3}
    task, _ = gmm("st", data)
    with torch.no_grad():
        task.means.add_(torch.randn_like(task.means))
    mc, _ = gmm("st", data, mc_terms=True)
    mc.load_state_dict(task.state_dict())
    theta, means, y = task.theta.detach(), task.means.detach(), task.y
    q = torch.softmax(theta, -1)
    lik = torch.distributions.MultivariateNormal
    prior = lik(torch.zeros(2), 3.0**2 * torch.eye(2))
    direct = 0.0
    by_sample = 0.0
    by_mc_sample = 0.0
    log_prior = prior.log_prob(means).sum().item()
    for z in itertools.product(range(3), repeat=4):
        weight = math.prod(q[i, k].item() for i, k in enumerate(z))
        log_q = sum(math.log(q[i, k].item()) for i, k in enumerate(z))
        log_py = sum(lik(means[k], 1.5**2 * torch.eye(2)).log_prob(y[i]).item() for i, k in enumerate(z))
        direct += weight * (log_q - log_py - 4 * math.log(1 / 3))
        x = torch.nn.functional.one_hot(torch.tensor(z), 3).float()
        by_sample += weight * task.sample_objective(x).item()
        integrand = log_q - log_py - 4 * math.log(1 / 3) - log_prior
        assert mc.sample_objective(x).item() == pytest.approx(integrand, rel=1e-5)
        by_mc_sample += weight * mc.sample_objective(x).item()
    direct -= log_prior
    assert task.objective().item() == pytest.approx(direct, rel=1e-5)
    assert by_sample == pytest.approx(direct, rel=1e-5)
    assert by_mc_sample == pytest.approx(direct, rel=1e-5) and mc.objective().item() == pytest.approx(direct, rel=1e-5)


def test_gmm_data_and_accuracy():
    (a, _), (b, _) = gmm("st", {"data_seed": 7}), gmm("st", {"data_seed": 7})
    assert torch.equal(a.y, b.y) and a.y.shape == (500, 2) and a.z_true.max() < 20
    assert not torch.equal(a.y, gmm("st", {"data_seed": 8})[0].y)
    z = torch.tensor([0, 0, 1, 1, 2, 2])
    assert clustering_accuracy(torch.tensor([2, 2, 0, 0, 1, 1]), z, 3) == 1.0  # a relabeling
    assert clustering_accuracy(torch.tensor([2, 2, 0, 0, 1, 0]), z, 3) == pytest.approx(5 / 6)
    assert clustering_accuracy(torch.zeros(6, dtype=torch.long), z, 3) == pytest.approx(2 / 6)
    assert 0.5 < a.oracle_accuracy() <= 1.0


def test_gmm_training_decreases_the_nelbo():
    torch.manual_seed(0)
    task, data = gmm(estimators.ReDGECov(n_steps=3), {"n_points": 150, "n_components": 5}, lr=0.05, window=20)
    start, acc0 = task.objective().item(), task.accuracy()
    fit(task, data, 150)
    assert task.objective().item() < start - 0.1 * abs(start)
    assert task.accuracy() > acc0
    mean, std = task.window_stats()
    assert int(task._window_count) == 150 and std > 0 and math.isfinite(mean)


def test_gmm_crossings_find_the_first_epoch_at_the_papers_value(tmp_path, capsys):
    """The crossing table of a compare folder: the first logged step at or below Table 1's value per seed, ``—``
    and the lowest value when never reached, no median then; estimators the paper lacks left out."""
    from catvae.benchmarks.gmm import crossings

    def run(label, name, seed, values):
        folder = tmp_path / "runs" / "k20" / label / f"seed{seed}"
        folder.mkdir(parents=True)
        curve = [[100 * (i + 1) - 1, v] for i, v in enumerate(values)]
        (folder / "result.json").write_text(json.dumps({"setting": "k20", "estimator": label, "name": name,
                                                         "seed": seed, "steps": 300,
                                                         "curves": {crossings.TAG: curve}}))

    paper = crossings.PAPER_TABLE1["reinmax"][0]
    run("reinmax", "reinmax", 0, [paper + 50, paper, paper - 1])
    run("reinmax", "reinmax", 1, [paper + 50, paper + 10, paper - 5])
    run("redge_cov", "redge_cov", 0, [2000.0, 1500.0, 1200.0])
    run("gumbel_rao", "gumbel_rao", 0, [1.0, 1.0, 1.0])
    assert crossings.first_crossing([[99, 3.0], [199, 1.0]], 2.0) == 199
    assert crossings.first_crossing([[99, 3.0]], 2.0) is None
    assert crossings.main([str(tmp_path), "--out", str(tmp_path / "crossings.md")]) == 0
    table = capsys.readouterr().out
    assert table == (tmp_path / "crossings.md").read_text()
    assert "| k20 | reinmax | 1176 | 199 | 299 | 249 |" in table
    assert "| k20 | redge_cov | 1040 | — (1200) |  | — |" in table and "gumbel_rao" not in table
    with pytest.raises(SystemExit):
        crossings.main([str(tmp_path / "absent")])


# ---------------------------------------------------------------------------------- Sudoku (§4.3)


def test_sudoku_checker_accepts_the_solution_and_rejects_every_single_cell_corruption():
    grid = torch.tensor([int(c) for c in SOLUTION])
    assert violations(grid).item() == 0
    corrupted = []
    for cell in range(81):
        for digit in range(1, 10):
            if digit != grid[cell]:
                g = grid.clone()
                g[cell] = digit
                corrupted.append(g)
    v = violations(torch.stack(corrupted))
    assert len(v) == 648 and (v > 0).all()
    assert (v == 6).all()  # one extra digit and one missing digit in its row, column and block

    # the task's "solved" check on the argmax grid (also checks the clues)
    task, _ = sudoku("st", {"n_puzzles": 1, "n_clues": 40})
    puzzle = task.clues[0]
    solution = torch.tensor(count_solutions(puzzle.tolist())[1])
    with torch.no_grad():
        task.theta.copy_(10.0 * torch.nn.functional.one_hot(solution - 1, 9).float()[None])
    assert task.solved().item()
    free = int((puzzle == 0).nonzero()[0])
    with torch.no_grad():
        task.theta[0, free] = torch.nn.functional.one_hot(solution[free] % 9, 9).float() * 20.0
    assert not task.solved().item()


def _count_plain(cells: list[int], limit: int = 2) -> int:
    """An independent, plain backtracking solution counter for the generator test."""
    try:
        i = cells.index(0)
    except ValueError:
        return 1
    used = {cells[j] for g in GROUPS if i in g for j in g}
    total = 0
    for d in range(1, 10):
        if d not in used:
            cells[i] = d
            total += _count_plain(cells, limit - total)
            cells[i] = 0
            if total >= limit:
                break
    return total


def test_generator_puzzles_have_exactly_one_solution():
    puzzles, solutions = generate_puzzles(3, n_clues=45, seed=5)
    assert (puzzles, solutions) == generate_puzzles(3, n_clues=45, seed=5)  # deterministic
    for puzzle, solution in zip(puzzles, solutions):
        assert sum(1 for v in puzzle if v) == 45
        assert all(p in (0, s) for p, s in zip(puzzle, solution))
        assert violations(torch.tensor(solution)).item() == 0
        assert _count_plain(list(puzzle)) == 1
    # harder puzzles (the default 30 clues) checked with the fast solver
    for puzzle, solution in zip(*generate_puzzles(4, n_clues=30, seed=1)):
        assert sum(1 for v in puzzle if v) == 30
        assert count_solutions(puzzle, limit=2) == (1, solution)
    # the counter is not vacuous: an empty grid has many solutions, a contradictory one none
    assert count_solutions([0] * 81, limit=2)[0] == 2
    assert count_solutions([5, 5] + [0] * 79)[0] == 0


def test_generator_mixes_clue_counts_evenly():
    puzzles, solutions = generate_puzzles(6, n_clues=[30, 45, 60], seed=2)
    assert [sum(1 for v in p if v) for p in puzzles] == [30, 45, 60, 30, 45, 60]
    assert all(count_solutions(p, limit=2) == (1, s) for p, s in zip(puzzles, solutions))
    data = SudokuDataModule(n_puzzles=6, n_clues=[30, 45, 60], generator_seed=2)
    assert data.problem().clues.tolist() == puzzles and data.run_name == "sudoku_gen30-60"
    for bad in ([], [30, 10], [30, True], "30"):
        with pytest.raises(ConfigError, match="n_clues must be an integer in"):
            SudokuDataModule(n_clues=bad)


@pytest.mark.parametrize("sharpness, by_sample", [(3.0, 0.0), (30.0, 100.0)])
def test_sudoku_counts_solved_by_the_last_sample_and_by_the_argmax_grid(sharpness, by_sample):
    """The paper counts a puzzle solved when the estimator's last training sample is a valid grid; the
    argmax grid is another count. θ peaked at the solution: the argmax grid is always solved, a sample of a
    mildly peaked θ (p ≈ 0.7 per cell) never is, of a sharp one always; per clue count too."""
    puzzles, solutions = generate_puzzles(4, n_clues=[30, 60], seed=1)
    torch.manual_seed(0)
    task, data = sudoku("st", {"n_puzzles": 4, "n_clues": [30, 60], "generator_seed": 1, "steps_per_epoch": 1},
                        lr=1e-9)
    with torch.no_grad():
        task.theta.copy_(sharpness * torch.nn.functional.one_hot(torch.tensor(solutions) - 1, 9).float())
    trainer = L.Trainer(max_steps=1, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(task, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["val/solved_argmax"] == 100.0 and metrics["val/solved_argmax/30_clues"] == 100.0
    assert metrics["val/solved_sample"] == by_sample
    assert metrics["val/solved_sample/30_clues"] == metrics["val/solved_sample/60_clues"] == by_sample
    # the flags travel in the state dict (a resumed or tested run reports the same count)
    restored = SudokuTask("st")
    restored.load_state_dict(task.state_dict())
    assert torch.equal(restored.last_sample_valid, torch.full((4,), by_sample > 0))


def test_sudoku_exact_objective_matches_monte_carlo():
    torch.manual_seed(0)
    task, _ = sudoku("st", {"n_puzzles": 3, "n_clues": 30}, init_std=1.0)
    q = task.probs().detach()
    n = 20_000
    values = task.penalty(sample_one_hot(q.expand(n, *q.shape)))  # [n, P]
    exact = task.objective()
    tol = 4 * values.std(0) / math.sqrt(n)
    assert ((values.mean(0) - exact).abs() < tol).all()
    # the estimator's samples are clamped at the clues
    x = task.sample(2)
    assert torch.equal(x[:, task.clue_mask], task.clue_one_hot[task.clue_mask].expand(2, -1, -1))


def test_sudoku_training_decreases_the_penalty_for_all_puzzles_at_once():
    torch.manual_seed(0)
    task, data = sudoku(estimators.ReDGECov(n_steps=3), {"n_puzzles": 6, "n_clues": 35, "steps_per_epoch": 50})
    assert task.theta.shape == (6, 81, 9)
    start = task.objective()
    fit(task, data, 150)
    end = task.objective()
    assert end.mean() < 0.8 * start.mean()
    assert (end < start).all()


def test_puzzle_files_text_csv_and_errors(tmp_path, monkeypatch):
    good = tmp_path / "good.txt"
    good.write_text(f"# a comment\n{PUZZLE}\n\n{PUZZLE.replace('0', '.')}\n")
    assert load_puzzles(good) == [parse_puzzle(PUZZLE)] * 2
    csv = tmp_path / "set.csv"
    csv.write_text(f"id,puzzle,solution\n1,{PUZZLE},{SOLUTION}\n2,{PUZZLE},{SOLUTION}\n")
    assert load_puzzles(csv, limit=1) == [parse_puzzle(PUZZLE)]

    bad = {
        "short": (f"{PUZZLE}\n{PUZZLE[:80]}\n", "line 2", "81 characters"),
        "char": (f"{PUZZLE}\n\n{PUZZLE[:10]}x{PUZZLE[11:]}\n", "line 3", "bad character 'x'"),
    }
    row_clash = "5" + PUZZLE[1:8] + "5" + PUZZLE[9:]  # two 5s in row 1
    block_clash = PUZZLE[:10] + "3" + PUZZLE[11:]  # a 3 in row 2 of block 1, which holds a 3 in row 1
    bad["clash"] = (f"{PUZZLE}\n{row_clash}\n", "line 2", "digit 5 appears twice in row 1")
    bad["block"] = (f"{block_clash}\n", "line 1", "digit 3 appears twice in")
    for name, (text, line, message) in bad.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        with pytest.raises(ValueError, match=line) as err:
            load_puzzles(path)
        assert message in str(err.value)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(f"puzzle\n{PUZZLE}\n{PUZZLE[:-1]}\n")
    with pytest.raises(ValueError, match="line 3"):
        load_puzzles(bad_csv)
    with pytest.raises(ValueError, match="line 3"):
        SudokuDataModule(source=str(bad_csv), n_puzzles=None).problem()

    # a relative name is found under $CATVAE_DATA_DIR/sudoku/
    (tmp_path / "data" / "sudoku").mkdir(parents=True)
    (tmp_path / "data" / "sudoku" / "mine.txt").write_text(PUZZLE + "\n")
    monkeypatch.setenv("CATVAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    task, data = sudoku("st", {"source": "mine.txt", "n_puzzles": None})
    assert task.n_puzzles == 1 and data.run_name == "sudoku_mine"
    with pytest.raises(ConfigError, match="nothere.txt"):
        load_puzzles("nothere.txt")


# ---------------------------------------------------------------------------- configs and the CLI

PAPER = ROOT.parent / "shared" / "paper" / "redge.txt"
COLUMNS = ["redge", "redge_max", "redge_cov", "gumbel", "st", "reinmax"]  # Table 5's sampler columns
BEYOND = ("redge_max_cov", "gumbel_rao")  # estimators with config files that Table 5 does not list
ROWS = {b.table5: b.configs for b in BENCHMARKS.values()}  # Table 5's row title: the benchmark's config folder
#: arguments that name a setting (its file says them even where they equal a default: l48_k2 is L = 48, K = 2)
SETTING_KEYS = {"latent_dim", "n_categories", "p", "n_components", "n_puzzles", "n_clues"}


def _paper_table5() -> tuple[dict, dict]:
    """Table 5 read from the paper's text: ``({(benchmark, estimator): {n_steps, t_1, tau}}, {benchmark: lr})``."""
    lines = PAPER.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Table 5:"))
    params, rates, bench = {}, {}, None
    for line in lines[start + 1:start + 14]:
        for title, name in ROWS.items():
            if line.startswith(title):
                bench = name
        if line.startswith("Learning rate"):
            rates[bench] = float(line.split()[2])
        if line.startswith("Sampler params"):
            for column, token in zip(COLUMNS, line.split()[2:], strict=True):
                found = re.match(r"(?:n=(\d+))?,?(?:t1=([\d.]+))?(?:τ=([\d.]+))?", token)
                n, t_1, tau = found.groups()
                params[(bench, column)] = {k: v for k, v in (("n_steps", n and int(n)), ("t_1", t_1 and float(t_1)),
                                                             ("tau", tau and float(tau))) if v is not None}
    return params, rates


def _estimator_config(bench: str, name: str) -> Path:
    """The config a benchmark's run of ``name`` uses: its own file where Table 5 differs, else the VAE column's."""
    own = ROOT / "configs" / bench / "estimators" / f"{name}.yaml"
    return own if own.is_file() else ROOT / "configs" / "estimators" / f"{name}.yaml"


@pytest.mark.skipif(not PAPER.is_file(), reason=f"the paper's text is not at {PAPER}")
@pytest.mark.parametrize("bench", [b.configs for b in BENCHMARKS.values()])
def test_configs_give_the_hyperparameters_of_table5(bench):
    """Every value of Table 5 (read from the paper) is what the configs give, each defined once: the VAE column
    by the estimators' defaults (configs/estimators/ name the classes only), a benchmark's own value in its
    configs/<benchmark>/estimators/ file; where Table 5 gives n but no t₁, the uniform grid of §4, 1/(n−1)."""
    params, rates = _paper_table5()
    assert len(params) == 24 and set(rates) == set(ROWS.values())
    for name in COLUMNS:
        spec = yaml.safe_load(_estimator_config(bench, name).read_text())["model"]["init_args"]["estimator"]
        module, cls = spec["class_path"].rsplit(".", 1)
        est = getattr(estimators, cls)(**(spec.get("init_args") or {}))
        assert est.name == name and module == "estimators"
        paper = params[(bench, name)]
        expected = {**paper, "t_1": paper.get("t_1", 1 / (paper["n_steps"] - 1))} if "n_steps" in paper else paper
        assert {k: est.hparams()[k] for k in expected} == pytest.approx(expected), (bench, name)
    (benchmark,) = [b for b in BENCHMARKS.values() if b.configs == bench]
    # Table 5's learning rate is the task's default, and no setting restates it (nor any other default)
    assert inspect.signature(benchmark.task_class).parameters["lr"].default == rates[bench]
    for path in benchmark.settings():
        config = yaml.safe_load(path.read_text())
        for section in ("model", "data"):
            spec = config.get(section) or {}
            cls = benchmark.task_class if section == "model" else benchmark.data_class
            if spec.get("class_path"):  # a setting (linear.yaml is an add-on to one)
                defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items()}
                restated = {k for k, v in (spec.get("init_args") or {}).items()
                            if k in defaults and v == defaults[k] and k not in SETTING_KEYS}
                assert not restated, (path.stem, section, restated)
    own = {p.stem for p in (ROOT / "configs" / bench / "estimators").glob("*.yaml")}
    for name in own:  # a benchmark's own file exists only where its column differs from the VAE column
        assert name in BEYOND or params[(bench, name)] != params[("mnist", name)], (bench, name)
    # Gumbel-Rao (not in Table 5) runs at the Gumbel-Softmax temperature of the same column
    spec = yaml.safe_load(_estimator_config(bench, "gumbel_rao").read_text())["model"]["init_args"]["estimator"]
    assert estimators.GumbelRao(**(spec.get("init_args") or {})).tau == params[(bench, "gumbel")]["tau"]


def _cli(tmp_path, *args):
    from catvae.cli import main

    return main(["fit", *args, "--runs_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"])


def _theta(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_cli_polynomial_run_decreases_objective_and_resumes_exactly(tmp_path):
    common = ["--config", str(ROOT / "configs/polynomial/p2.yaml"),
              "--config", str(ROOT / "configs/estimators/reinmax.yaml"),
              "--data.init_args.steps_per_epoch", "15", "--model.init_args.samples_per_step", "32"]
    assert _cli(tmp_path, *common, "--trainer.max_steps", "40", "--experiment_name", "full") == 0
    full = tmp_path / "runs/full/reinmax/version_0"
    assert (full / "config.yaml").is_file() and list(full.glob("events.out.tfevents*"))
    state = _theta(full / "checkpoints/last.ckpt")
    task = polynomial("reinmax", p=2.0)
    assert task.objective(state["theta"]).item() < task.objective().item() - 0.005  # from 0.2525

    # 20 steps, then resume from last.ckpt to 40: the same θ as the uninterrupted run
    assert _cli(tmp_path, *common, "--trainer.max_steps", "20", "--experiment_name", "split") == 0
    assert _cli(tmp_path, *common, "--trainer.max_steps", "40", "--experiment_name", "split",
                "--ckpt_path", "last") == 0
    resumed = _theta(tmp_path / "runs/split/reinmax/version_0/checkpoints/last.ckpt")
    assert torch.equal(resumed["theta"], state["theta"])


def test_the_papers_window_statistic_and_checkpoints_written_before_it(tmp_path):
    """train/loss_window_mean is the mean of the last 100 training losses (the paper's §4 statistic),
    train/loss_window_gap its gap to c^p; a checkpoint written before the window existed still resumes."""
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(outputs["loss"]))

    torch.manual_seed(0)
    task = polynomial("reinmax", p=2.0, samples_per_step=16)
    trainer = L.Trainer(max_steps=150, max_epochs=-1, logger=False, enable_checkpointing=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[Record()])
    trainer.fit(task, datamodule=PolynomialDataModule(steps_per_epoch=50))
    mean = sum(seen[-100:]) / 100
    assert float(trainer.callback_metrics["train/loss_window_mean"]) == pytest.approx(mean, rel=1e-6)
    assert float(trainer.callback_metrics["train/loss_window_gap"]) == pytest.approx(mean - 0.45**2, rel=1e-5)

    common = ["--config", str(ROOT / "configs/polynomial/p2.yaml"), "--config", str(ROOT / "configs/estimators/st.yaml"),
              "--data.init_args.steps_per_epoch", "5", "--experiment_name", "old"]
    assert _cli(tmp_path, *common, "--trainer.max_steps", "5") == 0
    path = tmp_path / "runs/old/st/version_0/checkpoints/last.ckpt"
    old = torch.load(path, weights_only=True)
    for name in ("_window", "_window_count"):
        del old["state_dict"][name]
    torch.save(old, path)
    path.with_name("last.ckpt.sha256").unlink()  # as written before the sidecars existed
    assert _cli(tmp_path, *common, "--trainer.max_steps", "10", "--ckpt_path", "last") == 0
    assert torch.load(path, weights_only=True)["state_dict"]["_window_count"] == 5  # counted from the resume


SGD_STEP_LR = ["--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.init_args.lr", "0.1",
               "--model.init_args.optimizer.init_args.momentum", "0.9",
               "--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.StepLR",
               "--model.init_args.lr_scheduler.init_args.step_size", "1",
               "--model.init_args.lr_scheduler.init_args.gamma", "0.5"]


def test_optimizer_and_scheduler_come_from_the_config_and_resume_exactly(tmp_path):
    """LightningCLI's dependency injection: SGD with momentum and a StepLR schedule instead of Adam, recorded
    in config.yaml and the checkpoint (as data: it opens with weights_only=True); a run that crashes
    mid-epoch and resumes ends with the straight run's θ, momentum and learning rate."""
    common = ["--config", str(ROOT / "configs/polynomial/p2.yaml"), "--config", str(ROOT / "configs/estimators/reinmax.yaml"),
              "--data.init_args.steps_per_epoch", "10", "--model.init_args.samples_per_step", "8",
              "--trainer.max_epochs", "3", "--checkpoint_every_n_steps", "3", *SGD_STEP_LR]
    assert _cli(tmp_path, *common, "--experiment_name", "straight") == 0
    with pytest.raises(RuntimeError, match="injected crash"):
        _cli(tmp_path, *common, "--experiment_name", "resumed", "--trainer.callbacks+=faults.CrashAt",
             "--trainer.callbacks.step=14")
    assert _cli(tmp_path, *common, "--experiment_name", "resumed", "--ckpt_path", "last") == 0
    runs = tmp_path / "runs"
    straight, resumed = (torch.load(runs / name / "reinmax/version_0/checkpoints/last.ckpt", weights_only=True)
                         for name in ("straight", "resumed"))
    assert straight["hyper_parameters"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert straight["hyper_parameters"]["lr_scheduler"]["init_args"]["gamma"] == 0.5
    config = yaml.safe_load((runs / "straight/reinmax/version_0/config.yaml").read_text())
    assert config["model"]["init_args"]["optimizer"]["init_args"]["momentum"] == 0.9
    for ckpt in (straight, resumed):
        assert ckpt["global_step"] == 30 and ckpt["lr_schedulers"][0]["_last_lr"] == [0.1 * 0.5**3]
        assert ckpt["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    assert torch.equal(straight["state_dict"]["theta"], resumed["state_dict"]["theta"])
    (a,), (b,) = (ckpt["optimizer_states"][0]["state"].values() for ckpt in (straight, resumed))
    assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    task = PolynomialTask.load_from_checkpoint(runs / "straight/reinmax/version_0/checkpoints/last.ckpt")
    assert isinstance(task.build_optimizer(), torch.optim.SGD)  # rebuilt from the recorded class and arguments


def test_optimizer_arguments_from_python_are_recorded_as_data_and_checked():
    import functools

    task = PolynomialTask("reinmax", optimizer=functools.partial(torch.optim.SGD, lr=0.3, momentum=0.5),
                          lr_scheduler=functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.9))
    assert task.hparams.optimizer == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.3, "momentum": 0.5}}
    assert task.hparams.lr_scheduler["class_path"].endswith("ExponentialLR")
    task.attach(PolynomialDataModule(length=4).problem())
    config = task.configure_optimizers()
    assert config["optimizer"].defaults["lr"] == 0.3 and config["lr_scheduler"]["scheduler"].gamma == 0.9
    assert isinstance(PolynomialTask("reinmax").attach(PolynomialDataModule(length=4).problem())
                      .configure_optimizers(), torch.optim.Adam)  # the default: Adam(lr)
    # a recorded class path names an optimizer or a scheduler, never other code
    for spec, message in [({"class_path": "os.system"}, "os.system is not in torch.optim"),
                          ({"class_path": "nope.Opt"}, "nope.Opt is not in torch.optim"),
                          ({"class_path": "torch.optim.Nope"}, "no class"),
                          ({"class_path": "torch.optim.lr_scheduler.StepLR"}, "is not an optimizer"),
                          ("torch.optim.SGD", "must be a callable")]:
        with pytest.raises(ConfigError, match=message):
            PolynomialTask("reinmax", optimizer=spec)
    with pytest.raises(ConfigError, match="torch.optim.SGD is not a learning-rate scheduler"):
        PolynomialTask("reinmax", lr_scheduler={"class_path": "torch.optim.SGD"})


@pytest.mark.parametrize("config, extra", [
    ("gmm/k20.yaml", ["--data.init_args.n_points", "100"]),
    ("sudoku/generated.yaml", ["--data.init_args.n_puzzles", "4"]),
    ("sudoku/easy50.yaml", ["--data.init_args.n_puzzles", "3"]),
])
def test_cli_runs_the_other_benchmarks(tmp_path, monkeypatch, config, extra):
    monkeypatch.setenv("CATVAE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data" / "sudoku").mkdir(parents=True)
    (tmp_path / "data" / "sudoku" / "easy50.txt").write_text((PUZZLE + "\n") * 5)
    rc = _cli(tmp_path, "--config", str(ROOT / "configs" / config),
              "--config", str(ROOT / "configs/estimators/redge_cov.yaml"),
              "--trainer.max_steps", "10", "--data.init_args.steps_per_epoch", "5", *extra)
    assert rc == 0
    ckpts = list((tmp_path / "runs").glob("*/redge_cov/version_0/checkpoints/best*.ckpt"))
    assert len(ckpts) == 1  # the task's monitor (a validation metric) selected a best checkpoint


def test_a_task_takes_its_problem_from_the_data_module(tmp_path):
    """The same task on another instance by changing only the data module; a checkpoint rebuilds θ with its
    own size (load_from_checkpoint, no data module) and refuses data of another size."""
    assert _cli(tmp_path, "--config", str(ROOT / "configs/gmm/k20.yaml"), "--config",
                str(ROOT / "configs/estimators/st.yaml"), "--trainer.max_steps", "3",
                "--data.init_args.n_points", "40", "--data.init_args.n_components", "4") == 0
    ckpt = next((tmp_path / "runs").glob("gmm_k4_n40/st/version_0/checkpoints/last.ckpt"))
    task = GMMTask.load_from_checkpoint(ckpt)
    assert task.theta.shape == (40, 4) and task.means.shape == (4, 2)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert trainer.validate(task, datamodule=GMMDataModule(n_points=40, n_components=4, data_seed=5))[0]["val/nelbo"]
    with pytest.raises(ConfigError, match="the checkpoint's theta has shape"):
        trainer.validate(GMMTask.load_from_checkpoint(ckpt), datamodule=GMMDataModule(n_points=41, n_components=4))
    with pytest.raises(ConfigError, match="GMMTask solves a GMMProblem, got PolynomialProblem"):
        GMMTask("st").attach(PolynomialDataModule().problem())


@pytest.mark.parametrize("config, extra", [
    ("polynomial/p2.yaml", []),
    ("gmm/k20.yaml", ["--data.init_args.n_points", "50"]),
    ("sudoku/generated.yaml", ["--data.init_args.n_puzzles", "4"]),
])
def test_every_task_trains_with_the_score_function_estimator(tmp_path, config, extra):
    """RLOO has no pathwise gradient: a task reaches it only through estimator.surrogate(logits, f), so this
    fails for a task that calls the estimator directly (RLOO refuses) or feeds it a wrongly shaped f."""
    assert _cli(tmp_path, "--config", str(ROOT / "configs" / config), "--config", str(ROOT / "configs/estimators/rloo.yaml"),
                "--trainer.max_steps", "4", "--data.init_args.steps_per_epoch", "2", "--experiment_name", "rloo",
                *extra) == 0
    ckpt = torch.load(tmp_path / "runs/rloo/rloo/version_0/checkpoints/last.ckpt", weights_only=True)
    theta = ckpt["state_dict"]["theta"]
    assert ckpt["global_step"] == 4 and torch.isfinite(theta).all() and theta.abs().sum() > 0
