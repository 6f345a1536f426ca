"""Google Speech Commands v0.02: 105,829 real 1-s WAV recordings of 35 words by 2,618 speakers.

Warden, "Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition", https://arxiv.org/abs/1804.03209
(CC BY 4.0). Canonical download: http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz,
2,428,923,189 bytes, SHA-256 ``af14739e…68ff58``. That checksum is not published by the data set's
authors; it is the one two independent catalogues record for this URL, TensorFlow Datasets
(``url_checksums/speech_commands.txt``, which also gives the size) and torchaudio
(``datasets/speechcommands.py``). The separate ``speech_commands_test_set_v0.02`` archive is not
used: quality is measured on the official ``testing_list.txt`` of the main archive.

Layout (the archive extracts without a top-level folder): one folder per word holding
``<speaker>_nohash_<n>.wav`` (16-bit PCM, mono, 16 kHz, at most 1 s), ``validation_list.txt`` and
``testing_list.txt`` (one ``word/file.wav`` per line; the official lists assign whole speakers to a
split, 9,981 and 11,005 clips, leaving 84,843 for training), and ``_background_noise_/`` (six long
noise recordings, not a class; used for training-time noise).

Where a copy comes from, in order: an explicit folder
(``bench data prepare speech-commands --path DIR`` records where it is, without copying 2 GB; the
task option ``path`` uses it directly), the cache (a folder recorded by ``--path``, or one extracted
by ``prepare``), a shared system folder (no Debian package ships this data set; an administrator may
put an extracted copy in one of :data:`SYSTEM_DIRS`), and the
download (``prepare`` only): the archive is streamed into the cache, checked by size and SHA-256,
extracted safely (:mod:`.archive`) into a temporary folder that is renamed once complete, then
deleted. A folder whose ``DIR`` holds ``speech_commands_v0.02.tar.gz`` instead (downloaded by hand)
is checked and extracted the same way.

There are no per-file checksums: the archive's checksum covers its contents at download time, and
afterwards :meth:`SpeechCommandsData.verify` checks the layout (35 word folders, both lists, every
listed file present) and every WAV header (format, and whether the file holds as many samples as its
header promises).
"""

from __future__ import annotations

import json
import os
import shutil
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dynbench.cache_dirs import data_root
from dynbench.tasks.data.archive import ArchiveSpec, check_archive, extract_tar
from dynbench.tasks.data.catalog import (
    Dataset,
    DatasetCorruptError,
    DatasetMissingError,
    DataStatus,
    FileCheck,
    Progress,
    register_dataset,
)
from dynbench.tasks.data.download import fetch_checked

WORDS: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
"""The 35 words of v0.02, sorted: a clip's label is its folder's index here."""

VALIDATION_LIST, TESTING_LIST = "validation_list.txt", "testing_list.txt"
NOISE_DIR = "_background_noise_"  # long noise recordings: training augmentation, never a class
SAMPLE_RATE = 16_000  # Hz of every clip
EXTRACTED = "speech_commands_v0.02"  # the folder under the cache that an extracted archive becomes
POINTER = "source.json"  # in the cache: the folder `prepare --path` recorded (as the imagenet data set does)
SYSTEM_DIRS = ("/usr/share/datasets/speech-commands", "/usr/local/share/datasets/speech-commands")
ARCHIVE = ArchiveSpec(
    "speech_commands_v0.02.tar.gz", "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58", 2_428_923_189
)

DataSplit = Literal["train", "val", "test"]


def _format_problem(w: wave.Wave_read) -> str | None:
    """What about an open WAV differs from 16-bit PCM mono at 16 kHz, or ``None``."""
    got = (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype())
    if got != (1, 2, SAMPLE_RATE, "NONE"):
        return (
            f"it is {got[0]} channel(s), {8 * got[1]}-bit, {got[2]:,} Hz, compression {got[3]}; "
            f"expected 1 channel, 16-bit PCM, {SAMPLE_RATE:,} Hz"
        )
    return None


def read_wav(path: Path, *, advice: str = "") -> np.ndarray:
    """The int16 samples of a Speech Commands clip (16-bit PCM mono 16 kHz, read with :mod:`wave`).

    Raises:
        DatasetCorruptError: the file is missing, not a WAV, in another format, or shorter than its
            header says; the message names it.
    """
    advice = advice or "Replace it with the file from speech_commands_v0.02.tar.gz."
    try:
        with wave.open(str(path), "rb") as w:
            problem = _format_problem(w)
            n = w.getnframes()
            data = b"" if problem else w.readframes(n)
    except FileNotFoundError:
        raise DatasetCorruptError(path, "it is missing", advice) from None
    except (wave.Error, EOFError, OSError) as exc:
        raise DatasetCorruptError(path, f"it is not a readable WAV file ({exc})", advice) from None
    if problem:
        raise DatasetCorruptError(path, problem, advice)
    if len(data) != 2 * n:
        raise DatasetCorruptError(path, f"its header promises {n:,} samples, it holds {len(data) // 2:,}", advice)
    return np.frombuffer(data, dtype="<i2")


def wav_problem(path: Path) -> str | None:
    """A header check without reading the samples.

    Checks the format, and whether the file holds the promised bytes.
    """
    try:
        with open(path, "rb") as f, wave.open(f) as w:
            problem = _format_problem(w)
            promised = 2 * w.getnframes()
            held = os.fstat(f.fileno()).st_size - f.tell()  # wave stops at the start of the data chunk
    except (wave.Error, EOFError, OSError) as exc:
        return f"it is not a readable WAV file ({exc})"
    if problem:
        return problem
    if held < promised:
        return f"its header promises {promised:,} bytes of samples, the file holds {held:,} (truncated?)"
    return None


def find_root(directory: Path) -> Path | None:
    """The layout's folder: ``directory`` itself or its ``speech_commands_v0.02`` sub-folder."""
    for candidate in (directory, directory / EXTRACTED):
        if (candidate / VALIDATION_LIST).is_file() or (candidate / TESTING_LIST).is_file():
            return candidate
    return None


def layout_missing(root: Path, words: tuple[str, ...] = WORDS) -> list[str]:
    """The list files and word folders absent from ``root`` (empty when the layout is complete)."""
    wanted = [VALIDATION_LIST, TESTING_LIST, *(f"{w}/" for w in words)]
    return [name for name in wanted if not (root / name.rstrip("/")).exists()]


@dataclass(frozen=True)
class SpeechCommandsCopy:
    """A complete copy of the layout: where it is, and how it was found."""

    root: Path  # the folder holding the word folders and both lists
    source: str  # "path", "recorded" (by `prepare --path`), "cache", "system" or "download"
    words: tuple[str, ...] = WORDS  # the class folders
    size: int = 0  # bytes of audio when known (an extracted archive records it), else 0

    def advice(self) -> str:
        """What to do about a bad file of this copy."""
        if self.source in ("cache", "download"):
            return f"Delete the extracted copy (rm -r '{self.root}') and run `bench data prepare speech-commands`."
        return "Replace it with the file from speech_commands_v0.02.tar.gz, or use a good copy of the data set."

    def listed(self, list_name: str) -> list[str]:
        """The ``word/file.wav`` entries of a list file, in file order.

        Raises:
            DatasetCorruptError: a line names no word folder of the 35; the message gives the line.
        """
        path = self.root / list_name
        entries = []
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            entry = line.strip().removeprefix("./")
            if not entry:
                continue
            word, _, file = entry.partition("/")
            if word not in self.words or not file.endswith(".wav") or "/" in file:
                raise DatasetCorruptError(
                    path,
                    f"line {i} is {line!r}, not word/file.wav for one of the {len(self.words)} words",
                    self.advice(),
                )
            entries.append(entry)
        return entries

    def all_clips(self) -> list[str]:
        """Sorted ``word/file.wav`` of every word folder (``_background_noise_`` is no word)."""
        clips = []
        for word in self.words:
            with os.scandir(self.root / word) as it:
                clips.extend(f"{word}/{e.name}" for e in it if e.name.endswith(".wav") and e.is_file())
        return sorted(clips)

    def split_files(self, split: DataSplit) -> list[tuple[str, int]]:
        """``(word/file.wav, label)`` of a split, sorted.

        ``val`` and ``test`` come from the lists, ``train`` is the rest.

        Raises:
            DatasetCorruptError: a list is malformed or the two lists share files.
        """
        val, test = set(self.listed(VALIDATION_LIST)), set(self.listed(TESTING_LIST))
        shared = val & test
        if shared:
            raise DatasetCorruptError(
                self.root / TESTING_LIST,
                f"{len(shared)} file(s) are in both lists, e.g. {sorted(shared)[0]}",
                self.advice(),
            )
        if split == "val":
            names = sorted(val)
        elif split == "test":
            names = sorted(test)
        else:
            names = [c for c in self.all_clips() if c not in val and c not in test]
        index = {w: i for i, w in enumerate(self.words)}
        return [(name, index[name.partition("/")[0]]) for name in names]

    def noise_files(self) -> list[Path]:
        """The background-noise recordings, sorted; empty when the folder is absent."""
        folder = self.root / NOISE_DIR
        return sorted(folder.glob("*.wav")) if folder.is_dir() else []

    def status(self) -> DataStatus:
        """This copy as a :class:`DataStatus`."""
        return DataStatus(True, source=self.source, where=str(self.root), size=self.size)


@dataclass(frozen=True)
class SpeechCommandsData(Dataset):
    """Speech Commands v0.02 as a folder layout.

    From an explicit folder, the cache, a system folder or the archive.
    """

    name: str = "speech-commands"  # registry key, cache sub-directory, what users type
    title: str = "Google Speech Commands v0.02"  # human name in messages
    archive: ArchiveSpec = ARCHIVE  # the canonical archive and its checksum
    urls: tuple[str, ...] = (  # mirrors of the archive, tried in order
        "http://download.tensorflow.org/data",
        "https://storage.googleapis.com/download.tensorflow.org/data",
    )
    system_dirs: tuple[str, ...] = SYSTEM_DIRS  # shared extracted copies (no package installs one)
    words: tuple[str, ...] = WORDS  # the class folders every copy must have
    homepage: str = "https://arxiv.org/abs/1804.03209"  # the paper: licence (CC BY 4.0), counts, collection

    def cache_dir(self) -> Path:
        """``data_root()/speech-commands`` (read from the environment on each call)."""
        return data_root() / self.name

    def how_to_get(self) -> str:
        """Every way to get the data set, one per line, with the exact commands."""
        mb = self.archive.size / 1e6
        lines = [f"To get {self.title}, do one of:"]
        if self.urls:
            lines.append(
                f"  - download and extract it into {self.cache_dir()}: bench data prepare {self.name}   "
                f"({mb:,.0f} MB from {self.urls[0]}/{self.archive.name}; the WAVs take up to 3.4 GB more, "
                "and the archive is deleted once extracted)"
            )
        lines += [
            f"  - use a copy you have: bench data prepare {self.name} --path DIR   (DIR holds {VALIDATION_LIST}, "
            f"{TESTING_LIST} and the {len(self.words)} word folders; it is recorded, not copied; or DIR holds "
            f"{self.archive.name}, which is checked and extracted into the cache)",
            "  - or give the folder to the task: --tasks 'speech-commands[path=DIR]'",
            f"  About the data set: {self.homepage}",
        ]
        return "\n".join(lines)

    def candidates(self, path: Path | None = None) -> Iterator[tuple[str, Path]]:
        """``(source, folder)`` in the order they are tried.

        The explicit path alone, else the cache, then the system folders.
        """
        if path is not None:
            yield "path", Path(path).expanduser()
            return
        recorded = self._record(POINTER).get("path")
        if recorded is not None:
            yield "recorded", Path(recorded)
        yield "cache", self.cache_dir() / EXTRACTED
        yield from (("system", Path(d)) for d in self.system_dirs)

    def locate(self, path: Path | None = None) -> SpeechCommandsCopy:
        """The first complete layout among the candidates, by a cheap look; never downloads.

        The cheap look checks that the lists and folders exist.

        Raises:
            DatasetMissingError: no complete copy, or the explicit path lacks part of the layout;
                says how to get it.
        """
        for source, directory in self.candidates(path):
            root = find_root(directory)
            missing = layout_missing(root, self.words) if root is not None else [VALIDATION_LIST, TESTING_LIST]
            if not missing:
                return SpeechCommandsCopy(root, source, self.words, self._recorded_size(source))
            if source == "path":
                shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
                raise DatasetMissingError(
                    f"{self.title} is not complete in {directory}: missing {shown}.\n{self.how_to_get()}"
                )
        looked = ", ".join(str(d) for _, d in self.candidates())
        raise DatasetMissingError(
            f"{self.title} ('{self.name}') is not present (looked in {looked}).\n{self.how_to_get()}"
        )

    def status(self, path: Path | None = None) -> DataStatus:
        """Where it is, by the cheap look.

        A missing copy gives ``present=False`` and where it looked.
        """
        try:
            return self.locate(path).status()
        except DatasetMissingError as exc:
            return DataStatus(False, problem=str(exc).splitlines()[0])
        except DatasetCorruptError as exc:  # an unreadable record in the cache
            return DataStatus(False, problem=str(exc), corrupt=True)

    def prepare(self, path: Path | None = None, *, progress: Progress | None = None) -> DataStatus:
        """Make it present and check it (as :meth:`verify` does).

        With ``path``: record that folder in the cache (nothing is copied), or, when it holds the
        archive instead, check and extract that into the cache. Without: find a copy, else download
        and extract the archive.

        Raises:
            DatasetMissingError: no copy and no download succeeded; says how to get it.
            DatasetCorruptError: the archive fails its checksum, or a file fails the check; names
                the file.
        """
        if path is not None:
            path = Path(path).expanduser()
            if find_root(path) is None and (path / self.archive.name).is_file():
                return self._extract(path / self.archive.name, "path", progress)
            copy = self.locate(path)
            self._raise_first_problem(copy)
            self.cache_dir().mkdir(parents=True, exist_ok=True)
            clips = copy.all_clips()
            size = sum(os.path.getsize(copy.root / c) for c in clips)
            record = {"path": str(copy.root.resolve()), "clips": len(clips), "size": size}
            _write_atomic(self.cache_dir() / POINTER, json.dumps(record, indent=1))
            return SpeechCommandsCopy(copy.root, "recorded", self.words, size).status()
        try:
            copy = self.locate()
        except DatasetMissingError:
            if not self.urls:
                raise
            return self._download(progress)
        self._raise_first_problem(copy)
        return copy.status()

    def verify(self, path: Path | None = None) -> list[FileCheck]:
        """Check the copy that would be used: both lists, each listed file present, each WAV header.

        Returns one check per list file and word folder, plus one per bad or missing file (named by
        its path).

        Raises:
            DatasetMissingError: there is no complete copy.
        """
        return self._checks(self.locate(path))

    # ---- checking and preparing
    # -----------------------------------------------------------------------------

    def _checks(self, copy: SpeechCommandsCopy) -> list[FileCheck]:
        """See :meth:`verify`."""
        checks: list[FileCheck] = []
        for list_name in (VALIDATION_LIST, TESTING_LIST):
            try:
                entries = copy.listed(list_name)
            except DatasetCorruptError as exc:
                checks.append(FileCheck(copy.root / list_name, exc.problem))
                continue
            checks.append(FileCheck(copy.root / list_name))
            missing = [e for e in entries if not (copy.root / e).is_file()]
            checks += [FileCheck(copy.root / e, f"listed in {list_name} but missing") for e in missing]
        for folder in [copy.root / w for w in self.words] + ([copy.root / NOISE_DIR] if copy.noise_files() else []):
            wavs = sorted(folder.glob("*.wav"))
            checks.append(FileCheck(folder, "" if wavs else "it holds no .wav files"))
            checks += [FileCheck(w, problem) for w in wavs if (problem := wav_problem(w))]
        return checks

    def _raise_first_problem(self, copy: SpeechCommandsCopy) -> None:
        """Raise :class:`DatasetCorruptError` naming the first file that fails :meth:`_checks`.

        The message also gives the count of problems.
        """
        bad = [c for c in self._checks(copy) if c.problem]
        if bad:
            more = f"; {len(bad)} problem(s) in all, `bench data verify {self.name}` lists them" if len(bad) > 1 else ""
            raise DatasetCorruptError(bad[0].path, bad[0].problem + more, copy.advice())

    def _record(self, name: str) -> dict:
        """A JSON record in the cache; ``{}`` when absent.

        The record is ``source.json``, or the extracted copy's manifest.

        Raises:
            DatasetCorruptError: the record is unreadable; says how to replace it.
        """
        path = self.cache_dir() / name
        if not path.is_file():
            return {}
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("path", ""), str):
                raise ValueError("not a JSON object with a string 'path'")
        except (OSError, ValueError) as exc:
            raise DatasetCorruptError(
                path,
                f"it is not a readable record ({type(exc).__name__}: {exc})",
                f"Delete it (rm '{path}') and run `bench data prepare {self.name}` (with --path DIR for your copy).",
            ) from None
        return record

    def _recorded_size(self, source: str) -> int:
        """Bytes of audio recorded when the copy was recorded or extracted, else 0 (unknown)."""
        name = {"recorded": POINTER, "cache": f"{EXTRACTED}.json"}.get(source)
        size = self._record(name).get("size", 0) if name else 0
        return size if isinstance(size, int) else 0

    def _download(self, progress: Progress | None) -> DataStatus:
        """Download the archive into the cache, extract it, delete it.

        Nothing is downloaded when a checked archive is left there.
        """
        cache = self.cache_dir()
        archive = cache / self.archive.name
        fresh = not archive.is_file()  # else: left by an interrupted prepare, checked again before use
        if fresh:
            try:
                fetch_checked(
                    self.archive.name,
                    self.urls,
                    cache,
                    check=lambda p: check_archive(p, self.archive, progress=progress),
                    progress=progress,
                )
            except DatasetMissingError as exc:
                raise DatasetMissingError(f"{self.title} is not present, and {exc}\n{self.how_to_get()}") from None
        status = self._extract(archive, "download", progress, checked=fresh)
        archive.unlink()  # the extracted folder is what is used; frees 2.4 GB
        return status

    def _extract(self, archive: Path, source: str, progress: Progress | None, *, checked: bool = False) -> DataStatus:
        """Extract ``archive`` into the cache.

        Extraction goes through a temporary folder, renamed once its contents pass the checks. The
        archive's checksum is checked first, unless the caller has just ``checked`` it.
        """
        advice = f"Delete it (rm '{archive}') and run `bench data prepare {self.name}` to get a good copy."
        if not checked:
            check_archive(archive, self.archive, advice=advice, progress=progress)
        cache = self.cache_dir()
        tmp = cache / f".{EXTRACTED}.{os.getpid()}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            files, size = extract_tar(archive, tmp, progress=progress, advice=advice)
            root = find_root(tmp)
            missing = layout_missing(root, self.words) if root is not None else [VALIDATION_LIST, TESTING_LIST]
            if root is None or missing:
                raise DatasetCorruptError(archive, f"it does not hold the expected layout (missing {missing})", advice)
            self._raise_first_problem(SpeechCommandsCopy(root, source, self.words))
            final = cache / EXTRACTED
            shutil.rmtree(final, ignore_errors=True)  # an earlier copy: incomplete, or replaced on request (--path)
            os.replace(root, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _write_atomic(cache / f"{EXTRACTED}.json", json.dumps({"files": files, "size": size, "archive": archive.name}))
        (cache / POINTER).unlink(missing_ok=True)  # the extracted copy is now the cache's copy
        return SpeechCommandsCopy(final, source, self.words, size).status()


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file and a rename, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


SPEECH_COMMANDS = register_dataset(SpeechCommandsData())
