"""What a sweep's child process needs: its environment, and its tie to the sweep."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

__all__ = ["child_env", "tie_to_parent"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the catvae package


def child_env(threads: int) -> dict:
    """The environment of a run or group process: unbuffered output, the sweep's pid, this catvae importable,
    ``threads`` OpenMP threads unless set."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CATVAE_COMPARE_PARENT": str(os.getpid()),
           # the run imports this very catvae (a source checkout without an install too), from any directory
           "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def tie_to_parent() -> bool:
    """On Linux, have this process get SIGTERM (checkpoint and stop) when the sweep dies, even by SIGKILL;
    ``False`` when the sweep is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    return str(os.getppid()) == os.environ.get("CATVAE_COMPARE_PARENT", str(os.getppid()))
