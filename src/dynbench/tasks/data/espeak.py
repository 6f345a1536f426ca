"""A synthetic spoken-word corpus made with the ``espeak-ng`` synthesizer, cached once per spec.

All audio here is **synthetic**: espeak-ng is a formant synthesizer, so every clip is a
rule-generated rendering of a written word, not a recording of a person. A corpus is every
combination of words × voices × speeds (``-s``, words per minute) × pitches (``-p``, 0–99) in a
:class:`CorpusSpec`; a voice is an espeak-ng language (which sets the accent: ``en-us``,
``en-gb-scotland`` …) plus an optional variant (which sets the timbre: ``+m3``, ``+f2``, ``+klatt``
…).

Mechanism: one ``espeak-ng --stdout`` call per clip (run on a few threads), the WAV parsed with
:mod:`wave`, leading and trailing exact-zero samples (espeak-ng's silence) stripped, and the clips
stored as they came out (int16 at espeak-ng's 22,050 Hz; resampling belongs to the front end,
:mod:`dynbench.tasks.data.logmel`). The corpus goes to
``data_root()/spoken-digits/corpus-<digest>.npz`` with a JSON manifest beside it (espeak-ng version,
spec, clip count, SHA-256 of the arrays), verified on every load. espeak-ng's output is
deterministic, so the same spec and espeak-ng version give the same checksum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynbench.cache_dirs import data_root
from dynbench.tasks.data import npz_corpus

logger = logging.getLogger(__name__)

WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INSTALL_HINT = "Install it with `apt-get install espeak-ng` (Debian/Ubuntu) and try again."
SUBDIR = "spoken-digits"
FORMAT = 1  # bump when the stored layout changes

# The spoken-digits task's voice split, here so the default corpus is known without importing the
# task. A voice is an accent (espeak-ng language) + a timbre (espeak-ng variant: formant scaling,
# pitch range, voicing). Each accent appears in every split; no variant of a val or test voice is
# used by any training voice.
DIGIT_TRAIN_VOICES = (
    "en-us+m1",
    "en+m2",
    "en-gb-scotland+m3",
    "en-gb-x-rp+m4",
    "en-029+m5",
    "en-us-nyc+m6",
    "en-gb-x-gbclan+f1",
    "en-gb-x-gbcwmd+f2",
    "en-us+f4",
    "en+f5",
    "en-gb-scotland+klatt",
    "en-gb-x-rp+klatt2",
    "en-029+klatt4",
    "en-us-nyc+adam",
    "en-gb-x-gbclan+Alex",
    "en-gb-x-gbcwmd+Andy",
    "en-us+Annie",
    "en+aunty",
    "en-gb-scotland+benjamin",
    "en-gb-x-rp+david",
    "en-029+ed",
    "en-us-nyc+linda",
    "en-gb-x-gbclan+steph",
    "en-gb-x-gbcwmd+max",
)
DIGIT_VAL_VOICES = ("en-gb-x-gbclan+klatt5", "en-us+belinda", "en-029+Mike", "en-gb-x-rp+Gene")
DIGIT_TEST_VOICES = (
    "en-us+m7",
    "en+f3",
    "en-gb-scotland+klatt3",
    "en-029+m8",
    "en-us-nyc+Andrea",
    "en-gb-x-gbcwmd+paul",
)
DIGIT_SPEEDS: tuple[int, ...] = (130, 165, 200)  # -s words/min around espeak-ng's 175 default: slow to brisk
DIGIT_PITCHES: tuple[int, ...] = (40, 60)  # -p either side of espeak-ng's 50 default (the variant sets the range)


class EspeakError(RuntimeError):
    """espeak-ng is missing, failed, or the cached corpus is unusable."""


@dataclass(frozen=True)
class CorpusSpec:
    """What to synthesize: every word × voice × speed × pitch."""

    words: tuple[str, ...] = WORDS  # the texts spoken; the label of a clip is its word's index
    voices: tuple[str, ...] = ("en-us", "en-gb-scotland+f3")  # espeak-ng ``-v`` names: language[+variant]
    speeds: tuple[int, ...] = (150,)  # ``-s`` words per minute (espeak-ng's default is 175)
    pitches: tuple[int, ...] = (50,)  # ``-p`` pitch adjustment 0–99 (default 50)

    def __post_init__(self) -> None:
        for name in ("words", "voices", "speeds", "pitches"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"CorpusSpec.{name}={values!r} must be non-empty and free of repeats. Fix the list.")
        bad = [v for v in self.voices if not v or v.startswith("-") or any(c.isspace() for c in v)]
        if bad:
            raise ValueError(f"CorpusSpec.voices has invalid names {bad}. Use espeak-ng names like 'en-us+m3'.")

    @property
    def n_clips(self) -> int:
        """Clips in the corpus."""
        return len(self.words) * len(self.voices) * len(self.speeds) * len(self.pitches)

    def digest(self) -> str:
        """Short stable hash of the spec (the cache file name)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def grid(self) -> list[tuple[int, int, int, int]]:
        """Every clip as (voice, word, speed, pitch) indices, in storage order."""
        return [
            (v, w, s, p)
            for v in range(len(self.voices))
            for w in range(len(self.words))
            for s in range(len(self.speeds))
            for p in range(len(self.pitches))
        ]


@dataclass
class Corpus:
    """Synthesized clips, concatenated.

    Attributes:
        spec: what was synthesized.
        sample_rate: Hz of ``audio`` (espeak-ng's native rate).
        audio: int16 samples of every clip, back to back.
        offsets: ``(n + 1,)`` clip ``i`` is ``audio[offsets[i]:offsets[i + 1]]``.
        labels: ``(n, 4)`` int64 rows of (voice, word, speed, pitch) indices into ``spec``.
        manifest: the JSON manifest (espeak-ng version, checksum …).
    """

    spec: CorpusSpec
    sample_rate: int
    audio: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    manifest: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def clip(self, i: int) -> np.ndarray:
        """int16 samples of clip ``i``."""
        return self.audio[self.offsets[i] : self.offsets[i + 1]]


def espeak_available() -> bool:
    """Whether ``espeak-ng`` is on PATH."""
    return shutil.which("espeak-ng") is not None


def espeak_binary() -> str:
    """Path of the ``espeak-ng`` executable.

    Raises:
        EspeakError: it is not installed; the message says how to install it.
    """
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakError(
            f"espeak-ng was not found on PATH; the spoken-digits corpus is synthesized with it. {INSTALL_HINT}"
        )
    return path


def run_espeak(args: list[str], *, timeout: float = 30.0) -> bytes:
    """Run ``espeak-ng args`` and return its stdout.

    Raises:
        EspeakError: it failed or timed out; the message says so clearly.
    """
    cmd = [espeak_binary(), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EspeakError(f"`{' '.join(cmd)}` did not finish in {timeout} s. Check that espeak-ng works.") from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise EspeakError(f"`{' '.join(cmd)}` failed with exit code {done.returncode}: {err}. Check the voice name.")
    return done.stdout


def espeak_version() -> str:
    """espeak-ng's version string, e.g. ``1.51``."""
    out = run_espeak(["--version"]).decode(errors="replace").split()
    return out[out.index("text-to-speech:") + 1] if "text-to-speech:" in out else " ".join(out[:6])


def available_variants() -> set[str]:
    """Variant names espeak-ng knows (the ``+name`` part of a voice)."""
    out = run_espeak(["--voices=variant"]).decode(errors="replace")
    return {tok[3:] for tok in out.split() if tok.startswith("!v/")}


def check_voices(voices: tuple[str, ...]) -> None:
    """Refuse unknown variants up front: espeak-ng silently speaks the base voice for them."""
    known = available_variants()
    unknown = [v for v in voices if "+" in v and v.split("+", 1)[1] not in known]
    if unknown:
        raise ValueError(
            f"espeak-ng has no variant for voices {unknown}. Pick variants from `espeak-ng --voices=variant` "
            f"(e.g. {', '.join(sorted(known)[:8])})."
        )


def check_voice_split(train: tuple[str, ...], val: tuple[str, ...], test: tuple[str, ...]) -> None:
    """Raise ``ValueError`` if a voice is in two splits (held-out voices must be unheard)."""
    shared = (set(train) & set(val + test)) | (set(val) & set(test))
    if shared:
        raise ValueError(
            f"voices {sorted(shared)} are in more than one split; the split must hold whole voices out. "
            "Put each voice in exactly one of train_voices, val_voices, test_voices."
        )


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono WAV bytes → (int16 samples, rate).

    Also reads espeak-ng's streamed ``--stdout`` header.
    """
    try:
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise EspeakError(
                    f"expected 16-bit mono WAV, got {8 * wav.getsampwidth()}-bit with {wav.getnchannels()} channels."
                )
            rate = wav.getframerate()
            frames = wav.readframes(wav.getnframes())  # the streamed header overstates the length; read what is there
    except (wave.Error, EOFError) as exc:
        raise EspeakError(f"espeak-ng returned {len(data)} bytes that are not a WAV file ({exc}).") from exc
    return np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.int16), rate


def trim_silence(samples: np.ndarray) -> np.ndarray:
    """Strip the exact-zero samples espeak-ng puts before and after the speech."""
    nz = np.flatnonzero(samples)
    return samples[nz[0] : nz[-1] + 1] if nz.size else samples[:0]


def synthesize(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """One clip as (trimmed int16 samples, rate).

    Made by ``espeak-ng -v voice -s speed -p pitch --stdout text``.
    """
    data = run_espeak(["-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text])
    samples, rate = parse_wav(data)
    samples = trim_silence(samples)
    if samples.size == 0:
        raise EspeakError(f"espeak-ng produced silence for {text!r} with voice {voice!r}. Check the voice name.")
    return samples, rate


def corpus_path(spec: CorpusSpec, root: Path | None = None) -> Path:
    """Where ``spec``'s corpus is cached (``.npz``; its manifest swaps the suffix for ``.json``)."""
    return (data_root() if root is None else Path(root)) / SUBDIR / f"corpus-{spec.digest()}.npz"


def is_cached(spec: CorpusSpec, root: Path | None = None) -> bool:
    """Whether the corpus and its manifest are on disk (not verified)."""
    return npz_corpus.is_cached(corpus_path(spec, root))


def checksum(audio: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the stored arrays."""
    h = hashlib.sha256()
    for arr in (audio.astype("<i2"), offsets.astype("<i8"), labels.astype("<i8")):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def synthesize_corpus(spec: CorpusSpec, *, workers: int | None = None) -> Corpus:
    """Synthesize every clip of ``spec`` (deterministic; clips in :meth:`CorpusSpec.grid` order).

    Args:
        spec: the corpus.
        workers: parallel espeak-ng processes; default ``min(4, cpu count)``.
    """
    check_voices(spec.voices)
    version = espeak_version()
    grid = spec.grid()

    def one(cell: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
        v, w, s, p = cell
        return synthesize(spec.words[w], spec.voices[v], spec.speeds[s], spec.pitches[p])

    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        clips = list(pool.map(one, grid))
    rates = {rate for _, rate in clips}
    if len(rates) != 1:
        raise EspeakError(f"espeak-ng returned clips at several sample rates {sorted(rates)}; expected one.")
    lengths = np.array([len(c) for c, _ in clips], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    audio = np.concatenate([c for c, _ in clips]).astype(np.int16)
    labels = np.array(grid, dtype=np.int64).reshape(-1, 4)
    check_distinct_voices(spec, audio, offsets, labels)
    manifest = {
        "format": FORMAT,
        "synthetic": True,
        "generator": "espeak-ng",
        "espeak_ng_version": version,
        "sample_rate": rates.pop(),
        "spec": dataclasses.asdict(spec),
        "n_clips": len(grid),
        "n_samples": int(audio.size),
        "sha256": checksum(audio, offsets, labels),
    }
    return Corpus(spec, manifest["sample_rate"], audio, offsets, labels, manifest)


def check_distinct_voices(spec: CorpusSpec, audio: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
    """Refuse a corpus in which two voices produced identical audio.

    Identical audio means that an unknown voice silently fell back to another.
    """
    seen: dict[str, str] = {}
    for v, voice in enumerate(spec.voices):
        h = hashlib.sha256()
        for i in np.flatnonzero(labels[:, 0] == v):
            h.update(audio[offsets[i] : offsets[i + 1]].tobytes())
        key = h.hexdigest()
        if key in seen:
            raise ValueError(
                f"voices {seen[key]!r} and {voice!r} produced identical audio, so they are not distinct voices "
                "(espeak-ng falls back to a default for names it does not know). Pick another voice."
            )
        seen[key] = voice


def save_corpus(corpus: Corpus, root: Path | None = None) -> Path:
    """Write the corpus and its manifest atomically; returns the ``.npz`` path."""
    arrays = {"audio": corpus.audio, "offsets": corpus.offsets, "labels": corpus.labels}
    return npz_corpus.save_arrays(corpus_path(corpus.spec, root), arrays, corpus.manifest)


def load_corpus(spec: CorpusSpec, root: Path | None = None) -> Corpus:
    """Load the cached corpus of ``spec`` and verify its checksum.

    Raises:
        FileNotFoundError: not cached (synthesize it with :func:`prepare_corpus`).
        EspeakError: the cached files are corrupt or do not match the spec.
    """
    manifest, (audio, offsets, labels) = npz_corpus.load_arrays(
        corpus_path(spec, root), ("audio", "offsets", "labels"), spec, checksum, EspeakError,
        "bench data prepare spoken-digits",
    )  # fmt: skip
    return Corpus(spec, int(manifest["sample_rate"]), audio, offsets, labels, manifest)


def prepare_corpus(spec: CorpusSpec, root: Path | None = None) -> Corpus:
    """The corpus of ``spec``: from the cache, or synthesized with espeak-ng and cached first."""
    if is_cached(spec, root):
        return load_corpus(spec, root)
    logger.info("Synthesizing %d clips with espeak-ng into %s", spec.n_clips, corpus_path(spec, root))
    corpus = synthesize_corpus(spec)
    save_corpus(corpus, root)
    return corpus


def digit_corpus(voices: tuple[str, ...], speeds: tuple[int, ...], pitches: tuple[int, ...]) -> CorpusSpec:
    """The ten digit words in ``voices`` × speed × pitch.

    The voices are sorted, so reassigning voices to splits reuses the cache.
    """
    return CorpusSpec(words=WORDS, voices=tuple(sorted(voices)), speeds=speeds, pitches=pitches)


DEFAULT_DIGIT_CORPUS = digit_corpus(
    DIGIT_TRAIN_VOICES + DIGIT_VAL_VOICES + DIGIT_TEST_VOICES, DIGIT_SPEEDS, DIGIT_PITCHES
)
"""The ``spoken-digits`` task's default corpus.

34 voices × 3 speeds × 2 pitches × 10 words = 2,040 clips.
"""
