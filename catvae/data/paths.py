"""Where data files are looked for: ``$CATVAE_DATA_DIR``, else ``./data`` (one rule for every dataset)."""

from __future__ import annotations

import os
from pathlib import Path

from estimators.base import ConfigError

__all__ = ["resolve_data_dir", "resolve_file"]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$CATVAE_DATA_DIR``, else ``./data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("CATVAE_DATA_DIR") or "data").expanduser()


def resolve_file(source: str | os.PathLike, subfolder: str, what: str) -> Path:
    """``source`` as given (absolute, or relative to the working directory), else under
    ``<data dir>/<subfolder>/`` or ``<data dir>/``; a :class:`ConfigError` naming every place looked at."""
    path = Path(source).expanduser()
    candidates = [path]
    if not path.is_absolute():
        root = resolve_data_dir()
        candidates += [root / subfolder / path, root / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{what} {str(source)!r} not found (looked at: {', '.join(str(c) for c in candidates)}); "
                      f"pass an existing file or set CATVAE_DATA_DIR to the folder holding {subfolder}/")
