"""The spoken-commands corpus on a tiny spec (5 words, 4 voices: about a second to synthesize):
voice-disjoint splits, determinism, checksum verification, clip format, and the augmentation's
stated SNRs, noise colours, room and shift."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynbench.tasks.data import audio_augment, command_corpus
from dynbench.tasks.data.audio_augment import (
    AugmentSpec,
    augment_clip,
    colored_noise,
    measured_snr_db,
    place,
    reverberate,
)
from dynbench.tasks.data.catalog import get_dataset
from dynbench.tasks.data.command_corpus import (
    CommandCorpusError,
    CommandCorpusSpec,
    build_corpus,
    load_corpus,
    prepare_corpus,
)
from dynbench.tasks.data.speech_commands import WORDS

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

TINY = CommandCorpusSpec(
    words=WORDS[:5],
    train_voices=("en-us+m1", "en+f2"),
    val_voices=("en-029+m3",),
    test_voices=("en-gb-x-rp+klatt2",),
    train_copies=2,
)  # 2 voices × 5 words × 2 copies train, 5 val, 5 test = 30 clips


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("command-corpus")


@pytest.fixture(scope="module")
def corpus(root: Path) -> command_corpus.CommandCorpus:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return prepare_corpus(TINY, root)


def test_default_corpus_holds_whole_variants_out_and_every_accent_in_every_split():
    spec = command_corpus.DEFAULT_COMMAND_CORPUS
    variants = {s: {v.split("+", 1)[1] for v in spec.voices(s)} for s in command_corpus.SPLITS}
    accents = {s: {v.split("+", 1)[0] for v in spec.voices(s)} for s in command_corpus.SPLITS}
    assert not variants["train"] & variants["val"] and not variants["train"] & variants["test"]
    assert not variants["val"] & variants["test"]
    assert all(a == set(command_corpus.ACCENTS) for a in accents.values())
    assert (len(spec.train_voices), len(spec.val_voices), len(spec.test_voices)) == (146, 24, 24)
    assert len(command_corpus.USABLE_VARIANTS) == 97
    assert [spec.n_clips(s) for s in command_corpus.SPLITS] == [5110, 840, 840]
    assert spec.words == WORDS and len(WORDS) == 35
    # the data set `bench data prepare spoken-commands` makes is the default task's corpus
    assert get_dataset("spoken-commands").spec() == spec


def test_spec_refuses_a_voice_in_two_splits_and_bad_ranges():
    with pytest.raises(ValueError, match="more than one split"):
        dataclasses.replace(TINY, test_voices=("en-us+m1",))
    with pytest.raises(ValueError, match="free of repeats"):
        dataclasses.replace(TINY, val_voices=())
    with pytest.raises(ValueError, match=r"noise_kinds must be one of \['white', 'pink', 'brown', 'babble'\]"):
        AugmentSpec(noise_kinds=("pinc",))
    with pytest.raises(ValueError, match=r"reverb_prob must be in \[0, 1\], got 2"):
        AugmentSpec(reverb_prob=2)


@needs_espeak
def test_clips_are_one_second_at_16_khz_and_splits_are_voice_disjoint(corpus):
    assert corpus.audio.shape == (30, 16_000) and corpus.audio.dtype == np.int16
    assert corpus.manifest["sample_rate"] == 16_000 and corpus.manifest["synthetic"] is True
    for s in command_corpus.SPLITS:
        rows = corpus.rows(s)
        assert len(rows) == TINY.n_clips(s)
        voices = {TINY.voices(s)[int(v)] for v in corpus.column("voice")[rows]}
        assert voices == set(TINY.voices(s))
        assert sorted(corpus.labels[rows].tolist()) == sorted(list(range(5)) * (len(rows) // 5))
    assert sorted(np.concatenate([corpus.rows(s) for s in command_corpus.SPLITS]).tolist()) == list(range(30))
    peaks = np.abs(corpus.audio).max(axis=1) / 32767  # (N,) the drawn levels
    np.testing.assert_allclose(peaks, corpus.column("level"), atol=1e-4)


@needs_espeak
def test_same_spec_same_checksum_other_seed_other_checksum(corpus, tmp_path: Path):
    again = build_corpus(TINY)
    assert again.manifest["sha256"] == corpus.manifest["sha256"]
    assert np.array_equal(again.audio, corpus.audio)
    other = build_corpus(dataclasses.replace(TINY, seed=1))
    assert other.manifest["sha256"] != corpus.manifest["sha256"]


@needs_espeak
def test_a_corrupted_cache_file_is_detected_with_a_clear_message(corpus, root: Path, tmp_path: Path):
    command_corpus.save_corpus(corpus, tmp_path)
    path = command_corpus.corpus_path(TINY, tmp_path)
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["audio"][3, 8000] ^= 1  # one flipped bit in one sample
    np.savez(path, **arrays)
    with pytest.raises(
        CommandCorpusError, match=r"fails its SHA-256 check .* Delete .* `bench data prepare spoken-commands`"
    ):
        load_corpus(TINY, tmp_path)
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CommandCorpusError, match="cannot be read"):
        load_corpus(TINY, tmp_path)
    assert load_corpus(TINY, root).manifest["sha256"] == corpus.manifest["sha256"]  # the good copy still loads


@needs_espeak
def test_babble_is_made_from_other_words_of_the_same_split(monkeypatch: pytest.MonkeyPatch):
    seen = []

    def spy(clean, rng, aug, pool, others):
        seen.append((len(pool), set(others.tolist())))
        return augment_clip(clean, rng, aug, pool, others)

    monkeypatch.setattr(command_corpus, "augment_clip", spy)
    build_corpus(TINY)
    # the training pool holds its 10 renderings; val's and test's their 5; never the clip's own word
    assert [n for n, _ in seen] == [10] * 20 + [5] * 10
    for n, others in seen:
        assert len(others) == n - n // 5


def _tone() -> np.ndarray:
    t = np.arange(8000) / 16_000
    return np.sin(2 * np.pi * 440 * t) * np.hanning(8000)


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
@pytest.mark.parametrize("snr", [0.0, 10.0])
def test_noise_is_added_at_the_stated_snr(kind: str, snr: float):
    aug = AugmentSpec(snr_db=(snr,), noise_kinds=(kind,), clean_prob=0.0, reverb_prob=0.0)
    pool = [_tone() * (i + 1) for i in range(6)]
    rng = np.random.default_rng(0)
    speech, noise, draws = augment_clip(_tone(), rng, aug, pool, np.arange(6))
    assert draws["snr_db"] == snr and audio_augment.NOISE_KINDS[draws["noise"]] == kind
    assert measured_snr_db(speech, noise) == pytest.approx(snr, abs=1e-9)
    mixed = audio_augment.to_int16(speech + noise) / 32767.0  # what is stored
    assert np.abs(mixed).max() == pytest.approx(draws["level"], abs=1e-4)
    assert measured_snr_db(speech, mixed - speech) == pytest.approx(snr, abs=0.05)  # int16 rounding aside


def test_noise_colours_have_their_spectral_slopes():
    f = np.fft.rfftfreq(16_000, 1 / 16_000)
    band = (f > 50) & (f < 5000)
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        power = np.mean(
            [np.abs(np.fft.rfft(colored_noise(kind, 16_000, np.random.default_rng(i)))) ** 2 for i in range(8)], axis=0
        )
        fitted = np.polyfit(np.log10(f[band]), np.log10(power[band]), 1)[0]
        assert fitted == pytest.approx(slope, abs=0.1), kind


def test_room_decays_by_its_rt60_and_shift_moves_the_word():
    impulse = np.zeros(100)
    impulse[0] = 1.0
    rir = reverberate(impulse, 0.5, 5.0, np.random.default_rng(0))
    assert rir[0] == pytest.approx(1.0) and len(rir) == 100 + 8000  # the direct path + 0.5 s of tail
    tail = rir[1:8001] ** 2
    assert 10 * np.log10(1.0 / tail.sum()) == pytest.approx(5.0, abs=1e-6)  # the direct-to-reverberant ratio
    early, late = tail[:400].mean(), tail[7200:7600].mean()
    assert 10 * np.log10(early / late) == pytest.approx(60 * 7000 / 8000, abs=6)  # 60 dB per RT60
    word = np.ones(1000)
    centred, moved = place(word, 0), place(word, 300)
    assert np.flatnonzero(centred)[0] == 7500 and np.flatnonzero(moved)[0] == 7800
    assert place(word, 20_000).sum() == 0  # moved out of the window entirely
