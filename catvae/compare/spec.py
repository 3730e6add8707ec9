"""The spec of a sweep: estimators × settings × seeds × a step budget, and the runs it expands to."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import estimators
from estimators.base import ConfigError

from ..runs import safe_name
from ..tools import QUICK_STEPS

__all__ = ["COMMON_ARGS", "QUICK_STEPS", "Curve", "Metric", "Run", "load_spec", "merge_config", "read_spec", "task_class",
           "task_defaults"]

#: arguments every run gets (quiet logs in files).
COMMON_ARGS = ["--trainer.enable_model_summary=false"]

@dataclass(frozen=True)
class Metric:
    """A column of the results: the last value of the run's scalar ``tag`` (a ``test/`` tag is the test
    command's), shown as ``header``; ``lower``: lower is better (for the bold best); ``rank``: bold the best
    at all (not for a spread)."""

    column: str
    tag: str
    header: str
    lower: bool = True
    rank: bool = True


@dataclass(frozen=True)
class Curve:
    """A figure of the results: the scalar ``tag`` over steps, mean ± std over seeds per estimator (``log``: a
    logarithmic y axis, for objectives that fall by orders of magnitude)."""

    tag: str
    title: str
    log: bool = False




@dataclass
class Run:
    """One run of a sweep: a setting (its config files), an estimator (a config file, or a registry name with
    hyperparameters), a seed and a step budget."""

    setting: str
    configs: list[str]
    label: str
    name: str
    init_args: dict
    seed: int
    steps: int
    args: list[str] = field(default_factory=list)
    estimator_config: str | None = None
    #: what the sweep reports (the spec's ``metrics:``, ``curves:`` and ``note:``, else its task's
    #: ``compare_defaults``; the same for every run)
    metrics: tuple[Metric, ...] = ()
    curves: tuple[Curve, ...] = ()
    note: str = ""

    @property
    def experiment(self) -> str:
        return f"{self.setting}/{self.label}/seed{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.setting / self.label / f"seed{self.seed}"

    def estimator_args(self) -> list[str]:
        if self.estimator_config:
            return ["--config", self.estimator_config]
        # a registry name starts from the estimator's defaults; init_args then apply
        return [f"--model.estimator={self.name}",
                *(f"--model.estimator.init_args.{k}={json.dumps(v)}" for k, v in self.init_args.items())]

    def cli_args(self, out: Path) -> list[str]:
        return [*(a for c in self.configs for a in ("--config", c)), *self.estimator_args(),
                "--runs_dir", str(out / "runs"), "--experiment_name", self.experiment,
                "--seed_everything", str(self.seed), *COMMON_ARGS, *(a.replace("{seed}", str(self.seed)) for a in self.args)]

    def train_args(self, out: Path) -> list[str]:
        """``catvae fit``'s arguments for this run (without the subcommand): its configs and its step budget."""
        return [*self.cli_args(out), "--trainer.max_steps", str(self.steps), "--trainer.max_epochs", "-1"]

    def test_command(self, out: Path) -> list[str]:
        """``catvae test`` of this run's last checkpoint."""
        return ["test", *self.cli_args(out), "--ckpt_path", "last"]

    def explicit_config(self) -> dict:
        """What the run's config files set, merged in order (the setting's files, then the estimator's): the
        values as YAML reads them, so comments, layout and which file holds a value do not count."""
        merged: dict = {}
        for path in (*self.configs, *([self.estimator_config] if self.estimator_config else [])):
            merged = merge_config(merged, yaml.safe_load(Path(path).read_text()) or {})
        return merged

    def resolved_config(self) -> dict:
        """:meth:`explicit_config` with the model's and data module's arguments completed by their classes'
        defaults (plain values only: numbers, strings, lists of them), the classes named by where they are
        defined (an alias path is the same class), and the estimator as it is built (every hyperparameter, its
        defaults too): a value moved from a config file to a class default, or back, is the same run."""
        resolved = self.explicit_config()
        for section in ("model", "data"):
            spec = resolved.get(section)
            cls = _class(spec.get("class_path")) if isinstance(spec, dict) else None
            if cls is None:
                continue
            init = {n: p.default for n, p in inspect.signature(cls).parameters.items() if _plain(p.default)}
            init.update(spec.get("init_args") or {})
            resolved[section] = {**spec, "class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init}
        model = resolved.get("model")
        if isinstance(model, dict) and isinstance(model.get("init_args"), dict):
            model["init_args"].pop("estimator", None)
        resolved["estimator"] = {"name": self.name, **estimators.build(self.name, **self.init_args).hparams()}
        return resolved

    def key(self) -> str:
        """What the run's result depends on: a changed spec, budget, argument, config value or class default is
        another run. The config files count by the values they give (:meth:`resolved_config`), not their paths,
        text or which file holds a value, so a results folder still matches after the repository moves (a
        clone, a worktree) or its configs are reorganised."""
        return _digest([self.resolved_config(), self.seed, self.steps, self.args])

    def legacy_key(self) -> str:
        """The key catvae wrote until 2026-12-03: the config files' text. A finished run recorded under it
        is this run while the files are unchanged (:func:`catvae.compare.execute.finished` then records the
        new key)."""
        estimator_file = Path(self.estimator_config).read_text() if self.estimator_config else None
        configs = [Path(c).read_text() for c in self.configs]
        blob = json.dumps([configs, self.name, self.init_args, estimator_file, self.seed, self.steps, self.args],
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def params(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.init_args.items())


def _plain(value) -> bool:
    """A default that a config file could spell: ``None``, a bool, number or string, or a list/tuple of them."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _digest(value) -> str:
    """A short hash of a JSON-able value, numbers as floats (``2`` in a file and ``2.0`` as a default agree),
    tuples as lists."""
    def norm(v):
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return v
    return hashlib.sha1(json.dumps(norm(value), sort_keys=True).encode()).hexdigest()[:16]


def _class(class_path) -> type | None:
    """The class a config's ``class_path`` names (a bare name is looked up in :mod:`catvae`), or ``None``."""
    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "catvae"), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def merge_config(base: dict, over: dict) -> dict:
    """``over``'s values on ``base``'s, mappings merged key by key (a later ``--config`` file, as LightningCLI
    applies it); a section whose ``class_path`` names another class starts afresh."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict) and v.get("class_path", old.get("class_path")) == old.get("class_path"):
            out[k] = merge_config(old, v)
        else:
            out[k] = v
    return out


def _resolve_config(path: str, spec_dir: Path) -> str:
    """``path`` as given (absolute, or relative to the working directory), else relative to the spec's folder or
    one of its parents (``configs/mnist/l48_k2.yaml`` in ``<repo>/configs/compare/x.yaml`` is found from any
    working directory)."""
    for base in (Path.cwd(), spec_dir, *spec_dir.parents):
        candidate = (base / path).resolve()
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"config file {path} not found (relative to the working directory, the spec's folder "
                      f"{spec_dir} or its parents)")


def read_spec(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The spec's mapping; ``base: other.yaml`` (relative to the spec's folder) starts from another spec's keys,
    which this one's replace (a reduced budget of a full protocol without copying its columns)."""
    if not path.is_file():
        raise ConfigError(f"spec {path} does not exist" + (f" (base of {chain[-1]})" if chain else ""))
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"spec {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"spec {path} must be a mapping with settings, estimators, seeds, steps")
    if "base" not in spec:
        return spec
    base = path.parent / str(spec["base"])
    if base.resolve() in {p.resolve() for p in (*chain, path)}:
        raise ConfigError(f"spec {path}: base {spec['base']} refers back to itself; remove the cycle")
    return {**read_spec(base, (*chain, path)), **{k: v for k, v in spec.items() if k != "base"}}


def load_spec(path: Path, quick: bool = False, steps: int | None = None, seeds: list[int] | None = None,
              spec: dict | None = None) -> list[Run]:
    """The runs of a spec file, in order setting → estimator → seed (``spec``: its keys, already read from ``path``
    by :func:`read_spec`, e.g. without the keys of another tool's spec)."""
    spec = read_spec(path) if spec is None else spec
    allowed = ["steps", "seeds", "settings", "estimators", "args", "quick", "metrics", "curves", "note", "base"]
    unknown = set(spec) - {"name", *allowed}
    if unknown:
        raise ConfigError(f"spec {path}: unknown keys {sorted(unknown)}; allowed: {', '.join(allowed)}")
    quick_spec = spec.get("quick") or {}
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"--steps must be an integer >= 1, got {steps!r}")
    run_steps = steps or (quick_spec.get("steps", QUICK_STEPS) if quick else spec.get("steps"))
    if not isinstance(run_steps, int) or isinstance(run_steps, bool) or run_steps < 1:
        raise ConfigError(f"spec {path}: steps must be an integer >= 1, got {run_steps!r}")
    run_seeds = seeds or (quick_spec.get("seeds") if quick else None) or spec.get("seeds") or [0]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in run_seeds):
        raise ConfigError(f"spec {path}: seeds must be a list of integers, got {run_seeds!r}")
    settings = spec.get("settings")
    if isinstance(settings, list):
        settings = {Path(p).stem: p for p in settings}
    if not isinstance(settings, dict) or not settings:
        raise ConfigError(f"spec {path}: settings must be a non-empty mapping name: config file(s), or a list of files")
    spec_dir = path.resolve().parent
    defaults = task_defaults([_resolve_config(c, spec_dir) for c in _listed(next(iter(settings.values())))])
    extra = [str(a) for a in spec.get("args") or []]
    if quick:
        extra += [str(a) for a in quick_spec.get("args", (defaults.get("quick") or {}).get("args", []))]
    ests = spec.get("estimators")
    if not isinstance(ests, list) or not ests:
        raise ConfigError(f"spec {path}: estimators must be a non-empty list of config files or {{name, init_args}}")
    parsed = [_estimator(e, path, spec_dir) for e in ests]
    labels = [p[0] for p in parsed]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"spec {path}: estimator labels must be unique (add label: to variants), got {labels}")

    report = _report({**{k: v for k, v in defaults.items() if k != "quick" and not (k == "note" and "metrics" in spec)},
                      **spec}, path)
    runs = []
    for label in labels:
        safe_name(label, f"spec {path}: estimator label")
    for setting, configs in settings.items():
        safe_name(setting, f"spec {path}: setting")
        configs = [_resolve_config(c, spec_dir) for c in _listed(configs)]
        for label, name, init_args, estimator_config in parsed:
            for seed in run_seeds:
                runs.append(Run(str(setting), configs, label, name, init_args, seed, run_steps, extra, estimator_config,
                                **report))
    return runs


def _listed(configs) -> list:
    return [configs] if isinstance(configs, str) else list(configs)


def task_defaults(configs: list[str]) -> dict:
    """The ``compare_defaults`` of the task the setting's config files train (:func:`task_class`): its columns,
    figures, note and quick arguments, in a spec's form; ``{}`` when it declares none."""
    return dict(getattr(task_class(configs), "compare_defaults", None) or {})


def task_class(configs: list[str]) -> type | None:
    """The task class the setting's config files train (the last ``model.class_path`` among them), or ``None``."""
    class_path = None
    for config in configs:
        try:
            model = (yaml.safe_load(Path(config).read_text()) or {}).get("model")
        except (OSError, yaml.YAMLError):
            continue  # the run reports the unreadable file itself
        if isinstance(model, dict) and isinstance(model.get("class_path"), str):
            class_path = model["class_path"]
    return _class(class_path) if class_path else None


def _report(spec: dict, path: Path) -> dict:
    """The spec's ``metrics:`` (``{tag, header, lower, rank, column}``; the column defaults to the tag with ``/`` as
    ``_``), ``curves:`` (``{tag, title, log}``) and ``note:``."""
    out = {}
    if "metrics" in spec:
        entries = spec["metrics"]
        if not isinstance(entries, list) or not entries or not all(isinstance(m, dict) and "tag" in m for m in entries):
            raise ConfigError(f"spec {path}: metrics must be a non-empty list of {{tag, header, lower}}")
        out["metrics"] = tuple(Metric(str(m.get("column", m["tag"].replace("/", "_"))), m["tag"], str(m.get("header", m["tag"])),
                                      bool(m.get("lower", True)), bool(m.get("rank", True))) for m in entries)
        out["note"] = ""
    if "curves" in spec:
        entries = spec["curves"] or []
        if not isinstance(entries, list) or not all(isinstance(c, dict) and "tag" in c for c in entries):
            raise ConfigError(f"spec {path}: curves must be a list of {{tag, title, log}}")
        out["curves"] = tuple(Curve(c["tag"], str(c.get("title", c["tag"])), bool(c.get("log", False))) for c in entries)
    if "note" in spec:
        out["note"] = " ".join(str(spec["note"] or "").split())
    return out


def _estimator(entry, path: Path, spec_dir: Path) -> tuple[str, str, dict, str | None]:
    """``(label, registry name, init_args, config file)`` of one entry of a spec's estimator list: a config
    file (``configs/estimators/redge_max.yaml``, or ``{config: ..., label: ...}``: the estimator's class and
    hyperparameters as the config holds them; the label defaults to the file's stem), or a registry name with
    hyperparameters (``{name: redge, init_args: {t_1: 0.3}, label: redge_t0.3}``, for variants). Built once
    here, so that a bad entry fails before run 17."""
    if isinstance(entry, str):
        entry = {"config": entry} if entry.endswith((".yaml", ".yml")) else {"name": entry}
    if not isinstance(entry, dict) or ("name" in entry) == ("config" in entry):
        raise ConfigError(f"spec {path}: each estimator is a config file or {{name, init_args}}, got {entry!r}")
    try:
        if "config" in entry:
            config = _resolve_config(entry["config"], spec_dir)
            spec = (((yaml.safe_load(Path(config).read_text()) or {}).get("model") or {}).get("init_args") or {}).get(
                "estimator")
            if not isinstance(spec, dict) or "class_path" not in spec:
                raise ConfigError(f"{config} sets no model.init_args.estimator.class_path")
            module, _, cls_name = spec["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module), cls_name, None)
            if not (isinstance(cls, type) and issubclass(cls, estimators.CategoricalEstimator)):
                raise ConfigError(f"{config}: {spec['class_path']} is not an estimator class")
            init_args = dict(spec.get("init_args") or {})
            cls(**init_args)
            return entry.get("label", Path(config).stem), cls.name, init_args, config
        init_args = dict(entry.get("init_args") or {})
        estimators.build(entry["name"], **init_args)
        return entry.get("label", entry["name"]), entry["name"], init_args, None
    except (ValueError, TypeError, ImportError) as err:
        raise ConfigError(f"spec {path}: {' '.join(str(err).split())}") from None


