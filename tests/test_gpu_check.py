"""The GPU recipe (catvae.gpu_check) on any machine: its preflight and offline install, its part runner, its
deadline, and what it leaves in --out (what a device call brings back: at most 8 files, 16 MiB each, 2 folders
down, plain names). The table mode end to end: tests/test_batched.py (the batched quick sweep)."""

from __future__ import annotations

import argparse
import gzip
import os
import re
import site
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import pytest
from conftest import DATA, ROOT, needs_mnist

from catvae import gpu_check


def _args(tmp_path, **overrides) -> argparse.Namespace:
    base = {"out": str(tmp_path / "out"), "work": str(tmp_path / "work"), "deadline_s": 100.0,
            "carried": str(tmp_path / "carried"), "wheels": str(tmp_path / "wheels"), "site": str(tmp_path / "site"),
            "data_dir": str(tmp_path / "data"), "device": "cpu", "steps": 3, "quick": True}
    return argparse.Namespace(**{**base, **overrides})


def test_the_recipes_estimators_are_the_gpu_table3_specs():
    """gpu_check keeps a literal list (it imports the standard library only); it must be table3_gpu.yaml's."""
    from catvae.bench import table3_estimators

    assert gpu_check.ESTIMATORS == table3_estimators()


def test_preflight_names_the_missing_mnist_file_and_the_fix(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--carried",
                           str(tmp_path / "nothing"), "--data_dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-images-idx3-ubyte.gz is missing" in err[0] and "make gpu-pack" in err[0]
    assert "preflight FAILED" in (tmp_path / "out" / "summary.txt").read_text()
    assert gpu_check.returnable(tmp_path / "out") == []


def test_preflight_unpacks_the_carried_mnist(tmp_path):
    raw = tmp_path / "carried" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in gpu_check.MNIST:
        with gzip.open(raw / f"{name}.gz", "wb") as f:
            f.write(name.encode())
    assert gpu_check.preflight(_args(tmp_path), dict(os.environ)) is None  # jsonargparse and pytest are installed
    assert (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes() == b"t10k-labels-idx1-ubyte"


def test_a_failing_part_is_recorded_the_next_one_runs_and_everything_comes_back(tmp_path):
    recipe = gpu_check.Recipe(_args(tmp_path, deadline_s=60.0))
    assert not recipe.part("broken", 1, [sys.executable, "-c", "import sys; sys.exit('the reason')"])
    assert recipe.part("table", 1, [sys.executable, "-c", "print('| a | 1 |')"])
    assert not recipe.part("too_long", 1000, [sys.executable, "-c", "print('never')"])
    out, work = tmp_path / "out", tmp_path / "work"
    assert (work / "broken.err").read_text().strip() == "the reason" and not (work / "too_long.txt").exists()
    summary = (out / "summary.txt").read_text()
    assert "FAILED (exit 1; see report.txt) broken" in summary and "ok       table" in summary
    assert "SKIPPED  too_long" in summary
    report = (out / "report.txt").read_text()
    assert "===== broken: errors (tail) =====\nthe reason" in report and "===== table: output =====\n| a | 1 |" in report
    with tarfile.open(out / "results.tgz") as tar:
        assert {"broken.err", "table.txt"} <= set(tar.getnames())
    assert gpu_check.returnable(out) == [] and {p.name for p in out.iterdir()} == {"summary.txt", "report.txt",
                                                                                   "results.tgz"}


def test_a_part_past_the_deadline_is_stopped_with_its_children_and_still_packed(tmp_path):
    """SIGTERM to the part's whole process group at the deadline, SIGKILL after the grace: a child that ignores
    SIGTERM (and its own child) cannot hold the job past it."""
    recipe = gpu_check.Recipe(_args(tmp_path, deadline_s=4.0))
    stubborn = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('started', flush=True); "
                "time.sleep(600)")
    start = time.monotonic()
    assert not recipe.part("stubborn", 1, [sys.executable, "-c", stubborn], grace=1.0)
    assert time.monotonic() - start < 60  # deadline 4 s, grace 1 s, kill wait at most 10 s (generous for a slow host)
    assert "STOPPED at the deadline stubborn" in (tmp_path / "out" / "summary.txt").read_text()
    assert "started" in (tmp_path / "out" / "report.txt").read_text()


def test_returnable_names_what_would_not_come_back(tmp_path):
    out = tmp_path / "o"
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "fine.txt").write_text("x")
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    (out / "best-epoch=3.ckpt").write_text("x")
    for i in range(7):
        (out / f"f{i}.txt").write_text("x")
    problems = "\n".join(gpu_check.returnable(out))
    assert "10 files (at most 8)" in problems and "a/b/c/deep.txt: more than 2 folders down" in problems
    assert "best-epoch=3.ckpt: a name" in problems and "fine.txt" not in problems


def _probe_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "probe"
    (source / "catvaeprobe").mkdir(parents=True)
    (source / "catvaeprobe" / "__init__.py").write_text("VALUE = 'from the wheel'\n")
    (source / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = '
                                           '"setuptools.build_meta"\n[project]\nname = "catvaeprobe"\nversion = "1.0"\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheels"), str(source)], check=True, capture_output=True)
    return tmp_path / "wheels"


@pytest.mark.slow
def test_the_offline_install_goes_to_a_target_folder_that_child_processes_see(tmp_path):
    """As on the GPU machine: wheels installed without network or dependencies into --site (not the interpreter's
    own site-packages, which may be read-only there), and a fresh interpreter started with the recipe's environment
    imports them; without that environment it does not."""
    wheels = _probe_wheel(tmp_path)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert gpu_check.install_wheels(wheels, tmp_path / "site", env) is None
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "site")
    probe = [str(fresh / "bin" / "python"), "-c", "import catvaeprobe; print(catvaeprobe.VALUE)"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "from the wheel"
    assert subprocess.run(probe, capture_output=True, env={**env, "PYTHONPATH": ""}).returncode != 0
    assert gpu_check.install_wheels(tmp_path / "none", tmp_path / "site", env).endswith("and carry .whl")


@pytest.mark.slow
def test_the_packed_wheels_give_a_working_cli_in_an_image_without_jsonargparse(tmp_path):
    """`make gpu-pack`'s wheels (downloaded here if .whl/ lacks them; skipped without the package index) into a
    fresh venv that sees this machine's packages except jsonargparse and the two it needs: what the GPU image is.
    Installed offline as the recipe's preflight installs them, `catvae fit --help` then runs there."""
    wheels = ROOT / ".whl"
    if not list(wheels.glob("jsonargparse-*.whl")):
        wheels = tmp_path / "whl"
        names = [w for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("GPU_WHEELS")
                 for w in line.split(":=")[1].split()]
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "-d", str(wheels), *names], capture_output=True, timeout=300)
        if got.returncode != 0:
            pytest.skip("no .whl/ and no package index to download the wheels from")
    image = tmp_path / "image"  # this machine's site-packages without what the GPU image lacks
    image.mkdir()
    lacking = ("jsonargparse", "docstring_parser", "typeshed_client")
    for folder in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}:
        for entry in Path(folder).iterdir() if Path(folder).is_dir() else []:
            if not entry.name.lower().startswith(lacking) and not (image / entry.name).exists() \
                    and entry.suffix != ".pth":
                (image / entry.name).symlink_to(entry)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    purelib = subprocess.run([fresh / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "image.pth").write_text(f"{image}\n{ROOT}\n")
    python = str(fresh / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert subprocess.run([python, "-c", "import jsonargparse"], env=env, capture_output=True).returncode != 0
    # installed as the preflight installs them there (pip --target, no index, no dependencies; pip is this
    # interpreter's, as the image's own python has one)
    assert gpu_check.install_wheels(wheels, tmp_path / "site", env) is None
    cli = subprocess.run([python, "-m", "catvae", "fit", "--help"], env=env, capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert cli.returncode == 0 and "--model" in cli.stdout, cli.stderr[-2000:]


@needs_mnist
@pytest.mark.slow
def test_the_recipe_on_cpu_stops_at_its_deadline_and_returns_within_the_limits(tmp_path):
    """``python -m catvae.gpu_check --device cpu --quick`` with a deadline that runs out in the middle of its parts:
    it ends (the stopped part's children included), and --out holds only what a device call brings back."""
    (tmp_path / "data" / "MNIST").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw").symlink_to(DATA / "MNIST" / "raw")
    out, deadline = tmp_path / "out", 25
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "catvae.gpu_check", "--device", "cpu", "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work"), "--data_dir", str(tmp_path / "data"), "--deadline_s",
                           str(deadline)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    took = time.monotonic() - start
    assert done.returncode == 1, done.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    # the first part ran (finished, or stopped itself on a host several times slower), a later one did not
    assert re.search(r"^(ok|STOPPED at the deadline) +preflight", summary, re.M), summary
    assert "STOPPED at the deadline" in summary or "SKIPPED" in summary
    assert took < deadline + 5.0 + 10.0 + 60.0  # the deadline, a part's grace and kill wait, packing on a slow host
    assert gpu_check.returnable(out) == [] and {p.name for p in out.iterdir()} == {"summary.txt", "report.txt",
                                                                                   "results.tgz"}
    assert "===== machine: output =====" in (out / "report.txt").read_text()
