"""The GPU recipe (catvae.gpu_check): its preflight and its part runner, on any machine.

The whole recipe runs end to end on CPU with ``python -m catvae.gpu_check --device cpu --quick`` (about 3
minutes here; run by hand before a GPU session, see docs/performance.md)."""

from __future__ import annotations

import argparse
import gzip
import sys

from catvae import gpu_check


def _args(tmp_path, **overrides) -> argparse.Namespace:
    base = {"out": str(tmp_path / "out"), "budget_s": 100.0, "carried": str(tmp_path / "carried"),
            "wheels": str(tmp_path / "wheels"), "data_dir": str(tmp_path / "data"), "device": "cpu",
            "steps": 3, "quick": True}
    return argparse.Namespace(**{**base, **overrides})


def test_preflight_names_the_missing_mnist_file_and_the_fix(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--carried", str(tmp_path / "nothing"),
                           "--data_dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-images-idx3-ubyte.gz is missing" in err[0] and "make gpu-pack" in err[0]
    assert "preflight FAILED" in (tmp_path / "out" / "summary.txt").read_text()


def test_preflight_unpacks_the_carried_mnist(tmp_path):
    raw = tmp_path / "carried" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in gpu_check.MNIST:
        with gzip.open(raw / f"{name}.gz", "wb") as f:
            f.write(name.encode())
    assert gpu_check.preflight(_args(tmp_path)) is None  # jsonargparse and pytest are installed here
    assert (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes() == b"t10k-labels-idx1-ubyte"


def test_a_failing_part_is_recorded_and_the_next_one_runs(tmp_path):
    args = _args(tmp_path, budget_s=30.0)
    (tmp_path / "out").mkdir()
    recipe = gpu_check.Recipe(args)
    assert not recipe.part("broken", 1, [sys.executable, "-c", "import sys; sys.exit('the reason')"])
    assert recipe.part("table", 1, [sys.executable, "-c", "print('| a | 1 |')"])
    assert not recipe.part("too_long", 1000, [sys.executable, "-c", "print('never')"])
    out = tmp_path / "out"
    assert (out / "broken.err").read_text().strip() == "the reason"
    assert (out / "table.txt").read_text() == "| a | 1 |\n"
    assert not (out / "too_long.txt").exists()
    summary = (out / "summary.txt").read_text()
    assert "FAILED (exit 1; see broken.err) broken" in summary and "ok       table" in summary
    assert "SKIPPED too_long" in summary

