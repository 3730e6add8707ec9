"""What the optimization benchmarks share: a problem from the DataModule, θ sized by it, the exact objective."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from estimators.base import ConfigError

from ..core import EstimatorSpec, EstimatorTask, OptimizerSpec, SchedulerSpec
from ..data.steps import StepsDataModule
from ..metrics import StepMean

__all__ = ["BenchmarkTask"]


class BenchmarkTask(EstimatorTask):
    """A benchmark task: θ, the objective and the metrics; the problem instance comes from the DataModule.

    * In ``setup`` the task takes the DataModule's problem (:meth:`attach`): the problem's tensors become
      non-persistent buffers (moved to the device with the task, not saved), and the parameters, declared
      in ``__init__`` without a size (``declare``), are created for the problem's size. A checkpoint (also
      through ``load_from_checkpoint``, without a DataModule) creates them with its own sizes.
    * Validation and test evaluate the exact objective once (``evaluate``).
    * The training objective is logged with :meth:`log_train_objective`: ``<tag>_step`` every step and
      ``<tag>_epoch``, the mean over the epoch, accumulated in a metric whose state travels in the
      checkpoint (a resumed epoch reports the same mean as an uninterrupted one).
    """

    #: the tag of the training objective (``<tag>_step``, ``<tag>_epoch``, ``<tag>_window_mean``/``_std``).
    train_tag: str = "train/loss"
    #: the paper's statistic of the training objective: its mean (and std) over the last ``window`` steps
    #: (§4: "the average training loss over the last 100 steps"), logged at each epoch end.
    window: int = 100
    #: checkpointed buffers that a checkpoint written before they existed may lack: such a checkpoint
    #: resumes with their initial values instead of being refused.
    optional_state: tuple[str, ...] = ("_window", "_window_count")
    #: the type of problem the task solves (what its DataModule's ``problem()`` returns).
    problem_type: ClassVar[type] = object

    def __init__(self, estimator: EstimatorSpec, optimizer: OptimizerSpec = None,
                 lr_scheduler: SchedulerSpec = None) -> None:
        super().__init__(estimator, optimizer, lr_scheduler)
        self.train_objective = StepMean()
        self.problem = None
        #: the declared, size-less parameters and buffers (``declare``): ``{name: "parameter" | "buffer"}``
        self.declared: dict[str, str] = {}
        self.register_buffer("_window", torch.zeros(self.window))  # a ring of the last objective values
        self.register_buffer("_window_count", torch.zeros((), dtype=torch.long))

    # -- the problem and the parameters ---------------------------------------------------------------
    def declare(self, *names: str, buffers: tuple[str, ...] = ()) -> None:
        """Parameters (and checkpointed ``buffers``, e.g. per-problem training state) whose size the problem
        decides: created by :meth:`attach` or by a loaded state dict."""
        for name in names:
            self.register_parameter(name, None)
        for name in buffers:
            self.register_buffer(name, None)
        self.declared.update({**dict.fromkeys(names, "parameter"), **dict.fromkeys(buffers, "buffer")})

    def create(self, name: str, value: Tensor) -> None:
        """Create the declared parameter or buffer ``name`` with initial ``value``, or check that one loaded
        before has the same size (a checkpoint written for another problem size is refused)."""
        current = getattr(self, name)
        if current is None:
            if self.declared[name] == "buffer":
                self.register_buffer(name, value)
            else:
                self.register_parameter(name, nn.Parameter(value))
        elif current.shape != value.shape:
            raise ConfigError(f"the checkpoint's {name} has shape {tuple(current.shape)}, but the problem of the "
                              f"data module needs {tuple(value.shape)}: pass the data config it was trained with")

    def attach(self, problem) -> BenchmarkTask:
        """Take ``problem`` (a :attr:`problem_type`): its tensors and the parameters it sizes."""
        if not isinstance(problem, self.problem_type):
            raise ConfigError(f"{type(self).__name__} solves a {self.problem_type.__name__}, got "
                              f"{type(problem).__name__}; pass the matching --data")
        self.problem = problem
        self._attach(problem)
        return self

    def _attach(self, problem) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if self.problem is None:
            self.attach(_problem_of(self.trainer.datamodule, self))

    def check_checkpoint(self, checkpoint: dict, datamodule=None) -> None:
        if self.problem is None and datamodule is not None:
            self.attach(_problem_of(datamodule, self))  # sizes the parameters, so that a mismatch is seen now
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for name in self.optional_state:
                if name not in state and getattr(self, name, None) is not None:
                    state[name] = getattr(self, name).detach().clone()
        self._create_from(state or {})
        super().check_checkpoint(checkpoint, datamodule)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._create_from(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _create_from(self, state_dict: dict) -> None:
        """Declared parameters and buffers not created yet take their size from ``state_dict``."""
        for name, kind in self.declared.items():
            if getattr(self, name) is None and name in state_dict:
                if kind == "buffer":
                    self.register_buffer(name, torch.empty_like(state_dict[name]))
                else:
                    self.register_parameter(name, nn.Parameter(torch.empty_like(state_dict[name])))

    # -- logging --------------------------------------------------------------------------------------
    def log_train_objective(self, value: Tensor) -> None:
        value = value.detach()
        self.train_objective.update(value)
        with torch.no_grad():
            self._window[self._window_count % len(self._window)] = value
            self._window_count += 1
        self.log_step(f"{self.train_tag}_step", value)

    def log_step(self, name: str, value: Tensor) -> None:
        """Log a per-step training value on the steps the logger writes (every ``trainer.log_every_n_steps``),
        and only then: Lightning builds a result entry at every ``self.log`` call, and the values of the other
        steps are dropped anyway. Measured on a 2-core CPU (GMM, 3,000 steps, 1 thread): logging every step
        cost 3.4 ms per step, half of the run's time (20.7 s vs 10.6 s without these calls)."""
        trainer = self._trainer
        every = trainer.log_every_n_steps if trainer is not None else 1
        if (every and (self.global_step + 1) % every == 0) or (trainer is not None and trainer.fast_dev_run):
            self.log(name, value, on_step=True, on_epoch=False, batch_size=1)

    def window_stats(self) -> tuple[Tensor, Tensor]:
        """Mean and std of the training objective over the last :attr:`window` steps (fewer at the start)."""
        n = int(min(int(self._window_count), len(self._window)))
        values = self._window[:max(n, 1)]
        return values.mean(), (values.std() if n > 1 else torch.zeros_like(values[0]))

    def on_train_epoch_end(self) -> None:
        if not self.train_objective.update_called:  # logged before the checkpoint this run resumed from
            return
        self.log(f"{self.train_tag}_epoch", self.train_objective, prog_bar=True)
        mean, std = self.window_stats()
        self.log(f"{self.train_tag}_window_mean", mean)
        self.log(f"{self.train_tag}_window_std", std)

    def evaluate(self, stage: str, batch_idx: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluate("val", batch_idx)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluate("test", batch_idx)


def _problem_of(datamodule, task: BenchmarkTask):
    if not isinstance(datamodule, StepsDataModule):
        raise ConfigError(f"{type(task).__name__} takes its problem from a benchmark data module (--data, e.g. "
                          f"{task.problem_type.__name__.replace('Problem', 'DataModule')}), got "
                          f"{type(datamodule).__name__}")
    return datamodule.problem()
