"""Offline waveform augmentation for synthetic speech: noise at an SNR, a room, a shift, a level.

Pure numpy functions of a clean 16-kHz clip and a seeded generator.

Used by :mod:`dynbench.tasks.data.command_corpus` to make its stored clips. Each function takes its
draws from the :class:`numpy.random.Generator` it is given, so a clip's augmentation depends only on
that generator's seed.

Mechanism (:func:`augment_clip`): reverberate with probability ``reverb_prob``
(:func:`reverberate`: a unit direct path followed by Gaussian noise decaying 60 dB over a random
RT60, at a random direct-to-reverberant ratio), place the word in a 1-s window with a random shift
(:func:`place`), add one noise — white, pink (power ∝ 1/f), brown (∝ 1/f²) (:func:`colored_noise`)
or babble (:func:`babble`: other words summed) — scaled so that the energy of the placed speech
over that of the noise, over the whole window, is the drawn SNR (the definition of
:func:`dynbench.tasks.data.logmel.add_white_noise`, there in the mel-power domain), then scale the
sum to a random peak level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dynbench.validation import check_range, choice_message

SAMPLE_RATE = 16_000  # Hz: Speech Commands' rate
CLIP_SAMPLES = 16_000  # 1 s: Speech Commands' clip length
NOISE_KINDS = ("none", "white", "pink", "brown", "babble")
NoiseKind = Literal["white", "pink", "brown", "babble"]


@dataclass(frozen=True)
class AugmentSpec:
    """The offline augmentation's draws (see the module docstring)."""

    snr_db: tuple[float, ...] = (15.0, 20.0, 25.0, 30.0)  # drawn uniformly; chosen on validation (docs)
    noise_kinds: tuple[NoiseKind, ...] = ("white", "pink", "brown", "babble")  # one drawn per noisy clip
    clean_prob: float = 0.1  # share of clips left without noise
    babble_talkers: int = 4  # other words summed into one babble noise
    reverb_prob: float = 0.5  # share of clips reverberated
    rt60_s: tuple[float, float] = (0.2, 0.8)  # room reverberation time range, uniform (living room to hall)
    drr_db: tuple[float, float] = (0.0, 10.0)  # direct-to-reverberant ratio range, uniform
    max_shift_s: float = 0.15  # the word's centre moves up to ±150 ms from the clip's centre
    level: tuple[float, float] = (0.1, 0.9)  # peak level of the stored clip, uniform (espeak-ng's -a is a gain)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not self.snr_db or not self.noise_kinds:
            raise ValueError(f"{name}.snr_db and noise_kinds must be non-empty. Give at least one of each.")
        for kind in self.noise_kinds:
            if kind not in NOISE_KINDS[1:]:
                raise ValueError(choice_message(f"{name}.noise_kinds", kind, NOISE_KINDS[1:]))
        check_range(f"{name}.clean_prob", self.clean_prob, 0, 1, advice="Use 0.1.")
        check_range(f"{name}.reverb_prob", self.reverb_prob, 0, 1, advice="Use 0.5.")
        check_range(f"{name}.babble_talkers", self.babble_talkers, 1, advice="Use 4.")
        check_range(f"{name}.rt60_s[0]", self.rt60_s[0], 0.05, self.rt60_s[1], advice="Give (low, high) seconds.")
        check_range(f"{name}.drr_db[1]", self.drr_db[1], self.drr_db[0], advice="Give (low, high) dB.")
        check_range(f"{name}.max_shift_s", self.max_shift_s, 0, 0.5, advice="Use 0.15.")
        check_range(f"{name}.level[0]", self.level[0], 0, self.level[1], low_open=True, advice="Use (0.1, 0.9).")
        check_range(f"{name}.level[1]", self.level[1], self.level[0], 1.0, advice="Use (0.1, 0.9).")


def clip_rng(seed: int, *position: int) -> np.random.Generator:
    """The generator of one clip's draws: a function of a seed and the clip's position only."""
    return np.random.default_rng([seed, *position])


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise of ``n`` samples: white, pink (power ∝ 1/f) or brown (∝ 1/f²)."""
    white = rng.standard_normal(n)
    if kind != "white":
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        f[0] = f[1]  # no infinite DC gain
        spec *= f ** (-0.5 if kind == "pink" else -1.0)
        white = np.fft.irfft(spec, n)
    return white / np.sqrt(np.mean(white**2))


def babble(pool: list[np.ndarray], choices: np.ndarray, n: int, talkers: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power sum of ``talkers`` clips ``pool[i]``, ``i`` drawn from ``choices``.

    Each is placed at random in ``n`` samples; a clip longer than that is cut.
    """
    out = np.zeros(n)
    for i in rng.choice(choices, size=min(talkers, len(choices)), replace=False):
        clip = pool[i][:n] / max(np.sqrt(np.mean(pool[i] ** 2)), 1e-9)
        start = int(rng.integers(0, n - len(clip) + 1))
        out[start : start + len(clip)] += clip
    return out / max(np.sqrt(np.mean(out**2)), 1e-12)


def reverberate(speech: np.ndarray, rt60_s: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``speech`` convolved with a synthetic room: a unit direct path + a decaying noise tail.

    The tail is Gaussian noise under ``exp(-6.9 t / rt60)`` (60 dB down at ``rt60``), scaled so the
    direct path's energy over the tail's is ``drr_db``. The output keeps the tail (it is longer).
    """
    n_tail = max(1, int(rt60_s * SAMPLE_RATE))
    tail = rng.standard_normal(n_tail) * np.exp(-6.9 * np.arange(1, n_tail + 1) / n_tail)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    rir = np.concatenate([[1.0], tail])
    size = len(speech) + len(rir) - 1
    return np.fft.irfft(np.fft.rfft(speech, size) * np.fft.rfft(rir, size), size)


def place(speech: np.ndarray, shift: int, n: int = CLIP_SAMPLES) -> np.ndarray:
    """``speech`` centred in ``n`` samples, moved by ``shift``; what falls outside is cut."""
    out = np.zeros(n)
    start = (n - len(speech)) // 2 + shift
    lo, hi = max(0, start), min(n, start + len(speech))
    if hi > lo:
        out[lo:hi] = speech[lo - start : hi - start]
    return out


def augment_clip(
    clean: np.ndarray, rng: np.random.Generator, aug: AugmentSpec, pool: list[np.ndarray], others: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """One stored clip from a clean 16-kHz rendering: (speech part, noise part, draws).

    The stored clip is ``speech + noise``, both in the returned scale (peak of the sum =
    ``level``). Babble is made of ``pool[i]`` for ``i`` in ``others``: the split's clean clips of
    other words.
    """
    draws: dict[str, float] = {"snr_db": float("nan"), "rt60_s": 0.0}
    speech = clean
    if rng.random() < aug.reverb_prob:
        draws["rt60_s"] = float(rng.uniform(*aug.rt60_s))
        speech = reverberate(speech, draws["rt60_s"], float(rng.uniform(*aug.drr_db)), rng)
    draws["shift"] = round(rng.uniform(-1, 1) * aug.max_shift_s * SAMPLE_RATE)
    speech = place(speech, int(draws["shift"]))
    noise = np.zeros_like(speech)
    kind = "none" if rng.random() < aug.clean_prob else aug.noise_kinds[int(rng.integers(len(aug.noise_kinds)))]
    if kind != "none":
        draws["snr_db"] = float(aug.snr_db[int(rng.integers(len(aug.snr_db)))])
        if kind == "babble":
            unit = babble(pool, others, len(speech), aug.babble_talkers, rng)
        else:
            unit = colored_noise(kind, len(speech), rng)
        noise = unit * np.sqrt(np.mean(speech**2) / 10 ** (draws["snr_db"] / 10))
    draws["noise"] = NOISE_KINDS.index(kind)
    draws["level"] = float(rng.uniform(*aug.level))
    scale = draws["level"] / max(np.abs(speech + noise).max(), 1e-9)
    return speech * scale, noise * scale, draws


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] → int16."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def measured_snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    """Energy of ``speech`` over that of ``noise``, in dB (the SNR's definition here)."""
    return float(10 * np.log10(np.sum(speech**2) / np.sum(noise**2)))
