"""`catvae bench`: the timing tables run end to end and print one row per estimator and shape."""

from __future__ import annotations

import re

import pytest
from conftest import needs_mnist

from catvae.cli import main


def _rows(text: str, names: list[str]) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in names}


def test_bench_estimators_prints_ratios_to_gumbel(capsys):
    assert 0 == main(["bench", "estimators", "--estimators", "redge", "st", "--shapes", "4x3", "--repeats", "1", "--inner", "2",
          "--device", "cpu"])
    rows = _rows(capsys.readouterr().out, ["gumbel", "redge", "st"])
    assert set(rows) == {"gumbel", "redge", "st"}  # gumbel is always timed: it is the baseline
    assert "(1.00x)" in rows["gumbel"]
    assert re.search(r"\d+ us \(\d+\.\d\dx\)", rows["redge"])


@needs_mnist
def test_bench_train_prints_both_loops_per_estimator(capsys):
    assert 0 == main(["bench", "train", "--estimators", "gumbel", "redge", "--settings", "4x3", "--steps", "3", "--warmup", "1",
          "--rounds", "2", "--device", "cpu", "--exact_nelbo_every_n_steps", "0", "--precision", "bf16-mixed"])
    captured = capsys.readouterr()
    assert "catvae fit precision bf16-mixed (reference loop: float32)" in captured.out
    rows = _rows(captured.out, ["gumbel", "redge"])
    assert set(rows) == {"gumbel", "redge"}
    for row in rows.values():
        ref, ours, speedup, vs, serialized = re.findall(r"(\d+\.\d+)[sx]", row)
        assert float(speedup) == pytest.approx(float(ref) / float(ours), abs=0.01)
        assert float(serialized) > 0  # on CPU: the median step of the same pass
    assert " 1.00x" in rows["gumbel"]
    assert captured.err.count("round 2/2") == 2  # progress of each round, on stderr


def test_bench_step_interleaves_estimators_and_prints_paired_ratios(capsys):
    assert 0 == main(["bench", "step", "--estimators", "redge_cov", "--settings", "4x3", "5x2", "--rounds", "3",
                      "--inner", "1", "--warmup", "1", "--device", "cpu", "--exact_nelbo_every_n_steps", "1"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("gumbel ", "redge_cov "))]
    assert [(r[0], r[1]) for r in rows] == [("gumbel", "L=4,K=3"), ("redge_cov", "L=4,K=3"),
                                            ("gumbel", "L=5,K=2"), ("redge_cov", "L=5,K=2")]
    for name, _, ms, epoch, ratio in rows:
        assert float(epoch) == pytest.approx(float(ms) * 0.3, abs=0.01)
        assert ratio.endswith("x") and (name != "gumbel" or ratio == "1.00x")


def test_bench_sweep_prints_group_and_separate_throughput_per_size(capsys):
    assert 0 == main(["bench", "sweep", "--sizes", "1,3", "--setting", "4x3", "--rounds", "2", "--inner", "1",
                      "--warmup", "1", "--device", "cpu"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["1"], ["3"])]
    assert [r[0] for r in rows] == ["1", "3"]
    def printed(value: str, expected: float):  # within the printed precision (half its last digit) or 1 %
        decimals = len(value.partition(".")[2])
        return pytest.approx(expected, rel=0.01, abs=0.5 * 10**-decimals + 1e-9)

    for runs, group_ms, separate_ms, group_rate, separate_rate, speedup, per_run in rows:
        assert float(group_rate) == printed(group_rate, int(runs) * 1000 / float(group_ms))
        assert float(separate_rate) == printed(separate_rate, int(runs) * 1000 / float(separate_ms))
        assert float(speedup[:-1]) == printed(speedup[:-1], float(separate_ms) / float(group_ms))
        assert float(per_run) == printed(per_run, 1000 / float(group_ms))
    assert main(["bench", "sweep", "--sizes", "0,7", "--device", "cpu"]) == 2
    assert "--sizes '0,7'" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["train", "overhead", "step", "sweep"])
def test_bench_rejects_bad_arguments(capsys, tool):
    assert main(["bench", tool, "--rounds", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rounds" in err[0]


@needs_mnist
def test_bench_overhead_times_the_loop_around_a_no_op_step(capsys):
    assert 0 == main(["bench", "overhead", "--setting", "4x3", "--steps", "20", "--warmup", "5", "--rounds", "1",
                      "--device", "cpu"])
    out = capsys.readouterr().out
    median, mean, per_epoch = re.search(r"median step (\d+) us; .* (\d+) us = (\d+\.\d+) s per epoch", out).groups()
    assert 0 < int(median) and float(per_epoch) == pytest.approx(int(mean) * 300e-6, abs=2e-3)
    assert "Epoch" not in out  # the progress bar is timed but not drawn


@needs_mnist
def test_bench_variance_rao_blackwellization_lowers_the_spread(capsys):
    """On a small VAE (L=4, K=3: exact reference gradient), Gumbel-Rao's spread is below Gumbel-ST's on the
    encoder side, where the conditional averaging acts, and RLOO's falls with S; the first row is the base."""
    assert 0 == main(["bench", "variance", "--setting", "4x3", "--batch", "4", "--draws", "150", "--hidden", "32,16",
                      "--estimators", "gumbel", "gumbel_rao:k=20", "rloo:n_samples=2", "rloo:n_samples=16"])
    out = capsys.readouterr().out
    assert "reference gradient: exact" in out
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()
            if line.split() and line.split()[0] in ("gumbel", "gumbel_rao:k=20", "rloo:n_samples=2", "rloo:n_samples=16")}
    assert rows["gumbel"][1] == 1.0  # logits variance ratio of the base
    assert rows["gumbel_rao:k=20"][1] < 0.9 and rows["rloo:n_samples=16"][1] < 0.5 * rows["rloo:n_samples=2"][1]


def test_bench_variance_bad_estimator_is_one_line(capsys):
    assert main(["bench", "variance", "--estimators", "gumbel_rao:k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name:key=value" in err[0]


def test_bench_cost_counts_the_step_flops_exactly(capsys):
    """One Straight-Through run (no second decoder pass, K = 16: no matmul-shaped reductions): the matmul FLOPs of
    a step are the forward 2·B·Σ in·out, and the backward's weight and input gradients, 2·B·Σ in·out each, but for
    the input gradient of the first layer (the images need none)."""
    assert main(["bench", "cost", "--runs", "1", "--settings", "4x16", "--steps", "1000"]) == 0
    row = _rows(capsys.readouterr().out, ["4x16"])["4x16"].split()
    layers = [(784, 512), (512, 256), (256, 64), (64, 256), (256, 512), (512, 784)]
    expected = (6 * 200 * sum(a * b for a, b in layers) - 2 * 200 * 784 * 512) / 1e9
    assert float(row[1]) == pytest.approx(expected, abs=1e-3) and int(row[2]) > 0 and float(row[4]) > 0
    # ST and ReDGE: ReDGE's train/nelbo_exact needs a second, exact draw, decoded for the whole stack (2 runs)
    assert main(["bench", "cost", "--runs", "2", "--settings", "4x16", "--steps", "1000"]) == 0
    decoder = 2 * 2 * 200 * sum(a * b for a, b in layers[3:]) / 1e9
    assert float(_rows(capsys.readouterr().out, ["4x16"])["4x16"].split()[1]) == pytest.approx(2 * expected + decoder,
                                                                                             abs=2e-3)
