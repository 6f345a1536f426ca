"""Google Speech Commands v2: 35 words in real recordings; the spoken-digits front end and encoder.

Data: Speech Commands v0.02 (Warden 2018, https://arxiv.org/abs/1804.03209, CC BY 4.0) as its
extracted folder (:mod:`dynbench.tasks.data.speech_commands`: ``bench data prepare speech-commands``
downloads the 2.4 GB archive, or ``--path DIR`` / the task option ``path`` points at a copy).
Loading never downloads; a missing copy raises
:class:`~dynbench.tasks.data.catalog.DatasetMissingError` saying how to get it.

Split: the official lists. ``val`` = ``validation_list.txt``, ``test`` = ``testing_list.txt``,
``train`` = every other clip of the 35 word folders (speakers never cross splits); the lists give
84,843 / 9,981 / 11,005 clips. Quality = top-1 over the 35 words on the testing list. This is the
35-way task (as in e.g. KWT and AST), not the 12-way "10 words + silence + unknown" variant, so
there are no silence or unknown classes. ``limit`` keeps a fixed, seeded subset of each split for
quick runs.

Front end and model: exactly those of spoken-digits. Each clip is centred in 1.0 s, peak-normalised,
turned into 40-band log-mel features (25 ms window, 10 ms hop, 100 frames) by
:mod:`dynbench.tasks.data.logmel` and normalised by fixed constants; the model is
:class:`~dynbench.models.audio.AudioEncoder` (4 blocks, d=64, 4 frames per token: 25 tokens + CLS)
with 35 outputs. Features are computed once per split and stored as float16 under the data root
(``features/<split>-<digest>.pt``; train is 84,843 × 100 × 40 × 2 bytes = 679 MB, held in memory in
float16 and converted per batch), so only the first load reads the 105,829 WAVs. Float16 keeps ~3
significant digits of features of unit scale, far finer than the noise the training recipe adds;
every load, fresh or cached, goes through the same float16 rounding, so evaluation inputs never
depend on whether the cache existed.

Training only (:meth:`SpeechCommands.augment`): a random time shift of up to ±100 ms (as the
TensorFlow speech_commands recipe) and, for 80% of clips, a random one-second window of
``_background_noise_`` mixed in at a random SNR; the mixing is done in the mel-power domain (the
clip's and the noise's mel powers added, the cross term left out, as
:func:`~dynbench.tasks.data.logmel.add_white_noise` does), because the stored inputs are features,
not waveforms. Without the noise folder, white noise is used instead.

Not measured here: no copy of Speech Commands is on the machine this was written on, so neither the
feature normalisation constants (spoken-digits' values are used) nor the augmentation strengths were
tuned on it, and no accuracy of the recipe is claimed. The recipe is sized for a CPU: 8,000 steps of
64 clips (~6 epochs). Timed on generated one-second clips on one thread of the 2-core development VM
(shared, so an upper bound): 0.21 s per training step with augmentation (≈ 28 min for the recipe)
and 2.6 ms per clip to read and featurise (≈ 4.5 min for all 105,829 clips, once; later loads read
the stored features).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from dynbench.models.audio import AudioConfig, AudioEncoder
from dynbench.models.cached_state import read_tensor
from dynbench.models.training import TrainConfig, atomic_torch_save
from dynbench.tasks.base import Split, Task, TensorSplit, TopOneAccuracy, register_task
from dynbench.tasks.data.logmel import (
    LogMelConfig,
    add_white_noise,
    check_model_input,
    filterbank_for,
    fix_length,
    log_mel,
    mel_power,
)
from dynbench.tasks.data.logmel import resample as resample_to
from dynbench.tasks.data.speech_commands import SAMPLE_RATE, SPEECH_COMMANDS, WORDS, SpeechCommandsCopy, read_wav
from dynbench.types import Batch
from dynbench.validation import check_range

logger = logging.getLogger(__name__)

FEATURES_FORMAT = 1  # bump when the stored feature files change meaning


@dataclass(frozen=True)
class SpeechCommandsConfig:
    """Data source, subset, front end, augmentation, model and recipe."""

    path: str = ""  # an extracted copy (the folder with validation_list.txt); "" = the cache, then system folders
    limit: int = 0  # at most this many clips per split (a fixed seeded subset, for quick runs); 0 = every clip
    split_seed: int = 0  # which clips a limited split keeps; independent of the training seed
    frontend: LogMelConfig = LogMelConfig()  # spoken-digits' front end: 16 kHz, 25 ms / 10 ms, 40 mels, 100 frames
    peak_normalize: bool = True  # scale each clip to a peak of 0.5 as spoken-digits does; recordings vary in level
    feature_mean: float = -4.9  # spoken-digits' fixed normalisation; not re-measured on Speech Commands (see above)
    feature_std: float = 3.3  # its standard deviation, likewise
    noise_prob: float = 0.8  # share of training clips that get background noise (the TensorFlow recipe's 0.8)
    snr_db: tuple[float, float] = (5.0, 25.0)  # noise SNR range, uniform; an untuned guess for real recordings
    max_shift: int = 10  # training time shift of up to ±10 frames (±100 ms, the TensorFlow recipe's default)
    cache_features: bool = True  # store each split's features under the data root; off = recompute every load
    model: AudioConfig = AudioConfig(  # spoken-digits' encoder with 35 outputs: 4 blocks, d=64, 25 tokens + CLS
        n_mels=40, n_frames=100, stack=4, n_classes=len(WORDS), d_model=64, n_layers=4, n_heads=4
    )
    train: TrainConfig = field(  # ~6 epochs of the 84,843 training clips; sized for a CPU (module docstring)
        default_factory=lambda: TrainConfig(steps=8000, batch_size=64, lr=2e-3, warmup_steps=400)
    )

    def __post_init__(self) -> None:
        fe, m = self.frontend, self.model
        check_model_input(fe, m)
        if m.n_classes != len(WORDS):
            raise ValueError(f"model.n_classes={m.n_classes}, but Speech Commands v2 has {len(WORDS)} words. Use 35.")
        name = type(self).__name__
        check_range(f"{name}.limit", self.limit, 0, advice="Use 0 for every clip.")
        check_range(f"{name}.noise_prob", self.noise_prob, 0, 1, advice="Use 0.8.")
        check_range(f"{name}.snr_db[1]", self.snr_db[1], self.snr_db[0], advice="Give snr_db=(low, high), low <= high.")
        check_range(f"{name}.max_shift", self.max_shift, 0, fe.n_frames, high_open=True, advice="Use 0 for none.")
        check_range(f"{name}.feature_std", self.feature_std, 0, low_open=True, advice="Use 3.3.")


@register_task("speech-commands")
class SpeechCommands(Task):
    """Speech Commands v2, 35 words, 4-block audio encoder.

    Quality = top-1 on the official testing list.
    """

    modality = "speech"
    description = "Google Speech Commands v2: real 1-s recordings of 35 words, official lists; 4-block encoder"
    size: ClassVar[str] = "105,829 clips (84,843 train / 9,981 val / 11,005 test, official lists)"
    is_default = False
    metric = TopOneAccuracy()
    Config = SpeechCommandsConfig
    # quick profile: a quarter of the recipe and 2,000 of the 11,005 test clips
    quick_options = {"train.steps": 2000}
    quick_eval_samples = 2000
    eval_split = "test"

    def __init__(self, config: SpeechCommandsConfig | None = None) -> None:
        super().__init__(config)
        self._filterbank = filterbank_for(self.config.frontend)  # (M, F)
        self._noise: Tensor | None = None  # (W, T, M) mel power of background-noise windows, loaded on first use

    def _path(self) -> Path | None:
        return Path(self.config.path) if self.config.path else None

    def build_backbone(self) -> AudioEncoder:
        """The spoken-digits encoder with 35 outputs."""
        return AudioEncoder(self.config.model)

    def data_status(self) -> str:
        """Where the data is (a cheap look at folders and lists), or the command that gets it."""
        status = SPEECH_COMMANDS.status(self._path())
        if status.present:
            return f"present ({status.source}: {status.where})"
        if status.corrupt:
            return f"bad: {status.problem.splitlines()[0]}"
        return (
            f"missing: bench data prepare {SPEECH_COMMANDS.name} ({SPEECH_COMMANDS.archive.size / 1e9:.1f} GB "
            "download) or --path DIR"
        )

    def data_problem(self) -> str | None:
        """The problem and every way to get Speech Commands, when no usable copy is found."""
        status = SPEECH_COMMANDS.status(self._path())
        if status.present:
            return None
        return f"Task 'speech-commands' has no data: {status.problem}\n{SPEECH_COMMANDS.how_to_get()}"

    def batches(
        self, split: Split, *, batch_size: int, seed: int = 0, shuffle: bool = False, limit: int | None = None
    ) -> Iterator[Batch]:
        """As :meth:`Task.batches`, with the float16-stored features returned as float32."""
        for b in super().batches(split, batch_size=batch_size, seed=seed, shuffle=shuffle, limit=limit):
            yield Batch(b.inputs.float(), b.targets, b.sample_ids)  # (B, T, M) float32

    def load_split(self, split: Split) -> TensorSplit:
        """The split's clips as float16 log-mel features and word labels.

        The clips follow the official lists, cut to ``limit``.

        Raises:
            DatasetMissingError: the data set is not present (the message says how to get it).
            DatasetCorruptError: a list is malformed or a WAV is bad (the message names the file).
        """
        copy = SPEECH_COMMANDS.locate(self._path())
        files = self.split_files(copy, split)
        targets = torch.tensor([label for _, label in files], dtype=torch.long)  # (N,)
        cache = self._feature_file(copy, split, files) if self.config.cache_features else None
        if cache is not None and cache.is_file():
            inputs = self._load_cached(cache, len(files))
            if inputs is not None:
                return TensorSplit(inputs, targets)
        inputs = self.features(copy, [name for name, _ in files])  # (N, T, M) float16
        if cache is not None:
            atomic_torch_save({"inputs": inputs}, cache)
        return TensorSplit(inputs, targets)

    def split_files(self, copy: SpeechCommandsCopy, split: Split) -> list[tuple[str, int]]:
        """``(word/file.wav, label)`` of ``split``, cut to ``limit``.

        The official list, or the rest for train.
        """
        self.check_readable(split, via=f"SpeechCommands.split_files({split!r})")
        files = copy.split_files(split)
        if self.config.limit and len(files) > self.config.limit:
            keep = np.random.default_rng(self.config.split_seed).permutation(len(files))[: self.config.limit]
            files = [files[i] for i in sorted(keep)]
        return files

    def features(self, copy: SpeechCommandsCopy, names: list[str], *, chunk: int = 256) -> Tensor:
        """Normalised log-mel features ``(N, n_frames, n_mels)`` in float16 of the clips ``names``.

        Each clip is read (16-bit PCM at 16 kHz), centred in 1.0 s, resampled if the front end runs
        at another rate, optionally peak-normalised, turned into log-mel features and normalised by
        the fixed constants.
        """
        cfg, fe = self.config, self.config.frontend
        source_len = round(fe.n_samples * SAMPLE_RATE / fe.sample_rate)
        advice = copy.advice()
        out = torch.empty(len(names), fe.n_frames, fe.n_mels, dtype=torch.float16)  # (N, T, M), filled in place
        for start in range(0, len(names), chunk):
            clips = [read_wav(copy.root / n, advice=advice) for n in names[start : start + chunk]]
            waves = torch.stack([fix_length(to_float(c), source_len) for c in clips])  # (n, S_src)
            waves = fix_length(resample_to(waves, SAMPLE_RATE, fe.sample_rate), fe.n_samples)  # (n, S)
            if cfg.peak_normalize:
                waves = 0.5 * waves / waves.abs().amax(dim=1, keepdim=True).clamp(min=1e-6)  # (n, S)
            feats = (log_mel(waves, fe, self._filterbank) - cfg.feature_mean) / cfg.feature_std  # (n, T, M)
            out[start : start + len(clips)] = feats.half()
            if start and start % (chunk * 40) == 0:
                logger.info("speech-commands features: %d of %d clips", start, len(names))
        return out

    def _feature_file(self, copy: SpeechCommandsCopy, split: Split, files: list[tuple[str, int]]) -> Path:
        """Where this split's features are stored.

        Keyed by the front end, the clips, and their sizes and times.
        """
        cfg = self.config
        stats = [os.stat(copy.root / name) for name, _ in files]
        key = {
            "format": FEATURES_FORMAT,
            "frontend": dataclasses.asdict(cfg.frontend),
            "normalize": [cfg.peak_normalize, cfg.feature_mean, cfg.feature_std],
            "files": [[name, s.st_size, s.st_mtime_ns] for (name, _), s in zip(files, stats)],
        }
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        return SPEECH_COMMANDS.cache_dir() / "features" / f"{split}-{len(files)}-{digest}.pt"

    def _load_cached(self, path: Path, n: int) -> Tensor | None:
        """Stored features; ``None`` (the file set aside, with a warning) when unusable."""
        fe = self.config.frontend
        shape = (n, fe.n_frames, fe.n_mels)
        return read_tensor(path, "inputs", shape, torch.float16, "cached speech-commands features", "recomputing them")

    def noise_power(self) -> Tensor | None:
        """Mel power ``(W, T, M)`` of every 1-s window (0.5-s hop) of ``_background_noise_``.

        ``None`` when the copy has no noise folder. Loaded once per task object.
        """
        if self._noise is None:
            copy = SPEECH_COMMANDS.locate(self._path())
            fe, windows = self.config.frontend, []
            for path in copy.noise_files():
                wave = to_float(read_wav(path, advice=copy.advice()))  # (S_total,)
                wave = resample_to(wave, SAMPLE_RATE, fe.sample_rate)  # (S_total,)
                if len(wave) < fe.n_samples:
                    wave = fix_length(wave, fe.n_samples)
                windows.append(wave.unfold(0, fe.n_samples, fe.n_samples // 2))  # (w, S)
            if not windows:
                return None
            self._noise = mel_power(torch.cat(windows), fe, self._filterbank)  # (W, T, M)
        return self._noise

    def augment(self, inputs: Tensor) -> Tensor:
        """Training only: shift each clip by up to ``max_shift`` frames, then mix in noise.

        See the module docstring.

        Uses torch's global generator, which the training loop seeds, so training stays
        deterministic.
        """
        cfg = self.config
        x = inputs * cfg.feature_std + cfg.feature_mean  # (B, T, M) log-mel
        B, T, _ = x.shape
        if cfg.max_shift:
            shift = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (B, 1), device=x.device)  # (B, 1)
            src = torch.arange(T, device=x.device)[None, :] - shift  # (B, T) source frame of each output frame
            valid = ((src >= 0) & (src < T))[:, :, None]  # (B, T, 1)
            floor = float(np.log(cfg.frontend.log_floor))  # the log-mel of silence
            x = torch.where(valid, torch.gather(x, 1, src.clamp(0, T - 1)[:, :, None].expand_as(x)), floor)
        if cfg.noise_prob > 0:
            lo, hi = cfg.snr_db
            snr = lo + (hi - lo) * torch.rand(B, device=x.device)  # (B,)
            mixed = torch.rand(B, device=x.device) < cfg.noise_prob  # (B,)
            noise = self.noise_power()
            if noise is None:
                noisy = add_white_noise(x, snr, self._filterbank.to(x.device), cfg.frontend.log_floor)  # (B, T, M)
            else:
                pick = torch.randint(len(noise), (B,))  # (B,) one noise window per clip
                noisy = add_noise_power(x, noise[pick].to(x.device), snr, cfg.frontend.log_floor)  # (B, T, M)
            x = torch.where(mixed[:, None, None], noisy, x)
        return (x - cfg.feature_mean) / cfg.feature_std


def to_float(samples: np.ndarray) -> Tensor:
    """int16 samples → float32 in [-1, 1)."""
    return torch.from_numpy(samples.astype(np.float32) / 32768.0)


def add_noise_power(features: Tensor, noise: Tensor, snr_db: Tensor, log_floor: float) -> Tensor:
    """Mix noise into log-mel features in the mel-power domain, scaled to a per-clip SNR.

    Args:
        features: ``(B, T, M)`` log-mel features (``log(power + log_floor)``).
        noise: ``(B, T, M)`` mel power of one noise window per clip.
        snr_db: ``(B,)`` clip power over noise power, in dB, over the whole clip.
        log_floor: the floor the features were made with.

    Returns:
        ``(B, T, M)`` log-mel features of the noisy clips.
    """
    power = (features.exp() - log_floor).clamp(min=0.0)  # (B, T, M)
    ratio = power.sum(dim=(1, 2)) / noise.sum(dim=(1, 2)).clamp(min=1e-12) / 10.0 ** (snr_db / 10.0)  # (B,)
    return torch.log(power + ratio[:, None, None] * noise + log_floor)  # (B, T, M)
