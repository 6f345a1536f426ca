"""Early exit: confidence-thresholded exit heads after every block.

Paper: Glavas et al., "Dynamic layer selection in decoder-only transformers",
https://arxiv.org/abs/2410.20022 (the early-exit baseline); the exit rule is the confidence
threshold of BranchyNet / DeeBERT.

Mechanism: an exit head sits after every block but the last. A sample leaves after block l as soon
as its exit head's confidence (max softmax probability) is strictly above the threshold τ; the rest
go on, and whoever reaches the end uses the backbone's own readout. Exited samples are dropped from
the batch (index compaction), so later blocks only run on the samples still active.

What we changed / reconstructed:

- The paper exits at a static layer and fine-tunes the lower layers; here the backbone stays frozen
  and only the exit heads are trained. ``heads`` picks their kind
  (:mod:`dynbench.methods._exit_heads`): trained copies of the readout for small heads, tuned-lens
  translators fitted in closed form for an LM's large unembedding (too large to copy per exit), or
  the readout itself, untrained (the logit lens), for the comparison.
- ``rule="depth"`` is the paper's *static* early exit instead: every sample runs the first k blocks
  and leaves by exit head k, the budget being the fraction of blocks k/L as in ``layer_skip``; no
  confidence is computed. It is the early-exit side of the paper's "exit versus skip at equal
  layers" comparison.
- The decision is per sample: for token outputs ``(B, T, V)`` a sequence's confidence is the MEAN
  over positions of the per-token max probability, and the whole sequence exits together (per-token
  exits would need KV propagation for the skipped layers, see the paper). With a large head the
  decision reads only ``decision_tokens`` evenly spaced positions.
- ``compact_every`` (ours, an execution option): the batch drops the rows that left only every this
  many blocks (and at the last exit), so a GPU reads the host once per compaction instead of once
  per block; a row that left waits in the batch until then, running and being charged the blocks in
  between, with the output of the exit it left by. The default, 1, keeps per-sample FLOPs exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dynbench.methods import _exit_heads, _layer_sets
from dynbench.methods._exit_heads import (
    HEAD_TRAINING,
    RIDGE,
    TUNED_SAMPLES,
    HeadKind,
    build_exit_heads,
    exit_inputs,
    exit_kind,
    fit_translators,
    train_exit_heads,
)
from dynbench.methods._layer_sets import clamped_budgets_problem, depth_budgets, n_kept
from dynbench.methods._operating import backbone_parts, exit_parts
from dynbench.methods.base import DynamicModel, Method, freeze, register_method
from dynbench.models.backbone import Backbone
from dynbench.tasks.base import Task
from dynbench.types import Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range

Rule = Literal["confidence", "depth"]
"""How a sample leaves: when an exit head is confident (budget τ), or after k blocks (k/L)."""
CHOICE_ADVICE = {
    "heads": "Use 'copy' (a trained copy of the readout per exit), 'tuned' (a fitted translator before the "
    "readout), 'shared' (the readout itself, untrained) or 'auto' (tuned for large heads, else copy).",
    "rule": "Use 'confidence' (thresholded exit heads) or 'depth' (static exit after k blocks).",
}
"""The sentence each choice field's error message ends with."""
DECISION_TOKENS = 16
"""Positions a shared (large) exit head reads to decide, with ``decision_tokens=-1``."""


@dataclass(frozen=True)
class EarlyExitConfig:
    """Training recipe of the exit heads, and the exit rule."""

    steps: int = HEAD_TRAINING.steps  # optimizer steps of the copied heads (300: see HEAD_TRAINING)
    lr: float = HEAD_TRAINING.lr  # peak AdamW learning rate (3e-3)
    batch_size: int = HEAD_TRAINING.batch_size  # training batch size (64)
    weight_decay: float = HEAD_TRAINING.weight_decay  # AdamW decoupled weight decay (0.01)
    warmup_steps: int = HEAD_TRAINING.warmup_steps  # linear warm-up before the cosine decay (20)
    heads: HeadKind = "auto"  # "copy": a trained copy of the readout per exit; "tuned": a fitted
    # translator per exit before the frozen readout; "shared": the readout itself, untrained;
    # "auto": "tuned" when the readout's head has more than SHARED_HEAD_PARAMS weights (LM
    # unembeddings), else "copy"
    rule: Rule = "confidence"  # "confidence": leave when an exit head is confident (budget =
    # threshold τ); "depth": the paper's static exit, every sample leaves after the first k blocks
    # (budget = k/L)
    decision_tokens: int = -1  # token outputs: positions the exit decision reads (evenly spaced,
    # the last included); 0 = every position; -1 = auto: DECISION_TOKENS with large (tuned or
    # shared) heads, whose vocabulary-wide head on every position after every block would cost more
    # than the model, else every one
    tuned_samples: int = TUNED_SAMPLES  # tuned exits: training samples their least squares reads
    ridge: float = RIDGE  # tuned exits: ridge strength relative to the mean feature energy; keeps
    # the solve stable
    compact_every: int = 1  # confidence rule, execution only: exits are decided after every block,
    # but the rows that left drop out of the batch only every this many blocks (and at the last
    # exit), one host read per compaction instead of per block (a GPU stalls on each); rows
    # waiting for the next compaction run, and are charged, the blocks in between. 1 = exact
    # per-sample FLOPs

    def __post_init__(self) -> None:
        check_choices(self, CHOICE_ADVICE)
        name = type(self).__name__
        check_range(f"{name}.steps", self.steps, 0, advice="Use e.g. steps=300.")
        check_range(f"{name}.lr", self.lr, 0, low_open=True, advice="Use e.g. lr=3e-3.")
        check_range(f"{name}.batch_size", self.batch_size, 1, advice="Use e.g. batch_size=64.")
        check_range(f"{name}.weight_decay", self.weight_decay, 0, advice="Use 0 to disable it.")
        check_range(f"{name}.warmup_steps", self.warmup_steps, 0, advice="Use 0 for no warm-up.")
        check_range(
            f"{name}.decision_tokens",
            self.decision_tokens,
            -1,
            advice="Use 0 (every position), -1 (auto) or a count such as 16.",
        )
        check_range(f"{name}.tuned_samples", self.tuned_samples, 1, advice="Use e.g. tuned_samples=256.")
        check_range(f"{name}.ridge", self.ridge, 0, advice="Use e.g. ridge=1e-3.")
        check_range(
            f"{name}.compact_every", self.compact_every, 1, advice="Use 1 (every block) or e.g. 4 (every 4th block)."
        )


def confidence(logits: Tensor) -> Tensor:
    """Per-sample confidence: max softmax probability, averaged over positions for token outputs.

    Args:
        logits: ``(B, K)`` class logits or ``(B, T, V)`` token logits.

    Returns:
        ``(B,)`` float32 confidences in ``(0, 1]``.
    """
    top = torch.softmax(logits.float(), dim=-1).amax(dim=-1)  # (B,) or (B, T)
    return top if top.dim() == 1 else top.mean(dim=1)  # (B,)


class EarlyExitModel(DynamicModel):
    """The backbone with an exit head after every block but the last.

    Args:
        backbone: the dense model; frozen during :meth:`EarlyExit.fit`.
        heads: ``copy`` (trained copies of the readout), ``tuned``
            (:class:`~dynbench.methods._exit_heads.TunedExit`) or ``shared``
            (:class:`~dynbench.methods._exit_heads.SharedExit`, the backbone's readout itself).
        decision_tokens: for token outputs, the exit decision reads this many evenly spaced
            positions (the last included) and the head runs on every position only for the sequences
            that leave; 0 = every position.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        heads: str = "copy",
        decision_tokens: int = 0,
        rule: str = "confidence",
        compact_every: int = 1,
    ) -> None:
        super().__init__(backbone)
        self.rule = rule
        self.compact_every = compact_every
        self.kind = heads
        self.shared = heads == "shared"
        self.decision_tokens = decision_tokens
        self.exit_heads = build_exit_heads(backbone, heads)

    def exit_flops(self, tokens: int) -> float:
        """Analytic FLOPs of one exit head on ``tokens`` tokens (every exit costs the same)."""
        return self.exit_heads[0].flops(tokens) if len(self.exit_heads) else self.backbone.readout.flops(tokens)

    def controller_modules(self) -> list[nn.Module]:
        """The exit heads: their FLOPs are the decision overhead."""
        return list(self.exit_heads)

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """Confidence rule: the whole model. Depth rule: blocks ``0 … k-1`` and exit head ``k-1``.

        At k = L the depth rule reads the backbone's readout instead of an exit head.

        Under the confidence rule a sample may leave at any exit, and every exit it passes decides,
        so every block and head can be read at every threshold (τ = 1 included: the heads still
        run).
        """
        if self.rule != "depth":
            return [self]
        bb = self.backbone
        k = n_kept(budget, bb.n_blocks, 1)
        if k == bb.n_blocks:
            return backbone_parts(bb, range(k))
        return [*backbone_parts(bb, range(k), readout=False), *exit_parts(self.exit_heads[k - 1])]

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """``exit_rate``: the share of samples that left before the last block."""
        return {"exit_rate": (float(trace.extra["exited_early"].double().mean()), "fraction", False)}

    def exit_inputs(self, inputs: Tensor) -> list[Tensor]:
        """Outputs of blocks ``0 .. L-2`` for the whole batch (no grad): the exit heads' inputs."""
        return exit_inputs(self.backbone, inputs)

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run blocks in order, dropping the samples that exit; see the module docstring.

        Args:
            inputs: the task input batch.
            budget: confidence threshold τ in ``[0, 1]``; a sample exits where its confidence is
                ``> τ``.

        Returns:
            Logits and a trace whose ``extra`` holds ``exited_early`` ``(B,)`` bool and
            ``exit_confidence`` ``(B,)`` (the confidence the sample exited with; NaN where it
            reached the backbone's readout).

        Raises:
            ValueError: ``budget`` outside ``[0, 1]``.
        """
        if self.rule == "depth":
            return self.forward_depth(inputs, budget)
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"early_exit budget (confidence threshold) must lie in [0, 1], got {budget}.")
        bb = self.backbone
        L = bb.n_blocks
        if L == 0:
            raise ValueError("early_exit needs a backbone with at least one block, got 0 blocks.")
        every = self.compact_every
        x = bb.embed(inputs)  # (B, T, C)
        B = x.shape[0]
        # per sample, on the host (filled from the host reads below, so the trace copies nothing):
        exit_layer = torch.full((B,), L - 1, dtype=torch.long)  # (B,) the exit it leaves by
        last_run = torch.full((B,), L - 1, dtype=torch.long)  # (B,) the last block it ran (>= exit_layer)
        exit_conf = torch.full((B,), float("nan"), device=x.device)  # (B,) NaN: reached the readout
        active = list(range(B))  # batch positions of the rows still in the batch
        picks = self.decision_positions(x.shape[1])  # (S,) or None: every position decides
        logits: Tensor | None = None
        left_at = held = held_conf = None  # between compactions (every > 1): each row's exit state
        for layer, block in enumerate(bb.blocks):
            x = block(x)  # (A, T, C)
            if layer == L - 1:  # the survivors finish with the backbone's readout
                out = bb.readout(x)  # (A, K) or (A, T, V)
                logits = out if logits is None else logits.index_copy_(0, self._rows(active, x), out)
                break
            head = self.exit_heads[layer]
            out = head(x) if picks is None else None  # (A, K) or (A, T, V)
            # from every or S positions
            conf = confidence(out if out is not None else head(x[:, picks]))  # (A,)
            here = out if out is not None else x  # what a leaving row's output is made from
            if every == 1:  # compact after every block: whoever leaves, leaves here
                left_at, held, held_conf = torch.where(conf > budget, layer, -1), here, conf  # (A,)
            else:  # decide on the device; rows that left wait (and run on) until the next compaction
                if left_at is None:
                    left_at = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)  # (A,)
                    held, held_conf = torch.zeros_like(here), torch.zeros_like(conf)
                leave = (conf > budget) & (left_at < 0)  # (A,) leaving at this block
                left_at = torch.where(leave, layer, left_at)  # (A,)
                held = torch.where(leave.view(-1, *[1] * (here.dim() - 1)), here, held)  # (A, …)
                held_conf = torch.where(leave, conf, held_conf)  # (A,)
                if (layer + 1) % every and layer != L - 2:
                    continue  # no compaction here; the last exit point always compacts
            at = left_at.tolist()  # the one host sync per compaction: which rows left, and where
            stay = [i for i, a in enumerate(at) if a < 0]
            if len(stay) == len(at):
                continue
            for source in sorted({a for a in at if a >= 0}):  # one group per exit the rows left by
                rows = [i for i, a in enumerate(at) if a == source]
                idx = self._rows(rows, x)  # (E,)
                part = held.index_select(0, idx)  # (E, …) the head's output, or its input
                out_leave = part if picks is None else self.exit_heads[source](part)  # (E, K) or (E, T, V)
                if logits is None:  # first exit: from now on outputs are scattered into place
                    logits = out_leave.new_empty((B, *out_leave.shape[1:]))  # (B, K) or (B, T, V)
                gone = [active[i] for i in rows]
                gone_idx = self._rows(gone, x)  # (E,)
                logits.index_copy_(0, gone_idx, out_leave)
                exit_conf.index_copy_(0, gone_idx, held_conf.index_select(0, idx).to(exit_conf.dtype))
                exit_layer[gone], last_run[gone] = source, layer
            if not stay:
                break
            keep = self._rows(stay, x)  # (A',)
            active = [active[i] for i in stay]
            x = x.index_select(0, keep)  # (A', T, C)
            if every > 1:
                left_at, held, held_conf = (t.index_select(0, keep) for t in (left_at, held, held_conf))
        assert logits is not None  # narrowing only: L >= 1 was checked above
        trace = self._trace(exit_layer, exit_conf.cpu(), bb.n_tokens(tuple(inputs.shape[1:])), last_run)
        return StepOutput(logits, trace)

    @staticmethod
    def _rows(rows: list[int], like: Tensor) -> Tensor:
        """Host row indices as an ``(n,)`` index tensor on ``like``'s device (a copy, no sync)."""
        return torch.tensor(rows, dtype=torch.long, device=like.device)

    def forward_depth(self, inputs: Tensor, budget: Budget) -> StepOutput:
        """The static exit: blocks ``0 … k-1`` for every sample, then exit head ``k-1``.

        At k = L the backbone's readout finishes instead of an exit head.


        Raises:
            ValueError: ``budget`` (the fraction of blocks) outside ``[0, 1]``.
        """
        bb = self.backbone
        L = bb.n_blocks
        k = n_kept(budget, L, 1)
        x = bb.embed(inputs)  # (B, T, C)
        for block in list(bb.blocks)[:k]:
            x = block(x)  # (B, T, C)
        logits = bb.readout(x) if k == L else self.exit_heads[k - 1](x)  # (B, K) or (B, T, V)
        B = x.shape[0]
        tokens = bb.n_tokens(tuple(inputs.shape[1:]))
        exit_layer = torch.full((B,), k - 1, dtype=torch.long)  # (B,)
        ran = (torch.arange(L)[None, :] < k).long().expand(B, L)  # (B, L)
        head_flops = 0.0 if k == L else self.exit_flops(tokens)  # one exit head, no decisions
        trace = Trace(
            block_tokens=ran * tokens,
            block_kv=ran * tokens,
            block_heads=ran * bb.n_heads,
            readout=torch.full((B,), int(k == L), dtype=torch.long),
            controller_flops=torch.full((B,), head_flops, dtype=torch.float64),
            exit_layer=exit_layer,
            extra={
                "exited_early": torch.full((B,), k < L, dtype=torch.bool),
                "exit_confidence": torch.full((B,), float("nan")),
            },
        )
        return StepOutput(logits, trace)

    def decision_positions(self, T: int) -> Tensor | None:
        """``(S,)`` evenly spaced positions (the last included) the decision reads, or ``None``."""
        S = self.decision_tokens
        if S <= 0 or S >= T or self.backbone.readout.pool != "none":
            return None
        return torch.arange(1, S + 1) * T // S - 1  # (S,) e.g. T=128, S=16: 7, 15, … 127

    def _trace(self, exit_layer: Tensor, exit_conf: Tensor, tokens: int, last_run: Tensor) -> Trace:
        """The per-sample trace from each sample's exit and the last block it ran.

        ``last_run`` is ``exit_layer`` unless the sample waited in the batch for a compaction
        (``compact_every > 1``): it ran, and evaluated the exit head of, every block up to it.
        """
        bb = self.backbone
        L = bb.n_blocks
        ran = torch.arange(L)[None, :] <= last_run[:, None]  # (B, L)
        reached_end = exit_layer == L - 1  # (B,)
        heads_run = torch.clamp(last_run + 1, max=L - 1)  # (B,) exit heads evaluated per sample
        picks = self.decision_positions(tokens)
        if picks is None:  # every exit head evaluated has the readout's shape and cost
            head_flops = heads_run.double() * self.exit_flops(tokens)  # (B,)
        else:  # decisions on S positions, then the whole sequence through the head it leaves by
            head_flops = heads_run.double() * self.exit_flops(len(picks)) + (~reached_end) * self.exit_flops(tokens)
        return Trace(
            block_tokens=ran.long() * tokens,
            block_kv=ran.long() * tokens,
            block_heads=ran.long() * bb.n_heads,
            readout=reached_end.long(),
            controller_flops=head_flops,
            exit_layer=exit_layer,
            extra={"exited_early": ~reached_end, "exit_confidence": exit_conf},
        )


@register_method("early_exit")
class EarlyExit(Method):
    """Confidence-threshold early exit with trained exit heads on a frozen backbone."""

    version = "2"
    shared_parts = (_exit_heads, _layer_sets)
    paper = "https://arxiv.org/abs/2410.20022"
    extra_metrics = ("exit_rate",)
    Config = EarlyExitConfig
    # quick profile: heads reach most of their accuracy in the first third of the recipe; 4
    # thresholds (1.0, 0.99, 0.8, 0.4) still span the curve from dense to the earliest exits
    quick_options = {"steps": 100}
    quick_budgets = 4
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    controls = {"static": {"rule": "depth"}}  # the best fixed exit depth at matched FLOPs

    def fit_identity(self) -> EarlyExitConfig:
        """The config less evaluation-only options (rule, decision width, compaction): one fit."""
        return dataclasses.replace(self.config, rule="confidence", decision_tokens=-1, compact_every=1)

    def wrap(self, backbone: Backbone) -> EarlyExitModel:
        """Add exit heads (readout copies, tuned or shared exits) after blocks ``0 .. L-2``."""
        cfg = self.config
        kind = exit_kind(cfg.heads, backbone.readout)
        large = kind != "copy"  # the readout's own (large) head runs at every exit
        decision_tokens = cfg.decision_tokens if cfg.decision_tokens >= 0 else (DECISION_TOKENS if large else 0)
        return EarlyExitModel(
            backbone, heads=kind, decision_tokens=decision_tokens, rule=cfg.rule, compact_every=cfg.compact_every
        )

    budget_doc = "confidence threshold τ: 1.0 (nothing exits) … 0.4; with rule=depth the fraction of blocks k/L"

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """Confidence thresholds, the full budget (1.0) first; ``k/L`` for ``rule="depth"``."""
        if self.config.rule == "depth":
            return depth_budgets(n_blocks, 1)
        return (1.0, 0.999, 0.99, 0.95, 0.9, 0.8, 0.6, 0.4)

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """As :meth:`Method.resolve_budgets`; with ``rule="depth"``, no budget below one block.

        Raises:
            ValueError: a budget out of range, or a depth budget that would run more blocks than it
                says.
        """
        budgets = super().resolve_budgets(override, n_blocks)
        if self.config.rule == "depth" and (problem := clamped_budgets_problem(budgets, n_blocks, 1, self.name)):
            raise ValueError(problem)
        return budgets

    def fit(self, model: EarlyExitModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Train all exit heads jointly on the frozen backbone, or fit tuned exits.

        Copied heads train on the summed task loss of every exit.

        Args:
            model: the wrapped model whose ``exit_heads`` are trained in place.
            task: supplies the training split and the loss.
            seed: seeds the head training and the batch order.
        """
        cfg = self.config
        if len(model.exit_heads) == 0 or model.shared:
            # a one-block backbone has nothing to exit from; shared exits have nothing to train
            return
        torch.manual_seed(seed)
        freeze(model.backbone)
        if model.kind == "tuned":
            fit_translators(
                model.backbone, model.exit_heads, task, samples=cfg.tuned_samples, ridge=cfg.ridge, seed=seed
            )
            return
        was_training = model.training
        recipe = dataclasses.replace(
            HEAD_TRAINING,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
        )
        train_exit_heads(model.backbone, model.exit_heads, task, recipe, seed=seed)
        model.train(was_training)
