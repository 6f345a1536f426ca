"""Oracle: each sample runs the layer set its own labels say is best, within an average budget.

Paper: Glavas et al., "Dynamic layer selection in decoder-only transformers",
https://arxiv.org/abs/2410.20022 (the oracle controller; ``KnapsackSolver`` in the authors' code).

Mechanism: every evaluation sample is scored under a set of candidate layer configurations, and an
exact multiple-choice knapsack picks one configuration per sample to maximise total quality under an
average-layers budget (:mod:`dynbench.methods._layer_allocation`). At inference a sample is
recognised by a hash of its input and runs only its chosen blocks, then the backbone's readout. The
oracle sees the evaluation labels (``sees_eval_labels``), so it is an UPPER BOUND and not
deployable.

What we changed / reconstructed: the paper's candidate set is not recoverable, so ours is, for
depths ``k`` on a grid of at most ``max_depths`` plus the depth of each solved budget (so a budget
has candidates of exactly its depth, not only mixtures of its neighbours):

- early exit at depth k: the first k blocks, then the backbone's own final norm and head, untrained,
  as the paper's static early exit; for LM-sized heads (``exits="auto"``) through a tuned exit
  instead (:mod:`dynbench.methods._exit_heads`, fitted on the training split), because untrained
  exits of a deep LM are worse than anything else and would put the "upper bound" below the tuned
  exits of ``early_exit``;
- evenly spaced layer skipping keeping k blocks, and the k most important blocks (``ranked_skips``:
  ``layer_skip``'s importance ranking on the validation split, from
  :mod:`dynbench.methods._layer_sets`), so the upper bound never falls below that static method;
- ``random_per_depth`` seeded random k-subsets.

Candidates sharing a prefix of blocks share its computation (one forward for all early exits). The
value is the task's own per-sample score: correctness for classification, -mean NLL of the window
for text (perplexity = exp(mean NLL); the paper scores ROUGE of generations). The whole window runs
the chosen set (the paper keeps prompt tokens at full depth; our text windows have no prompt). The
selection-bias control (the allocation scored on a disjoint half) is described in
:mod:`dynbench.methods._layer_allocation`; for classification the second half is a seeded second
view ``task.augment(inputs)``, absent for a task without augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dynbench.methods import _exit_heads, _layer_sets, _sample_hash
from dynbench.methods._exit_heads import RIDGE, TUNED_SAMPLES, TunedExit, exit_kind, fit_translators
from dynbench.methods._layer_allocation import BUDGET_TOL, KINDS, aggregate, allocate, metric_kind
from dynbench.methods._layer_sets import rank_blocks, uniform_blocks
from dynbench.methods._operating import TensorSet, backbone_parts
from dynbench.methods._sample_hash import input_hashes
from dynbench.methods.base import DynamicModel, Method, register_method
from dynbench.models.backbone import Backbone
from dynbench.tasks.base import Task
from dynbench.types import Batch, Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range

Config = tuple[int, ...]
"""A candidate configuration: the indices of the blocks it runs, ascending."""

CHOICE_ADVICE = {
    "exits": "Use 'readout' (the backbone's own head, untrained), 'tuned' (fitted translators before it) or "
    "'auto' (tuned for LM-sized heads, else readout).",
}
"""The sentence each choice field's error message ends with."""


@dataclass(frozen=True)
class OracleConfig:
    """The candidate set and the memory bounds of the solve."""

    max_depths: int = 8  # depths k evaluated, evenly spaced with 1 and L included: all of them up
    # to 8 blocks; a deep LM gets 8 early exits + 7 uniform + 7 ranked + 21 random candidates, a few
    # dense passes each with prefix sharing, plus the solved budgets' depths
    random_per_depth: int = 3  # seeded random k-subsets per depth k < L, distinct from the others
    ranked_skips: bool = True  # also keep the k most important blocks (layer_skip's ranking,
    # validation split): the static baseline an upper bound must not fall below; costs its
    # importance pass (L + 1 forwards)
    exits: Literal["auto", "readout", "tuned"] = "auto"  # early-exit candidates read out through:
    # "readout" (the backbone's own head, untrained, as the paper's static exit), "tuned" (fitted
    # translators, which on an LM beat every untrained exit) or "auto" (tuned where early_exit's
    # heads=auto tunes: LM heads)
    logits_mb: int = 256  # memory cap on one candidate forward's logits: an LM scores a few windows
    # at a time
    checkpoint_every: int = 0  # DP checkpoint spacing (samples); 0 = ceil(sqrt(N)), ~2·sqrt(N) rows

    def __post_init__(self) -> None:
        check_choices(self, CHOICE_ADVICE)
        name = type(self).__name__
        check_range(f"{name}.max_depths", self.max_depths, 2, advice="Depths 1 and L always run; use e.g. 8.")
        check_range(f"{name}.random_per_depth", self.random_per_depth, 0, advice="Use 0 for no random subsets.")
        check_range(f"{name}.logits_mb", self.logits_mb, 1, advice="Use e.g. 256.")
        check_range(f"{name}.checkpoint_every", self.checkpoint_every, 0, advice="Use 0 for sqrt(N).")


def depth_grid(n_blocks: int, max_depths: int) -> list[int]:
    """Depths ``1..L``, or ``max_depths`` of them evenly spaced (1 and ``L`` included)."""
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
    """The candidate block sets, the full network first: exits, uniform, ranked, random sets.

    Args:
        n_blocks: depth L.
        cfg: the candidate options.
        seed: seeds the random subsets.
        ranking: blocks from most to least important (``layer_skip``'s); each depth then also keeps
            its top k.
        extra_depths: depths added to the grid (those of the solved budgets, so each budget has
            candidates of exactly its depth rather than only mixtures of its neighbours).
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


class CandidateScorer:
    """Per-sample scores of every candidate on a batch, sharing the blocks of common prefixes.

    Args:
        backbone: the dense model.
        configs: candidate block sets.
        score: ``(logits, targets) → {name: (B,) score}``, called once per candidate.
        readout_for: a candidate's output head (default: the backbone's readout for every
            candidate).
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
        """Score the candidates ending after ``depth`` blocks, then extend the others."""
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


CAST_DTYPES = (torch.bfloat16, torch.float16)
"""Dtypes a hardware target may cast floating inputs to; the oracle keeps their hashes too."""


def cast_hashes(batches: Sequence[Batch], hashes: np.ndarray, solved: Tensor) -> Tensor:
    """``(len(CAST_DTYPES), G)`` the hash of each solved input (``solved``, sorted) once cast.

    Integer inputs (token ids) are not cast by a target, so their rows repeat ``solved``.
    """
    inputs = torch.cat([b.inputs for b in batches])  # (N, ...)
    rows = []
    for dtype in CAST_DTYPES:
        cast = input_hashes(inputs.to(dtype)).numpy() if inputs.is_floating_point() else hashes  # (N,)
        of = dict(zip(hashes.tolist(), cast.tolist()))
        rows.append([of[int(h)] for h in solved.tolist()])
    return torch.tensor(rows, dtype=torch.long)


class OracleModel(DynamicModel):
    """The backbone plus the solved allocation: each known sample's block set at each solved budget.

    Buffers (empty until :meth:`Oracle.fit_eval`; resized when a state dict is loaded):
        configs: ``(M, L)`` bool, the candidate block sets (row 0 the full network).
        sample_hashes: ``(G,)`` int64, sorted content hashes of the distinct solved inputs.
        cast_hashes: ``(2, G)`` int64, the hashes of those inputs cast to bf16 and fp16 (a target's
            ``dtype`` option casts the inputs after the fp32 solve), aligned with ``sample_hashes``.
        solved_budgets: ``(K,)`` float64, the budgets solved.
        choices: ``(K, G)`` int64, the configuration of each input at each budget.
        selection_half, heldout_half: ``(K, G)`` float64, the selection-bias control's per-sample
            task scores.
        matching_budget: ``()`` smallest fraction of layers at which the oracle matches the full
            model (exact, from the DP curve); matching_budget_heldout: the same on the held-out
            half, over the solved budgets.
        metric_kind: ``()`` key of :data:`KINDS` (-1 unsolved).

    Args:
        backbone: the dense model.
        tuned_exits: early-exit candidates (a proper prefix of the blocks) read out through a fitted
            :class:`~dynbench.methods._exit_heads.TunedExit` (``exits[k-1]`` after k blocks) instead
            of the readout.
    """

    SOLUTION = (
        "configs", "sample_hashes", "cast_hashes", "solved_budgets", "choices", "selection_half", "heldout_half",
        "matching_budget", "matching_budget_heldout", "metric_kind",
    )  # fmt: skip
    configs: Tensor
    sample_hashes: Tensor
    cast_hashes: Tensor
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
        self.register_buffer("cast_hashes", torch.zeros(len(CAST_DTYPES), 0, dtype=torch.long))
        self.register_buffer("solved_budgets", torch.zeros(0, dtype=torch.float64))
        for name in ("choices", "selection_half", "heldout_half"):
            self.register_buffer(name, torch.zeros(0, 0, dtype=torch.long if name == "choices" else torch.float64))
        self.register_buffer("matching_budget", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("matching_budget_heldout", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("metric_kind", torch.tensor(-1, dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resize the solution buffers to the saved solution's shapes (they depend on the solve)."""
        for name in self.SOLUTION:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """The selection-bias control (selection, held-out half) and the matching budget."""
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
        """Whether ``config`` reads out through a tuned exit: tuned exits on, a proper prefix."""
        k = len(config)
        return self.tuned_exits and 0 < k < self.backbone.n_blocks and config == tuple(range(k))

    def readout_for(self, config: Config) -> Callable[[Tensor], Tensor]:
        """The output head of ``config``: its tuned exit, or the backbone's readout."""
        return self.exits[len(config) - 1] if self.is_exit(config) else self.backbone.readout

    def exit_flops(self, tokens: int) -> float:
        """FLOPs a tuned exit adds to the readout (its translator) per sample; 0 without."""
        if not self.tuned_exits:
            return 0.0
        exit_ = self.exits[0]
        return float(exit_.flops(tokens) - self.backbone.readout.flops(tokens))

    def controller_modules(self) -> list[nn.Module]:
        """The tuned exits' translators; the head they lead into counts as the readout."""
        return [exit_.translator for exit_ in self.exits]

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """The blocks and tuned exits of the sets solved for ``budget``, readout and solution.

        A block no sample's configuration at this budget contains is never read.

        Raises:
            ValueError: a budget that was not solved.
        """
        k = self.budget_index(budget)
        configs = self.configs.cpu()
        # candidate indices some sample uses at this budget
        chosen = torch.unique(self.choices[k].cpu()).tolist()
        used = [tuple(torch.nonzero(configs[m]).flatten().tolist()) for m in chosen]
        blocks = {b for config in used for b in config}
        exits = [self.exits[len(config) - 1] for config in used if self.is_exit(config)]
        looked_up = [self.configs, self.sample_hashes, self.solved_budgets, self.choices, self.metric_kind]
        # the trace carries each sample's control scores
        scores = [self.selection_half, self.heldout_half]
        return [*backbone_parts(self.backbone, blocks), *exits, TensorSet(looked_up + scores)]

    def rows_of(self, inputs: Tensor) -> Tensor:
        """``(B,)`` index of each input among the solved ones.

        Raises:
            ValueError: an input the oracle was not solved on.
        """
        hashes = input_hashes(inputs)  # (B,)
        known = self.sample_hashes.cpu()  # (G,) sorted
        order = torch.arange(len(known))  # (G,) position in sample_hashes of each entry of `known`
        if inputs.dtype in CAST_DTYPES:  # a bf16/fp16 target cast the inputs after the fp32 solve
            known, order = self.cast_hashes[CAST_DTYPES.index(inputs.dtype)].cpu().sort()  # (G,), (G,)
        at = torch.searchsorted(known, hashes).clamp(max=max(len(known) - 1, 0))  # (B,)
        found = known[at] == hashes if len(known) else torch.zeros_like(hashes, dtype=torch.bool)
        pos = order[at] if len(known) else at  # (B,)
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
        """Run each sample's chosen blocks: the batch grouped by configuration, one forward each.

        Args:
            inputs: the task input batch; every sample must be one the oracle was solved on.
            budget: a solved average-layers budget (fraction of L).

        Returns:
            Logits and a trace whose ``extra`` holds ``oracle_config`` (the candidate index) and the
            selection-bias control's per-sample scores ``selection_half_score`` and
            ``heldout_half_score``.
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
        # candidates read out through a tuned exit
        exits = torch.zeros(len(configs), dtype=torch.bool)  # (M,)
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
            # translators only
            controller_flops=exits[chosen].double() * self.exit_flops(tokens),  # (B,)
            extra={
                "oracle_config": chosen,
                "selection_half_score": self.selection_half[k].cpu()[rows],
                "heldout_half_score": self.heldout_half[k].cpu()[rows],
            },
        )
        return StepOutput(logits, trace)


@register_method("oracle")
class Oracle(Method):
    """Per-sample layer sets chosen with the evaluation labels by a knapsack: an upper bound."""

    version = "6"
    shared_parts = (_exit_heads, _layer_sets, _sample_hash)
    paper = "https://arxiv.org/abs/2410.20022"
    extra_metrics = ("matching_budget", "matching_budget_heldout", "quality_selection_half", "quality_heldout_half")
    reconstructed = False
    sees_eval_labels = True
    Config = OracleConfig
    # quick profile: one random subset per depth instead of three; 4 knapsack budgets of up to 10
    quick_options = {"random_per_depth": 1}
    quick_budgets = 4
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    budget_doc = "average executed layers as a fraction of L: 1.0, 0.9 … down to 1/L"

    def wrap(self, backbone: Backbone) -> OracleModel:
        """Wrap ``backbone``; nothing is solved until :meth:`fit_eval`."""
        exits = self.config.exits
        tuned = exits == "tuned" or (exits == "auto" and exit_kind("auto", backbone.readout) == "tuned")
        return OracleModel(backbone, tuned_exits=tuned)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """``1.0, 0.9, …, 0.1``, those at least ``1/L`` (one block per sample, the least)."""
        return tuple(b for b in (round(1.0 - 0.1 * i, 10) for i in range(10)) if b >= 1.0 / n_blocks - BUDGET_TOL)

    def fit_eval(  # type: ignore[override]
        self, model: OracleModel, task: Task, batches: Sequence[Batch], *, budgets: Sequence[Budget], seed: int
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
        ranking = rank_blocks(model.backbone, task, seed=seed)[1] if self.config.ranked_skips else None
        # each budget also gets candidates of exactly its depth
        depths = [round(b * L) for b in budgets]
        configs = candidate_configs(L, self.config, seed, ranking, extra_depths=depths)
        if model.tuned_exits:  # fitted on the training split, as early_exit's tuned exits are
            fit_translators(model.backbone, model.exits, task, samples=TUNED_SAMPLES, ridge=RIDGE, seed=seed)
        table = self._score(model, task, batches, configs, kind, seed)  # name → (N, M) float64
        hashes = torch.cat([input_hashes(b.inputs) for b in batches]).numpy()  # (N,)
        solution = allocate(table, hashes, [len(c) for c in configs], L, budgets, kind, self.config.checkpoint_every)
        solution["configs"] = torch.tensor([[i in c for i in range(L)] for c in configs], dtype=torch.bool)
        solution["cast_hashes"] = cast_hashes(batches, hashes, solution["sample_hashes"])
        for name, value in solution.items():
            setattr(model, name, value)

    def _score(
        self, model: OracleModel, task: Task, batches: Sequence[Batch], configs: list[Config], kind: int, seed: int
    ) -> dict[str, np.ndarray]:
        """Per-sample task scores ``(N, M)`` of every candidate, under ``score``, ``a`` and ``b``.

        ``score`` is the whole sample; ``a`` and ``b`` are the two disjoint halves of the
        selection-bias control (even/odd positions for text, the original and a second view for
        classification).
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
        # bytes of one sample's float32 logits
        per_sample = 4 * positions * bb.readout.head.out_features
        micro = max(1, self.config.logits_mb * 2**20 // per_sample)
        parts: dict[str, list[Tensor]] = {}
        device = batches[0].inputs.device
        # seeded second view
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
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
