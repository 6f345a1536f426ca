"""Layer skip: run a fixed subset of k of the L blocks, the same subset for every sample.

Paper: Glavas et al., "Dynamic layer selection in decoder-only transformers",
https://arxiv.org/abs/2410.20022 (static layer skipping, ``StaticSkipPropagationConfig`` in the
authors' code).

Mechanism: a skipped block is not computed at all; the residual stream passes through it unchanged,
the kept blocks run in order and the backbone's readout finishes. Because the set is fixed per
sequence, no token ever needs keys/values of a skipped block, so no KV propagation is needed and the
saving is real.

What we changed / reconstructed: no fine-tuning of the kept blocks (the backbone stays frozen).
Which blocks to keep is our choice (:mod:`dynbench.methods._layer_sets`): ``uniform`` spreads them
evenly (the paper's "skip every other layer" is the k = L/2 case of this idea); ``importance``
(default) keeps the k blocks whose removal alone hurts the loss most on the task's validation split
(a ranking is a selection, so it is made on held-out data), measured once in ``fit``, so its kept
sets are nested as k grows. The budget is the fraction of blocks executed:
``k = floor(budget · L + 0.5)`` (nearest, halves up), clamped to ``[min_layers, L]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dynbench.methods import _layer_sets
from dynbench.methods._host_copy import HostCopy
from dynbench.methods._layer_sets import (
    IMPORTANCE_BATCH_SIZE,
    IMPORTANCE_BATCHES,
    IMPORTANCE_FLOPS,
    clamped_budgets_problem,
    depth_budgets,
    n_kept,
    rank_blocks,
    uniform_blocks,
)
from dynbench.methods._operating import TensorSet, backbone_parts
from dynbench.methods.base import DynamicModel, Method, no_controller_flops, register_method
from dynbench.models.backbone import Backbone
from dynbench.tasks.base import Task
from dynbench.types import Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range

CHOICE_ADVICE = {"pattern": "Use 'importance' (measured) or 'uniform' (evenly spaced)."}
"""The sentence each choice field's error message ends with."""


@dataclass(frozen=True)
class LayerSkipConfig:
    """Which blocks to keep and how to measure their importance."""

    pattern: Literal["importance", "uniform"] = "importance"  # "importance" (measured in fit) or
    # "uniform" (evenly spaced, no fit)
    min_layers: int = 1  # fewest blocks ever run: k = 0 would leave only the embedding and the
    # readout
    importance_batches: int = IMPORTANCE_BATCHES  # validation batches the loss increases are
    # averaged over
    batch_size: int = IMPORTANCE_BATCH_SIZE  # batch size of those importance batches
    importance_flops: float = IMPORTANCE_FLOPS  # cap on the importance pass's FLOPs: a deep LM
    # ranks on a few windows rather than 512

    def __post_init__(self) -> None:
        check_choices(self, CHOICE_ADVICE)
        name = type(self).__name__
        check_range(f"{name}.min_layers", self.min_layers, 1, advice="At least one block must run; use min_layers=1.")
        check_range(f"{name}.importance_batches", self.importance_batches, 1, advice="Use e.g. 8.")
        check_range(f"{name}.batch_size", self.batch_size, 1, advice="Use e.g. 64.")
        check_range(f"{name}.importance_flops", self.importance_flops, 0, low_open=True, advice="Use e.g. 1e13.")


class LayerSkipModel(DynamicModel):
    """The backbone with a static, budget-dependent set of kept blocks.

    Args:
        backbone: the dense model (never modified).
        pattern: ``"importance"`` or ``"uniform"``.
        min_layers: fewest blocks ever run.

    Buffers:
        ranking: ``(L,)`` long, blocks from most to least important (``-1`` until fitted; unused by
            ``uniform``).
        importance: ``(L,)`` float64, loss increase when each block alone is skipped (NaN until
            fitted).
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
        self._host_ranking = HostCopy()  # the ranking read once per change, not per call

    def host_ranking(self) -> list[int]:
        """The ranking as a Python list, read once per change of the buffer (:class:`HostCopy`)."""
        return self._host_ranking(self.ranking)

    def kept_blocks(self, budget: Budget) -> list[int]:
        """Indices of the blocks run at ``budget``, ascending.

        Raises:
            ValueError: ``budget`` outside ``[0, 1]``, or no fitted ``importance`` ranking below the
                full budget.
        """
        L = self.backbone.n_blocks
        k = n_kept(budget, L, self.min_layers)
        if k == L:
            return list(range(L))
        if self.pattern == "uniform":
            return uniform_blocks(L, k)
        ranking = self.host_ranking()
        if min(ranking) < 0:
            raise ValueError(
                f"layer_skip(pattern='importance') has no block ranking yet (budget {budget} keeps {k} "
                f"of {L} blocks). Call LayerSkip.fit(model, task, seed=...) or load a fitted state_dict."
            )
        return sorted(ranking[:k])

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """The embedding, kept blocks, readout and ranking: a skipped block is never read.

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


@register_method("layer_skip")
class LayerSkip(Method):
    """Static layer skipping: the same k of L blocks for every sample, by importance or spread."""

    version = "2"
    shared_parts = (_layer_sets,)
    paper = "https://arxiv.org/abs/2410.20022"
    reconstructed = False
    Config = LayerSkipConfig
    # quick profile: the importance pass is cheap; 4 of the k/L points (L, two between, the fewest)
    quick_budgets = 4
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    budget_doc = "fraction of blocks run: k/L for k = L … 1"

    def wrap(self, backbone: Backbone) -> LayerSkipModel:
        """Wrap ``backbone``.

        Raises:
            ValueError: ``min_layers`` larger than the backbone's depth.
        """
        if problem := self.depth_problem(backbone.n_blocks):
            raise ValueError(problem)
        return LayerSkipModel(backbone, self.config.pattern, self.config.min_layers)

    def depth_problem(self, n_blocks: int) -> str | None:
        """Why ``min_layers`` does not fit an ``n_blocks``-deep backbone, or ``None``."""
        if self.config.min_layers <= n_blocks:
            return None
        return (
            f"LayerSkipConfig.min_layers={self.config.min_layers} exceeds the backbone's {n_blocks} blocks. "
            f"Use min_layers <= {n_blocks}."
        )

    def shape_problems(self, task: Task) -> list[str]:
        """``min_layers`` against ``task``'s depth (before training, instead of in :meth:`wrap`)."""
        problem = self.depth_problem(task.n_blocks())
        return [problem] if problem else []

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """``k / L`` for ``k`` from ``L`` down to ``min_layers`` (:func:`depth_budgets`)."""
        return depth_budgets(n_blocks, self.config.min_layers)

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """As :meth:`Method.resolve_budgets`, refusing budgets below ``min_layers`` blocks.

        Raises:
            ValueError: a budget out of range, or one that would run more blocks than it says.
        """
        budgets = super().resolve_budgets(override, n_blocks)
        if problem := clamped_budgets_problem(budgets, n_blocks, self.config.min_layers, self.name):
            raise ValueError(problem)
        return budgets

    def fit(self, model: LayerSkipModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Measure each block's importance on the task's validation split (no-op for ``uniform``).

        Importance of block l = mean task loss with block l alone skipped minus the dense loss, over
        ``importance_batches`` shuffled validation batches. The ranking sorts blocks by importance,
        descending, ties broken by the lower index
        (:func:`~dynbench.methods._layer_sets.rank_blocks`).

        Args:
            model: the wrapped model whose ``ranking``/``importance`` buffers are filled.
            task: supplies the validation split and the loss.
            seed: seeds the batch order.

        Raises:
            ValueError: the task's validation split is empty.
        """
        cfg = self.config
        if cfg.pattern == "uniform":
            return
        was_training = model.training
        model.eval()
        importance, ranking = rank_blocks(
            model.backbone,
            task,
            seed=seed,
            batches=cfg.importance_batches,
            batch_size=cfg.batch_size,
            max_flops=cfg.importance_flops,
        )
        model.importance.copy_(importance)
        model.ranking.copy_(torch.tensor(ranking, dtype=torch.long, device=model.ranking.device))
        model.train(was_training)
