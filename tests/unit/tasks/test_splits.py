"""Every task has a validation split of its own, and no sample (or play, or voice) of its evaluation
split is in it.

Class-level roles are checked for every registered task; the data itself for the tasks whose data is
here (the toy tasks, digits, fashion-mnist, shakespeare, smollm2, spoken-digits' voice split).
ImageNet's minival and Speech Commands' official lists are checked on tiny generated copies in their
own test files.
"""

from __future__ import annotations

import hashlib
from itertools import combinations
from types import SimpleNamespace

import numpy as np
import pytest
from torch import Tensor

from dynbench.tasks.base import TASKS, Task


def sample_keys(inputs: Tensor) -> set[str]:
    """One digest per sample of its input bytes: equal inputs, equal keys."""
    flat = inputs.contiguous().reshape(inputs.shape[0], -1).numpy()
    return {hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in flat}


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_names_three_different_splits(name: str) -> None:
    cls = TASKS.get(name)
    roles = ("train", cls.validation_split, cls.eval_split)
    assert len(set(roles)) == 3 and set(roles) <= set(cls.splits), (name, roles, cls.splits)


def with_data(name: str) -> Task:
    task = TASKS.get(name)()
    if (problem := task.data_problem()) is not None:
        pytest.skip(problem.splitlines()[0])
    return task


@pytest.mark.parametrize("name", ["toy-vision", "toy-text", "digits", "fashion-mnist"])
def test_no_input_is_in_two_splits(name: str) -> None:
    """Content-level: not even a duplicate image or sequence crosses splits (stronger than disjoint
    indices)."""
    task = with_data(name)
    keys = {s: sample_keys(task.split(s).inputs) for s in task.splits}
    sizes = {s: task.n_samples(s) for s in task.splits}
    assert all(sizes.values()), sizes
    for a, b in combinations(task.splits, 2):
        assert not keys[a] & keys[b], f"{name}: {len(keys[a] & keys[b])} inputs are in both {a} and {b}"


def test_shakespeare_holds_out_whole_plays_and_no_window_crosses() -> None:
    task = with_data("shakespeare")
    plays = {s: set(getattr(task.play_split(), s)) for s in task.splits}
    for a, b in combinations(task.splits, 2):
        assert not plays[a] & plays[b], (a, b, plays[a] & plays[b])
    assert plays[task.eval_split] == {"hamlet", "henry_v", "twelfth_night"}
    assert plays[task.validation_split] == {"as_you_like_it", "macbeth"}
    held = {s: sample_keys(task.split(s).inputs) for s in (task.validation_split, task.eval_split)}
    assert len(held[task.eval_split]) == task.n_samples(task.eval_split) == 512
    assert not held[task.validation_split] & held[task.eval_split]
    assert task.text(task.validation_split) != task.text(task.eval_split)


def test_smollm2_scores_on_held_out_plays_and_trains_on_the_others() -> None:
    task = with_data("smollm2")
    plays = {s: set(task.plays(s)) for s in task.splits}
    for a, b in combinations(task.splits, 2):
        assert not plays[a] & plays[b], (a, b, plays[a] & plays[b])
    assert len(plays["train"]) == 32 and plays[task.eval_split] == {"hamlet", "henry_v", "twelfth_night"}


def test_spoken_digits_splits_are_whole_voices() -> None:
    """On the default voices, through the task's own row selection (a stand-in corpus: nothing is
    synthesized)."""
    task = TASKS.get("spoken-digits")()
    voices = task.config.corpus.voices
    labels = np.stack([np.repeat(np.arange(len(voices)), 3), np.tile(np.arange(3), len(voices))], axis=1)  # (N, 2)
    corpus = SimpleNamespace(spec=SimpleNamespace(voices=voices), labels=labels)
    rows = {s: task.split_rows(corpus, s) for s in task.splits}  # type: ignore[arg-type]
    spoken = {s: {voices[v] for v in labels[r, 0]} for s, r in rows.items()}
    for a, b in combinations(task.splits, 2):
        assert not set(rows[a].tolist()) & set(rows[b].tolist()) and not spoken[a] & spoken[b]
    assert spoken[task.eval_split] == set(task.config.test_voices)
    assert spoken[task.validation_split] == set(task.config.val_voices)
    assert sum(len(r) for r in rows.values()) == len(labels)
