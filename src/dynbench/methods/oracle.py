"""Oracle: each sample runs the layer set that its own labels say is best, within an average-layers budget.

Paper: Glavas et al., "Dynamic layer selection in decoder-only transformers", https://arxiv.org/abs/2410.20022
(the oracle controller; ``src/analysis/knapsack_solver.py::KnapsackSolver`` in the official code).

Mechanism: every evaluation sample is scored under a set of candidate layer configurations. A multiple-choice
knapsack then picks one configuration per sample (groups = samples, items = configurations, weight = executed
layers, value = the sample's quality) to maximise total quality under an average-layers budget. The DP is exact
and gives the optimum for every capacity at once (:mod:`dynbench.methods._knapsack`). At inference a sample is
recognised by a hash of its input and runs only its chosen blocks, then the backbone's readout. The oracle sees the
evaluation labels (``sees_eval_labels``), so it is an UPPER BOUND and not deployable.

What we changed / reconstructed: the paper's candidate set is not recoverable (methods.md §4a), so ours is: early
exit at each depth k (the first k blocks then the backbone's own final norm and head, untrained, as the paper's
static early exit; for LM-sized heads — ``exits="auto"`` — through early_exit's tuned exits instead, an affine
translator per depth fitted by least squares on the training split, because on SmolLM2 the untrained exits are worse
than anything else and the "upper bound" fell below the tuned exits of ``early_exit`` from 18 blocks down), evenly
spaced layer skipping keeping k blocks (:func:`dynbench.methods.layer_skip.uniform_blocks`), layer skipping keeping
the k most important blocks (``ranked_skips``: ``layer_skip``'s importance ranking, on the validation split —
without it the upper bound fell below that static method on SmolLM2, 442 against 99 ppl at 24 of 30 blocks), and
``random_per_depth`` seeded random k-subsets, for depths ``k`` on a grid of at most ``max_depths`` (all depths of a
model up to 8 blocks) plus the depth of each solved budget (without those, 24 of 30 blocks on SmolLM2 was only a
mixture of 22 and 26, and fell below static layer skipping at 24). Candidates sharing a prefix of blocks share its
computation (one forward for all early exits). The value is the task's own per-sample score: correctness for
classification, -mean NLL of the window for text (perplexity = exp(mean NLL); the paper scores ROUGE of
generations). The whole window runs the chosen set
(the paper keeps prompt tokens at full depth; our text windows have no prompt). At the full budget every sample
runs the whole network (dense); below it, of the allocations with the optimal total quality the lightest is used.
Samples with identical inputs cannot be told apart at inference, so they form one knapsack group.

Selection bias: the best of many candidates on the very samples it is scored on is optimistic. The same allocation
is also scored on a disjoint half: for text, select on the loss of even positions and score on odd ones, and the
reverse; for classification, select on the original inputs and score on a second view ``task.augment(inputs)``
(seeded), and the reverse. A task without augmentation (``augment`` the identity, e.g. ``fashion-mnist`` by
default) has no second view: the control is then absent (no held-out rows, NaN in the buffers), never reported as
equal to the selection.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynbench.methods._knapsack import ordered_sum, solve
from dynbench.methods._operating import TensorSet, backbone_parts
from dynbench.methods.base import DynamicModel, Method, register_method
from dynbench.methods.early_exit import EarlyExitConfig, EarlyExitModel, TunedExit, exit_kind, fit_translators
from dynbench.methods.layer_skip import LayerSkip, uniform_blocks
from dynbench.models.backbone import Backbone
from dynbench.tasks.base import Perplexity, Task, TopOneAccuracy
from dynbench.types import Batch, Budget, StepOutput, Trace

Config = tuple[int, ...]
"""A candidate configuration: the indices of the blocks it runs, ascending."""

KINDS: dict[int, tuple[type, str, bool]] = {0: (TopOneAccuracy, "mean", True), 1: (Perplexity, "exp_mean", False)}
"""Metric kind code → (metric class, aggregation of per-sample scores, higher is better)."""
BUDGET_TOL = 1e-9
"""Two budgets closer than this are the same operating point."""
EXITS = ("auto", "readout", "tuned")


@dataclass(frozen=True)
class OracleConfig:
    """The candidate set and the memory bounds of the solve."""

    max_depths: int = 8  # depths k evaluated, evenly spaced with 1 and L included: all of them up to 8 blocks; a
    # 30-block LM (SmolLM2) gets 8 depths → 8 early exits + 7 uniform + 7 ranked + 21 random ≈ 43 configs, ~20 dense
    # passes per window with prefix sharing (53 min on a loaded CPU thread), plus the solved budgets' depths
    random_per_depth: int = 3  # seeded random k-subsets per depth k < L, distinct from the other candidates
    ranked_skips: bool = True  # also keep the k most important blocks (layer_skip's ranking, validation split):
    # the static baseline an upper bound must not fall below; costs layer_skip's importance pass (L + 1 forwards)
    exits: str = "auto"  # early-exit candidates read out through: "readout" (the backbone's own head, untrained, as
    # the paper's static exit), "tuned" (early_exit's fitted translators; on SmolLM2 they beat every untrained exit
    # and, from 18 of 30 blocks down, every skip) or "auto" (tuned where early_exit's heads=auto tunes: LM heads)
    logits_mb: int = 256  # memory cap on one candidate forward's logits: a 49k-word LM scores ~10 windows at a time
    checkpoint_every: int = 0  # DP checkpoint spacing in samples; 0 = ceil(sqrt(N)) (memory ~ 2·sqrt(N) capacity rows)

    def __post_init__(self) -> None:
        if self.max_depths < 2:
            raise ValueError(
                f"OracleConfig.max_depths must be >= 2 (depth 1 and the full depth), got {self.max_depths}. Use e.g. 8."
            )
        if self.random_per_depth < 0:
            raise ValueError(
                f"OracleConfig.random_per_depth must be >= 0, got {self.random_per_depth}. Use 0 for no random subsets."
            )
        if self.exits not in EXITS:
            raise ValueError(f"OracleConfig.exits must be one of {EXITS}, got {self.exits!r}.")
        if self.logits_mb < 1:
            raise ValueError(f"OracleConfig.logits_mb must be >= 1, got {self.logits_mb}. Use e.g. 256.")
        if self.checkpoint_every < 0:
            raise ValueError(
                f"OracleConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}. Use 0 for sqrt(N)."
            )


def depth_grid(n_blocks: int, max_depths: int) -> list[int]:
    """Depths ``1..L``, or ``max_depths`` of them evenly spaced (1 and ``L`` included), ascending."""
    if n_blocks <= max_depths:
        return list(range(1, n_blocks + 1))
    return sorted({1 + (2 * i * (n_blocks - 1) + max_depths - 1) // (2 * (max_depths - 1)) for i in range(max_depths)})


def candidate_configs(
    n_blocks: int,
    cfg: OracleConfig,
    seed: int,
    ranking: Sequence[int] | None = None,
    extra_depths: Sequence[int] = (),
) -> list[Config]:
    """The candidate block sets, the full network first: early exits, uniform skips, ranked skips, random subsets.

    Args:
        n_blocks: depth L.
        cfg: the candidate options.
        seed: seeds the random subsets.
        ranking: blocks from most to least important (``layer_skip``'s); each depth then also keeps its top k.
        extra_depths: depths added to the grid (those of the solved budgets, so each budget has candidates of
            exactly its depth rather than only mixtures of its neighbours).
    """
    L = n_blocks
    depths = sorted(set(depth_grid(L, cfg.max_depths)) | {k for k in extra_depths if 1 <= k <= L})
    configs: dict[Config, None] = {tuple(range(L)): None}
    configs.update({tuple(range(k)): None for k in reversed(depths)})
    configs.update({tuple(uniform_blocks(L, k)): None for k in reversed(depths)})
    if ranking is not None:
        configs.update({tuple(sorted(ranking[:k])): None for k in reversed(depths)})
    rng = np.random.default_rng(seed)
    for k in reversed(depths):
        if k == L:
            continue
        taken = sum(len(c) == k for c in configs)
        wanted = min(cfg.random_per_depth, math.comb(L, k) - taken)
        added = 0
        while added < wanted:  # rejection sampling: ends, since `wanted` unused k-subsets exist
            subset = tuple(sorted(rng.choice(L, size=k, replace=False).tolist()))
            if subset not in configs:
                configs[subset] = None
                added += 1
    return list(configs)


def importance_ranking(backbone: Backbone, task: Task, seed: int) -> list[int]:
    """``layer_skip``'s block ranking (most important first), measured on ``task``'s validation split."""
    method = LayerSkip()
    skip = method.wrap(backbone)
    method.fit(skip, task, seed=seed)
    return skip.ranking.tolist()


def input_hashes(inputs: Tensor) -> Tensor:
    """``(B,)`` int64 content hash of each sample's input tensor (its dtype, shape and bytes)."""
    flat = inputs.detach().cpu().contiguous().reshape(inputs.shape[0], -1)  # (B, D)
    raw = flat.view(torch.uint8).numpy() if flat.numel() else np.zeros((inputs.shape[0], 0), np.uint8)  # (B, bytes)
    header = f"{inputs.dtype}|{tuple(inputs.shape[1:])}|".encode()
    digests = [hashlib.blake2b(header + row.tobytes(), digest_size=8).digest() for row in raw]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], dtype=torch.long)


class CandidateScorer:
    """Per-sample scores of every candidate on a batch, sharing the blocks of common prefixes.

    Args:
        backbone: the dense model.
        configs: candidate block sets.
        score: ``(logits, targets) → {name: (B,) score}``, called once per candidate.
        readout_for: a candidate's output head (default: the backbone's readout for every candidate).
    """

    def __init__(
        self,
        backbone: Backbone,
        configs: list[Config],
        score: Callable[[Tensor, Tensor], dict],
        readout_for: Callable[[Config], Callable[[Tensor], Tensor]] | None = None,
    ) -> None:
        self.backbone = backbone
        self.configs = configs
        self.score = score
        self.readout_for = readout_for or (lambda config: backbone.readout)

    @torch.no_grad()
    def __call__(self, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """``{name: (B, M) float64}`` scores of the ``M`` candidates."""
        out: dict[str, list[Tensor | None]] = {}
        self._walk(self.backbone.embed(inputs), 0, list(range(len(self.configs))), targets, out)
        return {name: torch.stack(cols, dim=1) for name, cols in out.items()}  # type: ignore[misc]

    def _walk(self, x: Tensor, depth: int, members: list[int], targets: Tensor, out: dict) -> None:
        """Score the candidates ending after ``depth`` blocks, then extend the others block by block."""
        children: dict[int, list[int]] = {}
        for m in members:
            config = self.configs[m]
            if len(config) == depth:
                for name, values in self.score(self.readout_for(config)(x), targets).items():
                    out.setdefault(name, [None] * len(self.configs))[m] = values.double().cpu()
            else:
                children.setdefault(config[depth], []).append(m)
        for block, sub in children.items():
            self._walk(self.backbone.blocks[block](x), depth + 1, sub, targets, out)  # (B, T, C)


class OracleModel(DynamicModel):
    """The backbone plus the solved allocation: each known sample's block set at each solved budget.

    Buffers (empty until :meth:`Oracle.fit_eval`; resized when a state dict is loaded):
        configs: ``(M, L)`` bool, the candidate block sets (row 0 the full network).
        sample_hashes: ``(G,)`` int64, sorted content hashes of the distinct solved inputs.
        solved_budgets: ``(K,)`` float64, the budgets solved.
        choices: ``(K, G)`` int64, the configuration of each input at each budget.
        selection_half, heldout_half: ``(K, G)`` float64, the selection-bias control's per-sample task scores.
        matching_budget: ``()`` smallest fraction of layers at which the oracle matches the full model (exact, from
            the DP curve); matching_budget_heldout: the same on the held-out half, over the solved budgets.
        metric_kind: ``()`` key of :data:`KINDS` (-1 unsolved).

    Args:
        backbone: the dense model.
        tuned_exits: early-exit candidates (a proper prefix of the blocks) read out through a fitted
            :class:`~dynbench.methods.early_exit.TunedExit` (``exits[k-1]`` after k blocks) instead of the readout.
    """

    SOLUTION = (
        "configs", "sample_hashes", "solved_budgets", "choices", "selection_half", "heldout_half",
        "matching_budget", "matching_budget_heldout", "metric_kind",
    )  # fmt: skip
    configs: Tensor
    sample_hashes: Tensor
    solved_budgets: Tensor
    choices: Tensor
    selection_half: Tensor
    heldout_half: Tensor
    matching_budget: Tensor
    matching_budget_heldout: Tensor
    metric_kind: Tensor

    def __init__(self, backbone: Backbone, *, tuned_exits: bool = False) -> None:
        super().__init__(backbone)
        L = backbone.n_blocks
        self.tuned_exits = tuned_exits
        self.exits = nn.ModuleList([TunedExit(backbone.readout) for _ in range(L - 1)] if tuned_exits else [])
        self.register_buffer("configs", torch.zeros(0, L, dtype=torch.bool))
        self.register_buffer("sample_hashes", torch.zeros(0, dtype=torch.long))
        self.register_buffer("solved_budgets", torch.zeros(0, dtype=torch.float64))
        for name in ("choices", "selection_half", "heldout_half"):
            self.register_buffer(name, torch.zeros(0, 0, dtype=torch.long if name == "choices" else torch.float64))
        self.register_buffer("matching_budget", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("matching_budget_heldout", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("metric_kind", torch.tensor(-1, dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resize the solution buffers to the saved solution's shapes first (their size depends on the solve)."""
        for name in self.SOLUTION:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """The selection-bias control (quality of the selection and of the held-out half) and the matching budget."""
        if "selection_half_score" not in trace.extra:
            return {}
        _, agg, hib = KINDS[int(self.metric_kind)]
        unit = KINDS[int(self.metric_kind)][0].spec.unit
        out = {"matching_budget": (float(self.matching_budget), "fraction", False)}
        if math.isnan(float(self.matching_budget_heldout)):
            return out  # no second view: no selection-bias control to report
        return {
            **out,
            "quality_selection_half": (aggregate(trace.extra["selection_half_score"], agg), unit, hib),
            "quality_heldout_half": (aggregate(trace.extra["heldout_half_score"], agg), unit, hib),
            "matching_budget_heldout": (float(self.matching_budget_heldout), "fraction", False),
        }

    def is_exit(self, config: Config) -> bool:
        """Whether ``config`` reads out through a tuned exit: tuned exits on, and a proper prefix of the blocks."""
        k = len(config)
        return self.tuned_exits and 0 < k < self.backbone.n_blocks and config == tuple(range(k))

    def readout_for(self, config: Config) -> Callable[[Tensor], Tensor]:
        """The output head of ``config``: its tuned exit, or the backbone's readout."""
        return self.exits[len(config) - 1] if self.is_exit(config) else self.backbone.readout

    def exit_flops(self, tokens: int) -> float:
        """FLOPs a tuned exit adds to the readout (its translator), per sample; 0 without tuned exits."""
        if not self.tuned_exits:
            return 0.0
        exit_ = self.exits[0]
        return float(exit_.flops(tokens) - self.backbone.readout.flops(tokens))

    def controller_modules(self) -> list[nn.Module]:
        """The tuned exits' translators: the head they lead into is the backbone's readout, counted as such."""
        return [exit_.translator for exit_ in self.exits]

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """The blocks and tuned exits of the configurations solved for ``budget``, the readout, and the solution.

        A block no sample's configuration at this budget contains is never read.

        Raises:
            ValueError: a budget that was not solved.
        """
        k = self.budget_index(budget)
        configs = self.configs.cpu()
        chosen = torch.unique(self.choices[k].cpu()).tolist()  # candidate indices some sample uses at this budget
        used = [tuple(torch.nonzero(configs[m]).flatten().tolist()) for m in chosen]
        blocks = {b for config in used for b in config}
        exits = [self.exits[len(config) - 1] for config in used if self.is_exit(config)]
        looked_up = [self.configs, self.sample_hashes, self.solved_budgets, self.choices, self.metric_kind]
        scores = [self.selection_half, self.heldout_half]  # the trace carries each sample's control scores
        return [*backbone_parts(self.backbone, blocks), *exits, TensorSet(looked_up + scores)]

    def rows_of(self, inputs: Tensor) -> Tensor:
        """``(B,)`` index of each input among the solved ones.

        Raises:
            ValueError: an input the oracle was not solved on.
        """
        hashes = input_hashes(inputs)  # (B,)
        known = self.sample_hashes.cpu()  # (G,)
        pos = torch.searchsorted(known, hashes).clamp(max=max(len(known) - 1, 0))  # (B,)
        found = known[pos] == hashes if len(known) else torch.zeros_like(hashes, dtype=torch.bool)
        if not bool(found.all()):
            raise ValueError(
                f"oracle: {int((~found).sum())} of {len(hashes)} inputs are not among the {len(known)} samples it was "
                "solved on. The oracle picks each sample's layers from that sample's own labels, so it only knows the "
                "samples passed to Oracle.fit_eval. Run it through the harness (`bench run`), which solves it on "
                "exactly the evaluation samples it measures, or call fit_eval with batches holding these inputs."
            )
        return pos

    def budget_index(self, budget: Budget) -> int:
        """Index of ``budget`` among the solved budgets.

        Raises:
            ValueError: a budget that was not solved.
        """
        solved = self.solved_budgets.cpu()
        hit = torch.nonzero((solved - float(budget)).abs() < BUDGET_TOL).flatten()
        if len(hit) == 0:
            raise ValueError(
                f"oracle: budget {budget} was not solved (solved: {[round(b, 4) for b in solved.tolist()]}). "
                "Pass it to Oracle.fit_eval(budgets=...); `bench run --budgets` does so."
            )
        return int(hit[0])

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run each sample's chosen blocks: the batch is grouped by configuration, one forward per group.

        Args:
            inputs: the task input batch; every sample must be one the oracle was solved on.
            budget: a solved average-layers budget (fraction of L).

        Returns:
            Logits and a trace whose ``extra`` holds ``oracle_config`` (the candidate index) and the selection-bias
            control's per-sample scores ``selection_half_score`` and ``heldout_half_score``.
        """
        if int(self.metric_kind) < 0:
            raise ValueError(
                "oracle: nothing is solved yet. Call Oracle.fit_eval(model, task, batches, budgets=..., seed=...) "
                "with the evaluation batches (the harness does), or load a solved state_dict."
            )
        k = self.budget_index(budget)
        rows = self.rows_of(inputs)  # (B,)
        chosen = self.choices[k].cpu()[rows]  # (B,)
        bb = self.backbone
        x = bb.embed(inputs)  # (B, T, C)
        B = x.shape[0]
        configs = self.configs.cpu()
        logits: Tensor | None = None
        exits = torch.zeros(len(configs), dtype=torch.bool)  # (M,) candidates read out through a tuned exit
        for m in torch.unique(chosen).tolist():
            members = torch.nonzero(chosen == m).flatten()  # (b,)
            h = x if len(members) == B else x[members.to(x.device)]  # (b, T, C)
            config = tuple(torch.nonzero(configs[m]).flatten().tolist())
            for block in config:
                h = bb.blocks[block](h)  # (b, T, C) skipped blocks are not computed
            exits[m] = self.is_exit(config)
            out = self.readout_for(config)(h)  # (b, K) or (b, T, V)
            if len(members) == B:
                logits = out
                break
            if logits is None:
                logits = out.new_empty((B, *out.shape[1:]))  # (B, K) or (B, T, V)
            logits[members.to(x.device)] = out
        assert logits is not None  # narrowing only: the batch has at least one sample
        ran = configs[chosen].long()  # (B, L)
        tokens = bb.n_tokens(tuple(inputs.shape[1:]))
        trace = Trace(
            block_tokens=ran * tokens,
            block_kv=ran * tokens,
            block_heads=ran * bb.n_heads,
            readout=torch.ones(B, dtype=torch.long),
            controller_flops=exits[chosen].double() * self.exit_flops(tokens),  # (B,) translators only
            extra={
                "oracle_config": chosen,
                "selection_half_score": self.selection_half[k].cpu()[rows],
                "heldout_half_score": self.heldout_half[k].cpu()[rows],
            },
        )
        return StepOutput(logits, trace)


def aggregate(scores: Tensor | np.ndarray, how: str) -> float:
    """Task quality from per-sample scores: their mean, or exp of the mean (perplexity from mean NLLs)."""
    mean = float(np.mean(np.asarray(scores, dtype=np.float64)))
    return math.exp(mean) if how == "exp_mean" else mean


def metric_kind(task: Task) -> int:
    """The :data:`KINDS` code of ``task``'s metric.

    Raises:
        ValueError: a metric the oracle cannot turn into per-sample knapsack values.
    """
    for code, (cls, _, _) in KINDS.items():
        if isinstance(task.metric, cls):
            return code
    raise ValueError(
        f"oracle: task '{task.name}' scores with {type(task.metric).__name__}; the oracle supports "
        f"{[k[0].__name__ for k in KINDS.values()]} (per-sample values that add up to the task's quality)."
    )


def allocate(
    table: dict[str, np.ndarray],
    hashes: np.ndarray,
    layers: Sequence[int],
    n_blocks: int,
    budgets: Sequence[Budget],
    kind: int,
    checkpoint_every: int = 0,
) -> dict[str, Tensor]:
    """Solve the knapsacks: the allocation per budget, its selection-bias control and the matching budgets.

    Args:
        table: ``(N, M)`` per-sample task scores of every candidate: ``score`` (the whole sample), ``a`` and ``b``
            (the two disjoint halves of the control).
        hashes: ``(N,)`` input hashes; identical inputs form one knapsack group.
        layers: ``(M,)`` blocks each candidate runs; candidate 0 is the whole network.
        n_blocks: depth L.
        budgets: fractions of L to solve; the full budget 1.0 runs the whole network for everyone.
        kind: key of :data:`KINDS`.
        checkpoint_every: DP checkpoint spacing in groups (0 = sqrt).

    Returns:
        :class:`OracleModel`'s solution buffers except ``configs``.

    Raises:
        ValueError: a budget below one block per sample.
    """
    _, how, hib = KINDS[kind]
    sign = 1.0 if hib else -1.0  # knapsack values are maximised: -NLL for perplexity
    uniq, group, counts = np.unique(hashes, return_inverse=True, return_counts=True)  # (G,), (N,), (G,)
    N, G = len(hashes), len(uniq)

    def per_group(x: np.ndarray) -> np.ndarray:
        """``(N, ...)`` → ``(G, ...)``: sums over identical inputs."""
        out = np.zeros((G, *x.shape[1:]))
        np.add.at(out, group, x)
        return out

    weights = counts[:, None] * np.asarray(layers)[None, :]  # (G, M) executed layers
    total = N * n_blocks
    ordered = sorted({float(b) for b in budgets}, reverse=True)
    partial = [b for b in ordered if abs(b - 1.0) >= BUDGET_TOL]
    caps = [int(math.floor(b * total + BUDGET_TOL)) for b in partial]
    if any(c < N for c in caps):
        raise ValueError(
            f"oracle: budget {min(partial)} is below one block per sample (1/L = {1 / n_blocks:.4g}); "
            f"use budgets >= {1 / n_blocks:.4g}."
        )
    chunk = checkpoint_every or None
    values = sign * per_group(table["score"])  # (G, M)
    main = solve(weights, values, [*caps, total], chunk=chunk)  # the total capacity: the curve up to L
    full_total = ordered_sum(values[:, 0])  # as the DP adds the groups
    reach = np.flatnonzero(main.best >= full_total - 1e-9 * (1.0 + abs(full_total)))
    matching = int(reach[0]) / total if reach.size else 1.0
    pick_a = pick_b = main.choices
    if caps:  # select on half A, score on B, and the reverse (classification's half A is the main solve)
        if kind != 0:
            pick_a = solve(weights, sign * per_group(table["a"]), caps, chunk=chunk).choices
        pick_b = solve(weights, sign * per_group(table["b"]), caps, chunk=chunk).choices
    rows = np.arange(N)
    a, b = table["a"], table["b"]  # (N, M)
    control = kind != 0 or not np.array_equal(a, b)  # the second view of an identity augment is the first
    choices, sel, held = [], [], []
    for budget in ordered:
        if budget in partial:
            i = partial.index(budget)
            ca, cb, cm = pick_a[i], pick_b[i], main.choices[i]
        else:
            ca = cb = cm = np.zeros(G, dtype=np.int64)  # the whole network
        sa, sb = ca[group], cb[group]  # (N,)
        sel.append(per_group(0.5 * (a[rows, sa] + b[rows, sb])) / counts)  # (G,) mean over identical inputs
        held.append(per_group(0.5 * (b[rows, sa] + a[rows, sb])) / counts)
        choices.append(cm)
    full_held = aggregate(0.5 * (a[:, 0] + b[:, 0]), how)
    held_quality = [aggregate(np.repeat(h, counts), how) for h in held]
    matches = [bud for bud, q in zip(ordered, held_quality) if (q >= full_held if hib else q <= full_held)]
    return {
        "sample_hashes": torch.from_numpy(uniq.astype(np.int64)),
        "solved_budgets": torch.tensor(ordered, dtype=torch.float64),
        "choices": torch.from_numpy(np.stack(choices).astype(np.int64)),
        "selection_half": torch.from_numpy(np.stack(sel)),
        "heldout_half": torch.from_numpy(np.stack(held) if control else np.full((len(held), G), np.nan)),
        "matching_budget": torch.tensor(matching, dtype=torch.float64),
        "matching_budget_heldout": torch.tensor(
            min(matches, default=1.0) if control else math.nan, dtype=torch.float64
        ),
        "metric_kind": torch.tensor(kind, dtype=torch.long),
    }


@register_method("oracle")
class Oracle(Method):
    """Per-sample layer sets chosen with the evaluation labels by an exact knapsack: an upper bound."""

    version = "5"  # 2: no selection-bias control without a second view; 3: importance-ranked skip candidates;
    # 4: tuned exits for LM heads, and candidates at each solved budget's depth; 5: layer_skip v2's ranking (on the
    # validation split), so the ranked candidates stay layer_skip's kept sets
    paper = "https://arxiv.org/abs/2410.20022"
    reconstructed = False
    sees_eval_labels = True
    Config = OracleConfig
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    budget_doc = "average executed layers as a fraction of L: 1.0, 0.9 … down to 1/L"

    def wrap(self, backbone: Backbone) -> OracleModel:
        """Wrap ``backbone``; nothing is solved until :meth:`fit_eval`."""
        exits = self.config.exits
        tuned = exits == "tuned" or (exits == "auto" and exit_kind("auto", backbone.readout) == "tuned")
        return OracleModel(backbone, tuned_exits=tuned)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """``1.0, 0.9, …, 0.1``, those at least ``1/L`` (one block per sample on average is the least possible)."""
        return tuple(b for b in (round(1.0 - 0.1 * i, 10) for i in range(10)) if b >= 1.0 / n_blocks - BUDGET_TOL)

    def fit_eval(  # type: ignore[override]
        self, model: OracleModel, task: Task, batches: list[Batch], *, budgets: Sequence[Budget], seed: int
    ) -> None:
        """Score every candidate on every evaluation sample and solve the knapsack for ``budgets``.

        Args:
            model: the wrapped model whose solution buffers are filled.
            task: supplies the metric (and the second view of classification inputs).
            batches: exactly the evaluation batches that will be measured.
            budgets: the budgets to solve (fractions of L); the full budget runs the whole network.
            seed: seeds the random candidates and the second view.

        Raises:
            ValueError: no samples, an unsupported metric, or a budget below one block per sample.
        """
        if not batches or sum(len(b) for b in batches) == 0:
            raise ValueError("oracle: fit_eval got no evaluation samples; pass the batches that will be measured.")
        kind = metric_kind(task)
        L = model.backbone.n_blocks
        ranking = importance_ranking(model.backbone, task, seed) if self.config.ranked_skips else None
        depths = [round(b * L) for b in budgets]  # each budget also gets candidates of exactly its depth
        configs = candidate_configs(L, self.config, seed, ranking, extra_depths=depths)
        if model.tuned_exits:  # early_exit's fit, on the training split, into the oracle's own exits
            trainer = EarlyExitModel(model.backbone, heads="tuned")
            trainer.exit_heads = model.exits
            recipe = EarlyExitConfig()
            fit_translators(trainer, task, samples=recipe.tuned_samples, ridge=recipe.ridge, seed=seed)
        table = self._score(model, task, batches, configs, kind, seed)  # name → (N, M) float64
        hashes = torch.cat([input_hashes(b.inputs) for b in batches]).numpy()  # (N,)
        solution = allocate(table, hashes, [len(c) for c in configs], L, budgets, kind, self.config.checkpoint_every)
        solution["configs"] = torch.tensor([[i in c for i in range(L)] for c in configs], dtype=torch.bool)
        for name, value in solution.items():
            setattr(model, name, value)

    def _score(
        self, model: OracleModel, task: Task, batches: list[Batch], configs: list[Config], kind: int, seed: int
    ) -> dict[str, np.ndarray]:
        """Per-sample task scores ``(N, M)`` of every candidate, under ``score``, ``a`` and ``b``.

        ``score`` is the whole sample; ``a`` and ``b`` are the two disjoint halves of the selection-bias control
        (even/odd positions for text, the original and a second view for classification).
        """
        metric = task.metric
        bb = model.backbone
        if kind == 1:

            def score(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
                return {
                    "score": metric.score(logits, targets),
                    "a": metric.score(logits[:, 0::2], targets[:, 0::2]),
                    "b": metric.score(logits[:, 1::2], targets[:, 1::2]),
                }
        else:

            def score(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
                return {"score": metric.score(logits, targets)}

        scorer = CandidateScorer(bb, configs, score, model.readout_for)
        shape = tuple(batches[0].inputs.shape[1:])
        positions = bb.n_tokens(shape) if bb.readout.pool == "none" else 1
        per_sample = 4 * positions * bb.readout.head.out_features  # bytes of one sample's float32 logits
        micro = max(1, self.config.logits_mb * 2**20 // per_sample)
        parts: dict[str, list[Tensor]] = {}
        device = batches[0].inputs.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # seeded second view
            torch.manual_seed(seed)
            for batch in batches:
                for start in range(0, len(batch), micro):
                    x, y = batch.inputs[start : start + micro], batch.targets[start : start + micro]
                    for name, values in scorer(x, y).items():
                        parts.setdefault(name, []).append(values)
                    if kind == 0:  # the second view, for the selection-bias control
                        parts.setdefault("b", []).append(scorer(task.augment(x), y)["score"])
        table = {name: torch.cat(p).numpy() for name, p in parts.items()}
        if kind == 0:
            table["a"] = table["score"]
        return table
