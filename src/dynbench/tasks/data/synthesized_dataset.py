"""The ``bench data`` entry of a corpus that espeak-ng synthesizes here: nothing to download.

``spoken-digits`` (tasks/data/espeak.py) and ``spoken-commands`` (tasks/data/command_corpus.py)
are made on this machine, deterministically, so "getting" one means installing espeak-ng and
synthesizing it. Both corpus modules expose the same four functions (:class:`CorpusStore`); one
:class:`SynthesizedCorpus` per task, registered here, puts the task's default corpus in ``bench
data``. A task configured with another corpus makes its own on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dynbench.tasks.data import command_corpus, espeak
from dynbench.tasks.data.catalog import (
    Dataset,
    DatasetCorruptError,
    DatasetMissingError,
    DataStatus,
    FileCheck,
    Progress,
    register_dataset,
)

INSTALL_COMMAND = "sudo apt-get install espeak-ng"


class CorpusStore(Protocol):
    """What a corpus module offers (``espeak`` and ``command_corpus`` both do)."""

    def corpus_path(self, spec: Any, root: Path | None = None) -> Path: ...  # noqa: D102
    def is_cached(self, spec: Any, root: Path | None = None) -> bool: ...  # noqa: D102
    def load_corpus(self, spec: Any, root: Path | None = None) -> Any: ...  # noqa: D102
    def prepare_corpus(self, spec: Any, root: Path | None = None) -> Any: ...  # noqa: D102


class SynthesizedCorpus(Dataset):
    """A task's default synthesized corpus: ``prepare`` makes it, ``verify`` re-hashes it.

    Args:
        name: registry key, the task's name (``bench data prepare <name>``).
        title: human name in messages; says "synthetic".
        store: the corpus module (its path, cache check, load and prepare functions).
        spec: the task's default corpus spec.
        n_clips: clips in the corpus, for the how-to message.
        duration: how long synthesis takes on 2 cores, for the status line (``"~1 min"``).
    """

    def __init__(self, name: str, title: str, store: CorpusStore, spec: Any, n_clips: int, duration: str) -> None:
        self.name, self.title = name, title
        self._store, self._spec, self._n_clips, self._duration = store, spec, n_clips, duration

    def spec(self) -> Any:
        """The default task's corpus spec."""
        return self._spec

    def _check_path(self, path: Path | None) -> None:
        if path is not None:
            raise DatasetMissingError(
                f"{self.title} is synthesized, not copied: --path {path} cannot be used. "
                f"Run `bench data prepare {self.name}` without --path."
            )

    def status(self, path: Path | None = None) -> DataStatus:
        """Cached (by a file check) or not; never synthesizes."""
        file = self._store.corpus_path(self._spec)
        if self._store.is_cached(self._spec):
            return DataStatus(True, "synthesized", str(file.parent), file.stat().st_size)
        if not espeak.espeak_available():
            return DataStatus(False, problem=f"not synthesized, and espeak-ng is not installed. {espeak.INSTALL_HINT}")
        return DataStatus(False, problem=f"not synthesized yet (bench data prepare {self.name}, {self._duration})")

    def prepare(self, path: Path | None = None, *, progress: Progress | None = None) -> DataStatus:
        """Synthesize the corpus with espeak-ng (or load and check the cached one)."""
        self._check_path(path)
        if not self._store.is_cached(self._spec) and not espeak.espeak_available():
            raise DatasetMissingError(self.how_to_get())
        try:
            self._store.prepare_corpus(self._spec)
        except espeak.EspeakError as exc:
            raise DatasetCorruptError(self._store.corpus_path(self._spec), str(exc), "See the message above.") from exc
        return self.status()

    def verify(self, path: Path | None = None) -> list[FileCheck]:
        """Re-hash the cached corpus against its manifest."""
        self._check_path(path)
        file = self._store.corpus_path(self._spec)
        if not self._store.is_cached(self._spec):
            raise DatasetMissingError(f"{self.title} is not synthesized yet.\n{self.how_to_get()}")
        try:
            self._store.load_corpus(self._spec)
        except espeak.EspeakError as exc:
            return [FileCheck(file, str(exc))]
        return [FileCheck(file)]

    def how_to_get(self) -> str:
        """Install espeak-ng, then synthesize."""
        folder = self._store.corpus_path(self._spec).parent
        return (
            f"To get {self.title}: install espeak-ng ({INSTALL_COMMAND}), then run "
            f"`bench data prepare {self.name}` (synthesizes {self._n_clips:,} clips into {folder})."
        )


SPOKEN_DIGITS_CORPUS = register_dataset(
    SynthesizedCorpus(
        "spoken-digits", "Spoken digits (synthetic, espeak-ng)", espeak, espeak.DEFAULT_DIGIT_CORPUS,
        espeak.DEFAULT_DIGIT_CORPUS.n_clips, "~1 min",
    )
)  # fmt: skip
SPOKEN_COMMANDS_CORPUS = register_dataset(
    SynthesizedCorpus(
        command_corpus.SUBDIR, "Spoken commands (synthetic, espeak-ng, noisy)", command_corpus,
        command_corpus.DEFAULT_COMMAND_CORPUS,
        sum(command_corpus.DEFAULT_COMMAND_CORPUS.n_clips(s) for s in command_corpus.SPLITS), "~1 min",
    )
)  # fmt: skip
