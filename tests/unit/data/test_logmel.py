"""The speech front end: mel filterbank, log-mel against a hand-computed case, resampling, noise at
an SNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynbench.tasks.data.logmel import (
    LogMelConfig,
    add_white_noise,
    filterbank_for,
    fix_length,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    resample,
)


def test_htk_mel_scale():
    assert hz_to_mel(torch.tensor(1000.0)).item() == pytest.approx(1000.0, abs=0.05)  # HTK: 1 kHz ≈ 1000 mel
    hz = torch.tensor([0.0, 300.0, 4000.0, 8000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz)


def test_filterbank_triangles_peak_at_their_centres_and_partition_unity():
    n_fft, sr, n_mels, f_min, f_max = 512, 16000, 40, 20.0, 7600.0
    fb = mel_filterbank(n_mels, n_fft, sr, f_min, f_max).double()
    assert fb.shape == (n_mels, n_fft // 2 + 1)
    assert fb.min() >= 0 and fb.max() <= 1
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    points = mel_to_hz(
        torch.linspace(
            hz_to_mel(torch.tensor(f_min)).item(),
            hz_to_mel(torch.tensor(f_max)).item(),
            n_mels + 2,
            dtype=torch.float64,
        )
    )
    centres = points[1:-1]
    # Each row peaks at the FFT bin nearest its centre frequency (within one bin), and peaks rise
    # with m.
    peak_bins = fb.argmax(dim=1)
    assert (torch.abs(freqs[peak_bins] - centres) <= sr / n_fft).all()
    assert (peak_bins[1:] >= peak_bins[:-1]).all()
    # Zero outside [left, right] of each triangle.
    outside = (freqs[None, :] <= points[:-2, None]) | (freqs[None, :] >= points[2:, None])
    assert (fb[outside] == 0).all()
    # Neighbouring HTK triangles overlap to sum to 1 between the first and the last centre.
    inner = (freqs >= centres[0]) & (freqs <= centres[-1])
    torch.testing.assert_close(fb[:, inner].sum(dim=0), torch.ones(int(inner.sum()), dtype=torch.float64))


def test_pure_tone_lights_up_the_mel_band_centred_on_it():
    cfg = LogMelConfig()
    fb = filterbank_for(cfg)
    n = torch.arange(cfg.n_samples, dtype=torch.float64)
    centres = mel_to_hz(
        torch.linspace(
            hz_to_mel(torch.tensor(cfg.f_min)).item(), hz_to_mel(torch.tensor(cfg.f_max)).item(), cfg.n_mels + 2
        )
    )[1:-1]
    for band in (5, 20, 33):
        tone = torch.sin(2 * math.pi * centres[band].item() * n / cfg.sample_rate)[None]  # (1, S)
        feats = log_mel(tone.float(), cfg, fb)  # (1, T, M)
        assert feats.shape == (1, cfg.n_frames, cfg.n_mels)
        assert feats[0, 10:-10].mean(dim=0).argmax().item() == band


def test_log_mel_matches_a_hand_computed_small_case():
    cfg = LogMelConfig(sample_rate=16, win_length=8, hop_length=4, n_fft=8, n_mels=3, f_min=0.0, f_max=8.0, n_frames=4)
    x = np.random.default_rng(0).standard_normal(cfg.n_samples)  # 16 samples
    padded = np.pad(x, 4, mode="reflect")  # centred STFT: n_fft // 2 reflected samples each side
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8) / 8)  # periodic Hann
    frames = np.stack([padded[4 * t : 4 * t + 8] * window for t in range(4)])  # (T, 8)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 5)
    # Mel points 0, m1, m2, m3, 8 Hz equally spaced in HTK mel; bins at 0, 2, 4, 6, 8 Hz.
    mel_pts = np.linspace(0, 2595 * np.log10(1 + 8 / 700), 5)
    hz = 700 * (10 ** (mel_pts / 2595) - 1)
    bins = np.arange(5) * 2.0
    fb = np.array(
        [
            np.maximum(
                0, np.minimum((bins - hz[m]) / (hz[m + 1] - hz[m]), (hz[m + 2] - bins) / (hz[m + 2] - hz[m + 1]))
            )
            for m in range(3)
        ]
    )
    expected = np.log(power @ fb.T + cfg.log_floor)  # (T, 3)
    got = log_mel(torch.tensor(x, dtype=torch.float32)[None], cfg)[0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_log_mel_rejects_unprepared_waveforms():
    with pytest.raises(ValueError, match="fix_length"):
        log_mel(torch.zeros(2, 123), LogMelConfig())


def test_resample_keeps_a_sine_a_sine():
    n_in = 2205  # 0.1 s at 22,050 Hz: a whole number of 1 kHz periods, so the FFT method is exact
    t_in = torch.arange(n_in, dtype=torch.float64) / 22050
    out = resample(torch.sin(2 * math.pi * 1000 * t_in)[None], 22050, 16000)
    assert out.shape == (1, 1600)
    t_out = torch.arange(1600, dtype=torch.float64) / 16000
    torch.testing.assert_close(out[0].double(), torch.sin(2 * math.pi * 1000 * t_out), atol=1e-5, rtol=0)
    # Upsampling back recovers the original.
    torch.testing.assert_close(
        resample(out, 16000, 22050)[0].double(), torch.sin(2 * math.pi * 1000 * t_in), atol=1e-5, rtol=0
    )


def test_resample_removes_content_above_the_new_nyquist():
    t = torch.arange(2205, dtype=torch.float64) / 22050
    high = torch.sin(2 * math.pi * 10_000 * t)[None]  # above 8 kHz: gone after resampling to 16 kHz
    assert resample(high, 22050, 16000).abs().max() < 1e-4


def test_resample_identity_and_bad_rates():
    x = torch.randn(3, 50)
    torch.testing.assert_close(resample(x, 16000, 16000), x)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 16000)


def test_fix_length_centres():
    x = torch.arange(1, 5, dtype=torch.float32)  # [1, 2, 3, 4]
    assert fix_length(x, 8).tolist() == [0, 0, 1, 2, 3, 4, 0, 0]
    assert fix_length(x, 2).tolist() == [2, 3]
    assert fix_length(x, 4).tolist() == [1, 2, 3, 4]


def test_white_noise_is_added_at_the_requested_snr():
    cfg = LogMelConfig()
    fb = filterbank_for(cfg)
    torch.manual_seed(0)
    clean = log_mel(0.3 * torch.randn(2, cfg.n_samples), cfg, fb)  # (2, T, M)
    snr = torch.tensor([10.0, 30.0])
    noisy = add_white_noise(clean, snr, fb, cfg.log_floor)
    p_clean = clean.double().exp() - cfg.log_floor
    p_noise = noisy.double().exp() - clean.double().exp()
    measured = 10 * torch.log10(p_clean.sum(dim=(1, 2)) / p_noise.sum(dim=(1, 2)))
    torch.testing.assert_close(measured, snr.double(), atol=1e-3, rtol=0)
    assert (noisy >= clean - 1e-5).all()  # noise only adds power


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="n_fft"):
        LogMelConfig(win_length=600, n_fft=512)
    with pytest.raises(ValueError, match="f_max"):
        LogMelConfig(f_max=9000.0)
