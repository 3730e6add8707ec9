"""``catvae fit|validate|test|predict``: LightningCLI with catvae's run layout, checkpoints and errors.

Any :class:`~catvae.EstimatorTask` (``--model``) with any LightningDataModule (``--data``), the estimator
chosen in the model's ``estimator`` argument by ``class_path`` (``estimators.ReDGECov``) or registry name
(``redge_cov``). :func:`run` runs one command in this process and returns its exit status; the ``catvae``
command (:mod:`catvae.cli`), ``bench`` and ``compare`` all go through it.

Runs are written to ``<runs_dir>/<experiment>/<estimator>/version_N`` (:mod:`catvae.runs`): every logger
(TensorBoard by default, any Lightning logger with ``save_dir``/``name``/``version``), the resolved
``config.yaml`` and ``checkpoints/``. ``--ckpt_path last`` (or ``best``, or a file inside a run) resumes or
evaluates that run in its own directory.

Exit status: 0 done (or nothing left to train), 1 training diverged or an unexpected error (traceback),
2 bad input (one ``catvae: error: ...`` line, nothing written), 130 stopped by Ctrl-C, 143 stopped by
SIGTERM (both after writing ``last.ckpt``).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import estimators
from callbacks import CheckpointOnInterrupt, CommitCheckpoints, DurableCheckpointIO, ProgressLines, RunCheckpoint
from callbacks.compat import cli_config_value, parser_actions
from estimators.base import ConfigError

# every benchmark's task and data module known to LightningCLI by class name (``--model GMMTask``)
from .benchmarks import gmm as _gmm  # noqa: F401
from .benchmarks import polynomial as _polynomial  # noqa: F401
from .benchmarks import sudoku as _sudoku  # noqa: F401
from .benchmarks import vae as _vae  # noqa: F401
from .core import EstimatorTask
from .data.paths import resolve_data_dir
from .errors import NonFiniteLogitsError, NothingToTrain, TrainingDiverged
from .loggers import CSVLogger as AppendingCSVLogger
from .loggers import ReleaseHeldLogs, hold_lightning_logs
from .runs import (
    claim_version,
    experiment_name,
    load_checkpoint,
    record_versions,
    remove_empty,
    resolve_checkpoint,
    safe_name,
    version_of,
)
from .tools import config_paths

EXIT_DIVERGED, EXIT_USAGE = 1, 2

# Lightning's tips that advertise other products, and a deprecation inside Lightning itself: nothing a
# user of catvae can act on. Every other warning is shown (a normal run and its resume print none).
_QUIET = [r".*litlogger.*", r".*litmodels.*", r".*isinstance\(treespec, LeafSpec\).*"]


#: The callbacks a run starts with: the default of ``trainer.callbacks`` (so ``--help``, ``--print_config``
#: and every run's ``config.yaml`` show them; ``--trainer.callbacks+=X`` adds to them, a config's
#: ``trainer.callbacks`` list replaces them): a progress bar refreshed every 10 steps (every step costs
#: ~0.25 ms of Python), the learning rate, throughput, and the HPARAMS table. As ``class_path`` specs, which
#: jsonargparse records in ``config.yaml`` (instances in a parser default are not).
DEFAULT_CALLBACKS = [
    {"class_path": "lightning.pytorch.callbacks.TQDMProgressBar", "init_args": {"refresh_rate": 10}},
    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
    {"class_path": "callbacks.Throughput"},
    {"class_path": "callbacks.HParamsSummary"},
]


def default_callbacks(progress_bar: bool = True) -> list:
    """Instances of :data:`DEFAULT_CALLBACKS` (for a Trainer built outside the CLI: ``catvae bench``),
    without the progress bar unless ``progress_bar``."""
    out = []
    for spec in DEFAULT_CALLBACKS:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if progress_bar or not issubclass(cls, ProgressBar):
            out.append(cls(**spec.get("init_args", {})))
    return out


def fit_callbacks(monitor: str | None, checkpoint_every_n_steps: int = 1000, dirpath: str | None = None,
                  resuming: bool = False) -> list:
    """The callbacks ``catvae fit`` always adds, whatever the config says, because a run's resume and its
    finished/stopped status depend on them: best and last checkpoints (in ``dirpath``, the run's version
    directory, known only once it is claimed; where a resumed run's checkpoint lies when ``resuming``), and
    checkpoint on interrupt. Their settings are top-level options (``--checkpoint_every_n_steps``)."""
    best = [RunCheckpoint.best(monitor, dirpath, resuming)] if monitor else []
    return [*best, *RunCheckpoint.last(checkpoint_every_n_steps, dirpath, resuming), CheckpointOnInterrupt(),
            CommitCheckpoints()]


def _on_terminal() -> bool:
    """Whether stderr (where progress bars draw) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def durable_plugins(configured) -> list:
    """The trainer's ``plugins`` with :class:`~callbacks.DurableCheckpointIO` added, unless one of them is already
    a ``CheckpointIO`` (the user's own storage wins; its checkpoints are then written as it writes them)."""
    plugins = list(configured) if isinstance(configured, (list, tuple)) else [] if configured is None else [configured]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(DurableCheckpointIO())
    return plugins


def estimator_class_paths(argv: list[str]) -> list[str]:
    """``--model.estimator redge_max`` -> the class ``estimators.ReDGEMax`` with all its default arguments
    (any ``...estimator`` key), so that a registry name takes ``--model.estimator.init_args.*`` like a class
    path does, the saved ``config.yaml`` records the class with every argument, and no argument of an
    estimator set earlier (e.g. by a ``--config``) carries over to the new one (jsonargparse keeps init_args
    that the new class also accepts when only the class path changes)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key.startswith("--") and key.endswith(".estimator"):
            if eq and value in estimators.available():
                arg = f"{key}={_class_path(value)}"
            elif not eq and i + 1 < len(argv) and argv[i + 1] in estimators.available():
                out += [arg, _class_path(argv[i + 1])]
                i += 2
                continue
        out.append(arg)
        i += 1
    return out


#: Trainer options where Lightning reads an int as a number of batches and a float as a fraction of them
_BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                 "val_check_interval")


def integer_batch_limits(argv: list[str]) -> dict[str, int]:
    """``--trainer.limit_val_batches 1`` means one batch: jsonargparse reads Lightning's ``Union[float, int]``
    float first, and ``1.0`` is Lightning's "100 % of the batches" (issue 27: ``compare --quick`` validated on all
    10,000 images). The batch-limit options written as integers on the command line (the last of each), which
    :meth:`CatVAECLI.instantiate_trainer` passes to the Trainer as integers."""
    written = {}
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if not eq and i + 1 < len(argv):
            value = argv[i + 1]
        name = key.rpartition(".")[2]
        if key.startswith("--trainer.") and name in _BATCH_LIMITS:
            written[name] = value.strip()
    return {name: int(value) for name, value in written.items() if value.isdigit()}


def _class_path(name: str) -> str:
    cls = estimators.get(name)
    exported = getattr(estimators, cls.__name__, None) is cls
    path = f"estimators.{cls.__name__}" if exported else f"{cls.__module__}.{cls.__qualname__}"
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if k != "self" and p.default is not inspect.Parameter.empty}
    return json.dumps({"class_path": path, "init_args": defaults})


def _class_attribute(config, name: str):
    """Attribute ``name`` of the class a ``{class_path, init_args}`` config names (``None`` if it has none)."""
    path = config.get("class_path") if hasattr(config, "get") else None
    if not isinstance(path, str) or "." not in path:
        return None
    module, _, cls = path.rpartition(".")
    try:
        return getattr(getattr(importlib.import_module(module), cls), name, None)
    except (ImportError, AttributeError):
        return None


class CatVAECLI(LightningCLI):
    """LightningCLI with catvae's run layout, checkpointing, safe checkpoint loading and resume rules."""

    def __init__(self, *args, **kwargs) -> None:
        self.claimed: Path | None = None  # the version directory this process created
        self.created: list[Path] = []  # the folders above it that it created
        try:
            super().__init__(*args, **kwargs)
        except ConfigError:
            self._discard_claimed()
            raise

    def init_parser(self, **kwargs):
        kwargs.setdefault("exit_on_error", False)  # parse errors raise; handle() prints one line
        return super().init_parser(**kwargs)

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        """LightningCLI's subcommand parser with catvae's meaning of ``--ckpt_path`` in its help (Lightning's says
        "last, hpc, registry ... the previous trainer.fit call"; here 'last' and 'best' find a run directory)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        for action in parser_actions(parser):
            if action.dest == "ckpt_path":
                action.help = CKPT_PATH_HELP["fit" if subcommand == "fit" else "eval"]
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        # configurable defaults (trainer_defaults' callbacks would be fixed: neither shown nor removable)
        parser.set_defaults({"trainer.callbacks": copy.deepcopy(DEFAULT_CALLBACKS)})
        parser.add_argument("--experiment_name", type=str | None, default=None,
                            help="run directory <runs_dir>/<experiment_name>/<estimator>/; default: the task's")
        parser.add_argument("--runs_dir", type=str, default="runs", help="root of all run directories")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=1000,
                            help="also write last.ckpt every N training steps (it is always written each epoch)")
        parser.add_argument("--trust_checkpoint", type=bool, default=False,
                            help="open --ckpt_path with PyTorch's full unpickler, which runs any code stored in the "
                                 "file: only for checkpoints you trust that the safe loader refuses")

    def parse_arguments(self, parser, args) -> None:
        args = estimator_class_paths(config_paths(list(args)))
        self.config = parser.parse_args(args)
        self.batch_counts = integer_batch_limits(args)

    def before_instantiate_classes(self) -> None:
        """A data module whose ``seed`` is left ``None`` (``MNISTDataModule``: the data order) gets the run's seed
        (``--seed_everything``), written into the config so that config.yaml records the order it used; one whose
        ``data_dir`` is left ``None`` gets the folder it reads (``$CATVAE_DATA_DIR``, else ``./data``), absolute."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        seed, data = cfg.get("seed_everything"), cfg.get("data")
        init = data.get("init_args") if hasattr(data, "get") else None
        if isinstance(seed, int) and not isinstance(seed, bool) and init is not None and "seed" in init \
                and init.get("seed") is None:
            init["seed"] = seed
        if init is not None and "data_dir" in init and not init.get("data_dir"):
            # the folder the data is read from ($CATVAE_DATA_DIR, else ./data), recorded in config.yaml as used
            init["data_dir"] = str(resolve_data_dir().resolve())
        model = cfg.get("model")
        model_init = model.get("init_args") if hasattr(model, "get") else None
        shape = _class_attribute(data, "image_shape")
        if model_init is not None and "image_shape" in model_init and model_init.get("image_shape") is None \
                and shape is not None and model_init.get("image_size") is None:
            model_init["image_shape"] = list(shape)  # the model's geometry is the data's (config.yaml records it)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI would merge the checkpoint's hyperparameters into the config; here the given config
        is the source of truth, and the checkpoint is checked against it in :meth:`instantiate_trainer`."""

    # -- the run directory and the trainer ------------------------------------------------------------
    def instantiate_trainer(self, **kwargs):
        cfg = self.config[self.subcommand]
        every = cfg.get("checkpoint_every_n_steps")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"--checkpoint_every_n_steps must be an integer >= 1, got {every!r}")
        trust = bool(cfg.get("trust_checkpoint")) or cfg.get("weights_only") is False
        root = self._run_root()
        version = None
        ckpt = cfg.get("ckpt_path")
        if ckpt:
            path, version = resolve_checkpoint(root, ckpt, trust) if ckpt in ("last", "best") \
                else (Path(ckpt), version_of(Path(ckpt), root))
            checkpoint = load_checkpoint(path, trust)
            if isinstance(self.model, EstimatorTask):
                self.model.check_checkpoint(checkpoint, self.datamodule)
            if self.subcommand == "fit":
                self._check_budget(checkpoint, path)
            cfg["ckpt_path"] = self.config_init[self.subcommand]["ckpt_path"] = str(path)
            if ckpt in ("last", "best"):
                print(f"catvae: using {path}", file=sys.stderr)
        self.config_init[self.subcommand]["weights_only"] = not trust  # Lightning's own load, the same way
        if version is None and rank_zero_only.rank == 0:
            self.created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if the run fails
            version, self.claimed = claim_version(root)
        run_dir = root / f"version_{version}" if version is not None else None
        kwargs["logger"] = self._loggers(cfg, root, version)
        if run_dir is not None and not (cfg.get("trainer") or {}).get("default_root_dir"):
            kwargs["default_root_dir"] = str(run_dir)
        # config.yaml of a new run; a resumed or evaluated run keeps it and adds config.<subcommand>.yaml
        fresh_fit = self.subcommand == "fit" and not ckpt
        self.save_config_kwargs["config_filename"] = "config.yaml" if fresh_fit else f"config.{self.subcommand}.yaml"
        self.save_config_kwargs["overwrite"] = not fresh_fit
        if self.subcommand == "fit":
            dirpath = str(run_dir / "checkpoints") if run_dir is not None else None
            resuming = bool(ckpt) and version is not None
            kwargs["callbacks"] = self._fit_callbacks(cfg, every, dirpath, resuming, kwargs.get("callbacks"))
            kwargs["plugins"] = self.trainer_overrides()["plugins"]
        else:
            kwargs["callbacks"] = self._configured_callbacks(cfg)
            if ckpt:
                # the checkpoint callbacks of fit, inert outside fitting: Lightning restores every callback state
                # a checkpoint holds, also to evaluate it, and warns about each one no callback of the trainer owns
                monitor = getattr(self.model, "monitor", None)
                dirpath = str(run_dir / "checkpoints") if version is not None else str(path.parent)
                kwargs["callbacks"] += [*([RunCheckpoint.best(monitor, dirpath)] if monitor else []),
                                        *RunCheckpoint.last(every, dirpath)]
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), ReleaseHeldLogs()]
        kwargs.update({k: v for k, v in self.trainer_overrides().items() if k != "plugins"})
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:  # Trainer(...) rejecting a --trainer option
            raise ConfigError(f"{one_line(err)} (check the --trainer options)") from None
        if isinstance(self.model, EstimatorTask):
            self.model.check_trainer(trainer)
        for callback in trainer.callbacks:  # callbacks that can refuse a model or a trainer say so here, not mid-run
            if hasattr(callback, "check"):
                callback.check(trainer, self.model)
        if run_dir is not None and rank_zero_only.rank == 0:
            record_versions(run_dir, f"{self.subcommand}{' (resumed)' if self.subcommand == 'fit' and ckpt else ''}",
                            self.datamodule)
        return trainer

    def trainer_overrides(self) -> dict:
        """What catvae changes in the configured Trainer arguments, for every trainer it builds from this config
        (``catvae fit`` and a batched group): ``plugins`` with :class:`~callbacks.DurableCheckpointIO`
        (:func:`durable_plugins`), and the batch limits written as integers kept integers
        (:func:`integer_batch_limits`: 1 batch, not 1.0 = "all batches")."""
        configured = cli_config_value(self, self.config_init, "trainer", default={})
        counts = {name: count for name, count in getattr(self, "batch_counts", {}).items()
                  if configured.get(name) == count}
        return {"plugins": durable_plugins(configured.get("plugins")), **counts}

    def _run_root(self) -> Path:
        cfg = self.config[self.subcommand]
        given = cfg.get("experiment_name")
        experiment = safe_name(given, "--experiment_name", nested=True) if given is not None \
            else safe_name(experiment_name(self.model, self.datamodule), "the task's run_name", nested=True)
        name = getattr(getattr(self.model, "estimator", None), "name", None) or "model"
        return Path(cfg.get("runs_dir") or "runs") / experiment / safe_name(name, "the estimator's name")

    def _check_budget(self, checkpoint: dict, path: Path) -> None:
        """:class:`NothingToTrain` when the checkpoint already reached the trainer's ``max_epochs``/``max_steps``
        (Lightning would silently do nothing)."""
        trainer = self.config[self.subcommand].get("trainer") or {}
        max_steps = trainer.get("max_steps", -1)
        max_epochs = trainer.get("max_epochs")
        if max_epochs is None:
            max_epochs = 1000 if max_steps == -1 and trainer.get("max_time") is None else -1
        try:
            epochs = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
        except (KeyError, TypeError):
            return
        step = checkpoint.get("global_step", 0)
        reached = [f"max_steps={max_steps}"] if max_steps not in (None, -1) and step >= max_steps else []
        reached += [f"max_epochs={max_epochs}"] if max_epochs != -1 and epochs >= max_epochs else []
        if reached:
            flag = "--trainer.max_steps" if reached[0].startswith("max_steps") else "--trainer.max_epochs"
            raise NothingToTrain(f"{path} is at epoch {epochs}, step {step}: the run already reached "
                                 f"{' and '.join(reached)}, nothing to train; to continue it, pass a larger {flag} "
                                 "with --ckpt_path")

    def _loggers(self, cfg, root: Path, version: int | None):
        """The configured loggers pointed at the run directory (``save_dir``/``name``/``version``); TensorBoard
        when none is configured. A logger class without those arguments is kept as configured; Lightning's
        ``CSVLogger`` becomes :class:`catvae.loggers.CSVLogger`, which keeps a resumed run's rows."""
        spec = (cfg.get("trainer") or {}).get("logger")
        if spec is False:
            return False
        where = {"save_dir": str(root.parent.parent), "name": f"{root.parent.name}/{root.name}", "version": version}
        if spec in (None, True):
            return TensorBoardLogger(**where, default_hp_metric=False)
        built = cli_config_value(self, self.config_init, "trainer", default={}).get("logger")
        specs, built = (spec, built) if isinstance(spec, list) else ([spec], [built])
        loggers: list[Logger] = []
        for one, instance in zip(specs, built):
            params = inspect.signature(type(instance).__init__).parameters
            if isinstance(one, Namespace) and one.get("class_path") and {"save_dir", "name", "version"} <= set(params):
                init = one.get("init_args")
                init = init.as_dict() if isinstance(init, Namespace) else dict(init or {})
                if isinstance(instance, TensorBoardLogger):
                    init.setdefault("default_hp_metric", False)
                cls = AppendingCSVLogger if type(instance) is CSVLogger else type(instance)
                instance = cls(**{**init, **where})
            loggers.append(instance)
        return loggers

    def _fit_callbacks(self, cfg, every: int, dirpath: str | None, resuming: bool, given) -> list:
        return self._configured_callbacks(cfg) + list(given or []) + fit_callbacks(
            getattr(self.model, "monitor", None), every, dirpath, resuming)

    def _configured_callbacks(self, cfg) -> list:
        """The config's callbacks (default: :data:`DEFAULT_CALLBACKS`), less the progress bar when
        ``--trainer.enable_progress_bar false`` and the learning-rate monitor when ``--trainer.logger false``
        (Lightning refuses both combinations; the flag wins). Of several progress bars the last one stays
        (``--trainer.callbacks+=...TQDMProgressBar`` replaces the default's; Lightning allows one). Where stderr is
        not a terminal (a file, a pipe: a sweep's ``log.txt``, CI), a ``TQDMProgressBar`` becomes
        :class:`~callbacks.ProgressLines`: a line every 30 s instead of a bar redrawn with carriage returns."""
        configured = cli_config_value(self, self.config_init, "trainer", default={}).get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        trainer = cfg.get("trainer") or {}
        drop = (ProgressBar,) * (trainer.get("enable_progress_bar") is False)
        drop += (LearningRateMonitor,) * (trainer.get("logger") is False)
        bars = [c for c in configured if isinstance(c, ProgressBar)]
        kept = [c for c in configured if not isinstance(c, drop) and not (c in bars and c is not bars[-1])]
        return [ProgressLines() if isinstance(c, TQDMProgressBar) and not _on_terminal() else c for c in kept]

    def _discard_claimed(self) -> None:
        """Remove the version directory this process created when the run failed on bad input before it
        wrote a checkpoint (so a fixed rerun gets the same number and nothing half-made stays behind)."""
        if self.claimed is not None and not any(self.claimed.glob("checkpoints/*.ckpt")):
            shutil.rmtree(self.claimed, ignore_errors=True)
            remove_empty(self.created)


DESCRIPTION = (
    "catvae: categorical VAEs and gradient estimators for discrete latents. Training subcommands below "
    "(LightningCLI); `catvae --help` lists every subcommand, the tools (compare, bench, analyze, sample) too."
)

#: the top of ``catvae fit --help`` (and validate/test/predict): where the options that vary by class are
SUBCOMMAND_HELP = (
    "{what}. The options of the model, the data and the estimator depend on the class chosen and are not listed "
    "below; see them with `catvae fit --model.help CategoricalVAE` (or GMMTask, PolynomialTask, SudokuTask), "
    "`catvae fit --data.help MNISTDataModule`, `catvae fit --model.estimator.help ReDGECov`, and what a config "
    "sets with `catvae fit --config FILE --print_config`. Estimators (--model.estimator NAME, or a class path): "
    "{estimators}. Runs go to <runs_dir>/<experiment_name>/<estimator>/version_N (TensorBoard, config.yaml, "
    "checkpoints/)."
)
_WHAT = {"fit": "Train a model", "validate": "Evaluate a checkpoint on the validation data",
         "test": "Evaluate a checkpoint on the test data", "predict": "Run the model's predict step on a checkpoint"}
CKPT_PATH_HELP = {
    "fit": "resume a run: 'last' = the newest run of the same --experiment_name and estimator, from its last.ckpt "
           "(in its own version_N: its logs continue); 'best' = that run's best checkpoint by the task's monitored "
           "score; or a .ckpt file (inside a run: that run resumes). Checked against the config and the budget first.",
    "eval": "the checkpoint to evaluate: 'last' = the newest run of the same --experiment_name and estimator "
            "(its last.ckpt), 'best' = that run's best by the task's monitored score, or a .ckpt file.",
}


def run_cli(argv: list[str]) -> CatVAECLI:
    """``catvae fit|validate|test|predict ...`` in this process (exceptions propagate; see :func:`main`)."""
    return run_cli_class(CatVAECLI, argv, run=True)


def run_cli_class(cli_class: type[CatVAECLI], argv: list[str], run: bool = False) -> CatVAECLI:
    """``cli_class`` (a :class:`CatVAECLI`) on ``argv``; with ``run=False`` it only parses ``argv`` (no
    subcommand) and builds the seeded classes, as ``catvae fit`` would before training (``compare --batched``)."""
    return cli_class(
        EstimatorTask,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        run=run,
        auto_configure_optimizers=False,
        parser_kwargs={"description": DESCRIPTION, **{
            name: {"description": SUBCOMMAND_HELP.format(what=what, estimators=", ".join(estimators.available())),
                   "usage": f"catvae {name} [--config FILE ...] [--model.* ...] [--data.* ...] [--trainer.* ...] "
                            "[--ckpt_path last|best|FILE] [options]"}
            for name, what in _WHAT.items()}},
        save_config_kwargs={"overwrite": False},
        trainer_defaults={"log_every_n_steps": 50},
    )


def run(argv: list[str]) -> int:
    """``catvae fit|validate|test|predict ...`` in this process; the exit status (module docstring)."""
    return handle(run_cli, argv)


def handle(command, *args) -> int:
    """``command(*args)`` with the errors a user can act on reported on one line: returns the exit status
    (``command``'s integer result, else 0). A bug (any other exception) propagates with its traceback."""
    quiet()
    try:
        with hold_lightning_logs():
            result = command(*args)
    except SIGTERMException:
        stopped = CheckpointOnInterrupt.received or signal.SIGTERM
        return 128 + int(stopped)
    except NothingToTrain as err:
        print(f"catvae: {one_line(err)}", file=sys.stderr)
        return 0
    except (TrainingDiverged, NonFiniteLogitsError) as err:
        if os.environ.get("CATVAE_DEBUG"):
            raise
        print(f"catvae: error: training diverged{_where(err)}: {one_line(err)}; {_kept(err)}", file=sys.stderr)
        return EXIT_DIVERGED
    except Exception as err:
        cause = user_error(err)
        if cause is None or os.environ.get("CATVAE_DEBUG"):
            raise  # a bug: keep the traceback
        print(f"catvae: error: {cause}", file=sys.stderr)
        return EXIT_USAGE
    return result if isinstance(result, int) else 0


def _where(err: BaseException) -> str:
    step = (getattr(err, "stopped_at", None) or {}).get("step")
    return f" at step {step}" if step is not None else ""


def _kept(err: BaseException) -> str:
    """What a diverged run keeps: its ``last.ckpt`` and that checkpoint's step (``CheckpointOnInterrupt`` records
    both on the exception), and how to go on."""
    path = (getattr(err, "stopped_at", None) or {}).get("checkpoint")
    if path is None:
        return "no checkpoint was written before it; start over with a lower --model.init_args.lr"
    try:
        step = f" (step {load_checkpoint(Path(path))['global_step']})"
    except (ConfigError, KeyError):
        step = ""
    return f"the last good state is {path}{step}: resume it with --ckpt_path last and a lower --model.init_args.lr"


def user_error(err: BaseException) -> str | None:
    """The one-line message of a user-fixable error, or ``None`` for a bug.

    User-fixable: a :class:`ConfigError` (also when jsonargparse wraps one raised while building a class
    from the config) and a parse error (``argparse.ArgumentError``: wrong type, unknown key or flag,
    malformed YAML), whose nested report is reduced to the key and its innermost cause."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        if isinstance(e, ConfigError):
            return one_line(e)
    if not isinstance(chain[0], argparse.ArgumentError):
        return None
    outer = str(chain[0])
    inner = next((str(e) for e in reversed(chain) if isinstance(e, argparse.ArgumentError)), outer)
    return parse_error(outer, inner)


def parse_error(outer: str, inner: str) -> str:
    """``--model.init_args.lr: expected float, got 'abc'`` from jsonargparse's nested report (``outer``: the
    whole report, ``inner``: the deepest error in it)."""
    keys = re.findall(r'Parser key "([^"]+)"', outer)
    classes = re.findall(r"Problem with given class_path '([^']+)'", outer)
    path = ".".join(key + (".init_args" if i < len(classes) else "") for i, key in enumerate(keys))
    text = " ".join(inner.split())
    text = re.sub(r'^Parser key "[^"]+":\s*', "", text)
    if "Does not validate against any of the Union subtypes" in text:  # report the accepted types
        wanted = re.findall(r"Expected a ([^-]+?)(?= - |\s+Given value|$)", text)
        got = re.search(r"Given value: (.*)$", text)
        text = "expected " + " or ".join(w.strip().rstrip(".") for w in wanted if "NoneType" not in w)
        text += f", got {got.group(1)!r}" if got else ""
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    text = re.sub(r"^Expected a (.+?)\. Got value: (.*)$", r"expected \1, got \2", text)
    owners = classes + re.findall(r"class_path='([^']+)'", outer)  # the latter: a callable's class (optimizer)
    if owners and "is not accepted" in text:
        text = f"{text[0].lower()}{text[1:]} by {owners[-1]}"
    return f"{'--' + path if path else 'arguments'}: {text} (see --help)"


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line."""
    return " ".join(str(err).split())


_quieted = False


def quiet() -> None:
    """Drop Lightning's product tips and its own deprecation notice (nothing a user can act on); once."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(re.match(p, record.getMessage(), re.S) for p in _QUIET)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_Drop())


