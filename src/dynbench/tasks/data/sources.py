"""Data sets made of fixed files: where a copy is found, how one is prepared, how it is verified.

A :class:`DatasetSpec` lists the files with their checksums and every place a copy can come from.
Sources are tried in this order:

1. an explicit directory given by the user (``bench data prepare NAME --path DIR``, or a task
   option) — when one is given it is the only place looked at, so a wrong path is an error, never a
   quiet switch to another copy;
2. the cache, ``data_root()/<name>/``;
3. a system copy, the directories a Debian package installs;
4. a download from the canonical addresses (only :func:`prepare` downloads; loading a task never
   does).

Every file is checked: by size (or the gzip trailer) whenever it is found, and by its SHA-256
whenever it is read, prepared or verified. A missing data set raises :class:`DatasetMissingError`
with the exact ways to get it; a bad file raises :class:`DatasetCorruptError` naming the file and
what to do.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dynbench.cache_dirs import data_root
from dynbench.tasks.data.catalog import (
    Dataset,
    DatasetCorruptError,
    DatasetMissingError,
    DataStatus,
    FileCheck,
    Progress,
)
from dynbench.tasks.data.download import fetch
from dynbench.tasks.data.integrity import FileSpec, payload_problem, quick_problem, read_payload


@dataclass(frozen=True)
class DatasetSpec(Dataset):
    """A data set of fixed files with known checksums, and every place a copy can come from."""

    name: str  # registry key, cache sub-directory and what users type: `bench data prepare <name>`
    title: str  # human name in messages
    files: tuple[FileSpec, ...]  # every file the data set needs; all must be present and intact
    urls: tuple[str, ...] = ()  # base URLs (mirrors, tried in order); a file's URL is base + "/" + FileSpec.name
    system_dirs: tuple[str, ...] = ()  # directories where a system package installs the files
    debian_package: str = ""  # the apt package that fills system_dirs ("" when there is none)
    homepage: str = ""  # where the data set is described (licence, citation)
    how_to: str = ""  # further instructions when it cannot be downloaded (registration, licence terms)

    @property
    def size(self) -> int:
        """Total payload bytes of all files."""
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileSpec:
        """The spec of the file called ``name`` (its canonical name)."""
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"{self.title} has no file '{name}'; its files are {', '.join(f.name for f in self.files)}.")

    def cache_dir(self) -> Path:
        """This data set's cache directory, ``data_root()/<name>``.

        The root is read from the environment on each call.
        """
        return data_root() / self.name

    def how_to_get(self) -> str:
        """Every way to get this data set, one per line, with the exact commands."""
        names = ", ".join(f.name for f in self.files)
        lines = [f"To get {self.title}, do one of:"]
        if self.debian_package:
            where = f" (installs {self.system_dirs[0]})" if self.system_dirs else ""
            lines.append(f"  - install the Debian package: sudo apt-get install {self.debian_package}{where}")
        if self.urls:
            lines.append(
                f"  - download it into {self.cache_dir()}: bench data prepare {self.name}   (from {self.urls[0]}/)"
            )
        also = (
            "; uncompressed copies of the .gz files are accepted too" if any(f.compressed for f in self.files) else ""
        )
        lines.append(f"  - use a copy you have: bench data prepare {self.name} --path DIR   (DIR holds {names}{also})")
        if self.how_to:
            lines.append(f"  {self.how_to}")
        if self.homepage:
            lines.append(f"  About the data set: {self.homepage}")
        return "\n".join(lines)

    def status(self, path: Path | None = None) -> DataStatus:
        """Where it is, by the cheap check.

        A missing or bad copy gives ``present=False`` and the problem.
        """
        try:
            found = locate(self, path)
        except DatasetMissingError:
            looked = ", ".join(str(d) for _, d in candidate_dirs(self, path))
            return DataStatus(False, problem=f"not found in {looked}")
        except DatasetCorruptError as exc:
            return DataStatus(False, problem=str(exc), corrupt=True)
        return found.status()

    def prepare(self, path: Path | None = None, *, progress: Progress | None = None) -> DataStatus:
        """See :func:`prepare`."""
        return prepare(self, path, progress=progress).status()

    def verify(self, path: Path | None = None) -> list[FileCheck]:
        """See :func:`verify`."""
        return verify(self, path)


@dataclass(frozen=True)
class Located:
    """A complete copy of a data set: its source, its directory, the file for each spec file."""

    spec: DatasetSpec  # the data set
    source: str  # "path", "cache", "system" or "download" (for prepare: how the copy was obtained)
    directory: Path  # where the files are now
    files: dict[str, Path] = field(default_factory=dict)  # canonical file name → the file found (.gz or not)

    def path(self, name: str) -> Path:
        """The file standing for the spec file ``name``."""
        return self.files[name]

    def read(self, name: str) -> bytes:
        """The payload of file ``name`` (decompressed), checked against its SHA-256.

        Raises:
            DatasetCorruptError: the file fails its check; the message names it and says what to do.
        """
        path = self.files[name]
        return read_payload(path, self.spec.file(name), advice=repair_advice(self.spec, self.source, path))

    def status(self) -> DataStatus:
        """This copy as a :class:`DataStatus`."""
        return DataStatus(True, source=self.source, where=str(self.directory), size=self.spec.size)


def candidate_dirs(spec: DatasetSpec, path: Path | None = None) -> list[tuple[str, Path]]:
    """``(source, directory)`` in the order they are tried.

    The explicit path alone, else the cache, then the system directories.
    """
    if path is not None:
        return [("path", Path(path).expanduser())]
    return [("cache", spec.cache_dir()), *(("system", Path(d)) for d in spec.system_dirs)]


def repair_advice(spec: DatasetSpec, source: str, path: Path) -> str:
    """What a user should do about a bad file, by where it came from."""
    if source == "system" and spec.debian_package:
        return f"Reinstall the package that put it there: sudo apt-get install --reinstall {spec.debian_package}."
    if source in ("path", "system"):
        return f"Replace it with a good copy.\n{spec.how_to_get()}"
    return f"Delete it (rm '{path}') and run `bench data prepare {spec.name}` to get a good copy."


def scan(spec: DatasetSpec, directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The files of ``spec`` in ``directory`` (by canonical name) and the names of those missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for f in spec.files:
        hit = next((directory / c for c in f.candidates if (directory / c).is_file()), None)
        if hit is None:
            missing.append(f.name)
        else:
            found[f.name] = hit
    return found, missing


def first_complete(spec: DatasetSpec, path: Path | None = None) -> tuple[str, Path, dict[str, Path]]:
    """``(source, directory, files)`` of the first directory with every file (content unchecked).

    Raises:
        DatasetMissingError: no complete copy (or the explicit path lacks files); says how to get
            one.
    """
    for source, directory in candidate_dirs(spec, path):
        found, missing = scan(spec, directory)
        if not missing:
            return source, directory, found
        if source == "path":
            raise DatasetMissingError(
                f"{spec.title} is not complete in {directory}: missing {', '.join(missing)}.\n{spec.how_to_get()}"
            )
    looked = ", ".join(str(d) for _, d in candidate_dirs(spec))
    raise DatasetMissingError(f"{spec.title} ('{spec.name}') is not present (looked in {looked}).\n{spec.how_to_get()}")


def locate(spec: DatasetSpec, path: Path | None = None) -> Located:
    """The first complete copy among the explicit path, cache and system copies; never downloads.

    Every file gets the cheap check (size or gzip trailer); :meth:`Located.read` checks the SHA-256
    on use.

    Raises:
        DatasetMissingError: no complete copy (or the explicit path lacks files); says how to get
            one.
        DatasetCorruptError: a file of the first complete copy fails the cheap check; names the
            file.
    """
    source, directory, found = first_complete(spec, path)
    for f in spec.files:
        problem = quick_problem(found[f.name], f)
        if problem is not None:
            raise DatasetCorruptError(found[f.name], problem, repair_advice(spec, source, found[f.name]))
    return Located(spec, source, directory, found)


def prepare(spec: DatasetSpec, path: Path | None = None, *, progress: Progress | None = None) -> Located:
    """Make ``spec`` present and fully checked.

    Copy it from ``path`` into the cache, or find it, or download it.

    Args:
        spec: the data set.
        path: a directory holding a copy; it is checked and copied into the cache, so later runs
            find it.
        progress: called as bytes arrive during a download (``what, done, total``).

    Returns:
        The copy; ``source`` says how it was obtained ("path" = copied from ``path`` into the
        cache).

    Raises:
        DatasetMissingError: no copy and no download succeeded; says how to get it.
        DatasetCorruptError: a file fails its checksum; names it.
    """
    if path is not None:
        return _copy_into_cache(locate(spec, path))
    try:
        found = locate(spec)
    except DatasetMissingError:
        if not spec.urls:
            raise
        return _download(spec, progress)
    for f in spec.files:
        found.read(f.name)  # the full checksum of every file
    return found


def _copy_into_cache(src: Located) -> Located:
    """Check every file of ``src`` and copy it into the cache atomically (temp file + rename)."""
    spec, cache = src.spec, src.spec.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for f in spec.files:
        src.read(f.name)
        source_file = src.path(f.name)
        target = cache / source_file.name
        if not (target.exists() and target.resolve() == source_file.resolve()):
            tmp = cache / f".{target.name}.{os.getpid()}.part"
            try:
                shutil.copyfile(source_file, tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        files[f.name] = target
    return Located(spec, "path", cache, files)


def _download(spec: DatasetSpec, progress: Progress | None) -> Located:
    """Download every file not already (intact) in the cache."""
    cache = spec.cache_dir()
    found, _ = scan(spec, cache)
    files: dict[str, Path] = {}
    for f in spec.files:
        if f.name in found:  # left by an earlier, interrupted prepare: kept if it passes
            read_payload(found[f.name], f, advice=repair_advice(spec, "cache", found[f.name]))
            files[f.name] = found[f.name]
            continue
        try:
            files[f.name] = fetch(f, spec.urls, cache, progress=progress)
        except DatasetMissingError as exc:
            raise DatasetMissingError(f"{spec.title} is not present, and {exc}\n{spec.how_to_get()}") from None
    return Located(spec, "download", cache, files)


def verify(spec: DatasetSpec, path: Path | None = None) -> list[FileCheck]:
    """Re-check every file of the copy that would be used by its SHA-256.

    That copy is the one at ``path``, else the cache's, else the system's.

    Raises:
        DatasetMissingError: there is no complete copy.
    """
    _, _, found = first_complete(spec, path)
    return [FileCheck(found[f.name], payload_problem(found[f.name], f) or "") for f in spec.files]
