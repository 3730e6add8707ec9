"""The paper's benchmarks, one package each (its task, its data module, its objective, its ``compare_defaults``), and
:data:`BENCHMARKS`, the one list of them that the tools and the tests read.

Add a benchmark: a package ``catvae/benchmarks/<name>/`` exporting its task (an
:class:`~catvae.tasks.BenchmarkTask`, or an :class:`~catvae.EstimatorTask`) and its data module, its configs under
``configs/<configs>/``, and an entry here; the tests that run every benchmark pick it up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..tools import CONFIGS

__all__ = ["BENCHMARKS", "Benchmark"]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its package (``catvae.benchmarks.<name>``) and what the tools and tests need to know of it.

    ``task`` and ``data`` are the names of its task and data module classes in the package; ``configs`` the folder
    of its configs (one file per setting, ``estimators/`` for its own Table 5 values); ``table5`` its row in the
    paper's Table 5; ``smoke``: a setting and arguments that make a run of a few steps take seconds, and
    ``needs_data``: whether such a run reads a dataset from ``CATVAE_DATA_DIR`` (MNIST)."""

    name: str
    title: str
    task: str
    data: str
    configs: str
    table5: str
    smoke_setting: str
    smoke: tuple[str, ...] = ()
    needs_data: bool = False

    @property
    def package(self):
        return importlib.import_module(f"{__name__}.{self.name}")

    @property
    def task_class(self) -> type:
        return getattr(self.package, self.task)

    @property
    def data_class(self) -> type:
        return getattr(self.package, self.data)

    def settings(self) -> list[Path]:
        """Its settings' config files (``configs/<configs>/*.yaml``), by name."""
        return sorted((CONFIGS / self.configs).glob("*.yaml"))

    def config(self, setting: str) -> Path:
        """The config file of one setting."""
        return CONFIGS / self.configs / f"{setting}.yaml"


#: every benchmark, by name
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("polynomial", "Polynomial programming (§4.1)", "PolynomialTask", "PolynomialDataModule", "polynomial",
              "Polynomial Programming", "p2"),
    Benchmark("gmm", "GMM variational inference (§4.2)", "GMMTask", "GMMDataModule", "gmm",
              "GMM Variational Inference", "k20", smoke=("--data.init_args.n_points=50",)),
    Benchmark("sudoku", "Sudoku (§4.3)", "SudokuTask", "SudokuDataModule", "sudoku", "Sudoku", "generated",
              smoke=("--data.init_args.n_puzzles=2",)),
    Benchmark("vae", "Categorical VAE (§4.4)", "CategoricalVAE", "MNISTDataModule", "mnist", "Categorical VAE", "l48_k2",
              smoke=("--data.train_subset=1000", "--data.batch_size=100", "--trainer.limit_val_batches=1",
                     "--trainer.limit_test_batches=1", "--model.n_importance_samples=2"), needs_data=True),
)}
