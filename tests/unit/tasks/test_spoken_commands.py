"""The spoken-commands task on a tiny corpus (5 words, 4 voices): registration and its synthetic
label, the front end and model shared with speech-commands, voice-disjoint splits through the task,
the feature cache, the seal, augmentation, and one short end-to-end run."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from dynbench.config import PluginSpec
from dynbench.tasks.base import TASKS, EvalSplitAccessError
from dynbench.tasks.data import audio_augment, command_corpus
from dynbench.tasks.data.speech_commands import WORDS, SpeechCommandsCopy
from dynbench.tasks.speech_commands import SpeechCommands, SpeechCommandsConfig
from dynbench.tasks.spoken_commands import SpokenCommands, SpokenCommandsConfig

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

TINY_CORPUS = command_corpus.CommandCorpusSpec(
    words=WORDS[:5],
    train_voices=("en-us+m1", "en+f2"),
    val_voices=("en-029+m3",),
    test_voices=("en-gb-x-rp+klatt2",),
    train_copies=2,
)  # 20 train clips (2 copies), 5 val, 5 test
TINY = SpokenCommandsConfig(
    corpus=TINY_CORPUS, model=dataclasses.replace(SpokenCommandsConfig().model, n_classes=5, d_model=16, n_layers=2)
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("dynbench-data")
    mp.setenv("DYNBENCH_DATA", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def tiny_task(data_root: Path) -> SpokenCommands:
    task = SpokenCommands(TINY)
    assert task.data_status().startswith("not prepared" if shutil.which("espeak-ng") else "missing")
    return task


def test_registered_as_a_speech_task_that_says_synthetic():
    cls = TASKS.get("spoken-commands")
    assert cls is SpokenCommands and cls.modality == "speech" and cls.eval_split == "test"
    assert cls.is_default  # the speech leg of the default suite
    assert cls.synthetic and TASKS.get("spoken-digits").synthetic  # rows say synthetic_data
    assert not any(TASKS.get(n).synthetic for n in ("speech-commands", "fashion-mnist", "shakespeare", "smollm2"))
    assert "synthetic" in cls.description.lower() and "synthetic" in sys.modules[cls.__module__].__doc__.lower()
    assert cls.size == "6,790 synthetic clips (5,110 train / 840 val / 840 test, by voice)"
    assert cls.metric.spec.unit == "top1"
    assert not cls.quick_options  # the main job trains the full recipe: quick must reach the 85–95% band


def test_front_end_labels_and_model_are_speech_commands():
    """A backbone trained on one task evaluates on the other: same inputs, same labels, same net."""
    ours, theirs = SpokenCommandsConfig(), SpeechCommandsConfig()
    assert ours.frontend == theirs.frontend and ours.model == theirs.model
    assert (ours.peak_normalize, ours.feature_mean, ours.feature_std) == (
        theirs.peak_normalize,
        theirs.feature_mean,
        theirs.feature_std,
    )
    assert ours.corpus.words == WORDS  # Speech Commands' label order
    assert audio_augment.SAMPLE_RATE == ours.frontend.sample_rate and audio_augment.CLIP_SAMPLES == 16_000
    torch.manual_seed(0)
    trained_here = SpokenCommands().build_backbone()
    there = SpeechCommands().build_backbone()
    there.load_state_dict(trained_here.state_dict(), strict=True)
    x = torch.randn(2, ours.frontend.n_frames, ours.frontend.n_mels)
    torch.testing.assert_close(there(x), trained_here(x))


def test_config_refuses_a_model_that_does_not_fit():
    with pytest.raises(ValueError, match="model.n_classes=35, but the corpus has 5 words"):
        dataclasses.replace(TINY, model=SpokenCommandsConfig().model)
    with pytest.raises(ValueError, match="front end makes"):
        dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, n_mels=32))
    with pytest.raises(ValueError, match=r"max_shift must be in \[0, 100\), got 100"):
        dataclasses.replace(TINY, max_shift=100)


@needs_espeak
def test_a_clip_has_the_same_features_here_and_as_a_speech_commands_wav(tiny_task, tmp_path: Path):
    corpus = command_corpus.prepare_corpus(TINY_CORPUS)
    clip = corpus.audio[7]
    (tmp_path / "bed").mkdir()
    with wave.open(str(tmp_path / "bed" / "x.wav"), "wb") as w:  # as Speech Commands stores a clip
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(clip.astype("<i2").tobytes())
    theirs = SpeechCommands().features(SpeechCommandsCopy(tmp_path, "path"), ["bed/x.wav"])
    ours = tiny_task.features(clip[None])
    assert ours.shape == theirs.shape == (1, 100, 40) and ours.dtype == theirs.dtype == torch.float16
    assert torch.equal(ours, theirs)


@needs_espeak
def test_splits_are_whole_voices_with_speech_commands_shapes(tiny_task):
    corpus = command_corpus.prepare_corpus(TINY_CORPUS)
    assert tiny_task.data_status().startswith("present")
    rows = {s: tiny_task.split_rows(corpus, s) for s in tiny_task.splits}
    voices = {s: {TINY_CORPUS.voices(s)[int(v)] for v in corpus.column("voice")[r]} for s, r in rows.items()}
    assert voices == {s: set(TINY_CORPUS.voices(s)) for s in tiny_task.splits}
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(corpus)))
    for split, n in (("train", 20), ("val", 5), ("test", 5)):
        data = tiny_task.split(split)
        assert data.inputs.shape == (n, 100, 40) and data.inputs.dtype == torch.float32
        assert torch.isfinite(data.inputs).all()
        assert data.targets.tolist() == corpus.labels[rows[split]].tolist()
    with tiny_task.sealed(reader="a fit"), pytest.raises(EvalSplitAccessError, match="a fit read the evaluation"):
        tiny_task.split_rows(corpus, "test")


@needs_espeak
def test_features_are_cached_and_reloaded_identically(tiny_task, data_root: Path):
    first = tiny_task.split("val").inputs
    stored = list((data_root / "spoken-commands" / "features").glob("val-*.pt"))
    assert len(stored) == 1
    assert torch.equal(SpokenCommands(TINY).split("val").inputs, first)  # from the stored file
    fresh = SpokenCommands(dataclasses.replace(TINY, cache_features=False)).split("val").inputs
    assert torch.equal(fresh, first)  # the same float16 rounding with or without the cache
    stored[0].write_bytes(b"not a tensor file")
    assert torch.equal(SpokenCommands(TINY).split("val").inputs, first)  # recomputed, with a warning


@needs_espeak
def test_stored_features_need_neither_the_corpus_nor_its_checksum(tiny_task, monkeypatch):
    splits = {split: tiny_task.split(split) for split in tiny_task.splits}  # stores every split's features
    reads = []
    real = command_corpus.prepare_corpus
    monkeypatch.setattr(command_corpus, "prepare_corpus", lambda spec: reads.append(spec) or real(spec))
    task = SpokenCommands(TINY)
    for split, first in splits.items():
        again = task.split(split)
        assert torch.equal(again.inputs, first.inputs) and torch.equal(again.targets, first.targets)
    assert [task.n_samples(split) for split in task.splits] == [20, 5, 5]
    assert not reads  # features and labels came from the stored files alone
    assert len(task.corpus().audio) == 30 and len(task.corpus(audio=False).audio) == 0 and len(reads) == 1


@needs_espeak
def test_without_stored_features_each_split_reads_the_verified_clips(tiny_task, monkeypatch):
    reads = []
    real = command_corpus.prepare_corpus
    monkeypatch.setattr(command_corpus, "prepare_corpus", lambda spec: reads.append(spec) or real(spec))
    task = SpokenCommands(dataclasses.replace(TINY, cache_features=False))
    assert [task.n_samples(split) for split in task.splits] == [20, 5, 5]
    assert len(reads) == 3  # one verified read of the clips per split (the 218 MB are not kept in memory)


def test_augment_shifts_with_silence_and_is_seeded():
    task = SpokenCommands(dataclasses.replace(TINY, max_shift=3))
    x = torch.randn(8, 100, 40)
    torch.manual_seed(1)
    a = task.augment(x)
    torch.manual_seed(1)
    assert torch.equal(a, task.augment(x))
    silence = (np.log(TINY.frontend.log_floor) - TINY.feature_mean) / TINY.feature_std
    for i in range(8):
        shift = next(s for s in range(-3, 4) if torch.equal(a[i, 3:-3], x[i, 3 - s : 97 - s]))
        filled = a[i, :shift] if shift > 0 else a[i, 100 + shift :]
        torch.testing.assert_close(filled, torch.full_like(filled, float(silence)))
    assert torch.equal(SpokenCommands(dataclasses.replace(TINY, max_shift=0)).augment(x), x)


@pytest.mark.slow
@needs_espeak
def test_a_tiny_end_to_end_run_produces_rows(data_root: Path, tiny_dense_run):
    options = {
        "corpus.words": list(WORDS[:5]),
        "corpus.train_voices": list(TINY_CORPUS.train_voices),
        "corpus.val_voices": list(TINY_CORPUS.val_voices),
        "corpus.test_voices": list(TINY_CORPUS.test_voices),
        "model.n_classes": 5,
        "model.d_model": 16,
        "model.n_layers": 2,
        "corpus.train_copies": 2,
        "train.steps": 4,
        "train.batch_size": 8,
        "train.warmup_steps": 1,
    }
    task = PluginSpec.make("spoken-commands", options)
    rows, samples = tiny_dense_run(task)
    assert set(rows.task) == {task.label} and len(samples) == 5  # rows name a task with options by its label
