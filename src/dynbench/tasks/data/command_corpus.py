"""The ``spoken-commands`` corpus: Speech Commands' 35 words **synthesized with espeak-ng**.

They are made noisy and reverberant offline and stored as 1-s clips at 16 kHz.

All audio here is **synthetic**: espeak-ng (a formant synthesizer) speaks each word; no person
recorded it. Words are those of :data:`dynbench.tasks.data.speech_commands.WORDS`, in that order,
so a clip's label means the same word in both tasks.

Voices: a voice is an English accent (espeak-ng language, :data:`ACCENTS`) + a timbre variant
(``+m3``, ``+klatt2`` …). :data:`USABLE_VARIANTS` is every variant espeak-ng 1.51 ships except those
that duplicate another's audio (``fast`` = ``Mr``; ``klatt`` and ``klatt6`` = ``caleb``) and
``Marco``, whose echo tail makes a word longer than the 1-s clip. The mbrola voices (not installed
with Debian's ``espeak-ng``) and non-English languages (which read English spelling by their own
rules) are not used. Variants are split whole: the 12 validation and 12 test variants are singletons
(no numbered sibling such as ``robosoft2`` or ``whisperf`` is heard in training); every variant is
spoken with two accents, round robin (146 training, 24 validation, 24 test voices). Every accent
occurs in every split, so held-out voices test new timbres, not new accents.

Renderings: each (voice, word) is spoken ``renderings`` times at a seeded random rate (``-s``) and
pitch (``-p``). espeak-ng's amplitude (``-a``) is a pure gain (its output correlates 0.99997 with
the default's) and its word gap (``-g``) leaves a single word bit-identical, so neither is varied
there; the level is varied instead on the stored clip (``AugmentSpec.level``).

Augmentation, offline and seeded per clip (:mod:`dynbench.tasks.data.audio_augment`): each
rendering is resampled
22,050 → 16,000 Hz, reverberated with probability ``reverb_prob`` (a synthetic room: exponentially
decaying Gaussian noise with a random RT60, behind the direct path at a random direct-to-reverberant
ratio), placed in a 1-s window with a random time shift, and mixed with one noise — white, pink
(1/f power), brown (1/f²) or babble (other words of the same split, so no held-out voice leaks
into training) — at an SNR drawn from ``snr_db``. SNR = clip energy of the placed speech over that
of the noise, over the whole 1-s window (the definition of
:func:`dynbench.tasks.data.logmel.add_white_noise`). The mix is scaled to a random peak level and
stored as int16. A training rendering may get ``train_copies`` differently augmented copies (default
one; see docs/architecture.md for the choice); validation and test renderings get one each.
Per-clip metadata (:data:`META_COLUMNS`) records every draw.

The corpus goes to ``data_root()/spoken-commands/corpus-<digest>.npz`` with a JSON manifest
(espeak-ng version, spec, SHA-256 of the stored arrays), verified on every load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dynbench.cache_dirs import data_root
from dynbench.tasks.data import espeak, npz_corpus
from dynbench.tasks.data.audio_augment import (
    SAMPLE_RATE,
    AugmentSpec,
    augment_clip,
    clip_rng,
    to_int16,
)
from dynbench.tasks.data.logmel import resample
from dynbench.tasks.data.speech_commands import WORDS
from dynbench.validation import check_range

logger = logging.getLogger(__name__)

SUBDIR = "spoken-commands"
FORMAT = 1  # bump when the stored layout changes
SPLITS = ("train", "val", "test")
META_COLUMNS = (
    "split", "voice", "word", "rendering", "copy", "speed", "pitch",
    "noise", "snr_db", "rt60_s", "shift", "level",
)  # fmt: skip
"""Columns of ``CommandCorpus.meta``: indices into ``SPLITS``, the split's voices, ``words`` and
``NOISE_KINDS``; ``snr_db`` is NaN without noise, ``rt60_s`` 0 without reverb, ``shift`` in
samples."""

ACCENTS = ("en", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp", "en-us", "en-us-nyc")
TEST_VARIANTS = (
    "Andrea", "Jacky", "Lee", "Michael", "caleb", "grandma", "klatt2", "m2", "pablo", "pedro", "rob", "victor",
)  # fmt: skip
VAL_VARIANTS = ("Demonic", "Denis", "Storm", "adam", "aunty", "ed", "m3", "m6", "m8", "marcelo", "max", "miguel")
TRAIN_VARIANTS = (
    "Alex", "Alicia", "Andy", "Annie", "AnxiousAndy", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Mario",
    "Mike", "Mr", "Nguyen", "RicishayMax", "RicishayMax2", "RicishayMax3", "Tweaky", "UniRobot", "anika",
    "anikaRobot", "announcer", "antonio", "belinda", "benjamin", "boris", "croak", "david", "edward", "edward2",
    "f1", "f2", "f3", "f4", "f5", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta",
    "klatt3", "klatt4", "klatt5", "linda", "m1", "m4", "m5", "m7", "michel", "norbert", "paul", "quincy",
    "robert", "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
    "robosoft8", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "whisper", "whisperf", "zac",
)  # fmt: skip
# The val and test variants were drawn (numpy seed 14) from the variants that have no numbered or
# named sibling; families (robosoft*, iven*, whisper/whisperf …) stay in training whole.
USABLE_VARIANTS = tuple(sorted(TRAIN_VARIANTS + VAL_VARIANTS + TEST_VARIANTS, key=str.lower))


def pair_voices(variants: tuple[str, ...], per_variant: int, offset: int = 0) -> tuple[str, ...]:
    """Voices ``accent+variant``: variant ``i`` gets accents ``i + offset + k·8/per_variant``.

    Round robin over :data:`ACCENTS`, so every accent is used about equally often.
    """
    step = len(ACCENTS) // per_variant
    n = len(ACCENTS)
    return tuple(
        f"{ACCENTS[(i + offset + k * step) % n]}+{v}" for i, v in enumerate(variants) for k in range(per_variant)
    )


class CommandCorpusError(espeak.EspeakError):
    """The cached spoken-commands corpus is unusable: unreadable, of another spec, or corrupt."""


@dataclass(frozen=True)
class CommandCorpusSpec:
    """What to synthesize and how to augment it."""

    words: tuple[str, ...] = WORDS  # Speech Commands v2's 35 words, in its label order
    train_voices: tuple[str, ...] = pair_voices(TRAIN_VARIANTS, 2)  # 146: 73 variants × 2 accents
    val_voices: tuple[str, ...] = pair_voices(VAL_VARIANTS, 2)  # 24: 12 unseen variants × 2 accents
    test_voices: tuple[str, ...] = pair_voices(TEST_VARIANTS, 2, offset=1)  # 24: 12 other unseen variants
    speeds: tuple[int, int] = (130, 210)  # -s words/min range around espeak-ng's 175, drawn per rendering
    pitches: tuple[int, int] = (25, 75)  # -p range around espeak-ng's 50, drawn per rendering
    renderings: int = 1  # renderings per (voice, word)
    train_copies: int = 1  # augmented copies per training rendering (the validated recipe has one)
    augment: AugmentSpec = field(default_factory=AugmentSpec)  # noise, reverb, shift, level
    seed: int = 0  # seeds every draw; a clip's draws depend only on it and the clip's position

    def __post_init__(self) -> None:
        name = type(self).__name__
        groups = {"train_voices": self.train_voices, "val_voices": self.val_voices, "test_voices": self.test_voices}
        for key, voices in {"words": self.words, **groups}.items():
            if not voices or len(set(voices)) != len(voices):
                raise ValueError(f"{name}.{key}={voices!r} must be non-empty and free of repeats. Fix the list.")
        espeak.check_voice_split(self.train_voices, self.val_voices, self.test_voices)
        check_range(f"{name}.speeds[0]", self.speeds[0], 80, self.speeds[1], advice="Give (low, high) words/min.")
        check_range(f"{name}.pitches[1]", self.pitches[1], self.pitches[0], 99, advice="Give (low, high) in 0–99.")
        check_range(f"{name}.renderings", self.renderings, 1, advice="Use 1.")
        check_range(f"{name}.train_copies", self.train_copies, 1, advice="Use 1.")

    def voices(self, split: str) -> tuple[str, ...]:
        """The voices of one split."""
        return {"train": self.train_voices, "val": self.val_voices, "test": self.test_voices}[split]

    def n_clips(self, split: str) -> int:
        """Stored clips of one split."""
        copies = self.train_copies if split == "train" else 1
        return len(self.voices(split)) * len(self.words) * self.renderings * copies

    def digest(self) -> str:
        """Short stable hash of the spec (the cache file name)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class CommandCorpus:
    """Stored clips: ``audio (N, 16000)`` int16, ``labels (N,)`` word indices, ``meta (N, C)``."""

    spec: CommandCorpusSpec
    audio: np.ndarray
    labels: np.ndarray
    meta: np.ndarray
    manifest: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def column(self, name: str) -> np.ndarray:
        """One :data:`META_COLUMNS` column of every clip."""
        return self.meta[:, META_COLUMNS.index(name)]

    def rows(self, split: str) -> np.ndarray:
        """Indices of ``split``'s clips."""
        return np.flatnonzero(self.column("split") == SPLITS.index(split))


# --------------------------------------------------------------------------------------------------
# Synthesis and the stored corpus


def rendering_plan(spec: CommandCorpusSpec) -> list[tuple[int, int, int, int, int, int]]:
    """Every rendering as (split, voice, word, rendering, speed, pitch), in storage order.

    Speed and pitch are drawn from the rendering's own generator.
    """
    plan = []
    for s, split in enumerate(SPLITS):
        for v in range(len(spec.voices(split))):
            for w in range(len(spec.words)):
                for r in range(spec.renderings):
                    rng = clip_rng(spec.seed, s, v, w, r)
                    speed = int(rng.integers(spec.speeds[0], spec.speeds[1] + 1))
                    plan.append((s, v, w, r, speed, int(rng.integers(spec.pitches[0], spec.pitches[1] + 1))))
    return plan


def clean_clip(samples: np.ndarray, rate: int) -> np.ndarray:
    """A trimmed espeak-ng clip (int16) → float64 at 16 kHz, peak 1."""
    pad = np.zeros(rate // 100, dtype=np.float32)  # 10 ms of silence each side keeps the FFT's edges clean
    x = torch.from_numpy(np.concatenate([pad, samples.astype(np.float32) / 32768.0, pad]))
    y = resample(x, rate, SAMPLE_RATE).double().numpy()
    return y / max(np.abs(y).max(), 1e-9)


def synthesize_renderings(spec: CommandCorpusSpec, plan: list, workers: int | None = None) -> list[np.ndarray]:
    """Clean 16-kHz clips of every planned rendering (espeak-ng on a few threads)."""

    def one(item: tuple[int, int, int, int, int, int]) -> np.ndarray:
        s, v, w, _, speed, pitch = item
        samples, rate = espeak.synthesize(spec.words[w], spec.voices(SPLITS[s])[v], speed, pitch)
        return clean_clip(samples, rate)

    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, plan))


def check_distinct_voices(spec: CommandCorpusSpec, plan: list, clips: list[np.ndarray]) -> None:
    """Refuse a corpus in which two voices spoke the same word identically (a silent fallback).

    espeak-ng speaks a default voice for a name it does not know.
    """
    seen: dict[str, str] = {}
    for (s, v, *_), clip in zip(plan, clips):
        key = hashlib.sha256(clip.tobytes()).hexdigest()
        voice = spec.voices(SPLITS[s])[v]
        if key in seen and seen[key] != voice:
            raise ValueError(
                f"voices {seen[key]!r} and {voice!r} produced identical audio, so they are not distinct voices "
                "(espeak-ng falls back to a default for names it does not know). Pick another voice."
            )
        seen[key] = voice


def checksum(audio: np.ndarray, labels: np.ndarray, meta: np.ndarray) -> str:
    """SHA-256 of the stored arrays."""
    h = hashlib.sha256()
    for arr in (audio.astype("<i2"), labels.astype("<i8"), meta.astype("<f8")):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def build_corpus(spec: CommandCorpusSpec, *, workers: int | None = None) -> CommandCorpus:
    """Synthesize and augment every clip of ``spec`` (deterministic for a given espeak-ng)."""
    espeak.check_voices(spec.train_voices + spec.val_voices + spec.test_voices)
    version = espeak.espeak_version()
    plan = rendering_plan(spec)
    clips = synthesize_renderings(spec, plan, workers)
    check_distinct_voices(spec, plan, clips)
    audio, meta = [], []
    for s, split in enumerate(SPLITS):
        idx = [i for i, p in enumerate(plan) if p[0] == s]
        pool, words = [clips[i] for i in idx], np.array([plan[i][2] for i in idx])
        others = {w: np.flatnonzero(words != w) for w in range(len(spec.words))}  # babble: other words only
        for j, i in enumerate(idx):
            _, v, w, r, speed, pitch = plan[i]
            for c in range(spec.train_copies if split == "train" else 1):
                speech, noise, d = augment_clip(
                    pool[j], clip_rng(spec.seed, 100 + s, v, w, r, c), spec.augment, pool, others[w]
                )
                audio.append(to_int16(speech + noise))
                row = {"split": s, "voice": v, "word": w, "rendering": r, "copy": c, "speed": speed, "pitch": pitch}
                meta.append([{**row, **d}[k] for k in META_COLUMNS])
    audio_arr = np.stack(audio)  # (N, 16000)
    meta_arr = np.array(meta, dtype=np.float64)  # (N, C)
    labels = meta_arr[:, META_COLUMNS.index("word")].astype(np.int64)  # (N,)
    manifest = {
        "format": FORMAT,
        "synthetic": True,
        "generator": "espeak-ng",
        "espeak_ng_version": version,
        "sample_rate": SAMPLE_RATE,
        "spec": dataclasses.asdict(spec),
        "n_clips": int(len(labels)),
        "sha256": checksum(audio_arr, labels, meta_arr),
    }
    return CommandCorpus(spec, audio_arr, labels, meta_arr, manifest)


def corpus_path(spec: CommandCorpusSpec, root: Path | None = None) -> Path:
    """Where ``spec``'s corpus is cached (``.npz``; its manifest swaps the suffix for ``.json``)."""
    return (data_root() if root is None else Path(root)) / SUBDIR / f"corpus-{spec.digest()}.npz"


def is_cached(spec: CommandCorpusSpec, root: Path | None = None) -> bool:
    """Whether the corpus and its manifest are on disk (not verified)."""
    return npz_corpus.is_cached(corpus_path(spec, root))


def save_corpus(corpus: CommandCorpus, root: Path | None = None) -> Path:
    """Write the corpus, then its manifest, each through a temporary file and ``os.replace``."""
    arrays = {"audio": corpus.audio, "labels": corpus.labels, "meta": corpus.meta}
    return npz_corpus.save_arrays(corpus_path(corpus.spec, root), arrays, corpus.manifest)


def load_corpus(spec: CommandCorpusSpec, root: Path | None = None) -> CommandCorpus:
    """Load the cached corpus of ``spec`` and verify its checksum.

    Raises:
        FileNotFoundError: not cached (make it with :func:`prepare_corpus`).
        CommandCorpusError: the cached files are unreadable, of another spec, or fail the SHA-256.
    """
    manifest, (audio, labels, meta) = npz_corpus.load_arrays(
        corpus_path(spec, root), ("audio", "labels", "meta"), spec, checksum, CommandCorpusError,
        f"bench data prepare {SUBDIR}",
    )  # fmt: skip
    return CommandCorpus(spec, audio, labels, meta, manifest)


def prepare_corpus(spec: CommandCorpusSpec, root: Path | None = None) -> CommandCorpus:
    """The corpus of ``spec``: from the cache, or synthesized, augmented and cached first."""
    if is_cached(spec, root):
        return load_corpus(spec, root)
    n = sum(spec.n_clips(s) for s in SPLITS)
    logger.info("Synthesizing %d spoken-commands clips with espeak-ng into %s", n, corpus_path(spec, root))
    corpus = build_corpus(spec)
    save_corpus(corpus, root)
    return corpus


DEFAULT_COMMAND_CORPUS = CommandCorpusSpec()
"""The ``spoken-commands`` task's default corpus: 5,110 train / 840 val / 840 test clips."""
