"""The spoken-digits task: registration, the voice-disjoint split, augmentation, batch shapes."""

from __future__ import annotations

import dataclasses
import shutil
import sys

import numpy as np
import pytest
import torch

from dynbench.tasks.base import TASKS
from dynbench.tasks.data import espeak, synthesized_dataset
from dynbench.tasks.spoken_digits import SpokenDigits, SpokenDigitsConfig

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

# Three voices, one speed, one pitch: 30 clips, synthesized in well under a second.
TINY = SpokenDigitsConfig(
    train_voices=("en-us+m1",),
    val_voices=("en-gb-scotland+f2",),
    test_voices=("en+f3",),
    speeds=(175,),
    pitches=(50,),
)


def _features(*shape: int) -> torch.Tensor:
    """Stand-in normalised features whose log-mel values lie above the front end's floor, as real
    ones do."""
    log_mel = np.log(TINY.frontend.log_floor) + 6.0 * torch.rand(*shape)
    return (log_mel - TINY.feature_mean) / TINY.feature_std


def _variant(voice: str) -> str:
    return voice.split("+", 1)[1] if "+" in voice else ""


def test_registered_as_the_default_speech_task_and_says_synthetic():
    cls = TASKS.get("spoken-digits")
    assert cls is SpokenDigits
    assert cls.modality == "speech" and not cls.is_default and cls.eval_split == "test"
    assert "synthetic" in cls.description.lower()
    assert "synthetic" in sys.modules[cls.__module__].__doc__.lower()
    assert cls.metric.spec.unit == "top1"
    assert cls.size.startswith("2,040 synthetic clips")


def test_default_split_holds_whole_voices_and_their_variants_out():
    cfg = SpokenDigitsConfig()
    train, val, test = set(cfg.train_voices), set(cfg.val_voices), set(cfg.test_voices)
    assert len(train | val | test) >= 12 and len(test) >= 3
    assert not (train & val) and not (train & test) and not (val & test)
    train_variants = {_variant(v) for v in train}
    assert not train_variants & {_variant(v) for v in val | test}
    assert len(cfg.corpus.voices) == len(train | val | test)
    # the data set `bench data prepare spoken-digits` makes is the default task's corpus
    assert cfg.corpus == espeak.DEFAULT_DIGIT_CORPUS == synthesized_dataset.SPOKEN_DIGITS_CORPUS.spec()
    assert cfg.corpus.n_clips == 2040


def test_config_refuses_shared_voices_and_mismatched_shapes():
    with pytest.raises(ValueError, match="more than one split"):
        dataclasses.replace(TINY, test_voices=("en-us+m1",))
    with pytest.raises(ValueError, match="is empty"):
        dataclasses.replace(TINY, val_voices=())
    with pytest.raises(ValueError, match="front end makes"):
        dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, n_mels=32))
    with pytest.raises(ValueError, match=r"snr_db\[1\] must be >= 40, got 20"):
        dataclasses.replace(TINY, snr_db=(40.0, 20.0))


def test_augment_changes_training_inputs_only_and_is_seeded():
    task = SpokenDigits(TINY)
    torch.manual_seed(0)
    x = _features(4, 100, 40)
    before = x.clone()
    torch.manual_seed(1)
    a = task.augment(x)
    torch.manual_seed(1)
    b = task.augment(x)
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and not torch.allclose(a, x)
    torch.testing.assert_close(x, before)  # the stored inputs are never modified in place
    quiet = SpokenDigits(dataclasses.replace(TINY, snr_db=(200.0, 200.0), max_shift=0))
    torch.testing.assert_close(quiet.augment(x), x, atol=1e-4, rtol=0)


def test_time_shift_moves_frames_and_fills_with_silence():
    task = SpokenDigits(dataclasses.replace(TINY, snr_db=(300.0, 300.0), max_shift=3))
    x = _features(8, 100, 40)
    y = task.augment(x)
    silence = (np.log(TINY.frontend.log_floor) - TINY.feature_mean) / TINY.feature_std
    shifts = []
    for i in range(8):
        shift = next(s for s in range(-3, 4) if torch.allclose(y[i, 3:-3], x[i, 3 - s : 97 - s], atol=1e-3))
        shifts.append(shift)
        filled = y[i, :shift] if shift > 0 else y[i, 100 + shift :]
        torch.testing.assert_close(filled, torch.full_like(filled, float(silence)), atol=1e-3, rtol=0)
    assert any(s != 0 for s in shifts)


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DYNBENCH_DATA", str(tmp_path_factory.mktemp("dynbench-data")))
    task = SpokenDigits(TINY)
    assert task.data_status().startswith("not prepared")
    yield task
    mp.undo()


@needs_espeak
def test_splits_are_voice_disjoint_and_cover_the_corpus(tiny_task):
    corpus = espeak.prepare_corpus(TINY.corpus)
    assert tiny_task.data_status().startswith("present")
    rows = {s: tiny_task.split_rows(corpus, s) for s in ("train", "val", "test")}
    voices = {s: set(corpus.labels[r, 0].tolist()) for s, r in rows.items()}
    assert voices["train"].isdisjoint(voices["test"]) and voices["train"].isdisjoint(voices["val"])
    assert voices["val"].isdisjoint(voices["test"])
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(len(corpus)))
    assert {corpus.spec.voices[v] for v in voices["test"]} == set(TINY.test_voices)


@needs_espeak
def test_batches_have_the_right_shapes_and_eval_inputs_are_fixed(tiny_task):
    for split in ("train", "val", "test"):
        data = tiny_task.split(split)
        assert data.inputs.shape == (10, 100, 40) and data.inputs.dtype == torch.float32
        assert sorted(data.targets.tolist()) == list(range(10))
        assert torch.isfinite(data.inputs).all()
    first = [b.inputs for b in tiny_task.batches("test", batch_size=4)]
    again = [b.inputs for b in tiny_task.batches("test", batch_size=4)]
    assert [tuple(t.shape) for t in first] == [(4, 100, 40), (4, 100, 40), (2, 100, 40)]
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    # A fresh task recomputes identical features from the cache: evaluation inputs are
    # deterministic.
    assert torch.equal(SpokenDigits(TINY).split("test").inputs, tiny_task.split("test").inputs)
    torch.manual_seed(0)
    model = tiny_task.build_backbone().eval()
    batch = next(tiny_task.batches("train", batch_size=8, shuffle=True, seed=0))
    assert model(tiny_task.augment(batch.inputs)).shape == (8, 10)
