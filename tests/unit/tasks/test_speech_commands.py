"""The speech-commands task on a tiny generated copy: registration, splits, features and their
cache, augmentation, errors, and one short end-to-end run through ``dynbench.api``."""

from __future__ import annotations

import dataclasses
import itertools
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from dynbench.config import PluginSpec
from dynbench.models.audio import AudioConfig
from dynbench.tasks.base import TASKS
from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError
from dynbench.tasks.data.speech_commands import NOISE_DIR, SPEECH_COMMANDS, TESTING_LIST, VALIDATION_LIST, WORDS
from dynbench.tasks.speech_commands import SpeechCommands, SpeechCommandsConfig, add_noise_power

TINY_MODEL = AudioConfig(n_mels=40, n_frames=100, stack=4, n_classes=35, d_model=16, n_layers=2, n_heads=2)


def write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(samples.astype("<i2").tobytes())


def make_layout(root: Path, *, noise: bool = True) -> Path:
    """35 words × 3 speakers of word-pitched 0.2 s tones; speaker 1 validates, speaker 2 tests,
    speaker 0 trains."""
    rng = np.random.default_rng(0)
    t = np.arange(3200) / 16_000
    lists: dict[str, list[str]] = {VALIDATION_LIST: [], TESTING_LIST: []}
    for i, word in enumerate(WORDS):
        for speaker in range(3):
            name = f"{word}/{speaker:08x}_nohash_0.wav"
            write_wav(root / name, 6000 * np.sin(2 * np.pi * (150 + 60 * i) * t) + rng.normal(0, 30, t.size))
            if speaker:
                lists[VALIDATION_LIST if speaker == 1 else TESTING_LIST].append(name)
    for list_name, names in lists.items():
        (root / list_name).write_text("\n".join(names) + "\n")
    if noise:
        write_wav(root / NOISE_DIR / "running_tap.wav", rng.normal(0, 2000, 24_000))
    return root


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))
    return make_layout(tmp_path / "sc")


def test_registered_as_a_35_word_speech_task_that_is_not_the_default():
    cls = TASKS.get("speech-commands")
    assert cls is SpeechCommands and cls.modality == "speech" and not cls.is_default
    assert cls.eval_split == "test" and cls.metric.spec.unit == "top1"
    cfg = SpeechCommandsConfig()
    assert cfg.model.n_classes == 35 and cfg.frontend.n_frames == 100
    with pytest.raises(ValueError, match="has 35 words"):
        SpeechCommandsConfig(model=dataclasses.replace(TINY_MODEL, n_classes=12))
    with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
        SpeechCommandsConfig(limit=-1)


def test_splits_are_disjoint_by_clip_and_speaker_also_when_limited(layout: Path):
    """The official lists hold speakers out; ``limit`` keeps a subset of each split, so they stay
    disjoint."""
    for cfg in (SpeechCommandsConfig(path=str(layout)), SpeechCommandsConfig(path=str(layout), limit=20)):
        task = SpeechCommands(cfg)
        copy = SPEECH_COMMANDS.locate(layout)
        files = {s: {name for name, _ in task.split_files(copy, s)} for s in task.splits}
        speakers = {s: {name.split("/")[1].split("_nohash_")[0] for name in f} for s, f in files.items()}
        assert all(files.values()) and {len(f) for f in files.values()} == {cfg.limit or 35}
        for a, b in itertools.combinations(task.splits, 2):
            assert not files[a] & files[b] and not speakers[a] & speakers[b], (a, b)


def test_splits_labels_shapes_and_limit(layout: Path):
    task = SpeechCommands(SpeechCommandsConfig(path=str(layout)))
    assert task.data_status() == f"present (path: {layout})"
    for split in ("train", "val", "test"):
        data = task.split(split)
        assert data.inputs.shape == (35, 100, 40) and data.inputs.dtype == torch.float16
        assert data.targets.tolist() == list(range(35))  # one clip per word, sorted by word
        assert torch.isfinite(data.inputs.float()).all()
    batches = list(task.batches("test", batch_size=16))
    assert [tuple(b.inputs.shape) for b in batches] == [(16, 100, 40), (16, 100, 40), (3, 100, 40)]
    assert batches[0].inputs.dtype == torch.float32
    limited = SpeechCommands(SpeechCommandsConfig(path=str(layout), limit=10, split_seed=3))
    files = limited.split_files(SPEECH_COMMANDS.locate(layout), "test")
    assert len(files) == 10 and files == sorted(files) and len(limited.split("test")) == 10
    again = SpeechCommands(SpeechCommandsConfig(path=str(layout), limit=10, split_seed=3))
    assert again.split_files(SPEECH_COMMANDS.locate(layout), "test") == files


def test_features_are_cached_under_the_data_root_and_reloaded_identically(layout: Path, tmp_path: Path):
    cfg = SpeechCommandsConfig(path=str(layout))
    first = SpeechCommands(cfg).split("val").inputs
    stored = sorted((tmp_path / "root" / "speech-commands" / "features").glob("val-35-*.pt"))
    assert len(stored) == 1
    second = SpeechCommands(cfg).split("val").inputs
    assert torch.equal(first, second)
    fresh = SpeechCommands(dataclasses.replace(cfg, cache_features=False)).split("val").inputs
    assert torch.equal(first, fresh)  # computed or loaded, the inputs are the same
    clip = layout / "cat" / "00000001_nohash_0.wav"
    write_wav(clip, np.zeros(1600))  # a changed file invalidates the split's features
    changed = SpeechCommands(cfg).split("val").inputs
    assert len(sorted(stored[0].parent.glob("val-35-*.pt"))) == 2
    assert not torch.equal(changed[WORDS.index("cat")], first[WORDS.index("cat")])


def test_a_bad_wav_is_reported_with_its_path(layout: Path):
    bad = layout / "dog" / "00000002_nohash_0.wav"
    bad.write_bytes(bad.read_bytes()[:60])
    task = SpeechCommands(SpeechCommandsConfig(path=str(layout)))
    with pytest.raises(DatasetCorruptError, match=rf"{bad} is corrupt: its header promises 3,200 samples"):
        task.split("test")


def test_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))
    task = SpeechCommands(SpeechCommandsConfig(path=str(tmp_path / "nowhere")))
    assert task.data_status().startswith("missing: bench data prepare speech-commands (2.4 GB download)")
    with pytest.raises(DatasetMissingError, match=r"bench data prepare speech-commands --path DIR"):
        task.split("train")


def test_augment_shifts_and_mixes_background_noise_deterministically(layout: Path):
    task = SpeechCommands(SpeechCommandsConfig(path=str(layout), noise_prob=1.0, snr_db=(0.0, 0.0), max_shift=0))
    noise = task.noise_power()
    assert noise is not None and noise.shape == (2, 100, 40)  # 1.5 s of noise: windows at 0 and 0.5 s
    x = task.split("train").inputs[:8].float()
    before = x.clone()
    torch.manual_seed(1)
    a = task.augment(x)
    torch.manual_seed(1)
    b = task.augment(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(x, before)  # inputs are never changed in place
    assert not torch.allclose(a, x, atol=0.1)
    quiet = SpeechCommands(SpeechCommandsConfig(path=str(layout), noise_prob=0.0, max_shift=0))
    torch.testing.assert_close(quiet.augment(x), x)
    white = SpeechCommands(SpeechCommandsConfig(path=str(make_layout(layout.parent / "nn", noise=False))))
    assert white.noise_power() is None and white.augment(x).shape == x.shape


def test_noise_is_mixed_at_the_requested_snr():
    power = torch.rand(2, 100, 40) + 0.5  # (B, T, M) clip mel power
    noise = torch.rand(2, 100, 40)
    floor = 1e-3
    mixed = add_noise_power(torch.log(power + floor), noise, torch.tensor([0.0, 10.0]), floor)
    added = mixed.exp() - floor - power  # (B, T, M) the noise part
    snr = 10 * torch.log10(power.sum(dim=(1, 2)) / added.sum(dim=(1, 2)))
    torch.testing.assert_close(snr, torch.tensor([0.0, 10.0]), atol=1e-3, rtol=0)


@pytest.mark.slow
def test_a_tiny_end_to_end_run_produces_rows(layout: Path, tiny_dense_run):
    task = PluginSpec.make(
        "speech-commands",
        {
            "path": str(layout),
            "model.d_model": 16,
            "model.n_layers": 2,
            "model.n_heads": 2,
            "train.steps": 4,
            "train.batch_size": 8,
            "train.warmup_steps": 1,
        },
    )
    rows, samples = tiny_dense_run(task, limit=12)
    assert set(rows.task) == {task.label} and {"flops_per_sample", "latency_ms"} <= set(rows.metric)
    assert len(samples) == 12
