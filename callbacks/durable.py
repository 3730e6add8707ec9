"""Checkpoints that never claim more than the logs hold, and that say when their bytes changed.

Two pieces, installed together by ``catvae fit`` and ``catvae compare --batched``:

* :class:`DurableCheckpointIO`, a Lightning ``CheckpointIO`` plugin. It serializes a checkpoint when Lightning
  asks for it (the state of that moment, bytes in memory), but while training it writes the file only when
  told to (:meth:`DurableCheckpointIO.commit`), after every logger has flushed. Each file is written to a
  temporary name, fsynced and renamed into place, with a ``<name>.sha256`` sidecar in ``sha256sum`` format;
  the file it replaces is kept as ``previous.ckpt`` (``last.ckpt`` only), so that a checkpoint whose bytes
  changed later has a good one to fall back to.
* :class:`CommitCheckpoints`, the callback that commits at the first point where Lightning has logged
  everything the checkpoint's step produced: the start of the next training batch or epoch, the end of
  training, or a stop by signal. Why not at once: Lightning writes the epoch-end checkpoint in
  ``on_train_epoch_end`` but hands that epoch's means (``train/loss_epoch``) to the loggers only afterwards
  (``update_train_epoch_metrics``), and step metrics after ``on_train_batch_end``; TensorBoard buffers them
  further. A kill in between left a checkpoint that recorded the epoch as done while its metrics were lost,
  and a resumed run never logs them again (issue 23 §1). Committed later, a kill in between leaves the
  previous checkpoint, from which the resumed run redoes (and logs) the steps exactly.

A crash (any exception but Lightning's ``SIGTERMException``) discards the uncommitted checkpoint: its step's
logs may be incomplete. Outside training (``trainer.save_checkpoint`` after ``fit``), files are written at once.

:func:`verify_checksum` checks a file against its sidecar; files without one (written before the sidecar
existed, or by other tools) are not checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["CommitCheckpoints", "DurableCheckpointIO", "checksum_path", "verify_checksum"]

SIDECAR = ".sha256"
PREVIOUS = "previous.ckpt"
_LAST = "last.ckpt"


def checksum_path(path: str | os.PathLike) -> Path:
    """The sidecar of a checkpoint: ``last.ckpt`` -> ``last.ckpt.sha256``."""
    return Path(f"{os.fspath(path)}{SIDECAR}")


def _recorded(sidecar: Path) -> str | None:
    try:
        return sidecar.read_text().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def verify_checksum(path: str | os.PathLike) -> bool | None:
    """``True`` when ``path`` matches its sidecar, ``False`` when it does not, ``None`` when it has none.

    A sidecar still under its temporary name also counts: a kill between the two renames of a write leaves
    the new file with its new sidecar in ``<name>.sha256.tmp``."""
    sidecar = checksum_path(path)
    candidates = [h for h in (_recorded(sidecar), _recorded(Path(f"{sidecar}.tmp"))) if h]
    if not candidates:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest() in candidates


def _write_atomically(path: Path, data: bytes) -> Path:
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _sidecar_text(digest: str, path: Path) -> bytes:
    """``sha256sum`` format: ``sha256sum -c last.ckpt.sha256`` checks the file in its folder."""
    return f"{digest}  {path.name}\n".encode()


class DurableCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic writes, sha256 sidecars, ``previous.ckpt``, and writes deferred to
    :meth:`commit` while :attr:`deferring` (see the module docstring).

    Serializing at request time costs the checkpoint's size in host memory until the commit (one checkpoint:
    the commit follows within a training step)."""

    def __init__(self) -> None:
        super().__init__()
        self.deferring = False
        self._queue: list[tuple[str, Path, bytes | None]] = []

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        self._queue.append(("save", Path(path), buffer.getvalue()))
        if not self.deferring:
            self.commit()

    def remove_checkpoint(self, path) -> None:
        self._queue.append(("remove", Path(path), None))
        if not self.deferring:
            self.commit()

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def discard(self) -> None:
        self._queue.clear()

    def commit(self, loggers=()) -> None:
        """Flush ``loggers`` (``Logger.save``: TensorBoard's event writer, the CSV file), then carry out the
        queued writes and removals in their order."""
        if not self._queue:
            return
        for logger in loggers:
            logger.save()
        queue, self._queue = self._queue, []
        for action, path, data in queue:
            if action == "remove":
                for p in (path, checksum_path(path)):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            else:
                self._write(path, data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_atomically(path, data)
        sidecar = checksum_path(path)
        sidecar_tmp = _write_atomically(sidecar, _sidecar_text(hashlib.sha256(data).hexdigest(), path))
        if path.name == _LAST and path.is_file():  # keep the file it replaces (the same bytes: a hard link)
            previous = path.with_name(PREVIOUS)
            with contextlib.suppress(OSError):
                link = Path(f"{previous}.tmp")
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                os.link(path, link)
                os.replace(link, previous)
                recorded = _recorded(sidecar)
                if recorded:
                    os.replace(_write_atomically(checksum_path(previous), _sidecar_text(recorded, previous)),
                               checksum_path(previous))
        os.replace(tmp, path)
        os.replace(sidecar_tmp, sidecar)


class CommitCheckpoints(Callback):
    """Write the checkpoints that :class:`DurableCheckpointIO` holds once every logger has flushed what their
    step logged (see the module docstring). ``loggers``: loggers outside ``trainer.loggers`` to flush too
    (a batched group's per-run loggers). Does nothing when the trainer's ``CheckpointIO`` is another."""

    def __init__(self, loggers=()) -> None:
        self.loggers = list(loggers)

    @staticmethod
    def _io(trainer) -> DurableCheckpointIO | None:
        checkpoint_io = getattr(trainer.strategy, "checkpoint_io", None)
        return checkpoint_io if isinstance(checkpoint_io, DurableCheckpointIO) else None

    def _commit(self, trainer) -> None:
        checkpoint_io = self._io(trainer)
        if checkpoint_io is not None and checkpoint_io.pending:
            checkpoint_io.commit([*trainer.loggers, *self.loggers])

    def on_train_start(self, trainer, pl_module) -> None:
        checkpoint_io = self._io(trainer)
        if checkpoint_io is not None:
            checkpoint_io.deferring = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._commit(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._commit(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._commit(trainer)
        self._stop_deferring(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        checkpoint_io = self._io(trainer)
        if checkpoint_io is None:
            return
        if isinstance(exception, SIGTERMException):  # raised after the loop logged its step or epoch
            self._commit(trainer)
        else:
            checkpoint_io.discard()
        self._stop_deferring(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop_deferring(trainer)

    def _stop_deferring(self, trainer) -> None:
        checkpoint_io = self._io(trainer)
        if checkpoint_io is not None:
            checkpoint_io.deferring = False
