"""What every catvae task shares: an estimator argument, reproducible RNG, resumable metrics,
checkpoint checks, and a guard against non-finite training."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable, ReduceLROnPlateau
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.utilities.data import dim_zero_cat, dim_zero_sum

import estimators
from callbacks.compat import (
    attached_trainer,
    logging_step,
    metric_reductions,
    metric_state_defaults,
    set_logging_step,
)
from estimators import CategoricalEstimator
from estimators.base import ConfigError
from estimators.constraints import CheckedInit
from estimators.rng import seeded

from .errors import TrainingDiverged
from .loggers import LoggedHParams
from .metrics import step_means

__all__ = ["EstimatorSpec", "EstimatorTask", "OptimizerSpec", "SchedulerSpec", "resolve_estimator"]


#: what a task's ``estimator`` argument takes from a config: an instance (``class_path``) or a registry
#: name (``"redge_cov"``). :func:`resolve_estimator` also takes the description a task records in its
#: hyperparameters (``{"name": "redge_cov", "n_steps": 3, ...}``), with which ``load_from_checkpoint``
#: rebuilds the estimator.
EstimatorSpec = CategoricalEstimator | str


def resolve_estimator(estimator: EstimatorSpec) -> CategoricalEstimator:
    """An estimator instance from an instance, a registry name or a ``{"name": ..., **hyperparameters}`` dict."""
    if isinstance(estimator, str):
        return estimators.build(estimator)
    if isinstance(estimator, dict) and isinstance(estimator.get("name"), str):
        kwargs = {k: v for k, v in estimator.items() if k != "name"}
        return estimators.build(estimator["name"], **kwargs)
    if not isinstance(estimator, CategoricalEstimator):
        raise ConfigError(
            f"estimator must be a registry name ({', '.join(estimators.available())}), an "
            f"estimators.CategoricalEstimator or {{name: ..., <hyperparameters>}}, got {estimator!r}"
        )
    return estimator


#: a task's ``optimizer`` argument: ``None`` (Adam with the task's ``lr``, :meth:`EstimatorTask.adam`) or a
#: callable ``params -> Optimizer``. From a config (LightningCLI's dependency injection):
#: ``--model.init_args.optimizer torch.optim.AdamW --model.init_args.optimizer.init_args.lr 1e-3``. The task
#: records it as ``{"class_path": ..., "init_args": ...}``, which it also accepts.
OptimizerSpec = OptimizerCallable | None
#: a task's ``lr_scheduler`` argument: ``None`` (a constant learning rate) or a callable
#: ``optimizer -> LRScheduler``, e.g. ``--model.init_args.lr_scheduler torch.optim.lr_scheduler.CosineAnnealingLR
#: --model.init_args.lr_scheduler.init_args.T_max 200`` (stepped every epoch, Lightning's default).
SchedulerSpec = LRSchedulerCallable | None


#: the modules whose classes recorded ``optimizer``/``lr_scheduler`` hyperparameters may name (a checkpoint is
#: untrusted input: a class path outside these is refused before any import, since importing runs the module).
#: A config names its classes through LightningCLI instead, which passes callables, not class paths.
RECORDED_CLASS_MODULES = ("torch.optim",)


def _factory(spec, base: tuple[type, ...], what: str, noun: str) -> Callable | None:
    """A callable from an ``optimizer``/``lr_scheduler`` argument: ``None``, a callable, or the recorded
    ``{"class_path": ..., "init_args": ...}``, whose class must be a ``base`` (a checkpoint's hyperparameters
    never name other code to run)."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("class_path"), str) and "." in spec["class_path"]:
        module, _, name = spec["class_path"].rpartition(".")
        if not any(module == m or module.startswith(m + ".") for m in RECORDED_CLASS_MODULES):
            # refused before anything is imported: importing a module runs its code
            raise ConfigError(f"{what}: {spec['class_path']} is not in {', '.join(RECORDED_CLASS_MODULES)}, the only "
                              "modules recorded hyperparameters (a checkpoint) may name: refused, nothing imported")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise ConfigError(f"{what}: no class {spec['class_path']!r}") from None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigError(f"{what}: {spec['class_path']} is not {noun}")
        return functools.partial(cls, **dict(spec.get("init_args") or {}))
    raise ConfigError(f"{what} must be a callable or {{class_path: ..., init_args: ...}}, got {spec!r}")


def _describe(spec):
    """How a task records an ``optimizer``/``lr_scheduler`` argument in its hyperparameters (plain data, so
    that checkpoints load with ``weights_only=True``): ``None`` and dicts as given, a class or a
    ``functools.partial`` of one as ``{"class_path", "init_args"}``, anything else as its ``repr``."""
    if spec is None or isinstance(spec, dict):
        return spec
    func, kwargs = (spec.func, dict(spec.keywords)) if isinstance(spec, functools.partial) and not spec.args \
        else (spec, {})
    if isinstance(func, type):
        return {"class_path": f"{func.__module__}.{func.__qualname__}", "init_args": kwargs}
    return repr(spec)


class EstimatorTask(CheckedInit, LoggedHParams, L.LightningModule):
    """Base LightningModule of every task: holds the gradient estimator (a constructor argument).

    * The estimator is a module attribute; the task never branches on its name.
    * Checkpoints carry the RNG state that drives sampling, so a resumed run draws the same noise
      as an uninterrupted one (exact resumption). Validation and test draw from a forked RNG with a
      fixed seed, so evaluating never perturbs the training noise and its metrics are reproducible.
    * Checkpoints carry the accumulated state of the task's training epoch means (its
      :class:`~catvae.metrics.StepMean` metrics, summed over DDP ranks), so an epoch interrupted anywhere
      and resumed logs the same epoch means as a straight run. Evaluation metrics need no such state:
      Lightning resets them after every validation, and checkpoints are written between validations.
    * Loading a checkpoint written for another task or latent shape fails with one clear line.
    * Training never writes a non-finite state: a non-finite loss stops the run (checked every step
      where it costs no device sync, i.e. on CPU), and a checkpoint is refused when a parameter is NaN
      or infinite (the previous ``last.ckpt`` stays), with :class:`~catvae.errors.TrainingDiverged`.
    """

    #: the task's part of the run directory's experiment name (``runs/<data>_<task>/<estimator>/``, see
    #: :func:`catvae.runs.experiment_name`); empty: the data's name alone.
    run_name: str = ""
    #: the validation metric that selects the ``best`` checkpoint (minimized); ``None``: keep the newest.
    monitor: str | None = "val/nelbo"
    #: the metrics shown next to the hyperparameters in TensorBoard's HPARAMS tab.
    hparams_metrics: tuple[str, ...] = ()
    #: what each constructor argument accepts (:mod:`estimators.constraints`), checked when the task saves
    #: its hyperparameters.
    arg_constraints: dict = {}
    #: the seed of the evaluation RNG (validation / test sampling).
    eval_seed: int = 1234

    def __init__(self, estimator: EstimatorSpec, optimizer: OptimizerSpec = None,
                 lr_scheduler: SchedulerSpec = None) -> None:
        super().__init__()
        self.estimator = resolve_estimator(estimator)
        self._optimizer = _factory(optimizer, (torch.optim.Optimizer,), "optimizer", "an optimizer")
        self._lr_scheduler = _factory(lr_scheduler, (LRScheduler, ReduceLROnPlateau), "lr_scheduler",
                                      "a learning-rate scheduler")
        self._pending_rng: dict | None = None

    def configure_optimizers(self):
        """The task's optimizer (:meth:`build_optimizer`) and, when configured, its learning-rate scheduler
        (stepped every epoch; ``ReduceLROnPlateau`` watches :attr:`monitor`)."""
        return self.with_scheduler(self.build_optimizer())

    def build_optimizer(self, capturable: bool = False) -> torch.optim.Optimizer:
        """The configured ``optimizer`` over all parameters, or, by default, Adam with the task's ``lr``
        (every benchmark of the paper uses Adam, Table 5; :meth:`adam`). ``capturable=True``: the step will
        be captured in a CUDA graph, so an optimizer with a ``capturable`` option must have it on."""
        if self._optimizer is None:
            return self.adam(capturable)
        optimizer = self._optimizer(self.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must build a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if capturable and optimizer.defaults.get("capturable") is False:
            raise ConfigError("fast_step captures the optimizer step in a CUDA graph: pass "
                              "--model.init_args.optimizer.init_args.capturable=true")
        optimizer.register_load_state_dict_pre_hook(_keep_kernel_flags)
        return optimizer

    def with_scheduler(self, optimizer: torch.optim.Optimizer):
        """``optimizer`` with the configured ``lr_scheduler`` in Lightning's ``configure_optimizers`` form."""
        if self._lr_scheduler is None:
            return optimizer
        scheduler = self._lr_scheduler(optimizer)
        config = {"scheduler": scheduler}
        if isinstance(scheduler, ReduceLROnPlateau):
            if self.monitor is None:
                raise ConfigError(f"ReduceLROnPlateau needs a validation metric, and {type(self).__name__} "
                                  "has none: choose another --model.init_args.lr_scheduler")
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def adam(self, capturable: bool = False) -> torch.optim.Adam:
        """``Adam(lr)`` over all parameters, with PyTorch's fused kernel on CPU and CUDA (one pass over
        every parameter instead of a dozen ops per tensor; measured: docs/performance.md, "Fused Adam").
        ``capturable=True`` (CUDA-graph capture) keeps the default multi-tensor kernel.

        A saved optimizer state carries the kernel flags it was written with (``capturable``, ``fused``,
        ``foreach``), and ``Optimizer.load_state_dict`` would restore them: a CPU or default-path checkpoint
        resumed with the captured step on a GPU would fail at capture, a GPU one resumed on CPU in Adam.
        The flags of the optimizer built here win over the file's (a load-state-dict pre-hook)."""
        return adam(self.parameters(), self.hparams.lr, self.device, capturable)

    def record_estimator(self) -> None:
        """After ``self.save_hyperparameters(ignore=["estimator"])`` in a task's ``__init__``: record the estimator
        by name and hyperparameters (TensorBoard's hparams, ``hparams.yaml``) instead of as a module, and the
        optimizer and scheduler as plain data, also in ``hparams_initial`` (what the loggers write). LightningCLI
        gives the optimizer and scheduler as their config ({class_path, init_args}), a Python caller as
        callables. The constructor's arguments were checked before ``__init__`` ran (:class:`CheckedInit`)."""
        self.save_hyperparameters({"estimator": {"name": self.estimator.name, **self.estimator.hparams()},
                                   **{k: _describe(self.hparams.get(k)) for k in ("optimizer", "lr_scheduler")}})

    # -- reproducibility --------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_rng(self, offset: int = 0):
        """Fork the global RNG (CPU, and this module's CUDA device) and seed it for evaluation."""
        with seeded(self.eval_seed + offset, self.device):
            yield

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool | None = True, **kwargs):
        """Lightning's ``load_from_checkpoint`` with PyTorch's safe loader by default (``weights_only=True``
        whatever the torch version: before 2.6 its default unpickles anything); pass ``weights_only=False``
        only for a file you trust. The task is rebuilt from its recorded hyperparameters directly, not
        through LightningCLI's parser (which a ``catvae fit`` checkpoint names), so the recorded estimator
        description (``{"name": ..., ...}``) rebuilds the estimator."""
        safe = weights_only is not False
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=safe)
        (checkpoint.get("hyper_parameters") or {}).pop("_instantiator", None)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        return super().load_from_checkpoint(buffer, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=safe, **kwargs)

    def check_trainer(self, trainer: L.Trainer) -> None:
        """Raise :class:`ConfigError` if the task cannot run with ``trainer``'s settings (called by the CLI
        before anything is launched or written; tasks with restrictions override it)."""

    # -- training that stays finite ----------------------------------------------------------------
    def check_finite_loss(self, loss: torch.Tensor) -> None:
        """Stop with :class:`TrainingDiverged` if ``loss`` is NaN or infinite. Only CPU losses are checked
        (reading a GPU value would wait for the device every step); on a GPU the checkpoint guard of
        :meth:`on_save_checkpoint` catches the diverged state before it is written."""
        if loss.device.type == "cpu" and not math.isfinite(float(loss.detach().sum())):
            raise TrainingDiverged(f"the training loss became {loss.item()} at step {self.global_step}")

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.check_finite_loss(loss)

    def _check_finite_parameters(self) -> None:
        for name, param in self.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise TrainingDiverged(f"parameter {name} became non-finite by step {self.global_step}; "
                                       "the checkpoint was not written")

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._check_finite_parameters()
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint.update(self.checkpoint_entries(rng, getattr(attached_trainer(self), "datamodule", None)))

    def checkpoint_entries(self, rng: dict, datamodule: L.LightningDataModule | None = None) -> dict:
        """What the task adds to its Lightning checkpoint: ``catvae_rng`` (``rng``, the training noise state to
        continue from), ``catvae_task`` (its class and estimator), ``catvae_metrics`` (its epoch means,
        :meth:`_metric_states`) and, given the ``datamodule`` it was trained on, ``catvae_data`` (its class:
        ``catvae sample`` and ``analyze`` rebuild its test set). A batched group's run checkpoints are completed
        with it too (:func:`catvae.compare.batched.split_checkpoint`)."""
        entries = {"catvae_rng": rng, "catvae_task": {"class": type(self).__qualname__, "estimator": self.estimator.name},
                   "catvae_metrics": self._metric_states()}
        if datamodule is not None:
            entries["catvae_data"] = {"class_path": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"}
        return entries

    def on_test_epoch_end(self) -> None:
        """The test metrics go on the step the evaluated model was trained to (Lightning takes a logged ``step`` as
        the x of the epoch's metrics), next to the run's curves, not at step 0 of the test trainer."""
        step = self.global_step or getattr(self, "_checkpoint_step", 0)
        if step:
            self.log("step", float(step))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._checkpoint_step = int(checkpoint.get("global_step") or 0)
        self.check_checkpoint(checkpoint)
        trainer = attached_trainer(self)
        if trainer is not None and trainer.max_steps not in (None, -1):
            _count_replayed_epoch_end_once(checkpoint)
        self._pending_rng = checkpoint.get("catvae_rng")
        self._restore_metric_states(checkpoint.get("catvae_metrics") or {})

    def check_checkpoint(self, checkpoint: dict, datamodule=None) -> None:
        """Raise :class:`ConfigError` if ``checkpoint`` was written by another task or for other shapes
        (the CLI calls this before anything is written, so a mismatch loses nothing; ``datamodule``: the
        data the task will run on, for tasks whose shapes depend on it)."""
        task = checkpoint.get("catvae_task")
        if task is not None and task.get("class") != type(self).__qualname__:
            raise ConfigError(
                f"checkpoint was written by {task.get('class')}, not {type(self).__qualname__}: "
                "pass the config the checkpoint was trained with"
            )
        self._check_state_dict(checkpoint.get("state_dict") or {}, strict=True)

    def _metric_states(self) -> dict:
        """The accumulated state of every training epoch mean (``StepMean``) of the task, reduced over DDP
        ranks (tensors and ints only, so that PyTorch's safe loader opens the checkpoint).

        A checkpoint written at the end of a whole epoch (after the task logged the epoch's means, which a
        resumed run does not log again) holds empty states: the next epoch starts from zero. At the end of
        an epoch cut short by ``max_steps`` the states are kept: a resumed run with a larger budget
        finishes that epoch and logs its whole mean."""
        trainer = attached_trainer(self)
        distributed = trainer is not None and trainer.world_size > 1
        loop = trainer.fit_loop if trainer is not None else None
        logged = loop is not None and loop.epoch_progress.current.processed > loop.epoch_progress.current.completed \
            and loop.epoch_loop.batch_progress.is_last_batch
        states = {}
        for name, metric in step_means(self).items():
            if logged:
                states[name] = {"states": {key: _detached(v) for key, v in metric_state_defaults(metric).items()},
                                "update_count": 0}
                continue
            with metric.sync_context(should_sync=distributed, should_unsync=True):
                values = {key: _detached(getattr(metric, key)) for key in metric_state_defaults(metric)}
            states[name] = {"states": values, "update_count": metric.update_count}
        return states

    def _restore_metric_states(self, saved: dict) -> None:
        """Put saved metric states back: the reduced sums (and concatenations) on rank 0 alone, any other
        reduction on every rank, so that the next reduction over ranks gives the saved value again."""
        trainer = attached_trainer(self)
        rank = trainer.global_rank if trainer is not None else 0
        means = step_means(self)
        for name, entry in saved.items():
            metric = means.get(name)
            if metric is None:
                continue
            metric.reset()
            for key, value in entry["states"].items():
                if key not in metric_state_defaults(metric):
                    continue
                reduction = metric_reductions(metric).get(key)
                if rank == 0 or reduction not in (dim_zero_sum, dim_zero_cat):
                    default = getattr(metric, key)
                    if isinstance(value, list):
                        setattr(metric, key, [v.to(default[0].device if default else "cpu") for v in value])
                    else:
                        setattr(metric, key, value.to(device=default.device, dtype=default.dtype))
            metric.set_update_count(entry.get("update_count", 0))

    def on_train_start(self) -> None:
        if self._pending_rng is not None:  # resume: continue the training noise exactly
            torch.set_rng_state(self._pending_rng["torch"])
            if "cuda" in self._pending_rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._pending_rng["cuda"], self.device)
            self._pending_rng = None
        if self.trainer.world_size > 1:
            # every rank starts from the same seed (and a checkpoint holds rank 0's state): give each
            # rank its own noise stream, derived deterministically from the shared one
            base = int(torch.randint(0, 2**62, (1,)).item())
            torch.manual_seed(base + self.trainer.global_rank)

    def on_train_epoch_start(self) -> None:
        # Lightning 2.6, step-bounded training (max_steps set) resumed from an epoch-end checkpoint: the loop
        # replays that epoch's end and leaves its logging step (_batches_that_stepped, which a straight run
        # keeps equal to global_step) one ahead, so every later value would be logged one step late
        loop = self.trainer.fit_loop.epoch_loop
        if logging_step(loop) != self.global_step:
            set_logging_step(loop, self.global_step)

    def _check_state_dict(self, state_dict: dict, strict: bool) -> None:
        own = self.state_dict()
        mismatched = [k for k, v in state_dict.items() if k in own and hasattr(v, "shape") and own[k].shape != v.shape]
        if mismatched:
            k = mismatched[0]
            raise ConfigError(
                f"checkpoint does not match the model: {k} has shape {tuple(state_dict[k].shape)} in the "
                f"checkpoint but {tuple(own[k].shape)} in the model; use the config it was trained with"
            )
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            raise ConfigError(
                "checkpoint does not match the model: "
                + (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}")
                + "; use the config it was trained with"
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._check_state_dict(state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def adam(parameters, lr: float, device: torch.device, capturable: bool = False) -> torch.optim.Adam:
    """``Adam(lr)`` as :meth:`EstimatorTask.adam` builds it for a module on ``device``: fused on CPU and CUDA unless
    ``capturable``, and keeping its own kernel flags when it loads a saved state."""
    fused = not capturable and device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(parameters, lr=lr, capturable=capturable, fused=fused or None)
    optimizer.register_load_state_dict_pre_hook(_keep_kernel_flags)
    return optimizer


def _count_replayed_epoch_end_once(checkpoint: dict) -> None:
    """Make Lightning 2.6 count the epoch of an epoch-end checkpoint once when it resumes step-bounded training.

    A checkpoint written in ``on_train_epoch_end`` records the epoch as processed but not completed. Resumed with
    ``max_steps`` set (Lightning then always restarts within an epoch), the fit loop replays that epoch's end and
    increments ``processed`` a second time: the run then counts one epoch too many, stops at ``max_epochs`` one
    epoch early, and exits 0 short of its ``max_steps`` (issue 23 §0). Recorded as processed one fewer time (the
    state of a run stopped inside the epoch's end), the replay's own increment brings both counters to the
    straight run's values. Only that one signature is changed (ready = started = processed = completed + 1); a
    checkpoint changed once no longer has it."""
    progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress")
    if not isinstance(progress, dict):
        return
    counters = [progress.get("total"), progress.get("current")]
    if all(isinstance(c, dict) and c.get("ready") == c.get("started") == c.get("processed") == c.get("completed", -9) + 1
           for c in counters):
        for c in counters:
            c["processed"] -= 1


def _detached(value):
    if isinstance(value, list):
        return [v.detach().clone().cpu() for v in value]
    return value.detach().clone().cpu()


_KERNEL_FLAGS = ("capturable", "fused", "foreach", "differentiable")


def _keep_kernel_flags(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """Load-state-dict pre-hook: the saved param groups take the kernel flags of ``optimizer``."""
    state_dict = {**state_dict, "param_groups": [dict(group) for group in state_dict["param_groups"]]}
    for saved, current in zip(state_dict["param_groups"], optimizer.param_groups):
        for flag in _KERNEL_FLAGS:
            if flag in current:
                saved[flag] = current[flag]
    return state_dict
