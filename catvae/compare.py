r"""``catvae compare SPEC.yaml``: run estimators × settings × seeds through ``catvae fit``/``test`` and tabulate.

A spec (see ``configs/compare/*.yaml``)::

    steps: 60000                       # training steps of every run (--trainer.max_steps)
    seeds: [0, 1, 2]
    settings:                          # name: config file(s) (a path or a list); or a list of paths
      l48_k2: configs/mnist/l48_k2.yaml
    estimators:                        # registry name + hyperparameters; label defaults to the name
      - {name: st, init_args: {tau: 1.0}}
      - {name: redge_cov, init_args: {n_steps: 3, t_1: 0.5}}
    args: []                           # extra CLI arguments for every fit and test
    quick: {steps: 50, args: [...]}    # what --quick uses instead (optional; defaults below)

Every run goes through the ``catvae`` command itself, in its own process (``catvae.cli.main`` with
``fit`` then ``test --ckpt_path last``), into ``<out>/runs/<setting>/<label>/seed<seed>/<estimator>/version_N``
— all runs under one TensorBoard root (``tensorboard --logdir <out>/runs``). A run is finished when its
``result.json`` exists (with the same arguments); re-running a spec skips finished runs and resumes
interrupted ones from their last checkpoint. ``<out>`` then holds ``results.csv`` (one row per run),
``results.md`` (mean ± std over seeds, best in bold; runtime table) and ``curves_*.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .runs import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

#: what ``--quick`` uses when the spec has no ``quick:`` section: ~1 minute on a 2-core CPU.
QUICK_STEPS = 30
QUICK_ARGS = [
    "--data.train_subset=1000", "--data.batch_size=100", "--data.eval_batch_size=200",
    "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--model.n_importance_samples=4",
    "--trainer.log_every_n_steps=5",
]
#: arguments every run gets (quiet logs in files).
COMMON_ARGS = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

#: (column, event tag, header, lower is better)
METRICS = [
    ("train_loss", "train/loss_epoch", "train/loss", True),
    ("train_nelbo_exact", "train/nelbo_exact", "train NELBO (exact z~q)", True),
    ("test_nelbo", "test/nelbo", "test NELBO (exact z~q)", True),
    ("test_log_likelihood", "test/log_likelihood", "test log p(x)", False),
]
CURVES = [("train/loss_epoch", "train/loss (estimator's samples)"),
          ("train/nelbo_exact", "train NELBO (exact samples)"),
          ("val/nelbo", "val NELBO (exact samples)")]


@dataclass
class Run:
    setting: str
    configs: list[str]
    label: str
    name: str
    init_args: dict
    seed: int
    steps: int
    args: list[str] = field(default_factory=list)

    @property
    def experiment(self) -> str:
        return f"{self.setting}/{self.label}/seed{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.setting / self.label / f"seed{self.seed}"

    def estimator_args(self) -> list[str]:
        if not self.init_args:
            return [f"--model.estimator={self.name}"]
        import estimators

        cls = estimators.get(self.name)  # registry names don't take init_args on the CLI: use the class path
        path = f"estimators.{cls.__name__}" if getattr(estimators, cls.__name__, None) is cls \
            else f"{cls.__module__}.{cls.__qualname__}"
        return [f"--model.estimator={path}",
                *(f"--model.estimator.init_args.{k}={json.dumps(v)}" for k, v in self.init_args.items())]

    def cli_args(self, out: Path) -> list[str]:
        return [*(a for c in self.configs for a in ("--config", c)), *self.estimator_args(),
                "--runs_dir", str(out / "runs"), "--experiment_name", self.experiment,
                "--seed_everything", str(self.seed), *COMMON_ARGS, *self.args]

    def key(self) -> str:
        blob = json.dumps([self.configs, self.name, self.init_args, self.seed, self.steps, self.args], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def params(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.init_args.items())


# ---------------------------------------------------------------- spec


def _resolve_config(path: str, spec_dir: Path) -> str:
    for base in (Path.cwd(), spec_dir, ROOT):
        candidate = (base / path).resolve()
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"config file {path} not found (relative to the working directory, the spec, or {ROOT})")


def load_spec(path: Path, quick: bool = False, steps: int | None = None, seeds: list[int] | None = None) -> list[Run]:
    """The runs of a spec file, in order setting → estimator → seed."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"spec {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"spec {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"spec {path} must be a mapping with settings, estimators, seeds, steps")
    unknown = set(spec) - {"name", "steps", "seeds", "settings", "estimators", "args", "quick"}
    if unknown:
        raise ConfigError(f"spec {path}: unknown keys {sorted(unknown)}; allowed: steps, seeds, settings, estimators, "
                        "args, quick")
    quick_spec = spec.get("quick") or {}
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"--steps must be an integer >= 1, got {steps!r}")
    run_steps = steps or (quick_spec.get("steps", QUICK_STEPS) if quick else spec.get("steps"))
    if not isinstance(run_steps, int) or isinstance(run_steps, bool) or run_steps < 1:
        raise ConfigError(f"spec {path}: steps must be an integer >= 1, got {run_steps!r}")
    run_seeds = seeds or (quick_spec.get("seeds") if quick else None) or spec.get("seeds") or [0]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in run_seeds):
        raise ConfigError(f"spec {path}: seeds must be a list of integers, got {run_seeds!r}")
    extra = [str(a) for a in spec.get("args") or []]
    if quick:
        extra += [str(a) for a in quick_spec.get("args", QUICK_ARGS)]

    settings = spec.get("settings")
    if isinstance(settings, list):
        settings = {Path(p).stem: p for p in settings}
    if not isinstance(settings, dict) or not settings:
        raise ConfigError(f"spec {path}: settings must be a non-empty mapping name: config file(s), or a list of files")
    import estimators

    ests = spec.get("estimators")
    if not isinstance(ests, list) or not ests:
        raise ConfigError(f"spec {path}: estimators must be a non-empty list of {{name, init_args}}")
    parsed = []
    for e in ests:
        e = {"name": e} if isinstance(e, str) else e
        if not isinstance(e, dict) or "name" not in e:
            raise ConfigError(f"spec {path}: each estimator needs a registry name, got {e!r}")
        try:
            estimators.build(e["name"], **(e.get("init_args") or {}))  # fail now, not in run 17
        except ValueError as err:
            raise ConfigError(f"spec {path}: {err}") from None
        parsed.append((e.get("label", e["name"]), e["name"], dict(e.get("init_args") or {})))
    labels = [p[0] for p in parsed]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"spec {path}: estimator labels must be unique (add label: to variants), got {labels}")

    spec_dir = path.resolve().parent
    runs = []
    for setting, configs in settings.items():
        configs = [configs] if isinstance(configs, str) else list(configs)
        configs = [_resolve_config(c, spec_dir) for c in configs]
        for label, name, init_args in parsed:
            for seed in run_seeds:
                runs.append(Run(str(setting), configs, label, name, init_args, seed, run_steps, extra))
    return runs


# ---------------------------------------------------------------- running


def _versions(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("*/version_*") if p.name.split("_")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("_")[-1]))


class Interrupted(Exception):
    """The sweep was stopped by a signal; the run was checkpointed and resumes on the next ``compare``."""


class _Children:
    """The run processes of a sweep: a stop signal to the sweep is forwarded to each of them once (they
    write ``last.ckpt`` and exit 130/143), and no new run starts after it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopped: int | None = None

    def start(self, *args, **kwargs) -> subprocess.Popen:
        with self.lock:
            if self.stopped is not None:
                raise Interrupted()
            # own session: a Ctrl-C in the terminal reaches the sweep only, which forwards it exactly once
            proc = subprocess.Popen(*args, start_new_session=True, **kwargs)
            self.procs.add(proc)
            return proc

    def finish(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def stop(self, signum: int, frame=None) -> None:
        with self.lock:
            if self.stopped is None:
                self.stopped = signum
                print(f"\ncatvae compare: stopping (signal {signum}); the running runs save last.ckpt and resume "
                      "when the sweep is run again", file=sys.stderr, flush=True)
                for proc in self.procs:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)


def execute(run: Run, out: Path, threads: int, children: _Children | None = None) -> dict:
    """Fit (resuming an interrupted run of the same arguments), test, collect; writes ``result.json`` only
    when the run trained its whole budget and has test metrics."""
    children = children or _Children()
    folder = run.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    started = folder / "started.json"
    key = run.key()
    resume = False
    if started.is_file() and json.loads(started.read_text()).get("key") == key:
        resume = any((v / "checkpoints" / "last.ckpt").is_file() for v in _versions(folder))
    started.write_text(json.dumps({"key": key}))
    fit = ["fit", *run.cli_args(out), "--trainer.max_steps", str(run.steps), "--trainer.max_epochs", "-1",
           *(["--ckpt_path", "last"] if resume else [])]
    test = ["test", *run.cli_args(out), "--ckpt_path", "last"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CATVAE_COMPARE_PARENT": str(os.getpid())}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    t0 = time.perf_counter()
    with open(folder / "log.txt", "a") as log:
        log.write(f"\n$ catvae {' '.join(fit)}\n$ catvae {' '.join(test)}\n")
        log.flush()
        proc = children.start([sys.executable, "-m", "catvae.compare", "--_run", json.dumps([fit, test])],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            returncode = proc.wait()
        finally:
            children.finish(proc)
    if returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise Interrupted()
    if returncode != 0:
        tail = (folder / "log.txt").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"exit {returncode}: {' | '.join(tail)}")
    versions = [v for v in _versions(folder) if (v / "checkpoints" / "last.ckpt").is_file()]
    if not versions:
        raise RuntimeError(f"no last.ckpt under {folder}")
    trained = load_checkpoint(versions[-1] / "checkpoints" / "last.ckpt").get("global_step")
    metrics = collect(versions[-1])
    if trained != run.steps or not metrics.pop("tested"):
        raise RuntimeError(f"not finished: trained {trained} of {run.steps} steps"
                           + ("" if trained != run.steps else ", no test metrics"))
    result = {"key": key, "setting": run.setting, "estimator": run.label, "name": run.name,
              "params": run.init_args, "seed": run.seed, "steps": run.steps, "wall_s": time.perf_counter() - t0,
              "run_dir": str(versions[-1].relative_to(out)), "fit": fit, "test": test, **metrics}
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result


def collect(version: Path) -> dict:
    """Final metrics and curves from a run's TensorBoard event files (fit, resumed fits and test)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])

    def series(tag):
        if tag not in tags:
            return []
        by_step = {}
        for e in events.Scalars(tag):  # a resumed run may log a step twice: keep the latest
            by_step[e.step] = e.value
        return sorted(by_step.items())

    out = {col: (series(tag)[-1][1] if series(tag) else None) for col, tag, _, _ in METRICS}
    epochs = series("time/epoch_s")
    steps = series("train/loss_epoch")
    per_epoch = steps[0][0] + 1 if steps else None  # epoch e ends at step (e + 1)·n − 1
    full = [t for (s, t), (s0, _) in zip(epochs, [(-1, 0)] + epochs) if per_epoch and s - s0 == per_epoch]
    out["epoch_s"] = statistics.mean(full) if full else (epochs[-1][1] if epochs else None)
    out["steps_per_epoch"] = per_epoch
    out["ms_per_step"] = 1000 * out["epoch_s"] / per_epoch if full and per_epoch else None
    out["curves"] = {tag: series(tag) for tag, _ in CURVES}
    out["tested"] = any(tag.startswith("test/") for tag in tags)
    return out


def run_all(runs: list[Run], out: Path, parallel: int) -> tuple[list[dict], list[str], int | None]:
    """Run every unfinished run (``parallel`` at a time): ``(results, failures, stop signal or None)``.
    SIGINT/SIGTERM stop the sweep: running runs are checkpointed, nothing new starts."""
    results, failures = {}, []
    todo = []
    for i, run in enumerate(runs):
        marker = run.folder(out) / "result.json"
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("key") == run.key():
                results[i] = done
                continue
            raise ConfigError(f"{marker} was made with other arguments (another spec, budget or --quick); "
                              "use another --out, or delete that run's folder to redo it")
        todo.append(i)
    print(f"catvae compare: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run "
          f"({parallel} at a time) -> {out}", flush=True)
    lock = threading.Lock()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    counter = [0]
    children = _Children()

    def work(i):
        run = runs[i]
        t0 = time.perf_counter()
        try:
            res = execute(run, out, threads, children)
        except Interrupted:
            return
        except Exception as err:  # one failed run doesn't stop the sweep
            msg = f"{run.experiment}: {err}"
            with lock:
                failures.append(msg)
                counter[0] += 1
                print(f"[{counter[0]}/{len(todo)}] FAILED {msg}", flush=True)
            return
        with lock:
            results[i] = res
            counter[0] += 1
            print(f"[{counter[0]}/{len(todo)}] {run.experiment}: {time.perf_counter() - t0:.0f}s, "
                  f"test NELBO {_fmt(res.get('test_nelbo'))}", flush=True)

    previous = _install(children.stop)
    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(work, todo))
    finally:
        _install(previous)
    return [results[i] for i in sorted(results)], failures, children.stopped


def _install(handler) -> dict | object:
    """Set ``handler`` for SIGINT and SIGTERM (a dict: per signal); return the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = handler if isinstance(handler, dict) else {s: handler for s in (signal.SIGINT, signal.SIGTERM)}
    return {s: signal.signal(s, h) for s, h in handlers.items()}


# ---------------------------------------------------------------- reports


def _fmt(v, digits=2):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def write_csv(results: list[dict], path: Path) -> None:
    cols = ["estimator", "name", "params", "setting", "seed", "steps", *[m[0] for m in METRICS],
            "epoch_s", "ms_per_step", "steps_per_epoch", "wall_s", "run_dir"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in results:
            row = {**r, "params": " ".join(f"{k}={v}" for k, v in r["params"].items())}
            w.writerow([row.get(c) if row.get(c) is not None else "" for c in cols])


def _table(rows, cols, cells, lower):
    """Markdown table; cells[(row, col)] = (mean, std, n); bold the best mean per column."""
    best = {}
    for c, _ in cols:
        means = [cells[(r, c)][0] for r in rows if cells.get((r, c), (None,))[0] is not None]
        if means:
            best[c] = (min if lower[c] else max)(means)
    lines = ["| estimator | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        out = []
        for c, _ in cols:
            m, s, n = cells.get((r, c), (None, None, 0))
            if m is None:
                out.append("—")
                continue
            text = f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"
            out.append(f"**{text}**" if best.get(c) == m else text)
        lines.append(f"| {r} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def write_markdown(results: list[dict], runs: list[Run], path: Path, title: str, command: str) -> None:
    settings = list(dict.fromkeys(r.setting for r in runs))
    labels = list(dict.fromkeys(r.label for r in runs))
    params = {r.label: (r.name, r.params()) for r in runs}
    seeds = sorted({r.seed for r in runs})
    steps = runs[0].steps if runs else 0
    group = {}
    for r in results:
        group.setdefault((r["estimator"], r["setting"]), []).append(r)

    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Budget: {steps} training steps per run; seeds {seeds}; "
             f"{len(results)}/{len(runs)} runs finished. Mean ± std over seeds; best per column in **bold**.", "",
             "`train/loss` is the objective the estimator optimizes, averaged over the last epoch, with the "
             "estimator's own hard samples (the paper's Table 3 metric). The *exact* columns evaluate the same "
             "bound with exact draws z ~ q(z|x): for ReDGE variants, whose hard samples are not exact draws from q, "
             "`train/loss` is not the model's bound — read it next to the exact columns.", ""]
    cols, lower, cells = [], {}, {}
    for s in settings:
        for col, _, header, low in METRICS:
            cols.append(((s, col), f"{s} {header}"))
            lower[(s, col)] = low
            for label in labels:
                cells[(label, (s, col))] = _stats([r.get(col) for r in group.get((label, s), [])])
    lines += ["## Results (Table 3 shape)", "", _table(labels, cols, cells, lower), ""]
    rt_cols = [((s, "epoch_s"), f"{s} s/epoch") for s in settings] + [((s, "ms"), f"{s} ms/step") for s in settings]
    rt_cells = {}
    for s in settings:
        for label in labels:
            rs = group.get((label, s), [])
            rt_cells[(label, (s, "epoch_s"))] = _stats([r.get("epoch_s") for r in rs])
            rt_cells[(label, (s, "ms"))] = _stats([r.get("ms_per_step") for r in rs])
    lines += ["## Runtime (Table 4 shape)", "",
              "Wall time of a training epoch (including its validation pass and checkpoint) and per step; "
              "runs in parallel share the machine.", "",
              _table(labels, rt_cols, rt_cells, {c: True for c, _ in rt_cols}), "",
              "## Estimators", "", "| label | estimator | hyperparameters |", "|---|---|---|",
              *[f"| {k} | {n} | {p or '(defaults)'} |" for k, (n, p) in params.items()], "",
              "Training curves: " + ", ".join(f"`curves_{_slug(t)}.png`" for t, _ in CURVES) +
              "; all runs in TensorBoard: `tensorboard --logdir runs` in this folder.", ""]
    path.write_text("\n".join(lines))


def _slug(tag: str) -> str:
    return tag.replace("/", "_")


def plot_curves(results: list[dict], runs: list[Run], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings = list(dict.fromkeys(r.setting for r in runs))
    labels = list(dict.fromkeys(r.label for r in runs))
    written = []
    for tag, title in CURVES:
        fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.8), squeeze=False)
        for ax, s in zip(axes[0], settings):
            for label in labels:
                curves = [dict(map(tuple, r["curves"].get(tag, []))) for r in results
                          if r["setting"] == s and r["estimator"] == label]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                steps = sorted(set.intersection(*(set(c) for c in curves)))
                if not steps:
                    continue
                values = np.array([[c[t] for t in steps] for c in curves])
                mean, std = values.mean(0), values.std(0)
                line, = ax.plot(steps, mean, label=label)
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            ax.set_title(s)
            ax.set_xlabel("step")
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
        handles, names = axes[0][0].get_legend_handles_labels()
        if handles:
            axes[0][-1].legend(fontsize=8)
        fig.suptitle(f"{title}: mean ± std over seeds")
        fig.tight_layout()
        path = out / f"curves_{_slug(tag)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------- command


def compare(args: argparse.Namespace) -> int:
    spec = Path(args.spec)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    runs = load_spec(spec, quick=args.quick, steps=args.steps, seeds=seeds)
    out = Path(args.out or f"results/{spec.stem}{'_quick' if args.quick else ''}")
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the results folder {out} ({err.strerror or err}); pass a writable --out") \
            from None
    if args.dry_run:
        for run in runs:
            print(f"catvae fit {' '.join(run.cli_args(out))} --trainer.max_steps {run.steps} --trainer.max_epochs -1")
        return 0
    results, failures, stopped = run_all(runs, out, args.parallel)
    command = "catvae compare " + " ".join([str(spec)] + (["--quick"] if args.quick else []) +
                                           ([f"--steps {args.steps}"] if args.steps else []) +
                                           ([f"--seeds {args.seeds}"] if args.seeds else []))
    write_csv(results, out / "results.csv")
    write_markdown(results, runs, out / "results.md", f"catvae compare: {spec.stem}", command)
    plots = plot_curves(results, runs, out) if results else []
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {len(plots)} plots; "
          f"TensorBoard: tensorboard --logdir {out / 'runs'}")
    if stopped is not None:
        print(f"catvae compare: stopped; {len(results)}/{len(runs)} runs finished, rerun the same command to "
              "resume the others", file=sys.stderr)
        return 128 + int(stopped)
    if failures:
        print(f"catvae compare: {len(failures)} run(s) failed (logs in each run's log.txt):\n  "
              + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="run estimators × settings × seeds and tabulate the results",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="the sweep's YAML spec (configs/compare/*.yaml)")
    p.add_argument("--out", help="results folder (default: results/<spec name>[_quick])")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--quick", action="store_true",
                   help=f"a tiny budget ({QUICK_STEPS} steps, 1000 training images, small eval) to check the pipeline")
    p.add_argument("--steps", type=int, help="override the spec's training steps per run")
    p.add_argument("--seeds", help="override the spec's seeds, e.g. 0,1")
    p.add_argument("--dry-run", action="store_true", help="print the fit commands and exit")
    p.set_defaults(func=compare)  # catvae.cli reports ConfigError as one line, exit 2


def _run_child(payload: str) -> int:
    """One run in this process: ``catvae fit`` then ``catvae test`` (the same code path as the command).
    On Linux the run gets SIGTERM (checkpoint and stop) if the sweep process dies, even by SIGKILL."""
    from .cli import main

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get("CATVAE_COMPARE_PARENT", str(os.getppid())):
        return 128 + int(signal.SIGTERM)  # the sweep died before the request took effect
    sys.argv = sys.argv[:1]
    fit, test = json.loads(payload)
    rc = main(fit)
    return rc or main(test)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_run":
        sys.exit(_run_child(sys.argv[2]))
    from .cli import main as _main

    sys.exit(_main(["compare", *sys.argv[1:]]))
