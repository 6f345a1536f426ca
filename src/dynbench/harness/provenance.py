"""Where a result came from: code version, library versions, machine, time.

Recorded in every row so a number can always be traced to the code and machine that produced it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

import dynbench
from dynbench.hardware.base import cpu_model


@dataclass(frozen=True)
class Provenance:
    """Facts shared by every row of one ``bench run``."""

    git_sha: str  # commit of the dynbench checkout, or "unknown" outside git
    dirty: bool  # uncommitted changes in that checkout
    dynbench_version: str  # package version
    torch_version: str  # torch.__version__
    machine: str  # host, OS, Python and CPU in one line


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path: Path | None = None) -> tuple[str, bool]:
    """``(sha, dirty)`` of the git checkout holding ``path`` (default: the dynbench package)."""
    where = path or Path(dynbench.__file__).resolve().parent
    sha = _git("rev-parse", "HEAD", cwd=where)
    if sha is None:
        return "unknown", False
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=where)
    return sha, bool(status)


def machine_line() -> str:
    """``host | OS | Python | CPU model × cores``."""
    return (
        f"{platform.node()} | {platform.system()} {platform.release()} | "
        f"Python {platform.python_version()} | {cpu_model()} x{os.cpu_count()}"
    )


@functools.lru_cache(maxsize=1)
def collect() -> Provenance:
    """Provenance of this process (computed once)."""
    sha, dirty = git_state()
    return Provenance(sha, dirty, dynbench.__version__, torch.__version__, machine_line())


def now() -> str:
    """UTC timestamp, ISO 8601, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
