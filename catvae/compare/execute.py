"""Running a sweep: each run in its own ``catvae`` process, resumed until it trained its whole budget."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from estimators.base import ConfigError

from .. import runner
from ..runs import load_checkpoint
from . import batched
from .child import child_env, tie_to_parent
from .report import fmt
from .spec import Run
from .watch import Watch

__all__ = ["Interrupted", "collect", "estimator_hparams", "execute", "finish", "finished", "gather", "run_all", "run_child",
           "run_groups"]


def _versions(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("*/version_*") if p.name.split("_")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("_")[-1]))


#: the exit statuses of a run or group process stopped by SIGINT or SIGTERM (it checkpointed)
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)


class Interrupted(Exception):
    """The sweep was stopped by a signal; the run was checkpointed and resumes on the next ``compare``."""


class _Children:
    """The run processes of a sweep: a stop signal to the sweep is forwarded to each of them once (they
    write ``last.ckpt`` and exit 130/143), and no new run starts after it."""

    def __init__(self, watch: Watch | None = None) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.stopped: int | None = None
        self.watch = watch or Watch(0)

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

    def run(self, args: list[str], log: Path, env: dict, header: str = "", name: str = "") -> int:
        """``python -m catvae.compare ARGS`` (a run's or a group's process) with its output appended to ``log``
        after ``header``, its progress shown as ``name`` (:class:`Watch`); its exit status. :class:`Interrupted` if
        the sweep was stopped before it started."""
        name = name or str(log.parent)
        with open(log, "a") as out:
            out.write(header)
            out.flush()
            self.watch.add(name, log)
            proc = self.start([sys.executable, "-m", "catvae.compare", *args], stdout=out, stderr=subprocess.STDOUT,
                              env={**env, "CATVAE_PROGRESS_EVERY": str(self.watch.every_s or 30)})
            try:
                return proc.wait()
            finally:
                self.finish(proc)
                self.watch.remove(name)

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
    if started.is_file() and json.loads(started.read_text()).get("key") in (key, run.legacy_key()):
        resume = any((v / "checkpoints" / "last.ckpt").is_file() for v in _versions(folder))
    started.write_text(json.dumps({"key": key}))
    fit = ["fit", *run.train_args(out), *(["--ckpt_path", "last"] if resume else [])]
    test = run.test_command(out)
    t0 = time.perf_counter()
    returncode = children.run(["--_run", json.dumps([fit, test])], folder / "log.txt", child_env(threads),
                              f"\n$ catvae {' '.join(fit)}\n$ catvae {' '.join(test)}\n", run.experiment)
    if returncode in STOPPED:
        raise Interrupted(returncode)
    if returncode != 0:
        raise RuntimeError(f"exit {returncode}: {_tail(folder / 'log.txt')}")
    return finish(run, out, fit, test, time.perf_counter() - t0)


def _stopped_alone(name: str, returncode: int) -> str:
    """The failure line of a run whose process was stopped by a signal sent to it (not to the sweep)."""
    signame = signal.Signals(returncode - 128).name
    return f"{name}: stopped by {signame} before it finished (checkpointed); rerun the same command to resume it"


def _tail(log: Path) -> str:
    """The last three lines of a child's log, on one line (what a failure reports)."""
    return " | ".join(log.read_text().strip().splitlines()[-3:])


def finish(run: Run, out: Path, fit: list[str], test: list[str], wall_s: float) -> dict:
    """``run``'s result from its newest version with a ``last.ckpt`` (trained and tested), written to its
    ``result.json``: :class:`RuntimeError` when it did not train its whole budget or has no test metrics."""
    folder = run.folder(out)
    versions = [v for v in _versions(folder) if (v / "checkpoints" / "last.ckpt").is_file()]
    if not versions:
        raise RuntimeError(f"no last.ckpt under {folder}")
    trained = load_checkpoint(versions[-1] / "checkpoints" / "last.ckpt").get("global_step")
    metrics = collect(versions[-1], run)
    if trained != run.steps or not metrics.pop("tested"):
        raise RuntimeError(f"not finished: trained {trained} of {run.steps} steps"
                           + ("" if trained != run.steps else ", no test metrics"))
    result = {"key": run.key(), "setting": run.setting, "estimator": run.label, "name": run.name,
              "params": estimator_hparams(versions[-1]) or run.init_args, "seed": run.seed, "steps": run.steps,
              "wall_s": wall_s,
              "run_dir": str(versions[-1].relative_to(out)), "fit": fit, "test": test, **metrics}
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result


def estimator_hparams(version: Path) -> dict:
    """The hyperparameters the run's estimator was built with, as its task recorded them in ``hparams.yaml``
    (defaults resolved, e.g. ReDGE's ``t_1``): what the results tables show. Empty when not recorded."""
    path = version / "hparams.yaml"
    if not path.is_file():
        return {}
    recorded = (yaml.safe_load(path.read_text()) or {}).get("estimator")
    return {k: v for k, v in recorded.items() if k != "name"} if isinstance(recorded, dict) else {}


def collect(version: Path, run: Run) -> dict:
    """``run``'s metrics (last values) and curves from its TensorBoard event files (fit, resumed fits and test),
    its seconds per epoch and per step, and whether it was tested."""
    events = EventAccumulator(str(version), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])

    def series(tag):
        if tag not in tags:
            return []
        by_step = {}
        for e in events.Scalars(tag):  # a resumed run may log a step twice: keep the latest
            by_step[e.step] = e.value
        return sorted(by_step.items())

    out = {m.column: (series(m.tag)[-1][1] if series(m.tag) else None) for m in run.metrics}
    epochs = series("time/epoch_s")
    per_epoch = epochs[0][0] + 1 if epochs else None  # epoch e ends at step (e + 1)·n − 1
    full = [t for (s, t), (s0, _) in zip(epochs, [(-1, 0)] + epochs) if per_epoch and s - s0 == per_epoch]
    out["epoch_s"] = statistics.mean(full) if full else (epochs[-1][1] if epochs else None)
    out["steps_per_epoch"] = per_epoch
    out["ms_per_step"] = 1000 * out["epoch_s"] / per_epoch if full and per_epoch else None
    out["curves"] = {c.tag: series(c.tag) for c in run.curves}
    out["tested"] = any(tag.startswith("test/") for tag in tags)
    return out


def finished(run: Run, out: Path) -> dict | None:
    """The result of ``run`` if its folder under ``out`` holds a finished one (``result.json`` of the same
    arguments), else ``None``; a result made with other arguments is an error."""
    marker = run.folder(out) / "result.json"
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    if done.get("key") != run.key() and done.get("key") == run.legacy_key():
        done["key"] = run.key()  # recorded by an older catvae from the same files: record today's key
        marker.write_text(json.dumps(done, indent=1))
    if done.get("key") != run.key():
        raise ConfigError(f"{marker} was made with other arguments (another spec, budget or --quick); "
                          "use another --out, or delete that run's folder to redo it")
    if any(m.column not in done for m in run.metrics) or any(c.tag not in done.get("curves", {}) for c in run.curves):
        # the spec now reports more: read it from the finished run's events
        done.update(collect(out / done["run_dir"], run))
        done.pop("tested", None)
    return done


def gather(runs: list[Run], folders: list[Path]) -> tuple[list[dict], list[str]]:
    """``(results, missing)``: each run's finished result from the first of ``folders`` that holds one (its
    ``run_dir`` made absolute outside the first folder), and the runs none of them has finished."""
    results, missing = [], []
    for run in runs:
        for folder in folders:
            done = finished(run, folder)
            if done is not None:
                if folder != folders[0]:
                    done["run_dir"] = str((folder / done["run_dir"]).resolve())
                results.append(done)
                break
        else:
            missing.append(run.experiment)
    return results, missing


def _split_finished(runs: list[Run], out: Path) -> tuple[dict[int, dict], list[int]]:
    """``({index: result} of the finished runs, [indices of the others])``."""
    results, todo = {}, []
    for i, run in enumerate(runs):
        done = finished(run, out)
        if done is not None:
            results[i] = done
        else:
            todo.append(i)
    return results, todo


def run_all(runs: list[Run], out: Path, parallel: int, progress_every: float = 0) -> tuple[list[dict], list[str], int | None]:
    """Run every unfinished run (``parallel`` at a time): ``(results, failures, stop signal or None)``, the running
    runs' progress shown every ``progress_every`` seconds (:class:`Watch`; 0: never).
    SIGINT/SIGTERM stop the sweep: running runs are checkpointed, nothing new starts."""
    results, todo = _split_finished(runs, out)
    failures = []
    print(f"catvae compare: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run "
          f"({parallel} at a time) -> {out}", flush=True)
    lock = threading.Lock()
    threads = max(1, (os.cpu_count() or 1) // parallel)
    counter = [0]
    children = _Children(Watch(progress_every))

    def work(i):
        run = runs[i]
        t0 = time.perf_counter()
        try:
            res = execute(run, out, threads, children)
        except Interrupted as stop:
            if children.stopped is not None or not stop.args:
                return  # the sweep itself was stopped: it says so once
            msg = _stopped_alone(run.experiment, stop.args[0])
        except Exception as err:  # one failed run doesn't stop the sweep
            msg = f"{run.experiment}: {err}"
        else:
            msg = None
        if msg is not None:
            with lock:
                failures.append(msg)
                counter[0] += 1
                print(f"[{counter[0]}/{len(todo)}] FAILED {msg}", flush=True)
            return
        with lock:
            results[i] = res
            counter[0] += 1
            shown = ", ".join(f"{m.header} {fmt(res.get(m.column))}" for m in run.metrics[:2])
            print(f"[{counter[0]}/{len(todo)}] {run.experiment}: {time.perf_counter() - t0:.0f}s, {shown}", flush=True)

    previous = _install(children.stop)
    try:
        with children.watch, ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(work, todo))
    finally:
        _install(previous)
    return [results[i] for i in sorted(results)], failures, children.stopped


def run_groups(runs: list[Run], out: Path, group_limit: int | None = None,
               progress_every: float = 0) -> tuple[list[dict], list[str], int | None]:
    """``compare --batched``: every unfinished run, each setting's runs trained together in groups
    (:mod:`catvae.compare.batched`), one group at a time, each in its own process; then each run is tested and
    collected as :func:`run_all` does. ``(results, failures, stop signal or None)``."""
    results, todo = _split_finished(runs, out)
    groups = batched.plan_groups([runs[i] for i in todo], out, group_limit)
    largest: dict[str, int] = {}
    for g in groups:
        largest[g[0].setting] = max(largest.get(g[0].setting, 0), len(g))
    print(f"catvae compare --batched: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run "
          f"in {len(groups)} group(s)"
          f"{' (largest ' + ', '.join(f'{s}: {n} runs' for s, n in largest.items()) + ')' if largest else ''}"
          f" -> {out}", flush=True)
    index = {id(run): i for i, run in enumerate(runs)}
    failures: list[str] = []
    children = _Children(Watch(progress_every))
    previous = _install(children.stop)
    try:
        with children.watch:
            for g, group in enumerate(groups):
                folder = batched.group_folder(group, out)
                folder.mkdir(parents=True, exist_ok=True)
                for run in group:
                    run.folder(out).mkdir(parents=True, exist_ok=True)
                    (run.folder(out) / "started.json").write_text(json.dumps({"key": run.key(), "group": str(folder)}))
                t0 = time.perf_counter()
                try:
                    returncode = children.run(["--_group", batched.payload(group, out)], folder / "log.txt",
                                              child_env(os.cpu_count() or 1), name=f"group {g + 1}/{len(groups)} "
                                              f"({len(group)} runs of {group[0].setting})")
                except Interrupted:
                    break
                names = ", ".join(r.experiment for r in group)
                if returncode in STOPPED:
                    if children.stopped is not None:
                        break  # the sweep itself was stopped: it says so once
                    failures += [_stopped_alone(run.experiment, returncode) for run in group]
                    print(f"[group {g + 1}/{len(groups)}] STOPPED by a signal ({names})", flush=True)
                    continue
                wall = time.perf_counter() - t0
                if returncode != 0:
                    failures.append(f"group of {names}: exit {returncode}: {_tail(folder / 'log.txt')}")
                    print(f"[group {g + 1}/{len(groups)}] FAILED ({names}): see {folder / 'log.txt'}", flush=True)
                    continue
                diverged = batched.diverged_runs(folder)
                for r, run in enumerate(group):
                    if r in diverged:
                        failures.append(f"{run.experiment}: training diverged at step {diverged[r]} (the other runs of its "
                                        f"group went on; its state is in {folder / 'checkpoints'})")
                        continue
                    try:
                        results[index[id(run)]] = finish(run, out, ["fit", *run.train_args(out)], run.test_command(out),
                                                         wall / len(group))
                    except RuntimeError as err:
                        failures.append(f"{run.experiment}: {err}")
                print(f"[group {g + 1}/{len(groups)}] {len(group)} runs in {wall:.0f}s ({names})", flush=True)
    finally:
        _install(previous)
    return [results[i] for i in sorted(results)], failures, children.stopped


def _install(handler) -> dict | object:
    """Set ``handler`` for SIGINT and SIGTERM (a dict: per signal); return the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = handler if isinstance(handler, dict) else {s: handler for s in (signal.SIGINT, signal.SIGTERM)}
    return {s: signal.signal(s, h) for s, h in handlers.items()}


def run_child(payload: str) -> int:
    """One run in this process: ``catvae fit`` then ``catvae test`` (the same code path as the command).
    On Linux the run gets SIGTERM (checkpoint and stop) if the sweep process dies, even by SIGKILL."""
    if not tie_to_parent():
        return 128 + int(signal.SIGTERM)  # the sweep died before the request took effect
    sys.argv = sys.argv[:1]
    fit, test = json.loads(payload)
    rc = runner.run(fit)
    return rc or runner.run(test)


