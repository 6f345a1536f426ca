"""Layer skip: run a fixed subset of k of the L blocks, the same subset for every sample.

Paper: Glavas et al., "Dynamic layer selection in decoder-only transformers", https://arxiv.org/abs/2410.20022
(static layer skipping, ``StaticSkipPropagationConfig`` in the official code).

Mechanism: a skipped block is not computed at all; the residual stream passes through it unchanged, the kept
blocks run in order and the backbone's readout finishes. Because the set is fixed per sequence, no token ever
needs keys/values of a skipped block, so no KV propagation is needed and the saving is real.

What we changed / reconstructed: no fine-tuning of the kept blocks (the backbone stays frozen). Which
blocks to keep is our choice: ``uniform`` spreads them evenly (the paper's "skip every other layer" is the
k = L/2 case of this idea); ``importance`` (default) keeps the k blocks whose removal alone hurts the loss most
on the task's validation split (``task.validation_split``: a ranking is a selection, so it is made on held-out
data — v1 ranked on the training split), measured once in ``fit``, so its kept sets are nested as k grows. The
budget is the fraction of blocks executed: ``k = floor(budget · L + 0.5)`` (nearest, halves up), clamped to
``[min_layers, L]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynbench.methods._operating import TensorSet, backbone_parts
from dynbench.methods.base import DynamicModel, Method, freeze, no_controller_flops, register_method
from dynbench.models.backbone import Backbone
from dynbench.tasks.base import Task
from dynbench.types import Budget, StepOutput, Trace

PATTERNS = ("importance", "uniform")
MAX_POINTS = 12
"""Most default operating points: each one costs a quality, a FLOPs, a timing and a memory pass."""


@dataclass(frozen=True)
class LayerSkipConfig:
    """Which blocks to keep and how to measure their importance."""

    pattern: str = "importance"  # "importance" (measured in fit) or "uniform" (evenly spaced, no fit)
    min_layers: int = 1  # fewest blocks ever run: k = 0 would leave only the embedding and the readout
    importance_batches: int = 8  # validation batches the loss increases are averaged over (512 samples at most)
    batch_size: int = 64  # batch size of those importance batches
    importance_flops: float = 1e13  # cap on the importance pass's FLOPs: a 30-block LM gets ~17 windows, not 512

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"LayerSkipConfig.pattern must be one of {PATTERNS}, got {self.pattern!r}. "
                "Use 'importance' (measured) or 'uniform' (evenly spaced)."
            )
        if self.min_layers < 1:
            raise ValueError(
                f"LayerSkipConfig.min_layers must be >= 1, got {self.min_layers}. "
                "At least one block must run; use min_layers=1."
            )
        if self.importance_batches < 1:
            raise ValueError(
                f"LayerSkipConfig.importance_batches must be >= 1, got {self.importance_batches}. Use e.g. 8."
            )
        if self.batch_size < 1:
            raise ValueError(f"LayerSkipConfig.batch_size must be >= 1, got {self.batch_size}. Use e.g. 64.")
        if not self.importance_flops > 0:
            raise ValueError(
                f"LayerSkipConfig.importance_flops must be > 0, got {self.importance_flops}. Use e.g. 1e13."
            )


def uniform_blocks(n_blocks: int, k: int) -> list[int]:
    """``k`` evenly spaced of ``n_blocks`` blocks: first and last for ``k >= 2``, the last for ``k = 1``.

    Block ``i`` of the pattern is ``round(i · (L-1) / (k-1))`` with halves rounded up, in integer arithmetic
    (so the rule is exact and the blocks distinct: their spacing is at least 1).
    """
    if k == 1:
        return [n_blocks - 1]
    return [(2 * i * (n_blocks - 1) + (k - 1)) // (2 * (k - 1)) for i in range(k)]


def n_kept(budget: Budget, n_blocks: int, min_layers: int) -> int:
    """Blocks run at ``budget``: ``floor(budget · L + 0.5)`` clamped to ``[min_layers, L]``.

    Raises:
        ValueError: ``budget`` outside ``[0, 1]``.
    """
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"layer_skip budget (fraction of blocks) must lie in [0, 1], got {budget}.")
    k = int(budget * n_blocks + 0.5)
    return max(min(k, n_blocks), min(min_layers, n_blocks))


def depth_budgets(n_blocks: int, min_layers: int) -> tuple[Budget, ...]:
    """``k / L`` for block counts ``k`` from ``L`` down to ``min_layers``, the full budget first.

    Every count when there are at most ``MAX_POINTS``, else ``MAX_POINTS`` evenly spaced counts (always ``L``
    and ``min_layers``): a 30-block model is swept in 12 points rather than 30; ``--budgets`` picks others.
    """
    L = n_blocks
    lo = min(min_layers, L)
    counts: Sequence[int] = range(L, lo - 1, -1)
    if len(counts) > MAX_POINTS:
        counts = sorted({round(L - i * (L - lo) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)}, reverse=True)
    return tuple(k / L for k in counts)


class LayerSkipModel(DynamicModel):
    """The backbone with a static, budget-dependent set of kept blocks.

    Args:
        backbone: the dense model (never modified).
        pattern: ``"importance"`` or ``"uniform"``.
        min_layers: fewest blocks ever run.

    Buffers:
        ranking: ``(L,)`` long, blocks from most to least important (``-1`` until fitted; unused by
            ``uniform``).
        importance: ``(L,)`` float64, loss increase when each block alone is skipped (NaN until fitted).
    """

    ranking: Tensor
    importance: Tensor

    def __init__(self, backbone: Backbone, pattern: str, min_layers: int) -> None:
        super().__init__(backbone)
        self.pattern = pattern
        self.min_layers = min_layers
        L = backbone.n_blocks
        self.register_buffer("ranking", torch.full((L,), -1, dtype=torch.long))
        self.register_buffer("importance", torch.full((L,), float("nan"), dtype=torch.float64))

    def kept_blocks(self, budget: Budget) -> list[int]:
        """Indices of the blocks run at ``budget``, ascending.

        Raises:
            ValueError: ``budget`` outside ``[0, 1]``, or no fitted ``importance`` ranking below the full
                budget.
        """
        L = self.backbone.n_blocks
        k = n_kept(budget, L, self.min_layers)
        if k == L:
            return list(range(L))
        if self.pattern == "uniform":
            return uniform_blocks(L, k)
        ranking = self.ranking.tolist()
        if min(ranking) < 0:
            raise ValueError(
                f"layer_skip(pattern='importance') has no block ranking yet (budget {budget} keeps {k} "
                f"of {L} blocks). Call LayerSkip.fit(model, task, seed=...) or load a fitted state_dict."
            )
        return sorted(ranking[:k])

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """The embedding, the kept blocks, the readout and the ranking: a skipped block is never read.

        Raises:
            ValueError: as :meth:`kept_blocks`.
        """
        return [*backbone_parts(self.backbone, self.kept_blocks(budget)), TensorSet([self.ranking])]

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run only the kept blocks, then the backbone readout.

        Args:
            inputs: the task input batch.
            budget: fraction of blocks to run.
        """
        bb = self.backbone
        kept = self.kept_blocks(budget)
        x = bb.embed(inputs)  # (B, T, C)
        for index in kept:
            x = bb.blocks[index](x)  # (B, T, C)
        logits = bb.readout(x)  # (B, K) or (B, T, V)
        B, L = x.shape[0], bb.n_blocks
        tokens = bb.n_tokens(tuple(inputs.shape[1:]))
        run = torch.zeros(L, dtype=torch.long)
        run[kept] = 1
        run = run.expand(B, L)  # (B, L)
        trace = Trace(
            block_tokens=run * tokens,
            block_kv=run * tokens,
            block_heads=run * bb.n_heads,
            readout=torch.ones(B, dtype=torch.long),
            controller_flops=no_controller_flops(B),
        )
        return StepOutput(logits, trace)

    @torch.no_grad()
    def skip_losses(self, inputs: Tensor, targets: Tensor, task: Task) -> Tensor:
        """``(L + 1,)`` float64 task losses: block ``l`` alone skipped for ``l < L``, then the dense loss."""
        bb = self.backbone
        x = bb.embed(inputs)  # (B, T, C)
        states = []  # input of every block, (B, T, C) each
        for block in bb.blocks:
            states.append(x)
            x = block(x)  # (B, T, C)
        losses = []
        for skipped, h in enumerate(states):
            for block in list(bb.blocks)[skipped + 1 :]:
                h = block(h)  # (B, T, C)
            losses.append(task.metric.loss(bb.readout(h), targets))
        losses.append(task.metric.loss(bb.readout(x), targets))
        return torch.stack(losses).double().cpu()  # (L + 1,)


def importance_samples(cfg: LayerSkipConfig, backbone: Backbone, task: Task) -> int:
    """Validation samples the importance is averaged over, fewer than configured when over ``importance_flops``.

    Configured: ``importance_batches × batch_size``. One sample costs a dense pass plus, per skipped block ``l``,
    the blocks after it and a readout: about ``(L + 3) / 2`` dense passes (exact for the blocks when the readout
    is cheap).
    """
    L = backbone.n_blocks
    shape = tuple(next(task.batches(task.validation_split, batch_size=1)).inputs.shape[1:])
    per_sample = backbone.dense_flops(shape) * (L + 3) / 2
    return max(1, min(cfg.importance_batches * cfg.batch_size, int(cfg.importance_flops // per_sample)))


@register_method("layer_skip")
class LayerSkip(Method):
    """Static layer skipping: the same k of L blocks for every sample, by importance or evenly spaced."""

    version = "2"  # 2: the importance ranking is measured on the validation split, not the training split
    paper = "https://arxiv.org/abs/2410.20022"
    reconstructed = False
    Config = LayerSkipConfig
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    budget_doc = "fraction of blocks run: k/L for k = L … 1"

    def wrap(self, backbone: Backbone) -> LayerSkipModel:
        """Wrap ``backbone``.

        Raises:
            ValueError: ``min_layers`` larger than the backbone's depth.
        """
        L = backbone.n_blocks
        if self.config.min_layers > L:
            raise ValueError(
                f"LayerSkipConfig.min_layers={self.config.min_layers} exceeds the backbone's {L} blocks. "
                f"Use min_layers <= {L}."
            )
        return LayerSkipModel(backbone, self.config.pattern, self.config.min_layers)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """``k / L`` for block counts ``k`` from ``L`` down to ``min_layers``: see :func:`depth_budgets`."""
        return depth_budgets(n_blocks, self.config.min_layers)

    def fit(self, model: LayerSkipModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Measure each block's importance on the task's validation split (no-op for ``uniform``).

        Importance of block l = mean task loss with block l alone skipped minus the dense loss, over
        ``importance_batches`` shuffled validation batches. The ranking sorts blocks by importance, descending,
        ties broken by the lower index.

        Args:
            model: the wrapped model whose ``ranking``/``importance`` buffers are filled.
            task: supplies the validation split and the loss.
            seed: seeds the batch order.
        """
        cfg = self.config
        if cfg.pattern == "uniform":
            return
        torch.manual_seed(seed)
        freeze(model.backbone)
        was_training = model.training
        model.eval()
        device = next(model.backbone.parameters()).device
        total = torch.zeros(model.backbone.n_blocks + 1, dtype=torch.float64)  # (L + 1,)
        seen = 0
        limit = importance_samples(cfg, model.backbone, task)
        batch_size = min(cfg.batch_size, limit)
        split = task.validation_split  # a ranking is a selection: made on held-out data, never on eval
        for batch in task.batches(split, batch_size=batch_size, seed=seed, shuffle=True, limit=limit):
            losses = model.skip_losses(batch.inputs.to(device), batch.targets.to(device), task)  # (L + 1,)
            total += losses * len(batch)
            seen += len(batch)
        if seen == 0:
            raise ValueError(
                f"Task '{task.name}' has an empty validation split {split!r} ({seen} samples): cannot rank the "
                "blocks. Give the task validation data, or use layer_skip[pattern=uniform]."
            )
        mean = total / seen  # (L + 1,)
        importance = mean[:-1] - mean[-1]  # (L,)
        values = importance.tolist()
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        model.importance.copy_(importance)
        model.ranking.copy_(torch.tensor(order, dtype=torch.long))
        model.train(was_training)
