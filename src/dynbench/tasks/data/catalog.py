"""The data-set catalog: what each data set can do (:class:`Dataset`), its errors, and the registry.

A data set says whether it is present and where (:meth:`Dataset.status`), makes itself present
(:meth:`Dataset.prepare`), re-checks its checksums (:meth:`Dataset.verify`) and tells a user how to
get it (:meth:`Dataset.how_to_get`). Most data sets are fixed files with known checksums and are
declared as a :class:`~dynbench.tasks.data.sources.DatasetSpec`; a data set made some other way
(synthesized, shipped inside a Python package) subclasses :class:`Dataset` directly. Each registers
itself with :func:`register_dataset` at module level of a module in this package, so adding one
edits no list; ``bench data`` finds them all.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dynbench.registry import RegistryError, unknown_message

Progress = Callable[[str, int, "int | None"], None]
"""``progress(what, done, total)``: bytes of a download (``total`` is ``None`` when unknown)."""


class DataError(Exception):
    """A data set cannot be used. ``str()`` is the full user-facing message."""


class DatasetMissingError(DataError):
    """A data set (or some of its files) is not present; the message says exactly how to get it."""


class DatasetCorruptError(DataError):
    """A file of a data set fails its checksum, size or format check; the message names the file.

    Attributes:
        path: the bad file (a URL for a bad download).
        problem: what is wrong with it.
        advice: what to do about it.
    """

    def __init__(self, path: Path | str, problem: str, advice: str) -> None:
        self.path, self.problem, self.advice = path, problem, advice
        super().__init__(f"Data file {path} is corrupt: {problem}. {advice}")

    def __reduce__(self) -> tuple[type, tuple[Path | str, str, str]]:
        return type(self), (self.path, self.problem, self.advice)


@dataclass(frozen=True)
class DataStatus:
    """Where a data set is, found by a cheap look (sizes, not checksums)."""

    present: bool  # every file is there and has the right size
    source: str = ""  # where it came from: "path", "cache", "system", "download" (or a data set's own word)
    where: str = ""  # the directory (or package) holding it; "" when missing
    size: int = 0  # bytes of data (payload bytes for compressed files)
    problem: str = ""  # why it is not usable (missing files, a bad size); "" when present
    corrupt: bool = False  # a file is there but fails its check (else, when not present, files are missing)


@dataclass(frozen=True)
class FileCheck:
    """The full check of one file."""

    path: Path  # the file checked
    problem: str = ""  # what is wrong; "" when it passed


class Dataset(ABC):
    """A data set that ``bench data`` can list, prepare and verify.

    Attributes:
        name: registry key and what users type (``bench data prepare <name>``).
        title: human name in messages.
    """

    name: str
    title: str

    @abstractmethod
    def status(self, path: Path | None = None) -> DataStatus:
        """Whether it is present and where, by a cheap look; never raises on missing or bad data."""

    @abstractmethod
    def prepare(self, path: Path | None = None, *, progress: Progress | None = None) -> DataStatus:
        """Make it present (copy from ``path``, find it, download or build it) and check it.

        Raises:
            DatasetMissingError: it cannot be obtained; the message says how to get it.
            DatasetCorruptError: a file fails its check; the message names it.
        """

    @abstractmethod
    def verify(self, path: Path | None = None) -> list[FileCheck]:
        """Re-check every file fully (checksums).

        Raises:
            DatasetMissingError: it is not present.
        """

    @abstractmethod
    def how_to_get(self) -> str:
        """Every way to get it, with the exact commands."""


D = TypeVar("D", bound=Dataset)
_DATASETS: dict[str, Dataset] = {}
_discovered = False


def register_dataset(dataset: D) -> D:
    """Register ``dataset`` under its name and return it (call at module level in this package).

    Raises:
        RegistryError: a different data set already has that name.
    """
    existing = _DATASETS.get(dataset.name)
    if existing is not None and existing != dataset:
        raise RegistryError(
            f"Cannot register data set '{dataset.name}': the name is already taken by {existing.title}. "
            "Pick another name."
        )
    _DATASETS[dataset.name] = dataset
    return dataset


def _discover() -> None:
    """Import every public module of this package once, so their ``register_dataset`` calls run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    pkg = importlib.import_module("dynbench.tasks.data")
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def dataset_names() -> list[str]:
    """Sorted names of every registered data set."""
    _discover()
    return sorted(_DATASETS)


def get_dataset(name: str) -> Dataset:
    """The data set registered as ``name``.

    Raises:
        RegistryError: no such data set, with close matches and the full list.
    """
    _discover()
    if name not in _DATASETS:
        raise RegistryError(unknown_message("data set", name, _DATASETS))
    return _DATASETS[name]
