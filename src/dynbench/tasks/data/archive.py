"""Data-set archives: the archive file's own checksum, and safe, streamed ``.tar.gz`` extraction.

A :class:`~dynbench.tasks.data.integrity.FileSpec` checks a ``.gz`` file by its decompressed
payload, which for a multi-gigabyte ``.tar.gz`` would mean holding gigabytes in memory. An
:class:`ArchiveSpec` is checked instead by the SHA-256 of the file as published, read in chunks,
which is also the checksum upstream catalogues publish.

:func:`extract_tar` reads the archive as one stream (no seeking, so a 2 GB archive is read once) and
writes only regular files and directories, under relative names without ``..``, with default
permissions: what tarfile's ``data`` extraction filter enforces, done here member by member so it
behaves the same on every Python this project supports and can report progress. Anything else
(links, devices, absolute or escaping names) is refused with an error naming the member, and a
truncated or damaged archive is reported with its path.

Why not ``pooch.Untar`` (pooch 1.9.0, ``processors.py``): on Python < 3.12 it calls
``extractall`` with no filter, so on 3.10 and 3.11 a member named ``../x`` is written outside the
target and a symlink to ``/etc/passwd`` is created (tried on 3.11.7); on 3.12+ it passes
``filter="data"``, which is safe. On every version it reads a ``.tar.gz`` twice (``getmembers``
to list it, then ``extractall``), reports no progress, logs to stderr, and extracts straight into
the final folder, whose presence it later takes as complete. ``pooch.file_hash`` could stand in for
:func:`sha256_file`, without the progress a 2.4 GB hash deserves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from dynbench.tasks.data.catalog import DatasetCorruptError, Progress

CHUNK = 1 << 20  # bytes hashed or copied per step: few Python-level calls, frequent progress updates


@dataclass(frozen=True)
class ArchiveSpec:
    """An archive file as published: its name and the checksum of the file, not of its contents."""

    name: str  # file name at the canonical address (the download URL ends with it)
    sha256: str  # hex SHA-256 of the archive file exactly as downloaded
    size: int  # bytes of the archive file; a cheap truncation check before hashing


def sha256_file(path: Path, *, progress: Progress | None = None, what: str = "") -> str:
    """Hex SHA-256 of a file, read in chunks.

    ``progress(what, done, total)`` is called as bytes are hashed.
    """
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(what or f"checking {path.name}", done, total)
    return digest.hexdigest()


def archive_problem(path: Path, spec: ArchiveSpec, *, progress: Progress | None = None) -> str | None:
    """What is wrong with ``path`` as a copy of ``spec``, or ``None`` when it passes.

    The size is checked first, then the SHA-256.
    """
    size = path.stat().st_size
    if size != spec.size:
        return f"it has {size:,} bytes, expected {spec.size:,}"
    digest = sha256_file(path, progress=progress, what=f"checking {spec.name}")
    if digest != spec.sha256:
        return f"its SHA-256 is {digest}, expected {spec.sha256}"
    return None


def check_archive(path: Path, spec: ArchiveSpec, *, advice: str = "", progress: Progress | None = None) -> None:
    """Raise :class:`DatasetCorruptError` naming ``path`` unless it matches ``spec``.

    ``path`` must have the size and SHA-256 of ``spec``.
    """
    problem = archive_problem(path, spec, progress=progress)
    if problem is not None:
        advice = advice or f"Delete it (rm '{path}') and get a good copy of {spec.name}."
        raise DatasetCorruptError(path, problem, advice)


def member_path(member: tarfile.TarInfo) -> PurePosixPath | None:
    """The member's relative path without any leading ``./``; ``None`` for the archive root itself.

    Raises:
        ValueError: the name is absolute or climbs out with ``..`` (the message says which).
    """
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ValueError(f"member {member.name!r} would be written outside the target directory")
    parts = [p for p in name.parts if p != "."]
    return PurePosixPath(*parts) if parts else None


class _Counted:
    """A read-only file wrapper that reports how many bytes of the compressed archive were read."""

    def __init__(self, raw: BinaryIO, what: str, total: int, progress: Progress | None) -> None:
        self.raw, self.what, self.total, self.progress = raw, what, total, progress
        self.done = self.shown = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.done += len(data)
        # tarfile reads 10 KB at a time: report every CHUNK bytes and at the end, not 240,000 times
        # for 2.4 GB
        if self.progress is not None and (self.done - self.shown >= CHUNK or not data or self.done == self.total):
            self.shown = self.done
            self.progress(self.what, self.done, self.total)
        return data


def extract_tar(archive: Path, dest: Path, *, progress: Progress | None = None, advice: str = "") -> tuple[int, int]:
    """Extract a (gzip-compressed) tar archive into ``dest``, safely and in one streamed pass.

    Args:
        archive: the ``.tar`` or ``.tar.gz`` file.
        dest: the target directory (created if needed). On an error it may hold part of the archive;
            the caller extracts into a temporary directory and renames it once everything is in.
        progress: called as ``("extracting <name>", archive bytes read, archive size)``.
        advice: what to do about a bad archive (a default names the file to delete).

    Returns:
        ``(files, bytes)`` written.

    Raises:
        DatasetCorruptError: the archive is truncated or damaged, or holds a member that is not a
            regular file or directory or whose name escapes ``dest``; the message names the archive
            and the member.
    """
    advice = advice or f"Delete it (rm '{archive}') and get a good copy."
    dest.mkdir(parents=True, exist_ok=True)
    files = size = 0
    with open(archive, "rb") as raw:
        counted = _Counted(raw, f"extracting {archive.name}", archive.stat().st_size, progress)
        try:
            with tarfile.open(fileobj=counted, mode="r|*") as tar:  # stream mode: one sequential pass
                for member in tar:
                    if _extract_member(tar, member, dest):
                        files, size = files + 1, size + member.size
        except ValueError as exc:
            raise DatasetCorruptError(archive, str(exc), advice) from None
        except (tarfile.TarError, EOFError, zlib.error) as exc:  # other OSErrors (disk full …) are ours: raised
            raise DatasetCorruptError(archive, f"it is not a complete tar archive ({exc})", advice) from None
    return files, size


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> bool:
    """Write one member under ``dest``; True for a file, False for a directory.

    Raises:
        ValueError: anything unsafe.
    """
    rel = member_path(member)
    if member.isdir():
        if rel is not None:
            (dest / rel).mkdir(parents=True, exist_ok=True)
        return False
    if not member.isfile() or rel is None:
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise ValueError(f"member {member.name!r} is a {kind}, not a regular file or directory")
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:  # cannot happen for a regular file; kept so a damaged header fails loudly
        raise ValueError(f"member {member.name!r} has no data")
    with source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)
    if os.path.getsize(target) != member.size:
        raise ValueError(f"member {member.name!r} is cut short")
    return True
