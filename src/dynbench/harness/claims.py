"""Run claims: a lock file per run, so sweeps sharing one results folder never compute a run twice.

A claim is ``<results>/claims/<run_key>.lock``, holding ``{"pid", "host", "time"}`` of the process
computing the run and an exclusive ``flock`` on it for as long as that process holds the claim. The
kernel drops the lock when the process dies, however it dies (``kill -9`` included), so a claim
whose file exists but whose lock is free was left by a dead process: it is stale and the next
sweep takes it over. The pid, host and time in the file are for the message ("computed by pid 4711
on host h since …"); the lock, not the pid, decides, so a reused pid never keeps a run claimed.

Releasing deletes the file before unlocking it; a process that opened the old file in between
finds, once it holds the lock, that the path no longer names the file it locked, and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from dynbench.harness.provenance import now

logger = logging.getLogger(__name__)


@dataclass
class Claim:
    """A held claim on one run; :meth:`release` it when the run succeeded or failed."""

    path: Path  # the lock file
    fd: int  # the open, flock-ed descriptor (-1 once released)
    took_over: str | None  # the stale holder this claim replaced ("pid 12 on host h since …"), if any

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1


def holder(path: Path) -> str:
    """Who the lock file at ``path`` names: ``pid P on host H since T``, or why it is unknown."""
    try:
        return _describe(path.read_text())
    except FileNotFoundError:
        return "a process that has just finished it"
    except OSError as exc:
        return f"an unknown process (claim file {path} unreadable: {exc.strerror})"


def _describe(text: str) -> str:
    """``pid P on host H since T`` from a lock file's text."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']} since {info['time']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process (its claim file is not a dynbench claim)"


def try_claim(path: Path) -> Claim | None:
    """Claim the run whose lock file is ``path``, or ``None`` when a live process holds it.

    A file whose lock is free (its process died) is taken over; the returned claim says whose.

    Raises:
        OSError: the claims folder cannot be created or written (e.g. a read-only results folder).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # released between our open and our lock
            same = False
        if not same:
            os.close(fd)
            continue
        break
    previous = os.read(fd, 4096).decode(errors="replace")
    took_over = _describe(previous) if previous.strip() else None
    if took_over:
        logger.warning("taking over the stale claim %s (left by %s, which is gone)", path, took_over)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "time": now()}
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\n").encode())
    return Claim(path, fd, took_over)
