"""Runs written before the benchmarks moved into their packages (``catvae.benchmarks.<name>``) still load, test,
resume and sample: the class paths of their ``config.yaml`` (the public ones, and the old module paths) are
aliases of the moved classes.

``tests/data/runs_before_packages/``: a GMM run and a tiny MNIST VAE run (3 steps each) written by commit 8b557a4,
before the move (and before ``image_shape``: the VAE's checkpoint records ``image_size: 784``), as their run
folders hold them: ``config.yaml`` and ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from conftest import DATA, needs_mnist

from catvae.benchmarks import BENCHMARKS
from catvae.cli import main
from catvae.runs import load_checkpoint

OLD = Path(__file__).parent / "data" / "runs_before_packages"
#: the module paths of the classes before the move (what jsonargparse may write into a config.yaml)
OLD_PATHS = {"catvae.tasks.GMMTask": "catvae.tasks.gmm.GMMTask", "catvae.data.GMMDataModule": "catvae.data.gmm.GMMDataModule",
             "catvae.CategoricalVAE": "catvae.models.vae.CategoricalVAE",
             "catvae.MNISTDataModule": "catvae.data.mnist.MNISTDataModule"}


@pytest.mark.parametrize("old", ["catvae.tasks.gmm.GMMTask", "catvae.data.gmm.GMMDataModule",
                                 "catvae.models.vae.CategoricalVAE", "catvae.data.mnist.MNISTDataModule",
                                 "catvae.models.stacked.StackedVAE", "catvae.tasks.PolynomialTask",
                                 "catvae.data.SudokuDataModule", "catvae.tasks.sudoku.SudokuTask"])
def test_old_class_paths_are_the_moved_classes(old):
    module, _, name = old.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert cls.__module__.startswith("catvae.benchmarks.")
    assert any(cls in (b.task_class, b.data_class) for b in BENCHMARKS.values()) or name == "StackedVAE"


def _config(tmp_path, run: str, old_paths: bool) -> str:
    text = (OLD / run / "config.yaml").read_text()
    if old_paths:
        for new, old in OLD_PATHS.items():
            text = text.replace(f"class_path: {new}\n", f"class_path: {old}\n")
    path = tmp_path / f"{run}.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("old_paths", [False, True], ids=["public paths", "module paths"])
def test_a_gmm_run_written_before_the_move_tests_and_resumes(tmp_path, old_paths):
    config, ckpt = _config(tmp_path, "gmm_k20_n50", old_paths), OLD / "gmm_k20_n50" / "checkpoints" / "last.ckpt"
    assert "catvae.tasks" in open(config).read()
    runs = ["--runs_dir", str(tmp_path / "runs")]
    assert main(["test", "--config", config, *runs, "--ckpt_path", str(ckpt)]) == 0
    assert main(["fit", "--config", config, *runs, "--ckpt_path", str(ckpt), "--trainer.max_steps=5"]) == 0
    resumed = load_checkpoint(next((tmp_path / "runs").rglob("last.ckpt")))
    assert resumed["global_step"] == 5 and torch.isfinite(resumed["state_dict"]["theta"]).all()


@needs_mnist
@pytest.mark.parametrize("old_paths", [False, True], ids=["public paths", "module paths"])
def test_a_vae_run_written_before_the_move_tests_resumes_and_samples(tmp_path, capsys, old_paths):
    config, ckpt = _config(tmp_path, "mnist_l4_k2", old_paths), OLD / "mnist_l4_k2" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt)["hyper_parameters"]["image_size"] == 784  # written before image_shape
    args = ["--config", config, "--runs_dir", str(tmp_path / "runs"), "--data.init_args.data_dir", str(DATA),
            "--ckpt_path", str(ckpt)]
    assert main(["test", *args]) == 0
    assert main(["fit", *args, "--trainer.max_steps=5"]) == 0
    assert load_checkpoint(next((tmp_path / "runs").rglob("last.ckpt")))["global_step"] == 5
    capsys.readouterr()
    assert main(["sample", "--ckpt_path", str(ckpt), "-n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert "4 mnist test images" in capsys.readouterr().out  # no recorded data module: MNIST's, 28x28
