"""The prepared GPU session: ``python -m catvae.gpu_check --out $OUT`` (no make, no network).

GPU time is scarce and comes in calls of at most 600 s, of which only a few files come back (the device tool: at
most 8 files under ``$OUT``, each at most 16 MiB, at most 2 folders down, names of letters, digits, ``.``, ``_``,
``-``). So this one entry point is one bounded job that always returns what it measured:

* everything is written to a scratch folder (``--work``); ``--out`` receives only ``summary.txt`` (each part's
  status and time, written as the parts end), ``report.txt`` (the machine, then every part's output and the tail
  of its errors, concatenated) and ``results.tgz`` (the rest of the scratch folder: tables, figures, event files,
  per-run ``result.json``; never a checkpoint), plus ``results.md``/``results.csv`` in table mode. They are
  packed again after every part and once more at the end, when a part fails, and when the job is stopped;
* a hard deadline (``--deadline_s``, from the job's start, preflight included): each part runs at most until
  the deadline (SIGTERM to its whole process group, a bounded grace, then SIGKILL), a part estimated not to fit
  is skipped; the default 540 s leaves 60 s of a 600-s call for packing and the transfer back.

The parts:

1. preflight: the carried MNIST files (``.gpu/MNIST/raw/*.gz``) unpacked, the carried wheels (``.whl/``:
   jsonargparse and its two dependencies the GPU image lacks) installed without network into ``/tmp/site``
   (``pip install --no-index --no-deps --target``, every child process then gets ``PYTHONPATH``: the image's
   own site-packages may be read-only); one line and exit 2 if something is missing;
2. a smoke test (``bench train --fast_step`` on two estimators); nothing else runs if it fails;
3. in order of importance: the CUDA tests of capture (tests/test_capture.py, the captured group step of
   tests/test_batched.py, tests/test_fast.py), ``bench sweep`` at group sizes 1, 7, 21, 35, ``bench train``
   with the fast and default steps, a short ``catvae fit`` and its resume, ``bench overhead/step/estimators``.

``--table3 SPEC --setting NAME`` runs one setting of a batched compare spec instead (``make gpu-table3
SETTING=l48_k2``: one call per setting of Table 3); ``catvae compare SPEC --collect A B C --out DIR`` then
assembles the table from the three calls' unpacked ``results.tgz``.

Prepare it here with ``make gpu-pack``, run it there with ``carry: [".gpu", ".whl"]``. ``--device cpu --quick``
runs the whole recipe with tiny budgets on any machine (tested).

This module uses the standard library only: every measurement runs as a ``python -m catvae ...`` subprocess,
after the wheels are installed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: ``configs/compare/table3_gpu.yaml``'s estimators (``catvae.bench.table3_estimators()``, which needs the YAML
#: parser: this module imports the standard library only; a test keeps the two equal)
ESTIMATORS = ["st", "gumbel", "reinmax", "redge", "redge_max", "redge_cov", "redge_max_cov"]
#: the limits on what comes back from a device call (the device tool's README)
MAX_FILES, MAX_FILE_BYTES, MAX_DEPTH = 8, 16 * 2**20, 2
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
#: what a stopped child gets between SIGTERM and SIGKILL (a group checkpoint of 35 runs is ~0.5-0.9 GB)
GRACE_S = 30.0
#: the share of a file's output that report.txt keeps (its head and tail)
REPORT_PART_CHARS = 200_000
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


def returnable(out: Path) -> list[str]:
    """What in ``out`` would not come back from a device call (empty: everything does)."""
    problems, files = [], [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES})")
    total = 0
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if not NAME.match(path.name):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
        if path.is_file() and len(rel.parts) - 1 > MAX_DEPTH:
            problems.append(f"{rel}: more than {MAX_DEPTH} folders down")
        if path.is_symlink():
            problems.append(f"{rel}: a link")
        elif path.is_file():
            total += path.stat().st_size
            if path.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{rel}: {path.stat().st_size} bytes (at most {MAX_FILE_BYTES})")
    if total > 4 * MAX_FILE_BYTES:
        problems.append(f"{total} bytes in all (at most {4 * MAX_FILE_BYTES})")
    return problems


def run_bounded(argv: list[str], stdout, stderr, env: dict, timeout: float, grace: float = GRACE_S) -> int | str:
    """Run ``argv`` in its own process group for at most ``timeout`` seconds; then SIGTERM to the whole group
    (a sweep's children checkpoint), at most ``grace`` seconds more, then SIGKILL. The exit code, or ``"deadline"``
    when it was stopped."""
    proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=ROOT, start_new_session=True)
    try:
        return proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        pass
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=max(1.0, wait))
            break
        except subprocess.TimeoutExpired:
            continue
    return "deadline"


class Recipe:
    """The parts of one call, their files in ``work``, and what they leave in ``out`` (:meth:`pack`)."""

    def __init__(self, args: argparse.Namespace, t0: float | None = None) -> None:
        self.args, self.out, self.work = args, Path(args.out), Path(args.work)
        self.t0 = time.monotonic() if t0 is None else t0
        self.summary: list[str] = []
        self.parts: list[str] = []
        self.tables: list[Path] = []  # files also returned on their own (table mode)
        self.env = {**os.environ, "CATVAE_DATA_DIR": str(args.data_dir), "PYTHONUNBUFFERED": "1"}
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.args.deadline_s - self.elapsed()

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.summary.append(line)
        (self.out / "summary.txt").write_text("\n".join(self.summary) + "\n")

    def part(self, name: str, estimate_s: float, argv: list[str], required: bool = False,
             grace: float = 5.0) -> bool:
        """Run ``argv`` with stdout to ``<work>/<name>.txt`` and stderr to ``<name>.err``, until the deadline at
        most; ``False`` if it failed, was stopped or was skipped (an estimate beyond the deadline)."""
        if estimate_s > self.left() and not required:
            self.note(f"SKIPPED  {name}: about {estimate_s:.0f} s, {max(0.0, self.left()):.0f} s to the deadline")
            return False
        shown = " ".join(a if len(a) < 60 else a[:40].split("\n")[0] + "..." for a in argv)
        print(f"[{self.elapsed():5.0f} s] {name} (about {estimate_s:.0f} s): {shown}", flush=True)
        start = time.monotonic()
        self.parts.append(name)
        with open(self.work / f"{name}.txt", "w") as out, open(self.work / f"{name}.err", "w") as err:
            code = run_bounded(argv, out, err, self.env, self.left() - grace, grace)
        took = time.monotonic() - start
        status = ("ok" if code == 0 else "STOPPED at the deadline" if code == "deadline"
                  else f"FAILED (exit {code}; see report.txt)")
        self.note(f"{status:<8} {name}: {took:.0f} s (estimated {estimate_s:.0f} s)")
        self.pack()
        return code == 0

    def pack(self) -> None:
        """``report.txt`` and ``results.tgz`` (and the table files) in ``out``, within the limits of what comes
        back: written to a temporary name and renamed, so a kill mid-pack leaves the previous pack."""
        report = [f"# catvae gpu_check, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
                  f"{self.elapsed():.0f} s", *self.summary, ""]
        for name in ["machine", *self.parts]:
            for suffix, what, tail in ((".txt", "output", False), (".err", "errors (tail)", True)):
                path = self.work / f"{name}{suffix}"
                if path.is_file() and path.stat().st_size:
                    text = path.read_text(errors="replace")
                    if tail:
                        text = "\n".join(text.splitlines()[-60:])
                    elif len(text) > REPORT_PART_CHARS:
                        half = REPORT_PART_CHARS // 2
                        text = f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"
                    report += [f"===== {name}: {what} =====", text.rstrip(), ""]
        _atomic_text(self.out / "report.txt", "\n".join(report) + "\n")
        tmp = self.out / ".results.tgz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(self.work.rglob("*")):
                if path.is_file() and not path.is_symlink() and path.suffix != ".ckpt" and \
                        path.stat().st_size <= MAX_FILE_BYTES // 4 and "groups" not in path.relative_to(self.work).parts:
                    tar.add(path, arcname=str(path.relative_to(self.work)))
        if tmp.stat().st_size > MAX_FILE_BYTES:  # never happens at these sizes; keep the tables then
            with tarfile.open(tmp, "w:gz") as tar:
                for path in sorted(self.work.rglob("*")):
                    if path.is_file() and path.suffix in (".txt", ".err", ".md", ".csv", ".json"):
                        tar.add(path, arcname=str(path.relative_to(self.work)))
        os.replace(tmp, self.out / "results.tgz")
        for table in self.tables:
            if table.is_file():
                shutil.copyfile(table, self.out / table.name)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def preflight(args: argparse.Namespace, env: dict) -> str | None:
    """Unpack MNIST and install the wheels (``env`` gets their ``PYTHONPATH``); the problem in one line, or
    ``None``."""
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
    missing = [m for m in ("jsonargparse", "pytest") if _missing(m, env)]
    if missing:
        problem = install_wheels(Path(args.wheels), Path(args.site), env)
        if problem:
            return problem
        still = [m for m in missing if _missing(m, env)]
        if still:
            return (f"{', '.join(still)} still missing after installing the wheels of {args.wheels}: run `make "
                    "gpu-pack` (it packs jsonargparse and what the GPU image lacks) and carry .whl")
    return None


def install_wheels(wheels: Path, site: Path, env: dict) -> str | None:
    """Install every wheel in ``wheels`` into ``site`` without network and without dependencies (``pip install
    --no-index --no-deps --target``: no write into the interpreter's own, possibly read-only, site-packages), and
    put ``site`` first on ``env``'s ``PYTHONPATH`` (what every child process inherits)."""
    found = sorted(str(w) for w in wheels.glob("*.whl"))
    if not found:
        return f"jsonargparse is not installed and {wheels} holds no wheels: run `make gpu-pack` here and carry .whl"
    site.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(site), *found],
                          capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"installing the wheels of {wheels} into {site} failed (pip exit {done.returncode}: {last})"
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return None


def _missing(module: str, env: dict) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, env=env,
                          cwd="/").returncode != 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m catvae.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-check", help="what comes back: summary.txt, report.txt, results.tgz "
                                                     "(and results.md/.csv with --table3)")
    p.add_argument("--work", default="/tmp/catvae-gpu", help="scratch folder of the parts (packed into --out)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try the recipe anywhere)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per loop in the bench tables")
    p.add_argument("--deadline_s", type=float, default=540,
                   help="the whole job ends by then, preflight and stopping included (default 540: a device call lasts "
                        "600 s, and packing and the transfer back need the rest)")
    p.add_argument("--budget_s", dest="deadline_s", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # older name
    p.add_argument("--quick", action="store_true", help="tiny budgets everywhere (a check of the recipe itself)")
    p.add_argument("--carried", default=str(ROOT / ".gpu"), help="folder with MNIST/raw/*.gz (make gpu-pack)")
    p.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder with the wheels (make gpu-pack)")
    p.add_argument("--site", default="/tmp/site", help="where the wheels are installed (put on PYTHONPATH)")
    p.add_argument("--data_dir", default="/tmp/catvae-data", help="where MNIST is unpacked")
    p.add_argument("--table3", metavar="SPEC", help="instead of the checks: run this compare spec batched (e.g. "
                                                   "configs/compare/table3_gpu.yaml), one setting per call")
    p.add_argument("--setting", help="with --table3: the spec's setting to run in this call (e.g. l48_k2)")
    p.add_argument("--seeds", help="with --table3: only these seeds, e.g. 0,1 (default: the spec's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    args = parse(argv)
    if args.table3 and not args.setting:
        print("gpu_check: error: --table3 needs --setting NAME (one setting per call, e.g. --setting l48_k2)",
              file=sys.stderr)
        return 2
    recipe = Recipe(args, t0)

    def stop(signum, frame):  # stopped from outside: pack what there is, then exit as the signal asks
        recipe.note(f"STOPPED  by signal {signum} at {recipe.elapsed():.0f} s")
        recipe.pack()
        sys.exit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        problem = preflight(args, recipe.env)
        if problem:
            print(f"gpu_check: error: {problem}", file=sys.stderr)
            recipe.note(f"preflight FAILED: {problem}")
            return 2
        recipe.note(f"ok       preflight: {recipe.elapsed():.0f} s")
        _machine(recipe)
        return table3(recipe, args) if args.table3 else checks(recipe, args)
    finally:
        recipe.pack()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _machine(recipe: Recipe) -> None:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    versions = subprocess.run(
        [sys.executable, "-c", "import torch, lightning, jsonargparse; print('torch', torch.__version__, 'lightning', "
         "lightning.__version__, 'jsonargparse', jsonargparse.__version__, 'cuda', torch.cuda.is_available() and "
         "torch.cuda.get_device_name())"], capture_output=True, text=True, env=recipe.env, timeout=120)
    (recipe.work / "machine.txt").write_text((smi.stdout if smi else "no nvidia-smi\n") + versions.stdout
                                             + versions.stderr[-2000:])


def checks(recipe: Recipe, args: argparse.Namespace) -> int:
    """The first call: smoke test, capture tests, then the GPU tables, in order of importance."""
    py, dev, q, out = sys.executable, args.device, args.quick, recipe.work
    train = [py, "-m", "catvae", "bench", "train", "--device", dev]
    bench = [*train, "--steps", str(3 if q else args.steps), "--warmup", "3" if q else "20"]
    both = ["--settings", "48x2", "32x64"]
    smoke = [*train, "--steps", "5", "--warmup", "3", "--fast_step", "--settings", "48x2", "--estimators", "gumbel",
             "redge_cov"]
    if not recipe.part("smoke", 45, smoke, required=True):
        recipe.note("the smoke test failed: nothing else was run (report.txt has its error)")
        return 1
    fit = [py, "-m", "catvae", "fit", "--config", "configs/mnist/l48_k2.yaml", "--config",
           "configs/estimators/redge_cov.yaml", "--model.fast_step", "true", "--trainer.accelerator", "gpu" if
           dev.startswith("cuda") else "cpu", "--trainer.devices", "1", "--runs_dir", str(out / "runs"),
           "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "-1", "--checkpoint_every_n_steps", "300",
           *(["--data.train_subset", "1000", "--data.batch_size", "100", "--trainer.limit_val_batches", "1"] if q else [])]
    sweep = [py, "-m", "catvae", "bench", "sweep", "--device", dev, "--fast_step",
             *(["--sizes", "1,2", "--rounds", "1", "--inner", "2", "--warmup", "1"] if q else [])]
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    parts = [
        ("tests_capture_cuda", 60, [*pytest, "tests/test_capture.py", "tests/test_batched.py", "-k",
                                    "cuda or capture_safe or registered"]),
        ("bench_sweep_48x2", 60, [*sweep, "--setting", "48x2", *([] if q else ["--sizes", "1,7,21,35"])]),
        ("bench_sweep_32x64", 90, [*sweep, "--setting", "32x64", *([] if q else ["--sizes", "1,7,21,35"])]),
        ("bench_train_fast_step", 150, [*bench, *both, "--fast_step", "--estimators", *ESTIMATORS]),
        ("fit_fast_step", 60, [*fit, "--trainer.max_steps", "20" if q else "600"]),
        ("fit_fast_step_resume", 40, [*fit, "--trainer.max_steps", "30" if q else "900", "--ckpt_path", "last"]),
        ("fit_epoch_times", 5, [py, "-c", EPOCH_TIMES, str(out / "runs")]),
        ("tests_fast", 40, [*pytest, "tests/test_fast.py"]),
        ("bench_overhead", 25, [py, "-m", "catvae", "bench", "overhead", "--device", dev,
                                *(["--steps", "20", "--warmup", "5", "--rounds", "1"] if q else [])]),
        ("bench_train_default", 120, [*bench, *both, "--estimators", *ESTIMATORS]),
        ("bench_step", 30, [py, "-m", "catvae", "bench", "step", "--device", dev,
                            *(["--rounds", "2", "--inner", "2", "--warmup", "1"] if q else [])]),
        ("bench_estimators", 20, [py, "-m", "catvae", "bench", "estimators", "--device", dev,
                                  *(["--repeats", "2", "--inner", "2"] if q else [])]),
    ]
    failed = 0
    for name, estimate, command in parts:
        failed += not recipe.part(name, 5 if q else estimate, command)
    recipe.note(f"done in {recipe.elapsed():.0f} s; {failed} part(s) failed, stopped or skipped")
    return 1 if failed else 0


def table3(recipe: Recipe, args: argparse.Namespace) -> int:
    """One setting of ``catvae compare SPEC --batched`` until done or the deadline (then stopped: its group
    checkpoints on this machine only, which is given back after the call, so a setting must fit one call: lower
    ``--seeds`` if it does not); its tables, figures and per-run results are returned either way."""
    spec = Path(args.table3)
    results = recipe.work / f"{spec.stem}_{args.setting}{'_quick' if args.quick else ''}"
    command = [sys.executable, "-m", "catvae", "compare", str(spec), "--batched", "--settings", args.setting,
               "--out", str(results), *(["--quick"] if args.quick else []),
               *(["--seeds", args.seeds] if args.seeds else [])]
    recipe.tables = [results / "results.md", results / "results.csv"]
    ok = recipe.part(f"{spec.stem}_{args.setting}", 0, command, required=True, grace=GRACE_S)
    recipe.note(f"{'ok' if ok else 'NOT FINISHED'} {spec.stem} {args.setting}: {recipe.elapsed():.0f} s; "
                f"results.tgz holds {results.name}/ (unpack it and run `catvae compare {spec} --collect <the "
                "unpacked folders> --out DIR` for the whole table)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
