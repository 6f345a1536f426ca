"""The espeak-ng corpus: WAV parsing, determinism, the cache and its checksum, clear errors."""

from __future__ import annotations

import io
import json
import shutil
import struct
import wave

import numpy as np
import pytest

from dynbench.tasks.data import espeak
from dynbench.tasks.data.espeak import CorpusSpec, EspeakError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

TINY = CorpusSpec(words=("one", "two"), voices=("en-us", "en-gb-scotland+f3"), speeds=(175,), pitches=(50,))


def _wav_bytes(samples: np.ndarray, rate: int = 22050) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def test_parse_wav_reads_a_plain_file():
    x = np.array([0, 5, -7, 32767, -32768], dtype=np.int16)
    got, rate = espeak.parse_wav(_wav_bytes(x, 16000))
    assert rate == 16000
    assert got.tolist() == x.tolist()


def test_parse_wav_reads_a_streamed_header_that_overstates_the_length():
    x = np.arange(-50, 50, dtype=np.int16)
    data = bytearray(_wav_bytes(x))
    struct.pack_into("<I", data, 4, 0x7FFFF024)  # RIFF size as espeak-ng --stdout writes it
    struct.pack_into("<I", data, 40, 0x7FFFF000)  # data size
    got, rate = espeak.parse_wav(bytes(data))
    assert rate == 22050
    assert got.tolist() == x.tolist()


def test_parse_wav_rejects_garbage():
    with pytest.raises(EspeakError, match="not a WAV"):
        espeak.parse_wav(b"definitely not audio")


def test_trim_silence_strips_exact_zeros_only():
    x = np.array([0, 0, 3, 0, -1, 0, 0], dtype=np.int16)
    assert espeak.trim_silence(x).tolist() == [3, 0, -1]
    assert espeak.trim_silence(np.zeros(4, dtype=np.int16)).size == 0


def test_spec_validation():
    with pytest.raises(ValueError, match="repeats"):
        CorpusSpec(voices=("en", "en"))
    with pytest.raises(ValueError, match="non-empty"):
        CorpusSpec(speeds=())
    with pytest.raises(ValueError, match="invalid names"):
        CorpusSpec(voices=("en us",))
    assert TINY.n_clips == 4
    assert TINY.digest() == CorpusSpec(**{**TINY.__dict__}).digest()
    assert TINY.digest() != CorpusSpec(words=("one", "two"), voices=("en-us",)).digest()


def test_missing_espeak_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no espeak-ng
    assert not espeak.espeak_available()
    with pytest.raises(EspeakError, match="apt-get install espeak-ng"):
        espeak.synthesize_corpus(TINY)
    with pytest.raises(EspeakError, match="apt-get install espeak-ng"):
        espeak.prepare_corpus(TINY, tmp_path)


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="bench data prepare spoken-digits"):
        espeak.load_corpus(TINY, tmp_path)


@pytest.fixture(scope="module")
def tiny_corpus():
    return espeak.synthesize_corpus(TINY)


@needs_espeak
def test_synthesis_is_deterministic(tiny_corpus):
    again = espeak.synthesize_corpus(TINY, workers=1)
    assert again.manifest["sha256"] == tiny_corpus.manifest["sha256"]
    assert len(tiny_corpus) == 4 and tiny_corpus.sample_rate == 22050
    assert tiny_corpus.labels.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    for i in range(len(tiny_corpus)):
        clip = tiny_corpus.clip(i)
        assert 0.1 * 22050 < clip.size < 1.0 * 22050 and clip[0] != 0 and clip[-1] != 0
    assert tiny_corpus.manifest["synthetic"] is True
    assert tiny_corpus.manifest["espeak_ng_version"] == espeak.espeak_version()


@needs_espeak
def test_cache_round_trip_and_corruption_detected(tiny_corpus, tmp_path, monkeypatch):
    path = espeak.save_corpus(tiny_corpus, tmp_path)
    assert espeak.is_cached(TINY, tmp_path)
    assert json.loads(path.with_suffix(".json").read_text())["n_clips"] == 4

    def no_synthesis(spec, **kwargs):
        raise AssertionError("the cached corpus should have been loaded")

    monkeypatch.setattr(espeak, "synthesize_corpus", no_synthesis)
    loaded = espeak.prepare_corpus(TINY, tmp_path)
    np.testing.assert_array_equal(loaded.audio, tiny_corpus.audio)
    # Flip one stored sample: the checksum catches it and the error names the file.
    with np.load(path) as z:
        audio, offsets, labels = z["audio"].copy(), z["offsets"], z["labels"]
    audio[100] ^= 1
    np.savez(path, audio=audio, offsets=offsets, labels=labels)
    with pytest.raises(EspeakError, match=f"{path}.*SHA-256"):
        espeak.load_corpus(TINY, tmp_path)
    path.write_bytes(b"truncated")
    with pytest.raises(EspeakError, match="cannot be read"):
        espeak.load_corpus(TINY, tmp_path)


@needs_espeak
def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="no variant"):
        espeak.synthesize_corpus(CorpusSpec(words=("one",), voices=("en+nosuchvariant",)))


@needs_espeak
def test_unknown_language_fails_with_the_command():
    with pytest.raises(EspeakError, match="exit code"):
        espeak.synthesize("one", "xx-nosuchlanguage", 175, 50)
