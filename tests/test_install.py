"""The installed distribution: a wheel in a fresh virtual environment, from any directory, next to another
package with a top-level ``callbacks`` module (catvae.layout explains why catvae keeps that name)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def _wheel(source: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """catvae's wheel, and the wheel of 'othercb', a package whose top-level ``callbacks`` is its own."""
    tmp = tmp_path_factory.mktemp("wheels")
    other = tmp / "othercb"
    (other / "callbacks").mkdir(parents=True)
    (other / "callbacks" / "__init__.py").write_text("def hook():\n    return 'othercb'\n")
    (other / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = '
                                          '"setuptools.build_meta"\n[project]\nname = "othercb"\nversion = "1.0"\n'
                                          '[tool.setuptools]\npackages = ["callbacks"]\n')
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources it builds
    source = tmp / "source"
    local = {".venv", ".git", "build", "dist", "runs", "data", "results", ".gpu", ".whl"}  # at the top level only
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        n for n in names if (Path(folder) == ROOT and n in local) or n == "__pycache__" or n.endswith(".egg-info")])
    return {"catvae": _wheel(source, tmp / "catvae"), "othercb": _wheel(other, tmp / "other")}


def _venv(path: Path, *wheels: Path) -> Path:
    """A fresh virtual environment with ``wheels`` installed in that order; the dependencies (torch, lightning,
    ...) come from this interpreter's site-packages through a .pth file instead of the network."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (Path(purelib) / "deps.pth").write_text("\n".join(deps) + "\n")
    for wheel in wheels:
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], check=True, capture_output=True)
    return python


def _run(python: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), *argv], cwd=cwd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)


def test_the_wheel_trains_from_any_directory_and_a_collision_is_one_clear_error(wheels, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    # catvae installed after the other package: catvae works (its files won), from a directory without the source
    python = _venv(tmp_path / "after", wheels["othercb"], wheels["catvae"])
    done = _run(python, work, "-m", "catvae", "fit", "--model", "catvae.PolynomialTask", "--model.estimator", "reinmax",
                "--data", "catvae.PolynomialDataModule", "--data.steps_per_epoch", "3", "--trainer.max_steps", "3",
                "--trainer.enable_progress_bar", "false", "--runs_dir", str(work / "runs"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((work / "runs").rglob("last.ckpt"))
    # the configs ship in the wheel: a config by name, the README's configs/... path from elsewhere, a compare spec
    by_name = _run(python, work, "-m", "catvae", "fit", "--config", "polynomial/p2", "--config",
                   "configs/estimators/st.yaml", "--data.steps_per_epoch", "3", "--trainer.max_steps", "3",
                   "--runs_dir", str(work / "named"))
    assert by_name.returncode == 0, by_name.stderr[-2000:]
    (run_dir,) = (work / "named").glob("*/st/version_0")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    spec = _run(python, work, "-m", "catvae", "compare", "polynomial_fig2", "--dry_run", "--out", str(work / "cmp"))
    assert spec.returncode == 0 and spec.stdout.count("catvae fit --config ") >= 5, spec.stderr[-2000:]
    assert str(ROOT) not in spec.stdout and "site-packages/catvae/configs/polynomial/" in spec.stdout
    imported = _run(python, work, "-c", "import catvae, estimators, callbacks; print(estimators.__file__)")
    assert imported.returncode == 0 and str(ROOT) not in imported.stdout  # the installed copy, not the source
    # the other package installed after catvae overwrites catvae's callbacks/__init__.py: one clear ImportError
    python = _venv(tmp_path / "before", wheels["catvae"], wheels["othercb"])
    broken = _run(python, work, "-c", "import catvae")
    assert broken.returncode == 1
    assert "ImportError: the top-level module 'callbacks'" in broken.stderr
    assert "is not catvae's: another installed package provides one" in broken.stderr
