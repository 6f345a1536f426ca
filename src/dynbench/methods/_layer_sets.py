"""Layer sets: which of a backbone's L blocks run, for the methods that run a fixed subset of them.

Shared by layer_skip (its kept sets), early_exit (the static exit's depth, ``rule="depth"``) and
oracle (its skip candidates). A budget is a fraction of blocks: :func:`n_kept` turns it into a count
``k``, :func:`depth_budgets` lists the default operating points, :func:`uniform_blocks` spreads
``k`` blocks evenly, and :func:`rank_blocks` ranks blocks by how much skipping each one alone hurts
the loss on validation data.

:data:`VERSION` feeds the recorded version of every method that lists this module in
:attr:`~dynbench.methods.base.Method.shared_parts`: bump it when a change here changes any result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dynbench.methods.base import freeze
from dynbench.models.backbone import Backbone
from dynbench.tasks.base import Task
from dynbench.types import Budget

__all__ = [
    "IMPORTANCE_BATCHES",
    "IMPORTANCE_BATCH_SIZE",
    "IMPORTANCE_FLOPS",
    "MAX_POINTS",
    "VERSION",
    "clamped_budgets_problem",
    "depth_budgets",
    "importance_samples",
    "n_kept",
    "rank_blocks",
    "skip_losses",
    "uniform_blocks",
]

VERSION = "1"
"""Version of the layer sets; part of the recorded version of every method that uses them."""

MAX_POINTS = 12
"""Most default operating points: each one costs a quality, a FLOPs, a timing and a memory pass."""
IMPORTANCE_BATCHES = 8
"""Default number of validation batches the importance is averaged over."""
IMPORTANCE_BATCH_SIZE = 64
"""Default size of those batches (so 512 samples at most)."""
IMPORTANCE_FLOPS = 1e13
"""Default cap on the importance pass's FLOPs: a deep LM ranks on a few windows rather than 512."""


def n_kept(budget: Budget, n_blocks: int, min_layers: int) -> int:
    """Blocks run at ``budget``: ``floor(budget · L + 0.5)`` clamped to ``[min_layers, L]``.

    Raises:
        ValueError: ``budget`` outside ``[0, 1]``.
    """
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"layer_skip budget (fraction of blocks) must lie in [0, 1], got {budget}.")
    k = int(budget * n_blocks + 0.5)
    return max(min(k, n_blocks), min(min_layers, n_blocks))


def clamped_budgets_problem(budgets: Sequence[Budget], n_blocks: int, min_layers: int, method: str) -> str | None:
    """A message when some ``budgets`` fall below ``min_layers`` blocks, else ``None``.

    :func:`n_kept` would run ``min_layers`` blocks at such a budget while the rows carried the
    smaller number (``--budgets 0`` ran one block labelled 0), so the planner refuses them.
    """
    L, lo = n_blocks, min(min_layers, n_blocks)
    low = [b for b in budgets if int(b * L + 0.5) < lo]
    if not low:
        return None
    least = (lo - 0.5) / L  # the smallest budget that rounds to lo blocks
    return (
        f"{method} budget(s) {low} would run {lo} of the backbone's {L} blocks (min_layers={lo}), the same as "
        f"budget {lo / L:g}, yet be labelled {low[0]:g}. Give budgets >= {least:g}, or leave --budgets out for "
        f"k/L = 1 … {lo / L:g}."
    )


def depth_budgets(n_blocks: int, min_layers: int) -> tuple[Budget, ...]:
    """``k / L`` for block counts ``k`` from ``L`` down to ``min_layers``, the full budget first.

    Every count when there are at most :data:`MAX_POINTS`, else :data:`MAX_POINTS` evenly spaced
    counts (always ``L`` and ``min_layers``), so a deep model is swept in 12 points; ``--budgets``
    picks others.
    """
    L = n_blocks
    lo = min(min_layers, L)
    counts: Sequence[int] = range(L, lo - 1, -1)
    if len(counts) > MAX_POINTS:
        counts = sorted({round(L - i * (L - lo) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)}, reverse=True)
    return tuple(k / L for k in counts)


def uniform_blocks(n_blocks: int, k: int) -> list[int]:
    """``k`` evenly spaced of ``n_blocks`` blocks: first and last if ``k >= 2``, last if ``k = 1``.

    Block ``i`` of the pattern is ``round(i · (L-1) / (k-1))`` with halves rounded up, in integer
    arithmetic (so the rule is exact and the blocks distinct: their spacing is at least 1).
    """
    if k == 1:
        return [n_blocks - 1]
    return [(2 * i * (n_blocks - 1) + (k - 1)) // (2 * (k - 1)) for i in range(k)]


@torch.no_grad()
def skip_losses(backbone: Backbone, inputs: Tensor, targets: Tensor, task: Task) -> Tensor:
    """``(L + 1,)`` float64 task losses: each block ``l < L`` alone skipped, then the dense loss."""
    x = backbone.embed(inputs)  # (B, T, C)
    states = []  # input of every block, (B, T, C) each
    for block in backbone.blocks:
        states.append(x)
        x = block(x)  # (B, T, C)
    losses = []
    for skipped, h in enumerate(states):
        for block in list(backbone.blocks)[skipped + 1 :]:
            h = block(h)  # (B, T, C)
        losses.append(task.metric.loss(backbone.readout(h), targets))
    losses.append(task.metric.loss(backbone.readout(x), targets))
    return torch.stack(losses).double().cpu()  # (L + 1,)


def importance_samples(backbone: Backbone, task: Task, *, batches: int, batch_size: int, max_flops: float) -> int:
    """Validation samples the importance is averaged over: ``batches × batch_size``, or fewer.

    Fewer when that many would cost more than ``max_flops``.

    One sample costs a dense pass plus, per skipped block ``l``, the blocks after it and a readout:
    about ``(L + 3) / 2`` dense passes (exact for the blocks when the readout is cheap).
    """
    L = backbone.n_blocks
    shape = tuple(next(task.batches(task.validation_split, batch_size=1)).inputs.shape[1:])
    per_sample = backbone.dense_flops(shape) * (L + 3) / 2
    return max(1, min(batches * batch_size, int(max_flops // per_sample)))


def rank_blocks(
    backbone: Backbone,
    task: Task,
    *,
    seed: int,
    batches: int = IMPORTANCE_BATCHES,
    batch_size: int = IMPORTANCE_BATCH_SIZE,
    max_flops: float = IMPORTANCE_FLOPS,
) -> tuple[Tensor, list[int]]:
    """Each block's importance on ``task``'s validation split, and the blocks ranked by it.

    Importance of block l = mean task loss with block l alone skipped minus the dense loss, over
    :func:`importance_samples` shuffled validation samples (a ranking is a selection: it is made on
    held-out data). The ranking sorts blocks by importance, descending, ties broken by the lower
    index, so the kept sets ``ranking[:k]`` are nested as ``k`` grows. The backbone is frozen and
    run in eval mode (its mode restored).

    Args:
        backbone: the dense model.
        task: supplies the validation split and the loss.
        seed: seeds the batch order.
        batches: validation batches to average over.
        batch_size: their size.
        max_flops: cap on the pass's FLOPs (fewer samples when over it).

    Returns:
        ``(L,)`` float64 importance, and the ranking: block indices from most to least important.

    Raises:
        ValueError: the task's validation split is empty.
    """
    torch.manual_seed(seed)
    freeze(backbone)
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    total = torch.zeros(backbone.n_blocks + 1, dtype=torch.float64, device=device)  # (L + 1,)
    seen = 0
    limit = importance_samples(backbone, task, batches=batches, batch_size=batch_size, max_flops=max_flops)
    split = task.validation_split  # never the evaluation split
    for batch in task.batches(split, batch_size=min(batch_size, limit), seed=seed, shuffle=True, limit=limit):
        losses = skip_losses(backbone, batch.inputs.to(device), batch.targets.to(device), task)  # (L + 1,)
        total += losses * len(batch)
        seen += len(batch)
    backbone.train(was_training)
    if seen == 0:
        raise ValueError(
            f"Task '{task.name}' has an empty validation split {split!r} ({seen} samples): cannot rank the "
            "blocks. Give the task validation data, or use an evenly spaced layer set "
            "(layer_skip[pattern=uniform], oracle[ranked_skips=false])."
        )
    mean = total / seen  # (L + 1,)
    importance = mean[:-1] - mean[-1]  # (L,)
    values = importance.tolist()
    return importance, sorted(range(len(values)), key=lambda i: (-values[i], i))
