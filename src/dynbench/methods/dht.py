"""DHT: per-sample depth and attention heads chosen by contextual bandits.

Paper: Meng, Zhang, Chen, Wang, "Sample-based Dynamic Hierarchical Transformer with Layer and Head
Flexibility via Contextual Bandit", https://arxiv.org/abs/2312.03038. The paper is withdrawn from
arXiv, only its abstract is available and no code exists, so everything beyond the abstract is our
reconstruction (``reconstructed = True``).

Mechanism (the abstract's): no auxiliary network decides; a contextual bandit chooses per sample how
many layers and how many heads run (an upper-confidence-bound rule) and combinatorial Thompson
sampling chooses *which* heads; the chosen sub-network alone runs, in training (so training compute
falls too) and at inference.

What we reconstructed (the bandit rules are in :mod:`dynbench.methods._bandits`):

- *Context*: one of ``contexts`` (M = 4) k-means clusters of the sample's mean-pooled token
  embedding (``backbone.embed``), fitted on training samples (k-means++ then Lloyd, in torch,
  seeded). Assigning a sample is one ``(C → M)`` matmul against the centroids (``2·M·C`` FLOPs,
  charged as ``controller_flops``; the embedding is the backbone's own first step). The embedding
  (and a head tied to it) stays frozen, so the contexts never drift.
- *Arms*: one joint UCB arm per (depth a ∈ 1..L, head count h), per context: the sample runs blocks
  ``0..a-1`` with the same head count h in each, then the backbone's readout. Selection is UCB1 with
  a scale κ: ``argmax_arm Q̂ + κ·sqrt(2 ln N_c / n_arm)``, every arm played once first (lowest index
  first).
- *Which heads*: a Beta(α, β) posterior per (context, layer, head), from Beta(1, 1); Thompson
  sampling draws θ ~ Beta per head and keeps the h largest in each executed layer. Semi-bandit
  update with the shared outcome: each chosen head gets ``α += r, β += 1 − r`` per sample (r
  fractional, not Bernoulli-ised).
- *Reward*: ``r = clip(correct − λ·f, 0, 1)`` with f = analytic FLOPs of the sub-network / dense
  FLOPs (embedding and readout included). ``correct`` is, by default (``correctness="likelihood"``),
  ``exp(−CE)``: the probability of the label, or for token outputs ``(B, T, V)``
  ``exp(−mean next-token CE)`` of the sequence (perplexity-aligned). ``"accuracy"`` gives the
  literal 1[correct] (next-token accuracy for text), whose variance on small held-out splits drowns
  the arms' quality gaps.
- *Budgets*: budget b ∈ [0, 1] sets λ = ``lambda_max``·(1 − b); one bandit table per budget (tiny
  buffers), fitted for the configured ``budgets`` only. b = 1 runs the dense backbone itself,
  without the controller.
- *Training*: one bandit draw per context per training step, so a batch splits into ≤ M groups, each
  run as ONE real sub-network (prefix depth, heads sliced via ``Block``'s ``head_idx``). The blocks
  and the readout are fine-tuned with the task loss on those sub-networks, then the draw's
  statistics are updated with the per-sample rewards. Steps cycle through the budgets' tables; the
  full budget's steps train the dense network, so it stays good (the fine-tuned backbone is the
  harness's dense reference and the full budget). Training FLOPs (3 × analytic forward FLOPs of what
  ran) and their dense equivalent are kept as buffers and reported (``train_flops_ratio``). By
  default the fine-tuning takes a quarter of the dense recipe's steps.
- *Refinement*: the tables saw a network that was changing, so afterwards each budget's arm
  statistics are reset and re-learned with the network frozen (forward passes only, UCB + TS as in
  training), on the task's held-out validation split by default (``refine_split="val"``, which means
  ``task.validation_split``): on the samples it was just fine-tuned on, a one-block sub-network
  looks as right as the dense one, and every budget collapses to the cheapest arm. The head
  posteriors are kept: they record which heads the fine-tuning trained.
- *Inference* exploits: the arm of largest mean reward (UCB with κ = 0; an arm never played is not
  chosen; a context never seen uses the statistics pooled over contexts) and the top-h heads by
  posterior mean α/(α+β), computed once at the end of ``fit`` into lookup buffers. A lower budget
  never picks a costlier arm than the next higher budget for the same context (the tables are
  learned independently; this keeps compute monotone in the budget). The choice depends only on the
  context, so a batch is grouped by configuration and each group's sub-network runs once.
- *Grouped-query attention*: heads are chosen in whole k/v groups (the "head" arms and posteriors
  are over k/v groups, h = groups × group size), so the trace's FLOPs stay exact (see
  :mod:`dynbench.models.block`).
- *Random baseline* (``policy="random"``): the same fitted model, but each sample gets a random
  depth, head count and random heads per executed layer, ignoring its context. Depth and head count
  are drawn from the maximum-entropy distribution over the arms whose mean FLOPs equal the bandit
  policy's expected FLOPs at that budget (``p ∝ exp(−τ·FLOPs)``, τ by bisection; the expectation
  uses the validation split's context shares), so both run the same average compute. Each sample's
  draws come from its content hash and the fit seed (:mod:`dynbench.methods._sample_hash`):
  repeatable, and the same at every budget (common random numbers keep compute monotone in the
  budget).
- *Static control* (``policy="static"``): the same fitted model, every sample through ONE arm per
  budget. Each arm gets fixed heads: per layer the top-h by the head posteriors pooled over every
  table and context (what the fine-tuning trained; an exhaustive search over head subsets is
  combinatorial). At each budget the arm of best validation quality among those costing at most the
  bandit policy's mean FLOPs on the task's validation split (none fits: the cheapest), chosen in
  ``fit`` on that split, never the evaluation split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods import _sample_hash, _static_control
from dynbench.methods._bandits import (
    beta_update,
    exploit_arm,
    exploit_units,
    kmeans,
    thompson_units,
    tilted_distribution,
    ucb_select,
    ucb_update,
)
from dynbench.methods._host_copy import HostCopy
from dynbench.methods._operating import TensorSet, backbone_parts
from dynbench.methods._sample_hash import sample_generators
from dynbench.methods._static_control import best_fixed_config
from dynbench.methods.base import DynamicModel, Method, register_method
from dynbench.models.backbone import Backbone
from dynbench.models.training import TrainConfig, endless, fit_loop
from dynbench.tasks.base import QualityMetric, Task
from dynbench.types import Batch, Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range

Correctness = Literal["accuracy", "likelihood"]
"""The reward's quality term: ``accuracy`` = 1[correct]; ``likelihood`` = exp(−cross-entropy)."""
CHOICE_ADVICE = {
    "policy": "Use 'bandit' (the method), 'static' (the best fixed sub-network at the same mean compute) or "
    "'random' (random sub-networks at the same mean compute).",
    "refine_split": "Use 'val' (held-out, the default) or 'train'.",
    "correctness": "Use 'accuracy' (1[correct]) or 'likelihood' (exp(−cross-entropy)).",
}
"""The sentence each choice field's error message ends with."""
KMEANS_BATCH = 256
HOST_TABLES = ("fitted", "policy_arm", "policy_units", "static_arm", "static_units", "context_share", "random_seed")
"""The buffers a forward pass reads into Python (:meth:`DHTModel.host`)."""
"""Batch size of the embedding passes that collect the k-means points."""
STATIC_SAMPLES = 4096
"""Validation samples (a seeded shuffle) each arm is scored on when the static control is chosen."""


@dataclass(frozen=True)
class DHTConfig:
    """Bandit, budget and fitting options; each fitted budget is its own bandit table."""

    policy: Literal["bandit", "static", "random"] = "bandit"  # "bandit" (UCB + Thompson sampling, the method),
    # "static" (the best fixed arm at matched compute, chosen on validation data) or "random"
    # (random sub-networks at matched compute): the controls
    contexts: int = 4  # M k-means clusters of the pooled embedding: a disjoint bandit table per cluster
    kappa: float = 1.0  # UCB exploration scale κ: 1 is UCB1 for rewards in [0, 1]
    lambda_max: float = 0.5  # compute penalty at budget 0; λ = lambda_max·(1 − b); ≥ 1 would zero the dense reward
    budgets: tuple[float, ...] = (1.0, 0.98, 0.95, 0.9, 0.8, 0.6)  # fitted points, 1.0 incl.: λ = 0 … 0.2, where
    # the rewards' quality gaps lie (a gap of 0.02 in correctness against 0.7 of the compute
    # fraction)
    steps: int = -1  # joint fine-tuning steps, cycling through the budgets; 0 = bandit on the frozen backbone;
    # -1 = a quarter of the task's dense recipe
    lr: float = 1e-3  # peak AdamW learning rate of the fine-tuning: below the dense recipes' 2e-3 … 6e-3
    batch_size: int = 0  # samples per fine-tuning and refinement step; 0 = the task's recipe batch size
    warmup_steps: int = 20  # linear warm-up before the cosine decay
    weight_decay: float = 0.01  # mild: the weights start trained
    refine_per_arm: int = 3  # frozen-network refinement: batches per budget table = this × arms (L × heads)
    refine_split: Literal["val", "train"] = "val"  # where the refinement plays: "val" means
    # task.validation_split (held-out: on the samples the sub-networks were just fine-tuned on,
    # small ones look as right as the dense one), or "train"
    kmeans_samples: int = 4096  # training samples the clusters are fitted on
    kmeans_iters: int = 50  # Lloyd iterations at most (stops early when assignments settle)
    correctness: Correctness = "likelihood"  # reward's quality term: "likelihood" = exp(−mean CE), the target's
    # probability (low-variance: with 1[correct] the small held-out splits rank the arms by noise);
    # "accuracy" = top-1 / next-token accuracy, the literal 1[correct] of the spec

    def __post_init__(self) -> None:
        check_choices(self, CHOICE_ADVICE)
        name = type(self).__name__
        check_range(f"{name}.contexts", self.contexts, 1, advice="Use e.g. 4 (1 = no context).")
        check_range(f"{name}.kappa", self.kappa, 0, advice="Use e.g. 1.0 (0 = greedy).")
        lam_advice = "At 1 the dense network's reward is 0; use e.g. 0.5."
        check_range(f"{name}.lambda_max", self.lambda_max, 0, 1, low_open=True, high_open=True, advice=lam_advice)
        bad = [b for b in self.budgets if not 0.0 <= b <= 1.0]
        if bad or 1.0 not in self.budgets or len(set(self.budgets)) != len(self.budgets):
            raise ValueError(
                f"DHTConfig.budgets must be distinct values in [0, 1] including the full budget 1.0, got "
                f"{self.budgets}. Use e.g. budgets=1;0.8;0.5."
            )
        check_range(f"{name}.steps", self.steps, -1, advice="Use -1 (auto), 0 (none) or a count.")
        for field_name in ("batch_size", "refine_per_arm", "warmup_steps"):
            check_range(f"{name}.{field_name}", getattr(self, field_name), 0, advice="Use 0 for the default.")
        for field_name in ("kmeans_samples", "kmeans_iters"):
            check_range(f"{name}.{field_name}", getattr(self, field_name), 1)
        check_range(f"{name}.lr", self.lr, 0, low_open=True, advice="Use e.g. 1e-3.")
        check_range(f"{name}.weight_decay", self.weight_decay, 0, advice="Use 0 to disable it.")

    @property
    def table_budgets(self) -> tuple[float, ...]:
        """The budgets below the full one, descending: one bandit table each."""
        return tuple(sorted((b for b in self.budgets if b != 1.0), reverse=True))


def sample_correctness(logits: Tensor, targets: Tensor, metric: QualityMetric, kind: Correctness) -> Tensor:
    """``(B,)`` float64 correctness in [0, 1]: top-1; exp(−mean CE) or accuracy per sequence."""
    if kind == "likelihood":
        scores = logits.float().transpose(1, 2) if logits.dim() == 3 else logits.float()  # (B, V, T) or (B, K)
        nll = F.cross_entropy(scores, targets, reduction="none").double()  # (B, T) or (B,)
        return torch.exp(-(nll.mean(dim=1) if nll.dim() == 2 else nll))  # (B,)
    return metric.correct(logits, targets).double()  # (B,)


# -------------------------------------------------------------------------------------------------
# The dynamic model


class ContextClusters(nn.Module):
    """The controller: a pooled embedding's nearest k-means centre is the bandit's context.

    Buffers:
        centroids: ``(M, C)`` cluster centres.
    """

    centroids: Tensor

    def __init__(self, n_contexts: int, d_model: int) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.zeros(n_contexts, d_model))

    def forward(self, pooled: Tensor) -> Tensor:
        """``(B, C)`` → ``(B,)`` nearest centre (``‖x‖²``, equal for every centre, is dropped)."""
        cross = F.linear(pooled, self.centroids.to(pooled.dtype))  # (B, M): 2·M·C FLOPs per sample
        return ((self.centroids**2).sum(dim=1).to(pooled.dtype) - 2 * cross).argmin(dim=1)  # (B,)

    def flops(self) -> float:
        """Analytic FLOPs of one assignment (the matmul)."""
        return 2.0 * self.centroids.shape[0] * self.centroids.shape[1]


class DHTModel(DynamicModel):
    """The backbone with per-context bandit tables over (depth, heads) and head posteriors.

    Args:
        backbone: the dense model; its blocks and readout are fine-tuned by :meth:`DHT.fit`.
        config: the method options.

    Buffers (K = budgets below 1.0, M contexts, A = L·U arms, U = k/v groups = heads for plain MHA):
        arm_count, arm_reward: ``(K, M, A)`` float64 UCB observations and summed rewards.
        unit_alpha, unit_beta: ``(K, M, L, U)`` float64 Beta posteriors of the head units.
        policy_arm: ``(K, M)`` long exploited arm per context.
        policy_units: ``(K, M, L, U)`` bool exploited heads.
        context_share: ``(M,)`` float64 share of validation samples per context.
        static_arm: ``(K,)`` long the static control's arm per table.
        static_units: ``(K, L, U)`` bool the static control's heads.
        static_quality: ``(A,)`` float64 validation quality of each arm with its fixed heads (higher
            is better).
        static_cap: ``(K,)`` float64 the bandit policy's mean FLOPs per sample on validation data.
        fitted: ``()`` bool; random_seed: ``()`` long, the fit seed the random draws mix in.
        train_flops, dense_train_flops, fit_flops: ``()`` float64; NaN until fitted.
    """

    arm_count: Tensor
    arm_reward: Tensor
    unit_alpha: Tensor
    unit_beta: Tensor
    policy_arm: Tensor
    policy_units: Tensor
    context_share: Tensor
    static_arm: Tensor
    static_units: Tensor
    static_quality: Tensor
    static_cap: Tensor
    fitted: Tensor
    random_seed: Tensor
    train_flops: Tensor
    dense_train_flops: Tensor
    fit_flops: Tensor

    def __init__(self, backbone: Backbone, config: DHTConfig) -> None:
        super().__init__(backbone)
        self.config = config
        self.table_budgets = config.table_budgets
        bc = backbone.block_config
        self.n_units = bc.kv_heads  # heads are chosen in whole k/v groups (plain MHA: one head per unit)
        self.unit_size = bc.group_size
        L, U, M, K = backbone.n_blocks, self.n_units, config.contexts, len(self.table_budgets)
        self.n_arms = L * U
        self.context_clusters = ContextClusters(M, bc.d_model)
        f64 = torch.float64
        self.register_buffer("arm_count", torch.zeros(K, M, L * U, dtype=f64))
        self.register_buffer("arm_reward", torch.zeros(K, M, L * U, dtype=f64))
        self.register_buffer("unit_alpha", torch.ones(K, M, L, U, dtype=f64))
        self.register_buffer("unit_beta", torch.ones(K, M, L, U, dtype=f64))
        self.register_buffer("policy_arm", torch.full((K, M), L * U - 1, dtype=torch.long))
        self.register_buffer("policy_units", torch.ones(K, M, L, U, dtype=torch.bool))
        self.register_buffer("context_share", torch.full((M,), 1.0 / M, dtype=f64))
        self.register_buffer("static_arm", torch.full((K,), L * U - 1, dtype=torch.long))
        self.register_buffer("static_units", torch.ones(K, L, U, dtype=torch.bool))
        self.register_buffer("static_quality", torch.full((L * U,), float("nan"), dtype=f64))
        self.register_buffer("static_cap", torch.full((K,), float("nan"), dtype=f64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("random_seed", torch.zeros((), dtype=torch.long))
        for name in ("train_flops", "dense_train_flops", "fit_flops"):
            self.register_buffer(name, torch.full((), float("nan"), dtype=f64))
        # the fitted tables a forward pass reads into Python, copied to the host once per change
        # (a GPU forward pass must not stop to read them every call)
        self._host_copies = {name: HostCopy() for name in HOST_TABLES}

    # -- arms --------------------------------------------------------------------------------------

    def arm_shape(self, arm: int) -> tuple[int, int]:
        """``(depth a, units u)`` of an arm, ordered depth-major: ``arm = (a − 1)·U + (u − 1)``."""
        return arm // self.n_units + 1, arm % self.n_units + 1

    def arm_flops(self, inputs_shape: tuple[int, ...]) -> Tensor:
        """``(A,)`` float64 analytic FLOPs per sample of each arm (embedding and readout incl.)."""
        arms = [self.arm_shape(i) for i in range(self.n_arms)]
        depth = torch.tensor([a for a, _ in arms])  # (A,)
        heads = torch.tensor([u * self.unit_size for _, u in arms])  # (A,)
        trace = self._trace(depth, heads, torch.zeros(self.n_arms, dtype=torch.long), inputs_shape, 0.0)
        return self.backbone.flops(trace, inputs_shape)

    def table_index(self, budget: Budget) -> int:
        """The bandit table of ``budget``.

        Raises:
            ValueError: a budget no table was fitted for.
        """
        for i, b in enumerate(self.table_budgets):
            if abs(b - budget) < 1e-9:
                return i
        raise ValueError(
            f"dht is fitted for budgets {list(self.config.budgets)} only, got {budget}: each budget is its own "
            f"bandit table. Fit the ones you need with the method option budgets (e.g. dht[budgets=1;{budget}])."
        )

    def head_index(self, units: Tensor | None, device: torch.device) -> Tensor | None:
        """Query heads of the chosen units (``(u,)`` ascending), or ``None`` for every head."""
        if units is None:
            return None
        g = self.unit_size
        heads = (units[:, None] * g + torch.arange(g, device=units.device)).reshape(-1)  # (u·g,)
        return heads.to(device)

    # -- execution ---------------------------------------------------------------------------------

    def contexts(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` embedded tokens → ``(B,)`` long context (token mean, nearest centre)."""
        return self.context_clusters(x.mean(dim=1))  # (B,)

    def run_subnetwork(self, x: Tensor, depth: int, units: Sequence[Tensor | None]) -> Tensor:
        """Blocks ``0..depth-1`` with the given head units each (``None``: all), the readout."""
        bb = self.backbone
        for layer in range(depth):
            x = bb.blocks[layer](x, head_idx=self.head_index(units[layer], x.device))  # (G, T, C)
        return bb.readout(x)  # (G, K) or (G, T, V)

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run each sample's sub-network, grouped by configuration; budget 1.0 runs the backbone.

        Args:
            inputs: the task input batch.
            budget: one of the fitted budgets.

        Returns:
            Logits and a trace whose ``extra`` holds ``depth``, ``heads`` (per executed layer) and
            ``context`` (``-1`` where no context was computed: the full budget, the static and the
            random policy), each ``(B,)``.

        Raises:
            ValueError: a budget without a table, or no fitted tables below the full budget.
        """
        bb = self.backbone
        shape = tuple(inputs.shape[1:])
        x = bb.embed(inputs)  # (B, T, C)
        B, L = x.shape[0], bb.n_blocks
        if budget == 1.0:
            for block in bb.blocks:
                x = block(x)  # (B, T, C)
            full = torch.full((B,), L, dtype=torch.long)
            trace = self._trace(full, torch.full((B,), bb.n_heads), torch.full((B,), -1), shape, 0.0)
            return StepOutput(bb.readout(x), trace)
        k = self.table_index(budget)
        if not self.host("fitted"):
            raise ValueError(
                f"dht has no fitted bandit tables yet (budget {budget}). Call DHT.fit(model, task, seed=...) or "
                "load a fitted state_dict."
            )
        if self.config.policy == "bandit":
            contexts = self.contexts(x).tolist()  # (B,) the one host sync: samples are grouped on the host
            per_context = {c: self.policy_config(k, c) for c in set(contexts)}
            configs = [per_context[c] for c in contexts]
            context = torch.tensor(contexts, dtype=torch.long)  # (B,)
            controller = self.context_clusters.flops()
        elif self.config.policy == "static":  # one sub-network for every sample: no context is computed
            context = torch.full((B,), -1, dtype=torch.long)
            configs = [self.static_config(k)] * B
            controller = 0.0
        else:
            context = torch.full((B,), -1, dtype=torch.long)
            configs = self.random_configs(inputs, k, shape)
            controller = 0.0
        groups: dict[tuple, list[int]] = {}
        for i, cfg in enumerate(configs):
            groups.setdefault(cfg, []).append(i)
        logits: Tensor | None = None
        for (depth, units), members in sorted(groups.items(), key=lambda kv: kv[1][0]):
            idx = torch.tensor(members, device=x.device)  # (G,)
            unit_tensors = [None if u is None else torch.tensor(u) for u in units]
            out = self.run_subnetwork(x[idx], depth, unit_tensors)  # (G, K) or (G, T, V)
            if logits is None:
                logits = out.new_empty((B, *out.shape[1:]))
            logits[idx] = out
        assert logits is not None  # narrowing only: every sample belongs to a group
        depth_t = torch.tensor([d for d, _ in configs], dtype=torch.long)  # (B,)
        heads_t = torch.tensor([self.config_heads(u) for _, u in configs], dtype=torch.long)  # (B,)
        return StepOutput(logits, self._trace(depth_t, heads_t, context, shape, controller))

    def config_heads(self, units: tuple) -> int:
        """Heads per executed layer of a configuration's unit tuple."""
        first = units[0]
        return self.backbone.n_heads if first is None else len(first) * self.unit_size

    def host(self, name: str) -> Any:
        """Buffer ``name`` (one of :data:`HOST_TABLES`) as Python values, read once per change."""
        return self._host_copies[name](getattr(self, name))

    def policy_config(self, k: int, context: int) -> tuple[int, tuple]:
        """The exploited ``(depth, per-layer units or None)`` of table ``k`` for ``context``."""
        return self.arm_config(self.host("policy_arm")[k][context], self.host("policy_units")[k][context])

    def static_config(self, k: int) -> tuple[int, tuple]:
        """The static control's ``(depth, per-layer units or None)`` at table ``k``."""
        return self.arm_config(self.host("static_arm")[k], self.host("static_units")[k])

    def arm_config(self, arm: int, mask: Tensor | list[list[bool]]) -> tuple[int, tuple]:
        """``(depth, per-layer unit tuples or None = all)`` of ``arm`` with the (L, U) ``mask``."""
        depth, n = self.arm_shape(arm)
        if n == self.n_units:
            return depth, (None,) * depth
        rows = mask.tolist() if isinstance(mask, Tensor) else mask  # (L, U) bool on the host
        return depth, tuple(tuple(j for j, on in enumerate(rows[layer]) if on) for layer in range(depth))

    def random_target(self, k: int, inputs_shape: tuple[int, ...]) -> tuple[Tensor, float]:
        """``(arm FLOPs (A,), the bandit policy's expected FLOPs per sample)`` at table ``k``."""
        costs = self.arm_flops(inputs_shape)  # (A,)
        share = torch.tensor(self.host("context_share"), dtype=torch.float64)  # (M,)
        bandit = (share * costs[torch.tensor(self.host("policy_arm")[k])]).sum()  # sum over contexts
        return costs, float(bandit) + self.context_clusters.flops()

    def random_configs(self, inputs: Tensor, k: int, inputs_shape: tuple[int, ...]) -> list[tuple[int, tuple]]:
        """Per sample, a random (depth, heads, which heads) at the bandit's mean FLOPs."""
        costs, target = self.random_target(k, inputs_shape)
        probs = tilted_distribution(costs, target)  # (A,)
        order = torch.argsort(costs, stable=True)  # (A,) cheapest first
        cdf = torch.cumsum(probs[order], dim=0).numpy()  # (A,)
        L, U = self.backbone.n_blocks, self.n_units
        configs = []
        for rng in sample_generators(inputs, self.host("random_seed")):
            draw = rng.random()
            perms = [rng.permutation(U) for _ in range(L)]  # drawn in full: the same stream at every budget
            pick = min(int(np.searchsorted(cdf, draw, side="right")), len(cdf) - 1)
            depth, n = self.arm_shape(int(order[pick]))
            if n == U:
                configs.append((depth, (None,) * depth))
            else:
                configs.append((depth, tuple(tuple(sorted(int(j) for j in p[:n])) for p in perms[:depth])))
        return configs

    def _trace(
        self, depth: Tensor, heads: Tensor, context: Tensor, inputs_shape: tuple[int, ...], controller: float
    ) -> Trace:
        """The trace of prefix sub-networks: ``depth`` blocks, ``heads`` heads each, the readout."""
        bb = self.backbone
        n = len(depth)
        ran = (torch.arange(bb.n_blocks)[None, :] < depth[:, None]).long()  # (B, L)
        tokens = bb.n_tokens(inputs_shape)
        return Trace(
            block_tokens=ran * tokens,
            block_kv=ran * tokens,
            block_heads=ran * heads[:, None],
            readout=torch.ones(n, dtype=torch.long),
            controller_flops=torch.full((n,), controller, dtype=torch.float64),
            extra={"depth": depth.clone(), "heads": heads.clone(), "context": context.clone()},
        )

    # -- fitting helpers ---------------------------------------------------------------------------

    def compute_policy(self, inputs_shape: tuple[int, ...]) -> None:
        """Fill ``policy_arm``/``policy_units`` from the statistics (exploitation, module doc)."""
        costs = self.arm_flops(inputs_shape).to(self.arm_count.device)  # (A,)
        M = self.config.contexts
        cap = torch.full((M,), math.inf, dtype=torch.float64, device=costs.device)  # costliest arm allowed, per context
        for k in range(len(self.table_budgets)):  # budgets descending
            pooled_sum, pooled_count = self.arm_reward[k].sum(dim=0), self.arm_count[k].sum(dim=0)  # (A,)
            for c in range(M):
                allowed = costs <= cap[c] * (1 + 1e-12)  # (A,)
                arm = exploit_arm(self.arm_reward[k, c], self.arm_count[k, c], allowed)
                if arm is None:
                    arm = exploit_arm(pooled_sum, pooled_count, allowed)
                if arm is None:  # nothing known: the costliest arm still allowed
                    arm = int(torch.argmax(torch.where(allowed, costs, torch.full_like(costs, -1.0))))
                cap[c] = costs[arm]
                self.policy_arm[k, c] = arm
                n = self.arm_shape(arm)[1]
                self.policy_units[k, c] = exploit_units(self.unit_alpha[k, c], self.unit_beta[k, c], n)

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """``mean_depth``, ``mean_heads`` (per executed layer) and, once fitted, training FLOPs."""
        out = {
            "mean_depth": (float(trace.extra["depth"].double().mean()), "layers", False),
            "mean_heads": (float(trace.extra["heads"].double().mean()), "heads", False),
        }
        if not torch.isnan(self.dense_train_flops) and float(self.dense_train_flops) > 0:
            out["train_flops_ratio"] = (float(self.train_flops / self.dense_train_flops), "ratio", False)
        if not torch.isnan(self.fit_flops):
            out["fit_flops"] = (float(self.fit_flops), "flops", False)
        return out

    def controller_modules(self) -> list[nn.Module]:
        """The context assignment: its matmul is the decision overhead."""
        return [self.context_clusters]

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """1.0: the backbone. Below: the blocks the budget's table reaches, the readout, the policy.

        The bandit policy reaches the deepest arm it exploits in any context and reads the context
        centres; the static control runs its one arm; the random policy may draw any arm. The bandit
        statistics (counts, rewards, head posteriors) and the static control's validation scores are
        fitting state no forward reads.

        Raises:
            ValueError: a budget without a table.
        """
        bb = self.backbone
        if budget == 1.0:
            return [bb]
        k = self.table_index(budget)
        if self.config.policy == "bandit":
            deepest = max(self.arm_shape(int(arm))[0] for arm in self.policy_arm[k].tolist())
            policy = TensorSet([self.fitted, self.policy_arm, self.policy_units])
            return [*backbone_parts(bb, range(deepest)), self.context_clusters, policy]
        if self.config.policy == "static":
            depth = self.arm_shape(int(self.static_arm[k]))[0]
            return [*backbone_parts(bb, range(depth)), TensorSet([self.fitted, self.static_arm, self.static_units])]
        policy = TensorSet([self.fitted, self.random_seed, self.context_share, self.policy_arm])
        return [*backbone_parts(bb, range(bb.n_blocks)), policy]


# -------------------------------------------------------------------------------------------------
# The method


def bandit_round(
    model: DHTModel,
    metric: QualityMetric,
    x: Tensor,
    targets: Tensor,
    table: tuple[int, float],
    costs: Tensor,
    rng: np.random.Generator,
) -> tuple[Tensor, float]:
    """One bandit round per context in a batch: select (UCB + TS), run, reward, update statistics.

    Shared by the fine-tuning (with gradients) and the frozen refinement.

    Args:
        model: the dynamic model whose statistics are updated in place.
        metric: the task's metric (loss and correctness).
        x: ``(B, T, C)`` embedded batch.
        targets: the batch's targets.
        table: ``(k, λ)``: the budget table to play and its compute penalty.
        costs: ``(A,)`` analytic FLOPs per sample of each arm; ``costs[-1]`` is the dense network's.
        rng: the bandit's random generator.

    Returns:
        ``(group-size-weighted task loss, forward FLOPs that ran)``.
    """
    cfg = model.config
    k, lam = table
    dense = float(costs[-1])
    context = model.contexts(x.detach()).cpu()  # (B,)
    B = x.shape[0]
    loss = x.new_zeros(())
    flops = 0.0
    for c in torch.unique(context).tolist():
        members = (context == c).nonzero()[:, 0]  # (G,)
        idx = members.to(x.device)
        arm = ucb_select(model.arm_reward[k, c], model.arm_count[k, c], cfg.kappa)
        depth, n = model.arm_shape(arm)
        alpha, beta = model.unit_alpha[k, c, :depth], model.unit_beta[k, c, :depth]  # (a, U) views
        units = thompson_units(alpha, beta, n, rng)  # (a, n)
        chosen = [None if n == model.n_units else units[layer] for layer in range(depth)]
        logits = model.run_subnetwork(x[idx], depth, chosen)  # (G, K) or (G, T, V)
        group_targets = targets[idx]
        loss = loss + metric.loss(logits, group_targets) * (len(members) / B)
        correct = sample_correctness(logits.detach(), group_targets, metric, cfg.correctness).cpu()  # (G,)
        rewards = (correct - lam * float(costs[arm]) / dense).clamp(0.0, 1.0)  # (G,)
        ucb_update(model.arm_reward[k, c], model.arm_count[k, c], arm, rewards)
        beta_update(alpha, beta, units, rewards)
        flops += len(members) * (float(costs[arm]) + model.context_clusters.flops())
    return loss, flops


@register_method("dht")
class DHT(Method):
    """Reconstructed DHT: per-sample depth and heads by contextual bandits (UCB + Thompson)."""

    version = "4"  # what each version changed: docs/architecture.md
    shared_parts = (_sample_hash, _static_control)
    paper = "https://arxiv.org/abs/2312.03038"
    extra_metrics = ("mean_depth", "mean_heads", "train_flops_ratio", "fit_flops")
    reconstructed = True
    Config = DHTConfig
    # quick profile: three bandit tables of five (the ends and the middle of the default range)
    # and half the refinement batches per arm; fine-tuning follows the (shorter) quick dense recipe
    quick_options = {"budgets": (1.0, 0.95, 0.8, 0.6), "refine_per_arm": 2}
    controls = {"static": {"policy": "static"}, "random": {"policy": "random"}}  # matched mean FLOPs, see the doc
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    reference_network = "fine-tuned backbone"  # fit fine-tunes blocks and readout; budget 1.0 runs them densely
    budget_doc = "compute-penalty knob b: λ = lambda_max·(1 − b); 1.0 = dense, one fitted bandit table per budget"

    def wrap(self, backbone: Backbone) -> DHTModel:
        """Wrap ``backbone`` with empty bandit tables."""
        return DHTModel(backbone, self.config)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """The configured (fitted) budgets, the full budget first."""
        return tuple(sorted(self.config.budgets, reverse=True))

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """As :meth:`Method.resolve_budgets`, and every budget must have a fitted bandit table.

        Raises:
            ValueError: a budget out of range or without a table (found before the fit, not after).
        """
        budgets = super().resolve_budgets(override, n_blocks)
        missing = [b for b in budgets if all(abs(b - f) >= 1e-9 for f in self.config.budgets)]
        if missing:
            raise ValueError(
                f"dht has no bandit table for budget(s) {missing}: it fits one per budget in "
                f"budgets={list(self.config.budgets)}. Add them (e.g. dht[budgets=1;{missing[0]:g}]) or sweep "
                "only those."
            )
        return budgets

    def fit_identity(self) -> DHTConfig:
        """The config less ``policy``: the fit does not read it, so the controls reuse the fit.

        The fit chooses the static control's arms whatever ``policy`` is, so the cached fit serves
        all three.
        """
        return dataclasses.replace(self.config, policy="bandit")

    def fit(self, model: DHTModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Cluster contexts, fine-tune on bandit-chosen sub-networks, refine tables, fix the policy.

        Last, whatever ``policy`` says, the static control's arms are chosen on the validation
        split.

        Args:
            model: the wrapped model; its blocks, readout and bandit buffers change in place.
            task: supplies the training split, the loss and the metric.
            seed: seeds the clustering, the batch order, the bandit draws and the random policy.

        Raises:
            ValueError: fewer training samples than contexts, or an empty validation split.
        """
        cfg = self.config
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        bb = model.backbone
        device = next(bb.parameters()).device
        was_training = model.training
        shape = tuple(next(task.batches("train", batch_size=1)).inputs.shape[1:])
        costs = model.arm_flops(shape)  # (A,); the last arm is the dense network
        model.random_seed.fill_(seed)
        fit_flops = self._fit_contexts(model, task, seed, device)
        lambdas = [cfg.lambda_max * (1 - b) for b in model.table_budgets]
        recipe = self.recipe(task)
        train, dense_train = (
            self._finetune(model, task, seed, device, lambdas, costs, rng, recipe) if recipe.steps else (0, 0)
        )
        fit_flops += train
        model.arm_count.zero_()  # the statistics of a changing network are stale: re-learn them frozen
        model.arm_reward.zero_()
        model.eval()
        refine = task.validation_split if cfg.refine_split == "val" else "train"  # never the evaluation split
        batches = endless(
            lambda e: task.batches(refine, batch_size=recipe.batch_size, seed=1000 * seed + 500 + e, shuffle=True)
        )
        with torch.no_grad():
            for _ in range(cfg.refine_per_arm * model.n_arms if lambdas else 0):
                batch = next(batches)
                x = bb.embed(batch.inputs.to(device))  # (B, T, C)
                for k, lam in enumerate(lambdas):
                    fit_flops += bandit_round(model, task.metric, x, batch.targets.to(device), (k, lam), costs, rng)[1]
        model.compute_policy(shape)
        if lambdas:
            self._fit_static(model, task, seed, device, recipe.batch_size)
        model.train_flops.fill_(train)
        model.dense_train_flops.fill_(dense_train)
        model.fit_flops.fill_(fit_flops)
        model.fitted.fill_(True)
        model.train(was_training)

    def _fit_static(self, model: DHTModel, task: Task, seed: int, device: torch.device, batch_size: int) -> None:
        """Choose the static control's arm and heads per table on the validation split (module doc).

        Not counted in ``fit_flops``: it serves the control, not the method.

        Raises:
            ValueError: the validation split is empty.
        """
        split = task.validation_split
        n = min(STATIC_SAMPLES, task.n_samples(split))
        if n == 0:
            raise ValueError(
                f"dht chooses its static control on the validation split '{split}', which is empty for task "
                f"'{task.name}'. Give the task validation samples."
            )
        bb, U = model.backbone, model.n_units
        shape = tuple(next(task.batches(split, batch_size=1)).inputs.shape[1:])
        costs = model.arm_flops(shape)  # (A,) no controller: the static control computes no context
        pooled_alpha = 1 + (model.unit_alpha - 1).sum(dim=(0, 1))  # (L, U) every table's and context's evidence
        pooled_beta = 1 + (model.unit_beta - 1).sum(dim=(0, 1))  # (L, U)
        masks = [exploit_units(pooled_alpha, pooled_beta, u) for u in range(1, U + 1)]  # (L, U) each, nested in u
        scores: list[list[Tensor]] = [[] for _ in range(model.n_arms)]
        learned = torch.zeros(len(model.table_budgets), dtype=torch.float64, device="cpu")  # (K,) bandit FLOPs, host
        with torch.no_grad():
            for batch in task.batches(split, batch_size=batch_size, seed=seed, shuffle=True, limit=n):
                x = bb.embed(batch.inputs.to(device))  # (B, T, C)
                targets = batch.targets.to(device)
                context = model.contexts(x).cpu()  # (B,)
                learned += costs[model.policy_arm.cpu()[:, context]].sum(dim=1)  # (K, B) → (K,)
                for arm in range(model.n_arms):
                    depth, units = model.arm_config(arm, masks[model.arm_shape(arm)[1] - 1])
                    chosen = [None if u is None else torch.tensor(u, device=x.device) for u in units]
                    logits = model.run_subnetwork(x, depth, chosen)  # (B, K) or (B, T, V)
                    scores[arm].append(task.metric.score(logits, targets).double().cpu())  # (B,)
        metric = task.metric
        sign = 1.0 if metric.spec.higher_is_better else -1.0
        quality = torch.tensor(
            [sign * metric.aggregate(torch.cat(s).numpy()) for s in scores], dtype=torch.float64, device="cpu"
        )
        cap = learned / n + model.context_clusters.flops()  # (K,) the bandit's mean FLOPs per sample
        model.static_quality.copy_(quality)
        model.static_cap.copy_(cap)
        for k in range(len(model.table_budgets)):
            arm = best_fixed_config(quality, costs, float(cap[k]))
            model.static_arm[k] = arm
            model.static_units[k] = masks[model.arm_shape(arm)[1] - 1]

    def recipe(self, task: Task) -> TrainConfig:
        """The fine-tuning recipe on ``task``, with the automatic steps and batch size resolved."""
        cfg, dense = self.config, task.train_config
        return TrainConfig(
            steps=cfg.steps if cfg.steps >= 0 else max(1, dense.steps // 4),
            batch_size=cfg.batch_size or dense.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
        )

    def _fit_contexts(self, model: DHTModel, task: Task, seed: int, device: torch.device) -> float:
        """k-means on pooled embeddings of training samples; context shares of validation samples.

        The shares calibrate the random control's compute (:meth:`DHTModel.random_target`), so they
        are measured on held-out inputs, as every calibration is.

        Returns:
            The embedding FLOPs spent.
        """
        cfg = self.config
        bb = model.backbone
        pooled, spent = [], 0.0
        with torch.no_grad():
            for b in task.batches("train", batch_size=KMEANS_BATCH, seed=seed, shuffle=True, limit=cfg.kmeans_samples):
                pooled.append(bb.embed(b.inputs.to(device)).mean(dim=1).cpu())  # (B, C)
                spent += len(b) * bb.embed_flops(tuple(b.inputs.shape[1:]))
        points = torch.cat(pooled) if pooled else torch.zeros(0, bb.block_config.d_model)  # (N, C)
        if len(points) < cfg.contexts:
            raise ValueError(
                f"dht needs at least contexts={cfg.contexts} training samples to cluster, task '{task.name}' gave "
                f"{len(points)}. Use fewer contexts."
            )
        centres = kmeans(points, cfg.contexts, cfg.kmeans_iters, torch.Generator().manual_seed(seed))
        model.context_clusters.centroids.copy_(centres.to(model.context_clusters.centroids))
        assign = []
        with torch.no_grad():
            held_out = task.validation_split
            for b in task.batches(held_out, batch_size=KMEANS_BATCH, seed=seed, shuffle=True, limit=cfg.kmeans_samples):
                assign.append(model.contexts(bb.embed(b.inputs.to(device))).cpu())  # (B,)
                spent += len(b) * bb.embed_flops(tuple(b.inputs.shape[1:]))
        if not assign:
            raise ValueError(
                f"dht measures its context shares on the validation split {held_out!r}, which is empty for task "
                f"'{task.name}'. Give the task validation samples."
            )
        shares = torch.bincount(torch.cat(assign), minlength=cfg.contexts).double()  # (M,)
        model.context_share.copy_(shares / shares.sum())
        return spent

    def _finetune(
        self,
        model: DHTModel,
        task: Task,
        seed: int,
        device: torch.device,
        lambdas: list[float],
        costs: Tensor,
        rng: np.random.Generator,
        recipe: TrainConfig,
    ) -> tuple[float, float]:
        """Fine-tune blocks and readout on bandit-chosen sub-networks, cycling through the tables.

        Returns:
            ``(training FLOPs that ran, dense-equivalent training FLOPs)``, both 3 × forward.
        """
        bb = model.backbone
        embed_ids = {
            id(p)
            for name, p in bb.named_parameters(remove_duplicate=False)
            if not name.startswith(("blocks.", "readout."))
        }
        params = [p for p in (*bb.blocks.parameters(), *bb.readout.parameters()) if id(p) not in embed_ids]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        model.train()
        tables = [None, *range(len(lambdas))]  # None: a dense step (the full budget)
        spent = {"step": 0, "flops": 0.0, "dense": 0.0}

        def step_loss(batch: Batch) -> Tensor:
            k = tables[spent["step"] % len(tables)]
            spent["step"] += 1
            targets = batch.targets.to(device)
            with torch.no_grad():  # the embedding stays frozen, so the contexts do not drift
                x = bb.embed(task.augment(batch.inputs.to(device)))  # (B, T, C)
            dense = float(costs[-1])
            spent["dense"] += 3 * len(batch) * dense
            if k is None:
                spent["flops"] += 3 * len(batch) * dense
                return task.metric.loss(model.run_subnetwork(x, bb.n_blocks, [None] * bb.n_blocks), targets)
            loss, flops = bandit_round(model, task.metric, x, targets, (k, lambdas[k]), costs, rng)
            spent["flops"] += 3 * flops
            return loss

        def epoch_batches(epoch: int) -> Iterator[Batch]:
            return task.batches("train", batch_size=recipe.batch_size, seed=1000 * seed + epoch, shuffle=True)

        fit_loop(params, step_loss, endless(epoch_batches), recipe)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        return spent["flops"], spent["dense"]
