"""Spoken digits: digits **synthesized with espeak-ng**, classified by a small audio transformer.

The speech is synthetic: no person recorded it. espeak-ng (a formant synthesizer, Debian package
``espeak-ng``) speaks "zero" … "nine" in 34 voices, each pairing one of 8 English accents with its
own espeak-ng timbre variant, at 3 speeds and 2 pitches: 2,040 clips, made once, deterministically,
and cached (:mod:`dynbench.tasks.data.espeak`). The split holds whole voices out: 24 voices train, 4
validate, 6 test, and no validation or test voice (neither its accent + variant pair nor its
variant) is heard in training, so quality = top-1 on unseen voices. Every accent occurs in training:
the test measures generalisation to new timbres and accent + timbre pairs, not to a new accent.
Synthetic speech is far more regular than recorded speech, so expect much higher accuracy here than
on recorded speech (Speech Commands).

Front end (:mod:`dynbench.tasks.data.logmel`), run when a split is loaded so the model's FLOPs are
the transformer's: centre in 1.0 s, FFT-resample 22,050 → 16,000 Hz, peak-normalise, 40-band log-mel
(25 ms window, 10 ms hop, 100 frames), then a fixed affine normalisation. Training only
(:meth:`SpokenDigits.augment`): a random time shift and white noise at a random SNR, added in the
mel-power domain; evaluation inputs are clean and fixed.

Dense recipe (seed 0, 400 steps): 100% top-1 on the 360 test clips (6 unseen voices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from dynbench.models.audio import AudioConfig, AudioEncoder
from dynbench.models.training import TrainConfig
from dynbench.tasks.base import Split, Task, TensorSplit, TopOneAccuracy, register_task
from dynbench.tasks.data import espeak
from dynbench.tasks.data.logmel import (
    LogMelConfig,
    add_white_noise,
    check_model_input,
    filterbank_for,
    fix_length,
    log_mel,
    resample,
)
from dynbench.validation import check_range


@dataclass(frozen=True)
class SpokenDigitsConfig:
    """Corpus, voice split, front end, augmentation, model and recipe."""

    train_voices: tuple[str, ...] = espeak.DIGIT_TRAIN_VOICES  # 24: with 10, top-1 on unseen voices stalled near 89%
    val_voices: tuple[str, ...] = espeak.DIGIT_VAL_VOICES  # 4 unseen voices for methods that fit on held-out data
    test_voices: tuple[str, ...] = espeak.DIGIT_TEST_VOICES  # 6 unseen voices (360 clips): quality is scored on these
    speeds: tuple[int, ...] = espeak.DIGIT_SPEEDS  # espeak-ng -s words/min around its 175 default: slow to brisk
    pitches: tuple[int, ...] = espeak.DIGIT_PITCHES  # espeak-ng -p either side of its 50 default
    frontend: LogMelConfig = LogMelConfig()  # 16 kHz, 25 ms / 10 ms, 40 mels, 1.0 s = 100 frames
    peak_normalize: bool = True  # scale each clip to a peak of 0.5, so the log floor is ~60 dB below every voice
    feature_mean: float = -4.9  # ≈ mean log-mel value over the training voices; fixed so every split agrees
    feature_std: float = 3.3  # ≈ its standard deviation
    snr_db: tuple[float, float] = (20.0, 40.0)  # training noise SNR range, uniform; down to 10 dB cost ~25 points
    max_shift: int = 5  # training time shift of up to ±5 frames (±50 ms); 0 turns it off
    model: AudioConfig = AudioConfig(  # 4 blocks of d=64 over 25 tokens of 4 stacked frames (40 ms each) + CLS
        n_mels=40, n_frames=100, stack=4, d_model=64, n_layers=4, n_heads=4
    )
    train: TrainConfig = field(  # 400 steps reach 100% on the test voices; ~62 CPU-seconds at 1 thread
        default_factory=lambda: TrainConfig(steps=400, batch_size=64, lr=2e-3, warmup_steps=40)
    )

    def __post_init__(self) -> None:
        groups = {"train_voices": self.train_voices, "val_voices": self.val_voices, "test_voices": self.test_voices}
        for name, voices in groups.items():
            if not voices:
                raise ValueError(f"SpokenDigitsConfig.{name} is empty. Give it at least one espeak-ng voice.")
        espeak.check_voice_split(self.train_voices, self.val_voices, self.test_voices)
        fe, m = self.frontend, self.model
        check_model_input(fe, m)
        name = type(self).__name__
        check_range(f"{name}.max_shift", self.max_shift, 0, fe.n_frames, high_open=True, advice="Use 0 for none.")
        check_range(f"{name}.snr_db[1]", self.snr_db[1], self.snr_db[0], advice="Give snr_db=(low, high), low <= high.")
        check_range(f"{name}.feature_std", self.feature_std, 0, low_open=True, advice="Use 3.3.")

    @property
    def corpus(self) -> espeak.CorpusSpec:
        """The synthesized corpus: every voice of every split × speed × pitch."""
        voices = self.train_voices + self.val_voices + self.test_voices
        return espeak.digit_corpus(voices, self.speeds, self.pitches)

    def voices(self, split: Split) -> tuple[str, ...]:
        """The voices of one split."""
        return {"train": self.train_voices, "val": self.val_voices, "test": self.test_voices}[split]


def _size(cfg: SpokenDigitsConfig) -> str:
    per_voice = len(espeak.WORDS) * len(cfg.speeds) * len(cfg.pitches)
    n = [per_voice * len(cfg.voices(s)) for s in ("train", "val", "test")]
    return f"{sum(n):,} synthetic clips ({n[0]:,} train / {n[1]:,} val / {n[2]:,} test, by voice)"


@register_task("spoken-digits")
class SpokenDigits(Task):
    """Synthetic spoken digits (espeak-ng), 4-block encoder; quality = top-1 on unseen voices."""

    modality = "speech"
    synthetic = True
    description = "synthetic speech: digit words spoken by espeak-ng in 34 voices, test voices unseen; 4-block encoder"
    size: ClassVar[str] = _size(SpokenDigitsConfig())
    is_default = False  # the tiny speech task for tests; spoken-commands is the default (issue 14)
    metric = TopOneAccuracy()
    Config = SpokenDigitsConfig
    # quick profile: 250 of the 400 steps; the 360 test clips are few enough to keep whole
    quick_options = {"train.steps": 250}
    eval_split = "test"

    def __init__(self, config: SpokenDigitsConfig | None = None) -> None:
        super().__init__(config)
        self._filterbank = filterbank_for(self.config.frontend)  # (M, F)

    def build_backbone(self) -> AudioEncoder:
        """A 4-block, d=64 encoder over 25 stacked-frame tokens + CLS."""
        return AudioEncoder(self.config.model)

    def data_status(self) -> str:
        """Whether the synthesized corpus is cached (a file check; nothing is synthesized here)."""
        spec = self.config.corpus
        if espeak.is_cached(spec):
            return "present (synthetic, espeak-ng, cached)"
        if not espeak.espeak_available():
            return "missing: apt-get install espeak-ng"
        return "not prepared (synthesized with espeak-ng on first use)"

    def data_problem(self) -> str | None:
        """How to get espeak-ng, when the corpus is neither cached nor can be synthesized."""
        if espeak.is_cached(self.config.corpus) or espeak.espeak_available():
            return None
        return f"Task 'spoken-digits' cannot synthesize its corpus: espeak-ng is not installed. {espeak.INSTALL_HINT}"

    def load_split(self, split: Split) -> TensorSplit:
        """Synthesize or load the corpus, keep the split's voices, compute log-mel features.

        The features are normalised.
        """
        corpus = espeak.prepare_corpus(self.config.corpus)
        rows = self.split_rows(corpus, split)
        targets = torch.from_numpy(corpus.labels[rows, 1].copy())  # (N,) word index = digit
        return TensorSplit(self.features(corpus, rows), targets)

    def split_rows(self, corpus: espeak.Corpus, split: Split) -> np.ndarray:
        """Indices of the clips by ``split``'s voices: every word, speed and pitch of each."""
        self.check_readable(split, via=f"SpokenDigits.split_rows({split!r})")
        voice_ids = [corpus.spec.voices.index(v) for v in self.config.voices(split)]
        return np.flatnonzero(np.isin(corpus.labels[:, 0], voice_ids))

    def features(self, corpus: espeak.Corpus, rows: np.ndarray, *, chunk: int = 256) -> Tensor:
        """Clean model inputs ``(N, n_frames, n_mels)`` for corpus clips ``rows``.

        Computed ``chunk`` clips at a time.

        Each clip is centred in 1.0 s at the source rate, FFT-resampled to 16 kHz, optionally
        peak-normalised, turned into log-mel features and normalised with the fixed ``feature_mean``
        / ``feature_std``.
        """
        cfg, fe = self.config, self.config.frontend
        source_len = round(fe.n_samples * corpus.sample_rate / fe.sample_rate)
        out = []
        for start in range(0, len(rows), chunk):
            clips = [torch.from_numpy(corpus.clip(i).astype(np.float32) / 32768.0) for i in rows[start : start + chunk]]
            waves = torch.stack([fix_length(c, source_len) for c in clips])  # (n, S_src)
            waves = fix_length(resample(waves, corpus.sample_rate, fe.sample_rate), fe.n_samples)  # (n, S)
            if cfg.peak_normalize:
                waves = 0.5 * waves / waves.abs().amax(dim=1, keepdim=True).clamp(min=1e-6)  # (n, S)
            out.append(log_mel(waves, fe, self._filterbank))  # (n, T, M)
        feats = torch.cat(out) if out else torch.empty(0, fe.n_frames, fe.n_mels)  # (N, T, M)
        return ((feats - cfg.feature_mean) / cfg.feature_std).contiguous()  # (N, T, M)

    def augment(self, inputs: Tensor) -> Tensor:
        """Training only: shift each clip by up to ``max_shift`` frames, then add white noise.

        The noise has a random SNR.

        Uses torch's global generator, which the training loop seeds, so training stays
        deterministic.
        """
        cfg = self.config
        floor = float(np.log(cfg.frontend.log_floor))
        x = inputs * cfg.feature_std + cfg.feature_mean  # (B, T, M) log-mel
        B, T, _ = x.shape
        if cfg.max_shift:
            shift = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (B, 1), device=x.device)  # (B, 1)
            src = torch.arange(T, device=x.device)[None, :] - shift  # (B, T) source frame of each output frame
            valid = ((src >= 0) & (src < T))[:, :, None]  # (B, T, 1)
            x = torch.where(valid, torch.gather(x, 1, src.clamp(0, T - 1)[:, :, None].expand_as(x)), floor)
        lo, hi = cfg.snr_db
        snr = lo + (hi - lo) * torch.rand(B, device=x.device)  # (B,)
        x = add_white_noise(x, snr, self._filterbank.to(x.device), cfg.frontend.log_floor)  # (B, T, M)
        return (x - cfg.feature_mean) / cfg.feature_std
