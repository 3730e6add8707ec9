"""Lightning callbacks for catvae: checkpoints of a run, interrupts, progress lines, timing, hyperparameters,
diagnostics, schedules: each works on any task (or names in its docstring the protocol it needs)."""

__distribution__ = "catvae"  # checked by catvae.layout: this top-level package is catvae's

from .checkpoint import RunCheckpoint
from .diagnostics import GradientDiagnostics
from .durable import CommitCheckpoints, DurableCheckpointIO
from .hparams import HParamsSummary
from .interrupt import CheckpointOnInterrupt
from .progress import ProgressLines
from .schedule import EstimatorSchedule
from .timing import Throughput

__all__ = ["CheckpointOnInterrupt", "CommitCheckpoints", "DurableCheckpointIO", "EstimatorSchedule", "GradientDiagnostics",
           "HParamsSummary", "ProgressLines", "RunCheckpoint", "Throughput"]
