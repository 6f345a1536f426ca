"""Where dynbench keeps what it makes: one cache root, and the two caches derived from it.

The root is ``$XDG_CACHE_HOME/dynbench``, else ``~/.cache/dynbench`` (:func:`cache_root`). Under it:

- the **model cache** (:func:`model_cache_dir`): trained dense backbones and method fits
  (``methods/``), keyed by everything that defines them, so a stale entry is never read.
  ``$DYNBENCH_CACHE`` moves it elsewhere, e.g. to start from a cold cache without touching prepared
  data; ``bench run --cache-dir`` moves it for one run.
- the **data cache** (:func:`data_root`): prepared data sets (``<root>/data/<name>``).
  ``$DYNBENCH_DATA`` moves it elsewhere.

Every path is read from the environment on each call (nothing is created here), so a test or a
notebook that sets a variable sees the change at once.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_CACHE_ENV = "DYNBENCH_CACHE"
"""Environment variable that moves the model cache (backbones and method fits)."""
DATA_ENV = "DYNBENCH_DATA"
"""Environment variable that moves the data cache."""


def cache_root() -> Path:
    """The root of dynbench's caches: ``$XDG_CACHE_HOME/dynbench``, else ``~/.cache/dynbench``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynbench"


def model_cache_dir() -> Path:
    """Where backbones and method fits are cached: ``$DYNBENCH_CACHE``, else :func:`cache_root`."""
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env).expanduser() if env else cache_root()


def data_root() -> Path:
    """Where data sets live once prepared: ``$DYNBENCH_DATA``, else ``<cache_root()>/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else cache_root() / "data"
