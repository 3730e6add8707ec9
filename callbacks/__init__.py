"""Lightning callbacks for catvae (image logging, timing, interrupt checkpoints, diagnostics)."""

from .checkpoint import LastCheckpoint
from .images import ImageLogger
from .interrupt import CheckpointOnInterrupt
from .timing import Throughput

__all__ = ["CheckpointOnInterrupt", "ImageLogger", "LastCheckpoint", "Throughput"]
