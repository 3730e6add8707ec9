"""Lightning callbacks for catvae: checkpoints of a run, interrupts, timing, hyperparameters, images, diagnostics."""

from .checkpoint import RunCheckpoint
from .diagnostics import GradientDiagnostics
from .hparams import HParamsSummary
from .images import ImageLogger
from .interrupt import CheckpointOnInterrupt
from .timing import Throughput

__all__ = ["CheckpointOnInterrupt", "GradientDiagnostics", "HParamsSummary", "ImageLogger", "RunCheckpoint",
           "Throughput"]
