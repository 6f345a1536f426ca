"""Batched token selection: pick some of each sequence's tokens, run them, scatter the result back.

Used by token-routing methods (Mixture-of-Depths). Everything is batched with no Python loop over
samples: selections are index tensors ``(B, k)``, sorted ascending so the selected tokens keep their
original order (and a causal mask over the gathered tokens is the causal mask of the original
positions). Gathers and scatters are copies and adds, 0 FLOPs under ``FlopCounterMode``.

Two shapes of selection:

- *static*: exactly ``k`` tokens per sample (:func:`topk_positions`, expert-choice top-k), shapes
  known ahead;
- *ragged*: a boolean mask with a different count per sample (:func:`padded_positions`), padded to
  the batch's largest count; padding slots point at unselected tokens and carry ``valid = False``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def topk_positions(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` highest scores of each row, ascending (original token order).

    Exactly ``k`` per row, whatever the ties: ``torch.topk`` picks indices, never a ``>`` threshold
    against the k-th value (which selects k-1 tokens when values tie or when the threshold is
    strict).

    Args:
        scores: ``(B, T)`` one score per token.
        k: tokens to keep per row, ``1 <= k <= T``.

    Returns:
        ``(B, k)`` int64 positions, sorted ascending within each row.

    Raises:
        ValueError: ``k`` outside ``[1, T]``.
    """
    T = scores.shape[-1]
    if not 1 <= k <= T:
        raise ValueError(f"top-k selection needs 1 <= k <= T={T}, got k={k}.")
    idx = torch.topk(scores, k, dim=-1, sorted=False).indices  # (B, k) in no particular order
    return idx.sort(dim=-1).values  # (B, k) ascending: original order


class PaddedSelection(NamedTuple):
    """A ragged selection padded to the batch's largest count (:func:`padded_positions`)."""

    idx: Tensor  # (B, n) each row's selected positions ascending, then (padding) unselected ones
    valid: Tensor  # (B, n) True on the real selections
    ragged: bool  # rows selected different counts, so some slots are padding
    counts: Tensor  # (B,) each row's selected count, a host (CPU) int64 tensor read in the same sync


def padded_positions(mask: Tensor) -> PaddedSelection:
    """Selected positions of a ragged boolean selection, padded to the largest count in the batch.

    Every row's count, and the largest and smallest, are read in one host sync (a GPU pays one per
    call): the largest sizes the gather, the smallest says whether any padding exists, and the
    per-row counts let a caller slice each row's real positions (``idx[b, :counts[b]]``) without
    another read.

    Args:
        mask: ``(B, T)`` bool, True = selected.

    Returns:
        ``(idx, valid, ragged, counts)`` with ``idx`` and ``valid`` ``(B, n)``, ``n = max selected
        per row`` (may be 0), and ``counts`` ``(B,)`` on the host.
    """
    if mask.numel():
        counts = mask.sum(dim=-1)  # (B,)
        *host, n, least = torch.cat([counts, counts.max()[None], counts.min()[None]]).tolist()  # the one host sync
        counts = torch.tensor(host, dtype=torch.long)  # (B,) on the host
    else:
        counts = torch.zeros(mask.shape[0], dtype=torch.long)  # (B,)
        n = least = 0
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices  # (B, T) selected first, in order
    idx = order[:, :n]  # (B, n)
    return PaddedSelection(idx, mask.gather(1, idx), least != n, counts)


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b, j]]`` for every row: ``(B, T, C)`` and ``(B, k)`` → ``(B, k, C)``."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # (B, k, C)


def scatter_add_tokens(x: Tensor, idx: Tensor, update: Tensor) -> Tensor:
    """``x`` with ``update[b, j]`` added at token ``idx[b, j]`` (out of place, differentiable).

    Args:
        x: ``(B, T, C)`` token states.
        idx: ``(B, k)`` positions; a position may repeat only where its updates are zero (padding).
        update: ``(B, k, C)`` what to add.
    """
    return x.scatter_add(1, idx[..., None].expand(-1, -1, x.shape[-1]), update)  # (B, T, C)


def subset_attention_mask(idx: Tensor, valid: Tensor, *, causal: bool) -> Tensor:
    """Boolean attention mask among gathered tokens, for :func:`padded_positions` selections.

    Query ``i`` may attend key ``j`` when ``j`` is a real selection and, for causal models, its
    original position is not after ``i``'s. Every query may attend itself, so padding queries never
    see an empty row (no NaN; their outputs are discarded anyway) and real queries are unchanged
    (they always see themselves).

    Args:
        idx: ``(B, n)`` original positions of the gathered tokens.
        valid: ``(B, n)`` True on real selections.
        causal: apply the causal rule on original positions.

    Returns:
        ``(B, 1, n, n)`` bool, True = may attend (broadcasts over heads).
    """
    allowed = valid[:, None, :].expand(-1, idx.shape[1], -1)  # (B, n, n) keys that are real
    if causal:
        allowed = allowed & (idx[:, None, :] <= idx[:, :, None])  # (B, n, n) key position <= query position
    eye = torch.eye(idx.shape[1], dtype=torch.bool, device=idx.device)  # (n, n)
    return (allowed | eye)[:, None]  # (B, 1, n, n)
