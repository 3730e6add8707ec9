r"""``catvae tune SPEC``: every estimator at its own best hyperparameters, searched with Optuna.

A tune spec is a compare spec (``base:`` one, or the same keys: settings, estimators, steps, args, quick) plus:

* ``space``: the search space, per estimator label (``all`` applies to every estimator): ``name: {low, high,
  log, int}`` or ``name: {choices: [...]}``. A name is one of the estimator's declared arguments
  (``arg_constraints``: ``tau``, ``t_1``, ``n_steps``, ``k``, ...) or of the task's constructor (``lr``, ...);
* ``trials``: completed (or pruned) trials per estimator and setting; ``seeds``: the seeds of one trial, whose
  metric is their mean; ``metric``: the objective, a logged tag (default: the task's ``monitor``), with
  ``direction`` (``minimize``, default, or ``maximize``); ``pruning``: stop unpromising trials at a validation
  (Optuna's median rule over the study's earlier trials; default on); ``sampler_seed``: the TPE sampler's
  seed (mixed with the worker's process id, so that workers propose different points).

Each (setting, estimator) is one Optuna study (``<setting>/<label>``) with the TPE sampler, in one storage: by
default a journal file in the results folder (``study.journal``: several ``catvae tune`` processes on one machine
may share it), or ``--storage URL`` (an RDB such as PostgreSQL: workers on many machines join one study; stale
trials of dead workers are failed by Optuna's heartbeat). Every trial is an ordinary run directory of
``catvae compare`` (``trials/<setting>/<label>/trial<N>/runs/...``: TensorBoard, ``config.yaml``, checkpoints),
run in its own process; its parameters and trial number go into ``hparams.yaml`` through the run's arguments.
Rerunning the command continues the studies: a trial whose process was stopped or killed is failed, never counted.

Results in the folder: ``best/<setting>/<label>.yaml`` (the best point as a config file: ``catvae fit --config``
takes it, and so does a compare spec's estimator list), ``tune.md``/``tune.csv`` (per estimator: trials, the
default point's parameters, the best parameters and value) and per study the optimization history and the
values against each parameter and, with two parameters or more, their importances (``history_*.png``,
``slice_*.png``, ``importance_*.png``). ``optuna-dashboard <storage>`` shows the studies
live.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import math
import os
import random
import socket
import sys
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.storages.journal import JournalFileBackend

import estimators
from estimators.base import ConfigError

from .compare import compare
from .compare.execute import Interrupted, _Children, _install, execute
from .compare.report import _stats
from .compare.spec import Metric, Run, load_spec, read_spec, task_class
from .compare.watch import Watch

__all__ = ["Param", "TrialReporter", "load_tune_spec", "run", "storage_of"]

#: the keys a tune spec adds to a compare spec's
TUNE_KEYS = ("space", "trials", "metric", "direction", "pruning", "sampler_seed", "confirm_seeds")
#: ``--confirm``'s seeds when the spec gives none: fresh ones, not the search's (a best trial's own value is biased
#: low by the search: it is the best of many noisy draws)
CONFIRM_SEEDS = (100, 101, 102)


@dataclasses.dataclass(frozen=True)
class Param:
    """One dimension of a search space: ``[low, high]`` (``log``: on a log scale; ``int``: integers) or
    ``choices``; ``target``: ``estimator`` or ``model`` (where the value goes)."""

    name: str
    target: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    int: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def contains(self, value) -> bool:
        """Whether ``value`` is a point of this dimension (a default outside the range is not searched)."""
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def arg(self, value) -> str:
        where = "--model.init_args.estimator.init_args" if self.target == "estimator" else "--model.init_args"
        return f"{where}.{self.name}={value}"


def _param(name: str, entry, run: Run, task: type | None, where: str) -> Param:
    """A :class:`Param` from a spec entry, checked: the estimator (or the task) takes ``name``, the range is
    not empty, a log range is positive."""
    est = type(estimators.build(run.name, **run.init_args))
    task_args = set(inspect.signature(task).parameters) - {"estimator"} if task is not None else set()
    if name in getattr(est, "arg_constraints", {}):
        target = "estimator"
    elif name in task_args:
        target = "model"
    else:
        raise ConfigError(f"{where}: unknown parameter {name!r}: {run.label} ({est.__name__}) takes "
                          f"{', '.join(sorted(getattr(est, 'arg_constraints', {}))) or 'none'}, the task "
                          f"{', '.join(sorted(task_args)) or 'none'}")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {name} must be {{low, high, log, int}} or {{choices: [...]}}, got {entry!r}")
    unknown = set(entry) - {"low", "high", "log", "int", "choices"}
    if unknown:
        raise ConfigError(f"{where}: {name} has unknown keys {sorted(unknown)}; allowed: low, high, log, int, choices")
    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {name}.choices must be a non-empty list")
        return Param(name, target, choices=tuple(choices))
    low, high = entry.get("low"), entry.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{where}: {name} needs finite numbers low and high, got low={low!r}, high={high!r}")
    if not low < high:
        raise ConfigError(f"{where}: {name}'s range [{low}, {high}] is empty: low must be < high")
    log = bool(entry.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: {name} has log: true, so its range must be > 0; got low={low}")
    return Param(name, target, float(low), float(high), log, bool(entry.get("int", False)))


@dataclasses.dataclass
class TuneSpec:
    """A tune spec read and checked: the compare runs of seed ``seeds[0]`` of every (setting, estimator)
    (``studies``), each with its search space, and the study settings."""

    studies: list[tuple[Run, list[Param]]]
    seeds: list[int]
    trials: int
    metric: Metric
    direction: str
    pruning: bool
    sampler_seed: int
    confirm_seeds: list[int]


def load_tune_spec(path: Path, quick: bool = False, steps: int | None = None) -> TuneSpec:
    """Read and check a tune spec (a :class:`ConfigError` naming the first bad entry, before anything runs)."""
    raw = read_spec(path)
    tune = {k: raw.pop(k) for k in TUNE_KEYS if k in raw}
    seeds = raw.get("seeds") or [0]
    runs = load_spec(path, quick=quick, steps=steps, seeds=[seeds[0]], spec=raw)
    trials = tune.get("trials", 10)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"spec {path}: trials must be an integer >= 1, got {trials!r}")
    direction = tune.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"spec {path}: direction must be minimize or maximize, got {direction!r}")
    space = tune.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"spec {path}: space must map estimator labels (or all) to parameters, e.g. "
                          "space: {all: {lr: {low: 0.001, high: 0.3, log: true}}}")
    labels = {r.label for r in runs}
    unknown = [k for k in space if k != "all" and k not in labels]
    if unknown:
        raise ConfigError(f"spec {path}: space names {', '.join(map(str, unknown))}, not estimators of the spec "
                          f"({', '.join(sorted(labels))}, or all)")
    studies = []
    for run in runs:
        task = task_class(run.configs)
        entries = {**(space.get("all") or {}), **(space.get(run.label) or {})}
        if not entries:
            raise ConfigError(f"spec {path}: no parameter to tune for {run.label}; add it under space")
        params = [_param(n, e, run, task, f"spec {path}: space of {run.label}") for n, e in entries.items()]
        studies.append((run, params))
    monitor = tune.get("metric") or getattr(task_class(runs[0].configs), "monitor", None)
    if not isinstance(monitor, str) or not monitor:
        raise ConfigError(f"spec {path}: metric must be a logged tag, e.g. metric: val/nelbo")
    metric = Metric(monitor.replace("/", "_"), monitor, monitor, lower=direction == "minimize")
    seed = tune.get("sampler_seed", 0)
    confirm = tune.get("confirm_seeds", list(CONFIRM_SEEDS))
    if not isinstance(confirm, list) or not confirm or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 for s in confirm):
        raise ConfigError(f"spec {path}: confirm_seeds must be a non-empty list of integers, got {confirm!r}")
    return TuneSpec(studies, list(seeds), trials, metric, direction, bool(tune.get("pruning", True)), int(seed),
                    confirm)


# -- storage --------------------------------------------------------------------------------------------------
def storage_of(url: str | None, out: Path):
    """The study storage: ``url`` (an RDB URL, with a heartbeat so that the trials of a dead worker are failed),
    else a journal file in ``out`` (shared safely by the processes of one machine)."""
    if url:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # Optuna marks the heartbeat experimental (its API may change)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
            except sqlalchemy.exc.IntegrityError:
                # Two workers opening a fresh database both create Optuna's tables and version row; the second
                # gets a unique violation (seen in CI, PostgreSQL). Once the first has committed, opening works.
                if attempt == 4:
                    raise ConfigError(f"--storage {url}: could not create Optuna's tables (another worker kept "
                                      "creating them); run the command again") from None
                time.sleep(0.2 + random.random())
            except Exception as err:  # a bad URL, an unreachable server, a missing driver
                raise ConfigError(f"--storage {url}: {' '.join(str(err).split())[:200]}") from None
    return optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))


def _storage_arg(url: str | None, out: Path) -> str:
    return url or f"journal:{(out / 'study.journal').resolve()}"


def _reopen(arg: str):
    return storage_of(None if arg.startswith("journal:") else arg, Path(arg[len("journal:"):]).parent)


class TrialReporter(Callback):
    """In a trial's run: report ``monitor`` after every validation to the trial (``storage``, ``study``,
    ``trial``), and stop the run when the study's pruner says so (the tune process then prunes the trial).

    Args:
        storage: the study storage (an RDB URL, or ``journal:<file>``).
        study: the study's name.
        trial: the trial's number in the study.
        monitor: the logged tag to report.
    """

    def __init__(self, storage: str, study: str, trial: int, monitor: str) -> None:
        self.storage, self.study, self.trial, self.monitor = storage, study, trial, monitor
        self._trial: optuna.Trial | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        if self._trial is None:
            storage = _reopen(self.storage)
            study = optuna.load_study(study_name=self.study, storage=storage)
            trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study),
                                                                        self.trial)
            self._trial = optuna.trial.Trial(study, trial_id)
        value = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(value):
            return
        self._trial.report(value, trainer.global_step)
        if self._trial.should_prune():
            print(f"catvae tune: trial pruned at step {trainer.global_step} ({self.monitor} {value:.4g})", flush=True)
            self._trial.set_user_attr("pruned_at", trainer.global_step)  # what the tune process reads
            trainer.should_stop = True


# -- running ----------------------------------------------------------------------------------------------------
def _trial_runs(run: Run, params: list[Param], values: dict, seeds: list[int], metric: Metric, reporter: list[str]
                ) -> list[Run]:
    args = [*run.args, *(p.arg(values[p.name]) for p in params), *reporter]
    return [dataclasses.replace(run, seed=s, args=args, metrics=(metric,), curves=()) for s in seeds]


def _stored(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial ``number`` as the storage holds it now (with what the trial's run process wrote into it)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _objective(spec: TuneSpec, run: Run, params: list[Param], out: Path, storage: str, children: _Children,
               threads: int, study_: optuna.Study):
    study = f"{run.setting}/{run.label}"

    def objective(trial: optuna.Trial) -> float:
        objective.number = trial.number  # this worker's trial (study.trials[-1] may be another worker's)
        values = {p.name: p.suggest(trial) for p in params}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        reporter = []
        if spec.pruning and not trial.user_attrs.get("default_point"):  # the reference point runs to the end
            reporter = ["--trainer.callbacks+=" + json.dumps(
                {"class_path": "catvae.tune.TrialReporter",
                 "init_args": {"storage": storage, "study": study, "trial": trial.number,
                               "monitor": spec.metric.tag}})]
        folder = out / "trials" / run.setting / run.label / f"trial{trial.number}"
        scores = []
        for r in _trial_runs(run, params, values, spec.seeds, spec.metric, reporter):
            try:
                res = execute(r, folder, threads, children)
            except RuntimeError:
                pruned = _stored(study_, trial.number).user_attrs.get("pruned_at")
                if pruned is not None:  # the run stopped itself: the pruner's call, in the run's process
                    raise optuna.TrialPruned(f"pruned at step {pruned} (median rule)") from None
                raise
            value = res.get(spec.metric.column)
            if value is None or not math.isfinite(value):
                raise optuna.TrialPruned(f"{spec.metric.tag} is {value}: the run diverged or did not log it")
            scores.append(value)
        trial.set_user_attr("run_dir", str(folder))
        return sum(scores) / len(scores)

    return objective


def _fail_dead_trials(study: optuna.Study) -> None:
    """Fail this machine's RUNNING trials whose worker process is gone (killed: the journal has no heartbeat)."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            print(f"catvae tune: {study.study_name} trial {t.number} was left running by a stopped process "
                  f"({worker}): failed, not counted", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _counted(study: optuna.Study, running: bool = False) -> int:
    """The trials that count (complete or pruned), and with ``running`` those under way (other workers' too)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states + ((optuna.trial.TrialState.RUNNING,) if running else ())))


def run(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    spec = load_tune_spec(spec_path, quick=args.quick, steps=args.steps)
    if args.trials is not None:
        if args.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {args.trials}")
        spec.trials = args.trials
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    out = Path(args.out or f"results/tune_{spec_path.stem}{'_quick' if args.quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's line says what happened (a failure: why)
    storage = storage_of(args.storage, out)
    storage_arg = _storage_arg(args.storage, out)
    children = _Children(Watch(args.progress_every))
    threads = max(1, os.cpu_count() or 1)
    print(f"catvae tune: {len(spec.studies)} studies x {spec.trials} trials ({len(spec.seeds)} seed(s) each, "
          f"{spec.studies[0][0].steps} steps), {spec.direction} {spec.metric.tag} -> {out} (storage {storage_arg})",
          flush=True)
    previous = _install(children.stop)
    try:
        with children.watch:
            total, started, ran = len(spec.studies) * spec.trials, time.perf_counter(), 0
            for index, (run_, params) in enumerate(spec.studies):
                study = _open_study(spec, f"{run_.setting}/{run_.label}", storage, run_, params)
                _fail_dead_trials(study)
                objective = _objective(spec, run_, params, out, storage_arg, children, threads, study)
                while _counted(study, running=True) < spec.trials:
                    t0 = time.perf_counter()
                    study.optimize(objective, n_trials=1, catch=(RuntimeError,))  # Interrupted propagates
                    last = _stored(study, objective.number)
                    best = _best(study)
                    why = last.system_attrs.get("fail_reason", "").strip().splitlines()[-1:] \
                        if last.state != optuna.trial.TrialState.COMPLETE else []
                    counted = _counted(study)
                    print(f"[{counted}/{spec.trials}] {study.study_name} trial {last.number}: "
                          f"{last.state.name.lower()}{' (' + why[0][:160] + ')' if why else ''} {_fmt(last.value)} "
                          f"{_params(last.params)} "
                          f"({time.perf_counter() - t0:.0f}s); best {_fmt(best.value if best else None)}"
                          f"{' ' + _params(best.params) if best else ''} | "
                          f"{_bar(index * spec.trials + min(counted, spec.trials), total, started, ran := ran + 1)}",
                          flush=True)
    except Interrupted:
        print("catvae tune: stopped; the stopped trial is failed and not counted: run the same command to go on",
              file=sys.stderr, flush=True)
        return 128 + int(children.stopped or 15)
    finally:
        _install(previous)
    report(spec, storage, out)
    if args.confirm:
        return confirm(spec_path, spec, out, args)
    return 0


def _open_study(spec: TuneSpec, name: str, storage, run: Run, params: list[Param]) -> optuna.Study:
    """The study ``name``: created, with the default point (Table 5's values, :func:`_default_point`) queued as
    its first trial when it lies in the space — its value, under the search's own seeds and budget and never
    pruned, is what tune.md sets the best against — or loaded when another worker (or an earlier run) created it.
    The storage creates a study once (a second creator gets ``DuplicatedStudyError``), so concurrent workers
    queue the default point once."""
    sampler = optuna.samplers.TPESampler(seed=_worker_seed(spec.sampler_seed))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3) if spec.pruning else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=spec.direction, sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    point = _default_point(run, params)
    if all(p.contains(point[p.name]) for p in params):
        study.enqueue_trial(point, user_attrs={"default_point": True})
    return study


def _worker_seed(seed: int) -> int:
    """The TPE sampler's seed in this process: ``sampler_seed`` mixed with the process id. With one seed for all,
    two workers (or a worker and its own rerun) draw the same random start-up points, and half the trials are
    duplicates (seen: two workers, identical lr in trials 2 and 3). The trials' runs stay reproducible (each
    run's own seed); the sequence of proposed points is not."""
    return (seed * 1_000_003 + os.getpid()) % 2**32


def _bar(done: int, total: int, started: float, ran: int, width: int = 20) -> str:
    """The whole run's progress: a text bar over every study's trials (those of the studies before this one
    count as done), and this worker's estimate of the time left (its own pace; other workers shorten it)."""
    filled = round(width * done / total) if total else width
    left = (time.perf_counter() - started) / ran * max(total - done, 0)
    return f"all studies [{'#' * filled}{'.' * (width - filled)}] {done}/{total}, ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _best(study: optuna.Study):
    try:
        return study.best_trial
    except ValueError:
        return None


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# -- results ------------------------------------------------------------------------------------------------------
def _default_point(run: Run, params: list[Param]) -> dict:
    """The values the compare run uses without tuning (Table 5's, from its configs and the classes' defaults)."""
    est = estimators.build(run.name, **run.init_args).hparams()
    if run.estimator_config:
        est.update(((yaml.safe_load(Path(run.estimator_config).read_text()) or {}).get("model") or {})
                    .get("init_args", {}).get("estimator", {}).get("init_args") or {})
    model = {}
    task = task_class(run.configs)
    if task is not None:
        model = {n: p.default for n, p in inspect.signature(task).parameters.items()}
    for config in run.configs:
        model.update(((yaml.safe_load(Path(config).read_text()) or {}).get("model") or {}).get("init_args") or {})
    return {p.name: (est if p.target == "estimator" else model).get(p.name) for p in params}


def best_config(run: Run, params: list[Param], values: dict) -> dict:
    """The best point as a config file's content: the estimator (its class and tuned arguments) and the task's
    tuned arguments, for ``catvae fit --config`` after the setting's configs, or a compare spec's estimator list."""
    est = type(estimators.build(run.name, **run.init_args))
    init = {**run.init_args, **{p.name: values[p.name] for p in params if p.target == "estimator"}}
    model = {p.name: values[p.name] for p in params if p.target == "model"}
    model["estimator"] = {"class_path": f"estimators.{est.__name__}", "init_args": init}
    return {"model": {"init_args": model}}


def report(spec: TuneSpec, storage, out: Path) -> None:
    """``best/<setting>/<label>.yaml``, ``tune.csv``, ``tune.md`` and the figures of every study."""
    rows = []
    for run_, params in spec.studies:
        name = f"{run_.setting}/{run_.label}"
        study = optuna.load_study(study_name=name, storage=storage)
        states = [t.state for t in study.trials]
        best = _best(study)
        default = next((t for t in study.trials if t.user_attrs.get("default_point")
                        and t.state == optuna.trial.TrialState.COMPLETE), None)
        row = {"setting": run_.setting, "estimator": run_.label,
               "complete": states.count(optuna.trial.TrialState.COMPLETE),
               "pruned": states.count(optuna.trial.TrialState.PRUNED),
               "failed": states.count(optuna.trial.TrialState.FAIL),
               "default": _params(_default_point(run_, params)),
               "default_value": default.value if default else None,
               "best": _params(best.params) if best else "", "best_value": best.value if best else None,
               "best_trial": best.number if best else None}
        rows.append(row)
        if best is not None:
            path = out / "best" / run_.setting / f"{run_.label}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# catvae tune: best of {row['complete']} trials of {name} ({spec.metric.tag} "
                            f"{best.value:.6g}, trial {best.number})\n" +
                            yaml.safe_dump(best_config(run_, params, best.params), sort_keys=False))
            _figures(study, out, f"{run_.setting}_{run_.label}", spec.metric.tag)
    with open(out / "tune.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# catvae tune: {spec.metric.tag} ({spec.direction})", "",
             f"{spec.trials} trials per estimator, seeds {spec.seeds} per trial, "
             f"{spec.studies[0][0].steps} steps. `default`: the values without tuning (Table 5's), run as a trial "
             "of the study (its value: same seeds and budget as the search; — when outside the space or not run); "
             "`best`: the best trial (its value is the search's own: re-run it with fresh seeds before comparing, "
             "`--confirm`).", "",
             "| setting | estimator | trials (complete/pruned/failed) | default | default value | best | best value |",
             "|---|---|---|---|---:|---|---:|"]
    lines += [f"| {r['setting']} | {r['estimator']} | {r['complete']}/{r['pruned']}/{r['failed']} | {r['default']} | "
              f"{_fmt(r['default_value'])} | {r['best']} | {_fmt(r['best_value'])} |" for r in rows]
    (out / "tune.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'tune.md'}, {out / 'tune.csv'}, best configs in {out / 'best'}")


# -- confirmation ------------------------------------------------------------------------------------------------
def confirm_spec(spec_path: Path, spec: TuneSpec, out: Path, setting: str) -> Path:
    """Write ``confirm_<setting>.yaml`` in ``out``: a compare spec with every estimator of ``setting`` twice, at its
    default point (the spec's entry, label ``<label>``) and at its best one (``best/<setting>/<label>.yaml``,
    label ``<label>_tuned``), with the fresh ``confirm_seeds``; the compare spec's budget, arguments and columns.
    Paths are written relative to ``out`` (the spec resolves them from its folder and its parents)."""
    raw = {k: v for k, v in read_spec(spec_path).items() if k not in TUNE_KEYS}

    def rel(path: str) -> str:
        return os.path.relpath(Path(path).resolve(), out.resolve())

    entries, configs = [], None
    for run_, _ in spec.studies:
        if run_.setting != setting:
            continue
        configs = [rel(c) for c in run_.configs]
        best = out / "best" / setting / f"{run_.label}.yaml"
        if not best.is_file():
            raise ConfigError(f"{run_.setting}/{run_.label} has no completed trial, so no best point to confirm: run more trials")
        entries.append({"config": rel(run_.estimator_config), "label": run_.label} if run_.estimator_config else
                       {"name": run_.name, "init_args": run_.init_args, "label": run_.label})
        entries.append({"config": rel(str(best)), "label": f"{run_.label}_tuned"})
    raw.update(settings={setting: configs}, seeds=spec.confirm_seeds, estimators=entries)
    path = out / f"confirm_{setting}.yaml"
    path.write_text(f"# catvae tune --confirm: each estimator of {spec_path} at its default and at its best point, "
                    "with fresh seeds (written by catvae tune; rerunning it rewrites this file)\n"
                    + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def confirm(spec_path: Path, spec: TuneSpec, out: Path, args: argparse.Namespace) -> int:
    """``--confirm``: re-run every estimator at its default and at its best point with fresh seeds, as one
    ``catvae compare`` per setting (``confirm_<setting>/``, resumable like any compare folder), and tabulate
    default vs tuned vs gain per column (``confirm.md``, ``confirm.csv``)."""
    status, rows = 0, []
    for setting in dict.fromkeys(r.setting for r, _ in spec.studies):
        path = confirm_spec(spec_path, spec, out, setting)
        folder = out / f"confirm_{setting}"
        print(f"catvae tune --confirm: {setting}: default vs best point, seeds {spec.confirm_seeds} -> {folder}",
              flush=True)
        status = status or compare(argparse.Namespace(
            spec=str(path), out=str(folder), quick=args.quick, steps=args.steps, seeds=None, settings=None,
            group_size=None, progress_every=args.progress_every, batched=False, parallel=args.parallel, shard=None,
            collect=None, dry_run=False))
        if status >= 128:  # stopped: nothing to tabulate yet
            return status
        rows += confirm_rows(spec, setting, out, folder / "results.csv", load_spec(path, quick=args.quick,
                                                                                steps=args.steps)[0].metrics)
    write_confirm(spec, rows, out)
    return status


def confirm_rows(spec: TuneSpec, setting: str, out: Path, results_csv: Path, metrics) -> list[dict]:
    """Per estimator of ``setting``: its default and best parameters (the best from ``out/best/``, as
    :func:`report` wrote it) and, per column of ``metrics``, the mean ±
    std over the confirmation seeds at each point and the gain (positive: the tuned point is better)."""
    with open(results_csv, newline="") as f:
        table = list(csv.DictReader(f))

    def stats(label: str, column: str):
        return _stats([float(r[column]) for r in table if r["estimator"] == label and r.get(column)])[:2]

    rows = []
    for run_, params in spec.studies:
        if run_.setting != setting:
            continue
        best = _read_best(out / "best" / setting / f"{run_.label}.yaml", params)
        row = {"setting": setting, "estimator": run_.label, "default": _params(_default_point(run_, params)),
               "tuned": _params(best)}
        for m in metrics:
            (d, ds), (t, ts) = stats(run_.label, m.column), stats(f"{run_.label}_tuned", m.column)
            gain = None if d is None or t is None else (d - t if m.lower else t - d)
            row.update({f"{m.column}_default": d, f"{m.column}_default_std": ds, f"{m.column}_tuned": t,
                        f"{m.column}_tuned_std": ts, f"{m.column}_gain": gain})
        row["metrics"] = metrics
        rows.append(row)
    return rows


def _read_best(path: Path, params: list[Param]) -> dict:
    """The tuned values of ``params`` in a ``best/`` config (as :func:`best_config` wrote them)."""
    init = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("init_args") or {}
    est = (init.get("estimator") or {}).get("init_args") or {}
    return {p.name: (est if p.target == "estimator" else init).get(p.name) for p in params}


def write_confirm(spec: TuneSpec, rows: list[dict], out: Path) -> None:
    """``confirm.csv`` and ``confirm.md``: default vs tuned vs gain, mean ± std over the confirmation seeds."""
    if not rows:
        return
    metrics = rows[0]["metrics"]
    fields = [k for k in rows[0] if k != "metrics"]
    with open(out / "confirm.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def cell(mean, std):
        return "—" if mean is None else f"{mean:.4g} ± {std:.2g}"

    head = "".join(f" {m.header}: default | tuned | gain |" for m in metrics)
    lines = [f"# catvae tune --confirm: default vs tuned, seeds {spec.confirm_seeds}", "",
             f"Each estimator re-run at its default point (the spec's values, Table 5's) and at its best trial's "
             f"point with fresh seeds {spec.confirm_seeds} (the search used {spec.seeds}); mean ± std over them. "
             "gain: how much better the tuned point is (positive: better; in the column's units).", "",
             "| setting | estimator | default | tuned |" + head,
             "|---|---|---|---|" + "---:|---:|---:|" * len(metrics)]
    for r in rows:
        cells = "".join(f" {cell(r[f'{m.column}_default'], r[f'{m.column}_default_std'])} | "
                        f"{cell(r[f'{m.column}_tuned'], r[f'{m.column}_tuned_std'])} | "
                        f"{'—' if r[f'{m.column}_gain'] is None else format(r[f'{m.column}_gain'], '+.4g')} |"
                        for m in metrics)
        lines.append(f"| {r['setting']} | {r['estimator']} | {r['default']} | {r['tuned']} |{cells}")
    (out / "confirm.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'confirm.md'}, {out / 'confirm.csv'}")


def _figures(study: optuna.Study, out: Path, stem: str, metric: str) -> None:
    """The study's optimization history, its values against each parameter and (two parameters or more) their
    importances (matplotlib), when it has completed trials; log values when they are positive and span more than
    a decade."""
    import matplotlib  # deferred: 0.6-0.8 s of import at every start of catvae (as compare/report.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    values = [t.value for t in complete]
    spans_decades = min(values) > 0 and max(values) > 10 * min(values)  # a log axis only then (readable ticks)
    plots = [("history", views.plot_optimization_history), ("slice", views.plot_slice)]
    if len(complete) >= 2 and len(complete[0].params) >= 2:  # one parameter: its importance is 1 by definition
        plots.append(("importance", views.plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna's views set the ggplot style globally:
            # rc_context gives the caller's style back (compare's figures after --confirm)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study, target_name=metric)
            first = axes.flat[0] if hasattr(axes, "flat") else axes  # plot_slice: one panel per parameter
            if name != "importance" and spans_decades:  # e.g. a learning rate that diverges
                for ax in (axes.flat if hasattr(axes, "flat") else [axes]):
                    ax.set_yscale("log")
            first.figure.savefig(out / f"{name}_{stem}.png", dpi=110, bbox_inches="tight")
            plt.close(first.figure)
