"""The prepared GPU session: ``python -m catvae.gpu_check --out DIR`` (no make, no network, no install).

GPU time is scarce (one short lease, start-up included), so this one entry point does everything a first
GPU run needs, in order of importance, and keeps whatever it measured when a later part fails:

1. preflight: the carried MNIST files (``.gpu/MNIST/raw/*.gz``) and wheels (``.whl/``, for jsonargparse and
   pytest, which the GPU image lacks) are there, installed from the wheels without network; one line and
   exit 2 if not;
2. a 20-second smoke test (``bench train --fast_step`` on two estimators); nothing else runs if it fails;
3. the tables, each written to its own file under ``--out`` as soon as it is measured, stderr to
   ``<part>.err``; a failing part is recorded and the next one runs; a part that would not finish
   within ``--budget_s`` is skipped (``summary.txt`` says which). First the batched sweep's CUDA checks
   (a captured group step equals the eager one) and ``bench sweep`` at group sizes 1, 7, 21, 35.

``--table3 SPEC`` runs a batched compare spec instead (``make gpu-table3``: Table 3 with 5 seeds), stopped
with SIGTERM at ``--budget_s`` (it checkpoints; the same command resumes it), its tables copied to ``--out``.

Prepare it here with ``make gpu-pack`` (MNIST gzipped into ``.gpu/``, the wheels into ``.whl/``), run it
there with ``carry: [".gpu", ".whl"]`` and ``python3 -m catvae.gpu_check --out $OUT``. ``--device cpu
--quick`` runs the whole recipe with tiny budgets on any machine (tested).

This module uses the standard library only: every measurement runs as a ``python -m catvae ...``
subprocess, after the wheels are installed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
ESTIMATORS = ["gumbel", "st", "reinmax", "redge", "redge_max", "redge_cov", "redge_max_cov"]
#: prints the fit part's logged time/epoch_s and samples/s per epoch (fit with --model.fast_step, then its resume)
EPOCH_TIMES = """
import sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run in sorted(Path(sys.argv[1]).glob("*/*/version_*")):
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = events.Tags()["scalars"]
    rows = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in ("time/epoch_s", "time/samples_per_s")
            if tag in tags}
    print(run)
    print("step  time/epoch_s  time/samples_per_s")
    for step in sorted(set().union(*rows.values())):
        print(step, *(f"{rows[t].get(step, float('nan')):.4f}" for t in rows))
"""


class Recipe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        self.t0 = time.monotonic()
        self.summary: list[str] = []
        self.env = {**os.environ, "CATVAE_DATA_DIR": str(args.data_dir), "PYTHONUNBUFFERED": "1"}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.summary.append(line)
        (self.out / "summary.txt").write_text("\n".join(self.summary) + "\n")

    def part(self, name: str, estimate_s: float, argv: list[str], required: bool = False) -> bool:
        """Run ``argv`` with stdout to ``<name>.txt`` and stderr to ``<name>.err``; ``False`` if it failed."""
        if self.elapsed() + estimate_s > self.args.budget_s and not required:
            self.note(f"SKIPPED {name}: about {estimate_s:.0f} s, {self.args.budget_s - self.elapsed():.0f} s of the "
                      "budget left")
            return False
        shown = " ".join(a if len(a) < 60 else a[:40].split("\n")[0] + "..." for a in argv)
        print(f"[{self.elapsed():5.0f} s] {name} (about {estimate_s:.0f} s): {shown}", flush=True)
        start = time.monotonic()
        with open(self.out / f"{name}.txt", "w") as out, open(self.out / f"{name}.err", "w") as err:
            try:
                code = subprocess.run(argv, stdout=out, stderr=err, env=self.env, cwd=ROOT,
                                      timeout=max(60.0, 3 * estimate_s)).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        took = time.monotonic() - start
        status = "ok" if code == 0 else f"FAILED (exit {code}; see {name}.err)"
        self.note(f"{status:<8} {name}: {took:.0f} s (estimated {estimate_s:.0f} s)")
        return code == 0


def preflight(args: argparse.Namespace) -> str | None:
    """Unpack MNIST and install the wheels; the problem in one line, or ``None``."""
    carried = Path(args.carried) / "MNIST" / "raw"
    raw = Path(args.data_dir) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST:
        if (raw / name).is_file():
            continue
        packed = carried / f"{name}.gz"
        if not packed.is_file():
            return (f"MNIST file {packed} is missing: run `make gpu-pack` here and carry .gpu (or put the four "
                    f"idx files in {raw})")
        with gzip.open(packed) as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    missing = [m for m in ("jsonargparse", "pytest") if _missing(m)]
    if missing:
        wheels = Path(args.wheels)
        if not any(wheels.glob("jsonargparse-*.whl")):
            return f"{', '.join(missing)} not installed and no wheels in {wheels}: run `make gpu-pack` and carry .whl"
        code = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                               "jsonargparse[signatures]", "pytest"]).returncode
        if code != 0 or any(_missing(m) for m in missing):
            return f"installing {', '.join(missing)} from {wheels} failed (pip exit {code})"
    return None


def _missing(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode != 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m catvae.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-check", help="folder for the tables (each part: <part>.txt, <part>.err)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try the recipe anywhere)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per loop in the bench tables")
    p.add_argument("--budget_s", type=float, default=450, help="skip the parts that would end after this")
    p.add_argument("--quick", action="store_true", help="tiny budgets everywhere (a check of the recipe itself)")
    p.add_argument("--carried", default=str(ROOT / ".gpu"), help="folder with MNIST/raw/*.gz (make gpu-pack)")
    p.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder with the wheels (make gpu-pack)")
    p.add_argument("--data_dir", default="/tmp/catvae-data", help="where MNIST is unpacked")
    p.add_argument("--table3", metavar="SPEC", help="instead of the checks: run this compare spec batched (e.g. "
                                                   "configs/compare/table3_gpu.yaml) within --budget_s; rerun to resume")
    p.add_argument("--results", default=str(ROOT / "results" / "gpu"),
                   help="with --table3: the sweep's folder (kept on the machine; its tables are copied to --out)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problem = preflight(args)
    if problem:
        print(f"gpu_check: error: {problem}", file=sys.stderr)
        (out / "summary.txt").write_text(f"preflight FAILED: {problem}\n")
        return 2
    recipe = Recipe(args)
    py, dev, q = sys.executable, args.device, args.quick
    if args.table3:
        return table3(recipe, args)
    machine = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    (out / "machine.txt").write_text((machine.stdout if machine else "no nvidia-smi\n") + subprocess.run(
        [py, "-c", "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, "
                   "'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"],
        capture_output=True, text=True).stdout)
    train = [py, "-m", "catvae", "bench", "train", "--device", dev]
    bench = [*train, "--steps", str(3 if q else args.steps), "--warmup", "3" if q else "20"]
    both = ["--settings", "48x2", "32x64"]
    smoke = [*train, "--steps", "5", "--warmup", "3", "--fast_step", "--settings", "48x2", "--estimators", "gumbel",
             "redge_cov"]
    if not recipe.part("smoke", 45, smoke, required=True):
        recipe.note("the smoke test failed: nothing else was run (smoke.err has the error)")
        return 1
    fit = [py, "-m", "catvae", "fit", "--config", "configs/mnist/l48_k2.yaml", "--config",
           "configs/estimators/redge_cov.yaml", "--model.fast_step", "true", "--trainer.accelerator", "gpu" if
           dev.startswith("cuda") else "cpu", "--trainer.devices", "1", "--runs_dir", str(out / "runs"),
           "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "-1", "--checkpoint_every_n_steps", "300",
           *(["--data.train_subset", "1000", "--data.batch_size", "100", "--trainer.limit_val_batches", "1"] if q else [])]
    sweep = [py, "-m", "catvae", "bench", "sweep", "--device", dev, "--fast_step",
             *(["--sizes", "1,2", "--rounds", "1", "--inner", "2", "--warmup", "1"] if q else [])]
    parts = [
        ("tests_batched_cuda", 40, [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_batched.py", "-k",
                                    "cuda", "-rs"]),
        ("bench_sweep_48x2", 60, [*sweep, "--setting", "48x2", *([] if q else ["--sizes", "1,7,21,35"])]),
        ("bench_sweep_32x64", 90, [*sweep, "--setting", "32x64", *([] if q else ["--sizes", "1,7,21,35"])]),
        ("bench_train_fast_step", 150, [*bench, *both, "--fast_step", "--estimators", *ESTIMATORS]),
        ("fit_fast_step", 60, [*fit, "--trainer.max_steps", "20" if q else "600"]),
        ("fit_fast_step_resume", 40, [*fit, "--trainer.max_steps", "30" if q else "900", "--ckpt_path", "last"]),
        ("fit_epoch_times", 5, [py, "-c", EPOCH_TIMES, str(out / "runs")]),
        ("tests_fast", 40, [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fast.py"]),
        ("bench_overhead", 25, [py, "-m", "catvae", "bench", "overhead", "--device", dev,
                                *(["--steps", "20", "--warmup", "5", "--rounds", "1"] if q else [])]),
        ("bench_train_default", 120, [*bench, *both, "--estimators", *ESTIMATORS]),
        ("bench_step", 30, [py, "-m", "catvae", "bench", "step", "--device", dev,
                            *(["--rounds", "2", "--inner", "2", "--warmup", "1"] if q else [])]),
        ("bench_estimators", 20, [py, "-m", "catvae", "bench", "estimators", "--device", dev,
                                  *(["--repeats", "2", "--inner", "2"] if q else [])]),
        ("bench_train_fast_step_no_diag", 120, [*bench, *both, "--fast_step", "--exact_nelbo_every_n_steps", "0",
                                                "--estimators", *ESTIMATORS]),
    ]
    failed = 0
    for name, estimate, command in parts:
        failed += not recipe.part(name, 5 if q else estimate, command)
    recipe.note(f"done in {recipe.elapsed():.0f} s; {failed} part(s) failed or skipped")
    return 1 if failed else 0


def table3(recipe: Recipe, args: argparse.Namespace) -> int:
    """``catvae compare SPEC --batched`` until done or ``--budget_s`` (then stopped: it checkpoints, and the same
    command resumes it); the tables, figures and per-run results are copied to ``--out/<spec>/`` either way."""
    spec = Path(args.table3)
    results = Path(args.results) / (spec.stem + ("_quick" if args.quick else ""))
    command = [sys.executable, "-m", "catvae", "compare", str(spec), "--batched", "--out", str(results),
               *(["--quick"] if args.quick else [])]
    budget = max(10.0, args.budget_s - recipe.elapsed())
    print(f"[{recipe.elapsed():5.0f} s] {' '.join(command)} (at most {budget:.0f} s)", flush=True)
    log = recipe.out / f"{spec.stem}.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=recipe.env, cwd=ROOT)
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the sweep checkpoints its running group and exits
            code = proc.wait()
    copied = recipe.out / spec.stem
    for path in [*results.glob("results.*"), *results.glob("*.png"), *results.glob("runs/*/*/*/result.json")]:
        target = copied / path.relative_to(results)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    recipe.note(f"{'ok' if code == 0 else f'stopped or failed (exit {code})'} {spec.stem}: {recipe.elapsed():.0f} s; "
                f"tables in {copied}; rerun the same command to resume")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
