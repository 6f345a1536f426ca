"""One content hash per sample, and the random draws seeded from it.

A per-sample random control (tinv's and dht's random baselines) must give an input the same draw
whatever batch it arrives in and at every budget (common random numbers keep compute monotone in the
budget), and the oracle finds a sample's precomputed allocation by its content. All three read the
one hash here: blake2b over the sample's dtype, shape and bytes. Draws come from a numpy generator
seeded with ``(seed, hash)``, so another seed gives independent draws for the same input.

:data:`VERSION` feeds the recorded version of every method that lists this module in
:attr:`~dynbench.methods.base.Method.shared_parts`: bump it when a change here changes any result.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["VERSION", "input_hashes", "sample_digests", "sample_generators", "sample_uniforms"]

VERSION = "1"
"""Version of the hash and the draws; part of the recorded version of every method using them."""
DIGEST_BYTES = 8
"""Digest size: 64 bits, so a hash fits int64 and collisions are negligible at any dataset size."""


def sample_digests(inputs: Tensor) -> list[bytes]:
    """One blake2b digest per sample (dim 0) over a ``dtype|shape|`` header and the raw bytes.

    The header keeps equal bytes of different dtypes or shapes apart; any dtype hashes (bf16
    included), since the bytes are read as ``uint8``.
    """
    flat = inputs.detach().cpu().contiguous().reshape(inputs.shape[0], -1)  # (B, D)
    raw = flat.view(torch.uint8).numpy() if flat.numel() else np.zeros((inputs.shape[0], 0), np.uint8)  # (B, bytes)
    header = f"{inputs.dtype}|{tuple(inputs.shape[1:])}|".encode()
    return [hashlib.blake2b(header + row.tobytes(), digest_size=DIGEST_BYTES).digest() for row in raw]


def input_hashes(inputs: Tensor) -> Tensor:
    """``(B,)`` int64 content hash of each sample's input tensor (its dtype, shape and bytes)."""
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in sample_digests(inputs)], dtype=torch.long)


def sample_generators(inputs: Tensor, seed: int) -> list[np.random.Generator]:
    """One numpy generator per sample, seeded with ``(seed, its hash)``: batch-independent draws.

    Args:
        inputs: ``(B, ...)`` a batch of inputs.
        seed: mixes into every generator (taken modulo 2⁶⁴), so each seed draws independently.
    """
    salt = int(seed) % 2**64
    return [np.random.default_rng([salt, int.from_bytes(d, "little")]) for d in sample_digests(inputs)]


def sample_uniforms(inputs: Tensor, seed: int) -> Tensor:
    """``(B,)`` float64 in [0, 1): the first draw of each :func:`sample_generators` generator."""
    return torch.tensor([rng.random() for rng in sample_generators(inputs, seed)], dtype=torch.float64)
