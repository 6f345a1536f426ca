"""Speech front end: resampling, fixed-length clips, log-mel features; plain torch, no torchaudio.

Mechanism:

- **Resampling** (:func:`resample`) is band-limited FFT resampling: the clip's real spectrum is
  truncated (or zero-padded) to the new length's band and transformed back, which is an ideal
  low-pass filter at the lower of the two Nyquist frequencies. The clip is treated as one period of
  a periodic signal, so it must start and end in silence (synthesized clips do) for the edges to
  stay clean.
- **Fixed length** (:func:`fix_length`): each clip is centred in a window of a fixed number of
  samples, padded with zeros or cropped symmetrically.
- **Log-mel** (:func:`log_mel`): a Hann-windowed ``torch.stft`` power spectrum (25 ms window, 10 ms
  hop by default), an HTK-style triangular mel filterbank built here (:func:`mel_filterbank`: ``mel
  = 2595 · log10(1 + f /
  700)``, unit-peak triangles between equally spaced mel points), then ``log(power + floor)``.
- **Noise in the feature domain** (:func:`add_white_noise`): training augmentation adds white
  Gaussian noise in the mel-power domain at a chosen SNR. Nothing here is synthetic data; the
  features are computed from whatever waveform comes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogMelConfig:
    """Front-end settings; the defaults are the usual ASR front end at 16 kHz."""

    sample_rate: int = 16_000  # Hz; clips are resampled to this before the STFT
    win_length: int = 400  # samples per analysis window: 25 ms at 16 kHz
    hop_length: int = 160  # samples between frames: 10 ms at 16 kHz, 100 frames per second
    n_fft: int = 512  # FFT size, the next power of two above the window (257 frequency bins)
    n_mels: int = 40  # mel bands, the classic keyword-spotting resolution
    f_min: float = 20.0  # Hz; the lowest band edge, below speech energy
    f_max: float = 7_600.0  # Hz; the highest band edge, just below the 8 kHz Nyquist frequency
    n_frames: int = 100  # frames per clip: 1.0 s, long enough for every digit word at the slowest speed
    log_floor: float = 1e-3  # added to the mel power before the log: ~60 dB below a peak-0.5 clip's loudest band

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(
                f"win_length={self.win_length} exceeds n_fft={self.n_fft}. Use an n_fft of at least the window "
                "length (e.g. 512 for a 400-sample window)."
            )
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"mel band [{self.f_min}, {self.f_max}] Hz is not inside [0, {self.sample_rate / 2}] Hz. "
                "Pick 0 <= f_min < f_max <= sample_rate / 2."
            )

    @property
    def n_samples(self) -> int:
        """Samples per fixed-length clip: exactly ``n_frames`` frames with the centred STFT."""
        return self.n_frames * self.hop_length

    @property
    def n_freqs(self) -> int:
        """Frequency bins of the one-sided spectrum."""
        return self.n_fft // 2 + 1


def hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale: ``2595 · log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> Tensor:
    """HTK-style triangular mel filterbank.

    ``n_mels + 2`` points equally spaced on the mel scale between ``f_min`` and ``f_max``; filter
    ``m`` rises linearly (in Hz) from point ``m`` to a peak of 1 at point ``m + 1`` and falls to 0
    at point ``m + 2``. Filters are not area-normalised (HTK convention).

    Args:
        n_mels: number of bands.
        n_fft: FFT size; the bank covers its ``n_fft // 2 + 1`` one-sided bins.
        sample_rate: Hz.
        f_min: lowest band edge in Hz.
        f_max: highest band edge in Hz.

    Returns:
        ``(n_mels, n_fft // 2 + 1)`` float32 weights.
    """
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    lo, hi = hz_to_mel(torch.tensor(f_min, dtype=torch.float64)), hz_to_mel(torch.tensor(f_max, dtype=torch.float64))
    points = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))  # (M+2,)
    left, centre, right = points[:-2, None], points[1:-1, None], points[2:, None]  # (M, 1) each
    rising = (freqs[None, :] - left) / (centre - left)  # (M, F)
    falling = (right - freqs[None, :]) / (right - centre)  # (M, F)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()  # (M, F)


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited FFT resampling of the last dimension (see the module docstring).

    The output has ``round(n · new_rate / orig_rate)`` samples; amplitudes are preserved (a sine
    keeps its amplitude when its frequency is below both Nyquist frequencies). Content exactly at a
    Nyquist frequency is handled as in ``scipy.signal.resample``: dropped when downsampling, split
    between ±f when upsampling.

    Args:
        waveform: ``(..., n)`` samples.
        orig_rate: Hz of ``waveform``.
        new_rate: Hz wanted.

    Returns:
        ``(..., round(n · new_rate / orig_rate))`` float32 samples.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} → {new_rate} Hz. Pass rates in Hz.")
    if orig_rate == new_rate:
        return waveform.float()
    n = waveform.shape[-1]
    m = max(1, round(n * new_rate / orig_rate))
    spec = torch.fft.rfft(waveform.double(), dim=-1)  # (..., n//2+1)
    keep = min(spec.shape[-1], m // 2 + 1)
    out = torch.zeros((*spec.shape[:-1], m // 2 + 1), dtype=spec.dtype)  # (..., m//2+1)
    out[..., :keep] = spec[..., :keep]
    if m < n and m % 2 == 0:
        out[..., m // 2] = 0  # the new Nyquist bin would alias ±f; drop it (above every mel band)
    elif m > n and n % 2 == 0:
        out[..., n // 2] *= 0.5  # the old Nyquist component splits evenly between +f and -f
    return (torch.fft.irfft(out, n=m, dim=-1) * (m / n)).float()  # (..., m)


def fix_length(waveform: Tensor, n: int) -> Tensor:
    """Centre ``(..., L)`` samples in ``n`` samples: zero-pad or crop both sides equally."""
    length = waveform.shape[-1]
    if length >= n:
        start = (length - n) // 2
        return waveform[..., start : start + n]  # (..., n)
    before = (n - length) // 2
    return torch.nn.functional.pad(waveform, (before, n - length - before))  # (..., n)


def mel_power(waveforms: Tensor, cfg: LogMelConfig, filterbank: Tensor | None = None) -> Tensor:
    """Mel-band power of ``(B, n_samples)`` waveforms → ``(B, n_frames, n_mels)``.

    A centred STFT (reflect padding) gives ``n_samples / hop + 1`` frames; the last is dropped so a
    clip of ``cfg.n_samples`` samples yields exactly ``cfg.n_frames`` frames.
    """
    fb = filterbank_for(cfg) if filterbank is None else fb_check(filterbank, cfg)
    window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float32)
    spec = torch.stft(
        waveforms.float(),
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )  # (B, F, frames)
    power = spec.real**2 + spec.imag**2  # (B, F, frames)
    mel = torch.einsum("mf,bft->btm", fb, power)  # (B, frames, M)
    return mel[:, : cfg.n_frames]  # (B, T, M)


def filterbank_for(cfg: LogMelConfig) -> Tensor:
    """The ``(n_mels, n_freqs)`` mel filterbank of a front end."""
    return mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max)


def fb_check(filterbank: Tensor, cfg: LogMelConfig) -> Tensor:
    """``filterbank`` if its shape fits ``cfg``.

    Raises:
        ValueError: it does not fit; the message says which shape was expected.
    """
    if tuple(filterbank.shape) != (cfg.n_mels, cfg.n_freqs):
        raise ValueError(
            f"filterbank shape {tuple(filterbank.shape)} does not fit the front end; expected "
            f"({cfg.n_mels}, {cfg.n_freqs}). Build it with mel_filterbank(cfg.n_mels, cfg.n_fft, ...)."
        )
    return filterbank


def log_mel(waveforms: Tensor, cfg: LogMelConfig, filterbank: Tensor | None = None) -> Tensor:
    """Log-mel features of ``(B, n_samples)`` waveforms → ``(B, n_frames, n_mels)``.

    Each feature is ``log(mel power + floor)``.
    """
    if waveforms.dim() != 2 or waveforms.shape[1] != cfg.n_samples:
        raise ValueError(
            f"log_mel expects (B, {cfg.n_samples}) waveforms, got {tuple(waveforms.shape)}. "
            "Resample to cfg.sample_rate and fix_length(x, cfg.n_samples) first."
        )
    return torch.log(mel_power(waveforms, cfg, filterbank) + cfg.log_floor)  # (B, T, M)


def add_white_noise(features: Tensor, snr_db: Tensor, filterbank: Tensor, log_floor: float) -> Tensor:
    """Add white Gaussian noise to log-mel features, in the mel-power domain, at a per-clip SNR.

    White noise of variance σ² has, in every STFT bin, power ``σ² · Σw² · E`` with ``E ~ Exp(1)``;
    its mel power is the filterbank applied to that. The noise is scaled so that the clip's total
    mel power over total noise mel power equals ``snr_db``, and added to the clip's mel power. The
    signal × noise cross term, zero in expectation, is left out: the features cannot be inverted to
    the complex spectrum it needs.

    Args:
        features: ``(B, T, M)`` log-mel features (``log(power + log_floor)``).
        snr_db: ``(B,)`` signal-to-noise ratio per clip, in dB.
        filterbank: ``(M, F)`` the filterbank that made the features.
        log_floor: the floor the features were made with.

    Returns:
        ``(B, T, M)`` log-mel features of the noisy clips.
    """
    B, T, _ = features.shape
    power = (features.exp() - log_floor).clamp(min=0.0)  # (B, T, M)
    draws = torch.empty(B, T, filterbank.shape[1], device=features.device).exponential_()  # (B, T, F)
    noise = draws @ filterbank.T  # (B, T, M)
    ratio = power.sum(dim=(1, 2)) / noise.sum(dim=(1, 2)) / 10.0 ** (snr_db / 10.0)  # (B,)
    return torch.log(power + ratio[:, None, None] * noise + log_floor)  # (B, T, M)


def duration_s(cfg: LogMelConfig) -> float:
    """Seconds of audio per fixed-length clip."""
    return cfg.n_samples / cfg.sample_rate


def check_model_input(frontend: LogMelConfig, model: Any) -> None:
    """Raise ``ValueError`` unless ``model`` (an ``AudioConfig``) reads the front end's output."""
    if (model.n_frames, model.n_mels) != (frontend.n_frames, frontend.n_mels):
        raise ValueError(
            f"model expects {model.n_frames} frames × {model.n_mels} mels but the front end makes "
            f"{frontend.n_frames} × {frontend.n_mels}. Set model.n_frames/n_mels to the front end's."
        )
