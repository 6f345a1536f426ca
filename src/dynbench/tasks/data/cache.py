"""Where data sets live once prepared: ``$DYNBENCH_DATA``, else ``<user cache>/dynbench/data``."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The data cache directory (not created here)."""
    env = os.environ.get("DYNBENCH_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynbench" / "data"
