"""Early exit: confidence-thresholded exit heads after every block.

Paper: Glavas et al., "Dynamic layer selection in decoder-only transformers", https://arxiv.org/abs/2410.20022
(the early-exit baseline); the exit rule is the confidence threshold of BranchyNet / DeeBERT.

Mechanism: a copy of the backbone's readout sits after every block but the last. A sample leaves after
block l as soon as its exit head's confidence (max softmax probability) is strictly above the threshold τ;
the rest go on, and whoever reaches the end uses the backbone's own readout.

What we changed / reconstructed: the paper exits at a static layer and fine-tunes the lower layers; here the
backbone stays frozen and only the exit heads are trained. Three kinds of exit head (``heads``):

- ``"copy"``: a copy of the readout per exit (initialised from the final head), all trained jointly with the summed
  cross-entropy of every exit. ``"auto"`` picks it for small heads (classifiers, a character vocabulary).
- ``"tuned"``: for a large head (a language model's unembedding: SmolLM2's is 49,152 × 576 — 29 trained copies
  would take 3.3 GB and a CPU-day) each exit owns an affine *translator* ``h ↦ h + W h + b`` into the last block's
  output space and then applies the backbone's own, frozen final norm and head — the "tuned lens" of Belrose et al.,
  "Eliciting Latent Predictions from Transformers with the Tuned Lens", https://arxiv.org/abs/2303.08112. They
  train it by gradient descent on a KL loss; we fit it in closed form, by ridge-regularised least squares from
  block l's output to the last block's output over ``tuned_samples`` training sequences (no pass through the head,
  so a CPU fits all 29 exits of SmolLM2 in minutes). ``"auto"`` picks it for large heads.
- ``"shared"``: the readout itself after every block, untrained (the "logit lens"; what the paper's static early
  exit applies), for the comparison.

``rule="depth"`` is the paper's *static* early exit instead: every sample runs the first k blocks and leaves by
exit head k (trained as above, or shared), with the budget the fraction of blocks k/L as in ``layer_skip``; no
confidence is computed. It is the early-exit side of the paper's "exit versus skip at equal layers" comparison.

The decision is per sample: for token outputs ``(B, T, V)`` a sequence's confidence is the MEAN over positions
of the per-token max probability, and the whole sequence exits together (per-token exits would need KV
propagation for the skipped layers, see the paper). Execution is real: exited samples are dropped from the batch
(index compaction), so later blocks only run on the samples still active.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods._operating import backbone_parts, exit_parts
from dynbench.methods.base import DynamicModel, Method, freeze, register_method
from dynbench.methods.layer_skip import depth_budgets, n_kept
from dynbench.models.backbone import Backbone, Readout
from dynbench.models.training import endless, fit_loop
from dynbench.tasks.base import Task, TrainConfig
from dynbench.types import Batch, Budget, StepOutput, Trace

HEAD_KINDS = ("auto", "copy", "shared", "tuned")
RULES = ("confidence", "depth")
DECISION_TOKENS = 16
"""Positions a shared (large) exit head reads to decide, with ``decision_tokens=-1``."""
SHARED_HEAD_PARAMS = 1_000_000
"""Above this many head weights ``heads="auto"`` gives tuned exits (and tinv shared ones) instead of head copies."""


@dataclass(frozen=True)
class EarlyExitConfig:
    """Training recipe of the exit heads."""

    steps: int = 300  # optimizer steps; enough for the heads of a 6-block ViT on digits to converge
    lr: float = 3e-3  # peak AdamW learning rate: heads are small linear layers started from the final head
    batch_size: int = 64  # training batch size, as the backbone recipes use
    weight_decay: float = 0.01  # mild, so the heads do not drift far from the final head they start as
    warmup_steps: int = 20  # short linear warm-up before the cosine decay
    heads: str = "auto"  # "copy": a trained copy of the readout per exit; "tuned": a fitted translator per exit
    # before the frozen readout; "shared": the readout itself, untrained; "auto": "tuned" when the readout's head has
    # more than SHARED_HEAD_PARAMS weights (LM unembeddings), else "copy"
    rule: str = "confidence"  # "confidence": leave when an exit head is confident (budget = threshold τ);
    # "depth": the paper's static exit, every sample leaves after the first k blocks (budget = k/L)
    decision_tokens: int = -1  # token outputs: positions the exit decision reads (evenly spaced, the last included);
    # 0 = every position; -1 = auto: DECISION_TOKENS with shared heads (a 49k-word head on all 128 positions after
    # each of 29 blocks would cost 6× the model), every position otherwise
    tuned_samples: int = 256  # tuned exits: training samples their least squares reads (SmolLM2: 256 × 128 tokens)
    ridge: float = 1e-3  # tuned exits: ridge strength relative to the mean feature energy; keeps the solve stable

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"EarlyExitConfig.steps must be >= 0, got {self.steps}. Use e.g. steps=300.")
        if not self.lr > 0:
            raise ValueError(f"EarlyExitConfig.lr must be > 0, got {self.lr}. Use e.g. lr=3e-3.")
        if self.batch_size < 1:
            raise ValueError(f"EarlyExitConfig.batch_size must be >= 1, got {self.batch_size}. Use e.g. batch_size=64.")
        if self.weight_decay < 0:
            raise ValueError(
                f"EarlyExitConfig.weight_decay must be >= 0, got {self.weight_decay}. Use 0 to disable it."
            )
        if self.decision_tokens < -1:
            raise ValueError(
                f"EarlyExitConfig.decision_tokens must be >= -1, got {self.decision_tokens}. "
                "Use 0 (every position), -1 (auto) or a count such as 16."
            )
        if self.rule not in RULES:
            raise ValueError(
                f"EarlyExitConfig.rule must be one of {RULES}, got {self.rule!r}. Use 'confidence' (thresholded "
                "exit heads) or 'depth' (static exit after k blocks)."
            )
        if self.heads not in HEAD_KINDS:
            raise ValueError(f"EarlyExitConfig.heads must be one of {HEAD_KINDS}, got {self.heads!r}.")
        if self.tuned_samples < 1 or self.ridge < 0:
            raise ValueError(
                f"EarlyExitConfig.tuned_samples must be >= 1 and ridge >= 0, got {self.tuned_samples} and "
                f"{self.ridge}. Use e.g. tuned_samples=256, ridge=1e-3."
            )
        if self.warmup_steps < 0:
            raise ValueError(
                f"EarlyExitConfig.warmup_steps must be >= 0, got {self.warmup_steps}. Use 0 for no warm-up."
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


class SharedExit(nn.Module):
    """An exit that applies the backbone's own readout (final norm, pooling, head); it owns no parameters.

    The readout is held outside the module tree, so the state dict does not repeat the head per exit, and the head
    runs as ``F.linear`` here, so the FLOP counter charges it to this exit (a controller module).
    """

    def __init__(self, readout: Readout) -> None:
        super().__init__()
        object.__setattr__(self, "readout", readout)  # not a submodule: shared, not copied or saved again

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` → ``(B, K)`` or ``(B, T, V)``, exactly as the readout."""
        ro = self.readout
        if ro.pool == "cls":
            x = x[:, 0]  # (B, C)
        return F.linear(ro.norm(x), ro.head.weight, ro.head.bias)

    def flops(self, tokens: int) -> float:
        """Analytic FLOPs of one application, the readout's."""
        return self.readout.flops(tokens)


class TunedExit(SharedExit):
    """The shared readout after a fitted affine translator ``h ↦ h + W h + b`` (zero at first: the shared exit)."""

    def __init__(self, readout: Readout) -> None:
        super().__init__(readout)
        d = readout.head.in_features
        self.translator = nn.Linear(d, d)
        nn.init.zeros_(self.translator.weight)
        nn.init.zeros_(self.translator.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` → ``(B, K)`` or ``(B, T, V)``: translate, then the readout."""
        if self.readout.pool == "cls":
            x = x[:, :1]  # (B, 1, C) only the read position is translated
        return super().forward(x + self.translator(x))  # (B, K) or (B, T, V)

    def flops(self, tokens: int) -> float:
        """The translator's matmul on the positions read, plus the readout."""
        d = self.translator.in_features
        positions = 1 if self.readout.pool == "cls" else tokens
        return 2.0 * positions * d * d + self.readout.flops(tokens)


def exit_kind(heads: str, readout: Readout) -> str:
    """``copy``, ``tuned`` or ``shared``: ``heads`` with ``auto`` resolved (tuned exits for large heads)."""
    if heads != "auto":
        return heads
    return "tuned" if readout.head.weight.numel() > SHARED_HEAD_PARAMS else "copy"


class EarlyExitModel(DynamicModel):
    """The backbone with an exit head after every block but the last.

    Args:
        backbone: the dense model; frozen during :meth:`EarlyExit.fit`.
        heads: ``copy`` (trained copies of the readout), ``tuned`` (:class:`TunedExit`) or ``shared``
            (:class:`SharedExit`, the backbone's readout itself).
        decision_tokens: for token outputs, the exit decision reads this many evenly spaced positions (the last
            included) and the head runs on every position only for the sequences that leave; 0 = every position.
    """

    def __init__(
        self, backbone: Backbone, *, heads: str = "copy", decision_tokens: int = 0, rule: str = "confidence"
    ) -> None:
        super().__init__(backbone)
        n_exits = backbone.n_blocks - 1
        self.rule = rule
        self.kind = heads
        self.shared = heads == "shared"
        self.decision_tokens = decision_tokens
        if heads in ("shared", "tuned"):
            exit_cls = SharedExit if heads == "shared" else TunedExit
            heads_: list[nn.Module] = [exit_cls(backbone.readout) for _ in range(n_exits)]
        else:
            heads_ = [copy.deepcopy(backbone.readout) for _ in range(n_exits)]
            for p in (p for head in heads_ for p in head.parameters()):
                p.requires_grad_(True)  # the copies stay trainable even when the backbone is frozen
        self.exit_heads = nn.ModuleList(heads_)

    def exit_flops(self, tokens: int) -> float:
        """Analytic FLOPs of one exit head on a sequence of ``tokens`` tokens (every exit costs the same)."""
        return self.exit_heads[0].flops(tokens) if len(self.exit_heads) else self.backbone.readout.flops(tokens)

    def controller_modules(self) -> list[nn.Module]:
        """The exit heads: their FLOPs are the decision overhead."""
        return list(self.exit_heads)

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """Confidence rule: the whole model. Depth rule: blocks ``0 … k-1`` and exit head ``k-1`` (readout at k = L).

        Under the confidence rule a sample may leave at any exit, and every exit it passes decides, so every block
        and head can be read at every threshold (τ = 1 included: the heads still run).
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

    @torch.no_grad()
    def exit_inputs(self, inputs: Tensor) -> list[Tensor]:
        """Outputs of blocks ``0 .. L-2`` for the whole batch (no grad), the inputs of the exit heads."""
        x = self.backbone.embed(inputs)  # (B, T, C)
        out = []
        for block in list(self.backbone.blocks)[:-1]:
            x = block(x)  # (B, T, C)
            out.append(x)
        return out

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run blocks in order, dropping the samples that exit; see the module docstring.

        Args:
            inputs: the task input batch.
            budget: confidence threshold τ in ``[0, 1]``; a sample exits where its confidence is ``> τ``.

        Returns:
            Logits and a trace whose ``extra`` holds ``exited_early`` ``(B,)`` bool and ``exit_confidence``
            ``(B,)`` (the confidence the sample exited with; NaN where it reached the backbone's readout).

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
        x = bb.embed(inputs)  # (B, T, C)
        B = x.shape[0]
        active = torch.arange(B, device=x.device)  # (A,) batch positions of the samples still running
        exit_layer = torch.full((B,), L - 1, dtype=torch.long, device=x.device)  # (B,)
        exit_conf = torch.full((B,), float("nan"), device=x.device)  # (B,) NaN: reached the readout
        picks = self.decision_positions(x.shape[1])  # (S,) or None: every position decides
        logits: Tensor | None = None
        for layer, block in enumerate(bb.blocks):
            x = block(x)  # (A, T, C)
            if layer == L - 1:  # the survivors finish with the backbone's readout
                out = bb.readout(x)  # (A, K) or (A, T, V)
                logits = out if logits is None else logits.index_copy_(0, active, out)
                break
            head = self.exit_heads[layer]
            out = head(x) if picks is None else None  # (A, K) or (A, T, V)
            conf = confidence(out if out is not None else head(x[:, picks]))  # (A,) from every or S positions
            leave = conf > budget  # (A,)
            n_leave = int(leave.sum())  # the one host sync per block
            if n_leave == 0:
                continue
            out_leave = out[leave] if out is not None else head(x[leave])  # (E, K) or (E, T, V)
            if logits is None:  # first exit: from now on outputs are scattered into place
                logits = out_leave.new_empty((B, *out_leave.shape[1:]))  # (B, K) or (B, T, V)
            gone = active[leave]  # (E,)
            logits[gone] = out_leave
            exit_conf[gone] = conf[leave]
            exit_layer[gone] = layer
            if n_leave == len(active):
                break
            active, x = active[~leave], x[~leave]  # (A',), (A', T, C)
        assert logits is not None  # narrowing only: L >= 1 was checked above
        trace = self._trace(exit_layer.cpu(), exit_conf.cpu(), bb.n_tokens(tuple(inputs.shape[1:])))
        return StepOutput(logits, trace)

    def forward_depth(self, inputs: Tensor, budget: Budget) -> StepOutput:
        """The static exit: blocks ``0 … k-1`` for every sample, then exit head ``k-1`` (the readout when k = L).

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
        """``(S,)`` evenly spaced positions (the last included) the exit decision reads; ``None`` = all of them."""
        S = self.decision_tokens
        if S <= 0 or S >= T or self.backbone.readout.pool != "none":
            return None
        return torch.arange(1, S + 1) * T // S - 1  # (S,) e.g. T=128, S=16: 7, 15, … 127

    def _trace(self, exit_layer: Tensor, exit_conf: Tensor, tokens: int) -> Trace:
        """The per-sample trace from each sample's last block run."""
        bb = self.backbone
        L = bb.n_blocks
        ran = torch.arange(L)[None, :] <= exit_layer[:, None]  # (B, L)
        reached_end = exit_layer == L - 1  # (B,)
        heads_run = torch.clamp(exit_layer + 1, max=L - 1)  # (B,) exit heads evaluated per sample
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

    version = "2"  # 2: tuned exits for large heads (auto); a cached v1 fit held no translators
    paper = "https://arxiv.org/abs/2410.20022"
    Config = EarlyExitConfig
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    controls = {"static": {"rule": "depth"}}  # the best fixed exit depth at matched FLOPs

    def fit_identity(self) -> EarlyExitConfig:
        """The config less the evaluation-only options: both rules and any decision width use the same heads."""
        return dataclasses.replace(self.config, rule="confidence", decision_tokens=-1)

    def wrap(self, backbone: Backbone) -> EarlyExitModel:
        """Add exit heads (readout copies, tuned translators or the readout shared) after blocks ``0 .. L-2``."""
        cfg = self.config
        kind = exit_kind(cfg.heads, backbone.readout)
        large = kind != "copy"  # the readout's own (large) head runs at every exit
        decision_tokens = cfg.decision_tokens if cfg.decision_tokens >= 0 else (DECISION_TOKENS if large else 0)
        return EarlyExitModel(backbone, heads=kind, decision_tokens=decision_tokens, rule=cfg.rule)

    budget_doc = "confidence threshold τ: 1.0 (nothing exits) … 0.4; with rule=depth the fraction of blocks k/L"

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """Confidence thresholds, the full budget (1.0: nothing can exit) first; ``k/L`` with ``rule="depth"``."""
        if self.config.rule == "depth":
            return depth_budgets(n_blocks, 1)
        return (1.0, 0.999, 0.99, 0.95, 0.9, 0.8, 0.6, 0.4)

    def fit(self, model: EarlyExitModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Train all exit heads jointly on the frozen backbone (summed task loss of every exit), or fit tuned exits.

        Args:
            model: the wrapped model whose ``exit_heads`` are trained in place.
            task: supplies the training split and the loss.
            seed: seeds the head training and the batch order.
        """
        cfg = self.config
        if len(model.exit_heads) == 0 or model.shared:
            return  # a one-block backbone has nothing to exit from; shared exits have nothing to train
        torch.manual_seed(seed)
        freeze(model.backbone)
        if model.kind == "tuned":
            fit_translators(model, task, samples=cfg.tuned_samples, ridge=cfg.ridge, seed=seed)
            return
        params = [p for p in model.exit_heads.parameters()]
        for p in params:
            p.requires_grad_(True)
        device = next(model.backbone.parameters()).device
        was_training = model.training
        model.backbone.eval()  # hidden states as at inference (no dropout)
        model.exit_heads.train()
        recipe = TrainConfig(
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
        )

        def epoch_batches(epoch: int) -> Iterator[Batch]:
            return task.batches("train", batch_size=cfg.batch_size, seed=1000 * seed + epoch, shuffle=True)

        def step_loss(batch: Batch) -> Tensor:
            hidden = model.exit_inputs(batch.inputs.to(device))  # L-1 × (B, T, C), no grad
            targets = batch.targets.to(device)
            losses = [task.metric.loss(head(h), targets) for head, h in zip(model.exit_heads, hidden)]
            return torch.stack(losses).sum()

        fit_loop(params, step_loss, endless(epoch_batches), recipe)
        model.train(was_training)


@torch.no_grad()
def fit_translators(model: EarlyExitModel, task: Task, *, samples: int, ridge: float, seed: int) -> None:
    """Fit every tuned exit's translator by ridge least squares: block l's output → the last block's output.

    One pass over ``samples`` training samples accumulates, per exit, the Gram matrix of ``[h_l, 1]`` and its
    product with the target ``h_L − h_l`` in float64; the solve penalises ``W`` (not the bias) by ``ridge`` times
    the mean diagonal of the Gram matrix. Classification readouts (``cls``) fit on the read position only.
    """
    bb = model.backbone
    was_training = bb.training
    bb.eval()
    device = next(bb.parameters()).device
    d = bb.readout.head.in_features
    n_exits = len(model.exit_heads)
    gram = torch.zeros(n_exits, d + 1, d + 1, dtype=torch.float64)  # (E, C+1, C+1)
    cross = torch.zeros(n_exits, d + 1, d, dtype=torch.float64)  # (E, C+1, C)
    cls = bb.readout.pool == "cls"

    def rows(h: Tensor) -> Tensor:
        return (h[:, 0] if cls else h).reshape(-1, d)  # (N, C)

    seen = 0
    for batch in task.batches("train", batch_size=16, seed=1000 * seed, shuffle=True):  # 16: bounds the L hiddens
        x = batch.inputs[: samples - seen].to(device)
        seen += x.shape[0]
        hidden = model.exit_inputs(x)  # L-1 × (B, T, C)
        target = rows(bb.blocks[-1](hidden[-1]))  # (N, C) the last block's output
        for e, h in enumerate(hidden):
            X = torch.cat([rows(h), torch.ones_like(target[:, :1])], dim=1)  # (N, C+1)
            gram[e] += (X.T @ X).double().cpu()
            cross[e] += (X.T @ (target - X[:, :d])).double().cpu()
        if seen >= samples:
            break
    for e, head in enumerate(model.exit_heads):
        g = gram[e].clone()
        g[:d, :d] += torch.eye(d, dtype=torch.float64) * ridge * g.diagonal()[:d].mean()  # ridge on W only
        coef = torch.linalg.solve(g, cross[e])  # (C+1, C)
        head.translator.weight.copy_(coef[:d].T.float())
        head.translator.bias.copy_(coef[d].float())
    bb.train(was_training)
