"""Lightning callbacks for catvae (image logging, timing, interrupt checkpoints, diagnostics)."""

from .checkpoint import LastCheckpoint
from .diagnostics import GradientDiagnostics
from .images import ImageLogger
from .interrupt import CheckpointOnInterrupt
from .timing import Throughput

__all__ = ["CheckpointOnInterrupt", "GradientDiagnostics", "ImageLogger", "LastCheckpoint", "Throughput"]
