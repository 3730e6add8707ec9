"""The run layout on disk and the checkpoints in it.

A run lives in ``<runs_dir>/<experiment>/<estimator>/version_N/``: the loggers' files (TensorBoard events,
``metrics.csv``, ``hparams.yaml``), the resolved ``config.yaml`` and ``checkpoints/`` (``last.ckpt``,
``best-*.ckpt``). This module claims new version directories atomically, finds the ``last`` or
``best`` checkpoint of an experiment, and opens checkpoints with PyTorch's safe loader.

Checkpoints are untrusted input: :func:`load_checkpoint` reads them with ``torch.load(weights_only=True)``,
which rebuilds tensors and plain Python types only and never runs code stored in the file. Everything
catvae writes into a checkpoint is of those types (tested), so the safe loader opens all of them.
"""

from __future__ import annotations

import datetime
import os
import pickle
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from callbacks.durable import PREVIOUS, checksum_path, verify_checksum
from estimators.base import ConfigError

__all__ = [
    "BEST_PREFIX", "LAST", "VERSIONS", "checkpoint_score", "claim_version", "environment_lines", "experiment_name",
    "load_checkpoint", "make_folder", "record_versions", "remove_empty", "resolve_checkpoint", "safe_name", "version_of",
    "versions",
]

LAST = "last.ckpt"
BEST_PREFIX = "best-"
_VERSION = re.compile(r"version_(\d+)")


_SAFE = re.compile(r"[A-Za-z0-9._-]+")


def safe_name(value, field: str, nested: bool = False) -> str:
    """``value`` when it can be a folder name inside the user's folders: letters, digits, ``.``, ``_``, ``-``, not
    ``.`` or ``..`` (``nested``: several such components joined by ``/``, never absolute), else :class:`ConfigError`
    naming ``field``. Every name that becomes a path component (experiment, setting, label, estimator) is checked,
    so that no run writes outside ``--runs_dir`` or ``--out``."""
    parts = value.split("/") if nested and isinstance(value, str) else [value]
    if not isinstance(value, str) or not value or any(not _SAFE.fullmatch(p) or p in (".", "..") for p in parts):
        allowed = "letters, digits, '.', '_', '-'" + (" (folders joined by '/')" if nested else "")
        raise ConfigError(f"{field} {value!r} cannot be a folder name: use {allowed}, not '.' or '..'")
    return value


def make_folder(path: Path, flag: str) -> Path:
    """Create the output folder ``path`` (and its parents) that option ``flag`` names, or :class:`ConfigError`
    naming the option and the reason (a file in the way, no permission); called before any work starts."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; pass a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the folder {path} of {flag} ({err.strerror or err}); "
                          f"pass a writable {flag}") from None
    return path


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (the ones a failed command created, innermost first) while they are empty: nothing a
    failed run or download made stays behind."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def experiment_name(model, datamodule) -> str:
    """The default experiment of a run (``--experiment_name`` overrides it): the data's ``run_name`` and the
    task's, joined (``mnist`` + ``l48_k2`` → ``mnist_l48_k2``; ``gmm_k20_n500``; ``polynomial_p2_linear``).
    The one place where run directories get their names."""
    parts = [str(getattr(obj, "run_name", "") or "") for obj in (datamodule, model)]
    return "_".join(p for p in parts if p) or "run"


def versions(root: Path) -> list[tuple[int, Path]]:
    """The ``version_N`` directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _VERSION.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def claim_version(root: Path) -> tuple[int, Path]:
    """Create and return the next free ``root/version_N``.

    ``os.mkdir`` fails if the directory exists, atomically, so runs started at the same time in the same
    experiment each get their own directory (a loser of the race moves on to the next number).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the run directory {root} ({err.strerror or err}); "
                          "pass a writable --runs_dir") from None
    taken = versions(root)
    number = taken[-1][0] + 1 if taken else 0
    while True:
        path = root / f"version_{number}"
        try:
            os.mkdir(path)
            return number, path
        except FileExistsError:
            number += 1
        except OSError as err:
            raise ConfigError(f"cannot create the run directory {path} ({err.strerror or err}); "
                              "pass a writable --runs_dir") from None


def version_of(ckpt: Path, root: Path) -> int | None:
    """``N`` when ``ckpt`` is a file of ``root/version_N/checkpoints/``, else ``None``."""
    try:
        parent = ckpt.resolve().parent
        if parent.name != "checkpoints" or parent.parent.parent != root.resolve():
            return None
    except OSError:
        return None
    m = _VERSION.fullmatch(parent.parent.name)
    return int(m.group(1)) if m else None


def load_checkpoint(path: Path, trust: bool = False) -> dict:
    """A Lightning checkpoint, opened with PyTorch's safe loader (``trust=True``: the full unpickler,
    which runs whatever code the file asks for — only for files you trust).

    Raises :class:`ConfigError` naming the file and the reason when it is missing, not a checkpoint,
    corrupt, or needs unsafe unpickling.
    """
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass an existing .ckpt file or --ckpt_path last")
    _check_sum(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        found = None if trust else re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:  # the file asks the unpickler to call or build an object the safe loader does not allow
            raise ConfigError(f"checkpoint {path} needs unsafe unpickling ({found.group(1)}), which can run code: "
                              "refused; if you trust the file, pass --trust_checkpoint true") from None
        raise ConfigError(f"checkpoint {path} is corrupt or not a checkpoint (UnpicklingError); "
                          "pass another --ckpt_path") from None
    except Exception as err:  # truncated zip, wrong format, I/O errors
        raise ConfigError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}); "
                          "pass another --ckpt_path") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"checkpoint {path} has no state_dict (not a Lightning checkpoint); pass another --ckpt_path")
    return ckpt


def _check_sum(path: Path) -> None:
    """:class:`ConfigError` when ``path`` no longer matches the sha256 sidecar written with it (its bytes changed
    after it was written: a disk or copy error, or an edit), offering ``previous.ckpt`` when that one is good."""
    try:
        good = verify_checksum(path)
    except OSError as err:
        raise ConfigError(f"checkpoint {path} cannot be read ({err.strerror or err}); pass another --ckpt_path") from None
    if good is not False:
        return
    previous = path.with_name(PREVIOUS)
    fallback = f"resume from the previous good one with --ckpt_path {previous}" \
        if previous != path and previous.is_file() and verify_checksum(previous) else "pass another --ckpt_path"
    raise ConfigError(f"checkpoint {path} does not match its checksum {checksum_path(path).name} (its bytes changed "
                      f"after it was written); {fallback}")


def checkpoint_score(ckpt: dict) -> float | None:
    """The monitored value recorded when a ``best-*.ckpt`` was written (the state of its ``ModelCheckpoint``,
    the one callback state with a ``monitor``)."""
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and "current_score" in state:
            score = state.get("current_score")
            if score is not None:
                return float(score)
    return None


def resolve_checkpoint(root: Path, which: str, trust: bool = False) -> tuple[Path, int]:
    """``(path, version)`` of the newest run's ``last.ckpt`` (``which="last"``) or of its best checkpoint by
    recorded score (``which="best"``: the lowest monitored value among its ``best-*.ckpt``)."""
    for version, path in reversed(versions(root)):
        folder = path / "checkpoints"
        if which == "last":
            if (folder / LAST).is_file():
                return folder / LAST, version
            continue
        scored = []
        for candidate in sorted(folder.glob(f"{BEST_PREFIX}*.ckpt")):
            score = checkpoint_score(load_checkpoint(candidate, trust))
            scored.append((float("inf") if score is None else score, candidate.name, candidate))
        if scored:
            return min(scored)[2], version
    raise ConfigError(f"--ckpt_path {which}: no {which} checkpoint under {root}/version_*/checkpoints/; "
                      "train first, or pass the path of a .ckpt file")



#: what :func:`record_versions` writes in a run directory
VERSIONS = "versions.txt"


def _git_commit(folder: Path) -> str | None:
    """``<commit>`` or ``<commit>+uncommitted`` of the git checkout holding ``folder``, else ``None``."""
    if not any((p / ".git").exists() for p in (folder, *folder.parents)):
        return None
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def environment_lines(datamodule=None) -> list[str]:
    """What a run used besides its config: catvae's version and git commit, Python, torch (and CUDA device),
    Lightning, jsonargparse, the host, and the data files (``datamodule.data_files()``) with their sizes."""
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    package = Path(__file__).resolve().parent
    commit = _git_commit(package)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [f"catvae: {version('catvae')} ({package}{f', git {commit}' if commit else ''})",
             f"python: {platform.python_version()} ({sys.executable})",
             f"torch: {torch.__version__} (CUDA device: {device})",
             f"lightning: {version('lightning')}", f"jsonargparse: {version('jsonargparse')}",
             f"host: {platform.node()}, {platform.platform()}, {os.cpu_count()} CPUs"]
    files = getattr(datamodule, "data_files", None)
    for path in (files() if callable(files) else []):
        size = f"{path.stat().st_size} bytes" if path.is_file() else "absent"
        lines.append(f"data: {path} ({size})")
    return lines


def record_versions(run_dir: Path, command: str, datamodule=None) -> None:
    """Append to ``<run_dir>/versions.txt`` a block: the command (``fit``, ``fit (resumed)``, ``test`` ...), the
    time, and :func:`environment_lines` (every process that trained or evaluated the run leaves one)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    block = "\n".join([f"# catvae {command}, {stamp}", *environment_lines(datamodule)]) + "\n\n"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / VERSIONS, "a") as f:
        f.write(block)
