"""A sweep's live progress: the latest progress line of each running run or group, read from its ``log.txt``.

Each run and group process logs :class:`callbacks.ProgressLines` lines (``progress: step 5,900/60,000 (9.8%) |
3.95 steps/s | ETA 3h48m | ...``) into its ``log.txt`` every ``CATVAE_PROGRESS_EVERY`` seconds; the sweep shows the
newest one of each running process at the same interval, one line per process that moved, so a terminal, a
redirected log and CI all see the sweep move.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from callbacks.progress import PREFIX

__all__ = ["Watch", "latest_line"]

#: bytes read from the end of a log when looking for its latest line (a progress line is ~200)
_TAIL = 16384


def latest_line(log: Path, since: int = 0) -> str | None:
    """The newest progress line written to ``log`` after byte ``since`` (without its prefix), or ``None``."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(since, end - _TAIL))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [ln for ln in text.splitlines() if ln.startswith(PREFIX)]
    return lines[-1][len(PREFIX):].strip() if lines else None


class Watch:
    """Every ``every_s`` seconds, print ``  <name>: <latest progress line>`` for each watched log that has a new
    one (``every_s`` 0: never). Thread-safe; a context manager that starts and stops its thread."""

    def __init__(self, every_s: float, stream=None) -> None:
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.logs: dict[str, list] = {}  # name -> [log, offset at start, last line shown]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="catvae-compare-watch", daemon=True)

    def __enter__(self) -> Watch:
        if self.every_s > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def add(self, name: str, log: Path) -> None:
        """Watch ``log`` from its current end (a resumed run's earlier lines are not news)."""
        with self.lock:
            self.logs[name] = [log, log.stat().st_size if log.is_file() else 0, None]

    def remove(self, name: str) -> None:
        with self.lock:
            self.logs.pop(name, None)

    def poll(self) -> list[str]:
        """Print (and return) the new lines."""
        shown = []
        with self.lock:
            for name, entry in self.logs.items():
                line = latest_line(entry[0], entry[1])
                if line is not None and line != entry[2]:
                    entry[2] = line
                    shown.append(f"  {name}: {line}")
        if shown:
            print("\n".join(shown), file=self.stream, flush=True)
        return shown

    def _loop(self) -> None:
        while not self.done.wait(self.every_s):
            self.poll()
