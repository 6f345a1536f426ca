"""Token skip: per-token layer skipping decided by a controller per block, from the hidden state.

Paper: Glavas et al., "Dynamic layer selection in decoder-only transformers",
https://arxiv.org/abs/2410.20022 (the per-token controllers of ``DynamicPropagationConfig`` and
``mlp_gumbel_softmax_controller.py`` in the authors' code). The paper's second claim is negative:
controllers that read hidden states do no better than a fixed-input control at matched compute.

Mechanism: before each controlled block a ``Linear(d → 2)`` reads every token's detached hidden
state (after the block's own input norm) and decides keep or skip (hard Gumbel-softmax with a
straight-through gradient in training, as the authors' code); a skipped token's state passes the
block unchanged. The controllers train on the frozen backbone with the task loss plus a compute
cost. ``controller="fixed"`` is the paper's control (``with_fixed_input``): the controller reads a
constant vector of ones, so it learns one keep-or-skip preference per block that no input changes.

What we changed / reconstructed:
- a token that skips a block writes no keys or values there: the kept tokens attend among
  themselves (causal on their original positions), so the saving is real and the trace exact. The
  authors' code runs every block for every token and computes a skipped token's keys and values
  from its carried-over state (a simulation that saves nothing). Training uses the same rule as
  evaluation (skipped tokens are masked out as keys), so the two agree.
- the cost term steers the kept fraction towards ``train_budget``, ``α · (kept − train_budget)²``,
  instead of the paper's ``α · kept`` (whose α values are not published); one controller set is
  trained, and each evaluation budget is reached by one bias added to every block's
  keep-minus-skip logit, calibrated on the validation split; evaluation decides by the sign
  (deterministic), where the authors' forward samples Gumbel noise at evaluation too. With the fixed
  input the decisions are then the same for every token: a learned static set of blocks.
- the controller reads the hidden state through the block's input norm (the authors' reads it raw):
  a pretrained model's residual stream grows with depth, and a normalised input lets one learning
  rate suit every block;
- the first and last blocks always run when the backbone has at least 3 (the paper controls layers
  1..L-2); a 1- or 2-block backbone controls every block. Encoders that read token 0 always keep it.
- the budget is the fraction of (token, block) pairs executed, always-run blocks included; a
  calibrated budget spends at most that much on the validation inputs.
- batching (ours, an execution option): samples whose kept counts differ run one at a time by
  default, so per-sample FLOPs are exact at any batch size; ``batching="padded"`` runs the batch at
  once, padded to its largest count with the padding masked out of attention, and charges the
  padding as executed, as MoD's predictor rule does. Either way a block reads the host once (every
  row's kept count). The fit and its calibration always run per sample: one fit serves both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods._host_copy import HostCopy
from dynbench.methods._token_gather import (
    PaddedSelection,
    gather_tokens,
    padded_positions,
    scatter_add_tokens,
    subset_attention_mask,
)
from dynbench.methods.base import DynamicModel, Method, budgets_not_among, freeze, register_method
from dynbench.models.backbone import Backbone
from dynbench.models.block import Block
from dynbench.models.training import TrainConfig, endless, fit_loop
from dynbench.tasks.base import Task
from dynbench.types import Batch, Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range

Controller = Literal["hidden", "fixed"]
"""What a controller reads: each token's hidden state, or a constant (the paper's control)."""

Batching = Literal["per_sample", "padded"]
"""How a batch whose samples keep different token counts runs: one sample at a time, or padded."""


@dataclass(frozen=True)
class TokenSkipConfig:
    """The controllers, their training on the frozen backbone and the budget calibration."""

    controller: Controller = "hidden"  # "hidden": Linear(d → 2) on each token's detached state (the
    # paper's HS controller); "fixed": the same controller fed ones (its input-independent control)
    targets: tuple[float, ...] = (0.75, 0.5, 0.25)  # evaluation budgets below 1.0: fraction of
    # (token, block) pairs executed, each reached by a bias calibrated on validation
    train_budget: float = 0.5  # kept fraction of the controlled blocks the training cost steers
    # towards: the middle of the default targets, so the logits order tokens where it matters
    cost_weight: float = 10.0  # α of α·(kept − train_budget)²: 0.2 off target costs 0.4, an LM's
    # loss is ~1–4 nats, so the cost binds without drowning the task loss
    steps: int = 300  # optimizer steps, fewer when max_train_flops caps them
    batch_size: int = 8  # training batch size: more, smaller steps under the FLOPs cap
    lr: float = 3e-3  # peak AdamW rate: only the small controllers train
    max_train_flops: float = 2e13  # cap on training FLOPs (≈ 3 × forward per sample): a 135 M LM
    # trains its controllers on ~190 windows of 128 tokens (minutes on 2 cores), not 2,400
    calibration_samples: int = 32  # validation samples each budget's bias is calibrated on, fewer
    # when calibration_flops caps them
    calibration_steps: int = 12  # bisection steps per budget: bias resolved to 2^-12 of its range
    calibration_flops: float = 4e12  # cap on the calibration passes' FLOPs (dense-pass upper bound):
    # a 135 M LM calibrates on 4 windows (512 tokens × 28 blocks of decisions)
    keep_ends: bool = True  # first and last blocks always run (the paper's controllers cover 1..L-2)
    batching: Batching = "per_sample"  # ragged batches: "per_sample" (exact per-sample FLOPs, one
    # nonzero per sample per block) or "padded" (one batched pass per block, padding charged)

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "controller": "Use hidden (reads hidden states) or fixed (the paper's control).",
                "batching": "Use per_sample (exact per-sample FLOPs) or padded (one batched pass per block).",
            },
        )
        name = type(self).__name__
        for t in self.targets:
            check_range(f"{name}.targets", t, 0, 1, low_open=True, high_open=True, advice="Use e.g. 0.75;0.5;0.25.")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"{name}.targets must be distinct, got {self.targets}. Use e.g. 0.75;0.5;0.25.")
        check_range(f"{name}.train_budget", self.train_budget, 0, 1, low_open=True, advice="Use 0.5.")
        check_range(f"{name}.cost_weight", self.cost_weight, 0, advice="Use 10.")
        check_range(f"{name}.steps", self.steps, 1, advice="Use e.g. 300.")
        check_range(f"{name}.batch_size", self.batch_size, 1, advice="Use e.g. 8.")
        check_range(f"{name}.lr", self.lr, 0, low_open=True, advice="Use 3e-3.")
        check_range(f"{name}.max_train_flops", self.max_train_flops, 0, low_open=True, advice="Use e.g. 2e13.")
        check_range(f"{name}.calibration_samples", self.calibration_samples, 1, advice="Use e.g. 32.")
        check_range(f"{name}.calibration_steps", self.calibration_steps, 1, advice="Use e.g. 12.")
        check_range(f"{name}.calibration_flops", self.calibration_flops, 0, low_open=True, advice="Use e.g. 4e12.")


def controlled_blocks(n_blocks: int, keep_ends: bool) -> list[int]:
    """The blocks a controller decides: all but the first and last (``keep_ends``, L ≥ 3)."""
    if keep_ends and n_blocks >= 3:
        return list(range(1, n_blocks - 1))
    return list(range(n_blocks))


def lowest_budget(n_blocks: int, keep_ends: bool) -> float:
    """The smallest reachable budget: only the always-run blocks execute."""
    return (n_blocks - len(controlled_blocks(n_blocks, keep_ends))) / n_blocks


def budget_key(budget: Budget) -> str:
    """A budget as it is matched against the calibrated ones (6 significant digits)."""
    return f"{float(budget):.6g}"


class TokenSkipModel(DynamicModel):
    """The frozen backbone with one keep/skip controller per controlled block.

    Args:
        backbone: the dense model (never modified).
        cfg: the method's options.

    Buffers:
        targets: ``(K,)`` float64, the calibrated budgets (descending).
        bias: ``(K,)`` float64, each budget's logit bias (NaN until calibrated).
        kept_fraction: ``(K,)`` float64, the fraction each bias executed on the calibration inputs.
    """

    targets: Tensor
    bias: Tensor
    kept_fraction: Tensor

    def __init__(self, backbone: Backbone, cfg: TokenSkipConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        d = backbone.block_config.d_model
        self.controlled = controlled_blocks(backbone.n_blocks, cfg.keep_ends)
        self.controllers = nn.ModuleDict({str(i): nn.Linear(d, 2) for i in self.controlled})
        self.keep_first = backbone.readout.pool == "cls"  # encoders read token 0: always keep it
        self.causal = backbone.block_config.causal
        self.batching = cfg.batching  # the fit switches to "per_sample" while it calibrates
        targets = sorted(cfg.targets, reverse=True)
        self.register_buffer("targets", torch.tensor(targets, dtype=torch.float64))
        self.register_buffer("bias", torch.full((len(targets),), float("nan"), dtype=torch.float64))
        self.register_buffer("kept_fraction", torch.full((len(targets),), float("nan"), dtype=torch.float64))
        # the targets and biases read once per change, not per call (a GPU would sync on each read)
        self._host_targets, self._host_bias = HostCopy(), HostCopy()

    # ----------------------------------------------------------------------------------------------
    # Decisions

    def keep_logits(self, index: int, x: Tensor) -> Tensor:
        """``(B, T)`` keep-minus-skip logit of each token at block ``index``.

        The fixed-input controller reads a vector of ones: its logit is ``W·1 + b``, a constant,
        computed as sums (no matmul: a deployment would store the decision, not compute it).
        """
        ctrl = self.controllers[str(index)]
        if self.cfg.controller == "fixed":
            logits = ctrl.weight.sum(dim=1) + ctrl.bias  # (2,)
            return (logits[0] - logits[1]).expand(x.shape[0], x.shape[1])  # (B, T)
        block = self.backbone.blocks[index]
        logits = ctrl(block.attn_norm(x.detach()))  # (B, T, 2) normalised as the block reads it; detached:
        # the controller never trains the backbone
        return logits[..., 0] - logits[..., 1]  # (B, T)

    def calibrated_bias(self, budget: Budget) -> float:
        """The logit bias calibrated for ``budget``.

        Raises:
            ValueError: ``budget`` is not a calibrated target, or the model is not fitted.
        """
        targets = self._host_targets(self.targets)
        keys = [budget_key(t) for t in targets]
        if budget_key(budget) not in keys:
            raise ValueError(
                f"token_skip has no bias calibrated for budget {budget}; calibrated: {targets} "
                f"(and 1.0 = dense). Sweep those budgets, or set token_skip[targets=...] to calibrate others."
            )
        bias = self._host_bias(self.bias)[keys.index(budget_key(budget))]
        if bias != bias:  # NaN
            raise ValueError(
                f"token_skip's bias for budget {budget} is not calibrated yet. Call TokenSkip.fit(model, task, "
                "seed=...) or load a fitted state_dict."
            )
        return bias

    # ----------------------------------------------------------------------------------------------
    # Running

    def run(self, inputs: Tensor, bias: float) -> tuple[Tensor, Tensor, Tensor]:
        """Forward with threshold decisions at logit bias ``bias``.

        Returns:
            ``(logits, tokens, kept)``: the readout, ``(B, L)`` tokens each block ran per sample and
            ``(B,)`` the (token, block) pairs executed.
        """
        bb = self.backbone
        x = bb.embed(inputs)  # (B, T, C)
        B, T, _ = x.shape
        tokens = torch.full((B, bb.n_blocks), T, dtype=torch.long)  # (B, L)
        kept = torch.full((B,), float(T * (bb.n_blocks - len(self.controlled))), dtype=torch.float64)  # (B,)
        for i, block in enumerate(bb.blocks):
            if str(i) not in self.controllers:
                x = block(x)  # (B, T, C)
                continue
            keep = self.keep_logits(i, x) + bias > 0  # (B, T)
            if self.keep_first:
                keep[:, 0] = True
            x, ran, n = self.subset_block(block, x, keep)
            tokens[:, i] = ran
            kept += n.double()
        return bb.readout(x), tokens, kept

    def subset_block(self, block: Block, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run ``block`` on the kept tokens only and add their update.

        Samples whose counts differ run one at a time (a loop over the batch) by default, so no
        sample runs or is charged padding: per-sample FLOPs stay exact at any batch size, at the
        price of batched speed (the paper studies batch 1, where this is the plain path). With
        ``batching="padded"`` they run together, padded to the largest count (:meth:`run_padded`).

        Returns:
            The new states, ``(B,)`` the tokens each sample ran (padding included) and ``(B,)`` the
            kept tokens each sample has.
        """
        sel = padded_positions(keep)  # every row's kept positions and count, in one host read
        if not sel.ragged:  # every row keeps the same count: one batched pass, no padding, either batching
            return self.run_tokens(block, x, sel.idx), sel.counts, sel.counts
        if self.batching == "padded":
            return self.run_padded(block, x, sel)
        # a row's real positions are its first `count` slots, so the loop reads nothing more
        rows = [self.run_tokens(block, x[b : b + 1], sel.idx[b : b + 1, :c]) for b, c in enumerate(sel.counts.tolist())]
        return torch.cat(rows), sel.counts, sel.counts  # (B, T, C)

    def run_padded(self, block: Block, x: Tensor, sel: PaddedSelection) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`subset_block` of a ragged selection in one pass, padded to the largest count.

        Padding slots hold unkept positions; attention masks them out as keys and their update is
        exactly 0, so each sample's output is its per-sample one (up to float rounding). Every row
        runs ``n`` tokens, so ``n`` is what each sample is charged.
        """
        idx, valid = sel.idx, sel.valid  # (B, n), (B, n)
        ran = torch.full((x.shape[0],), idx.shape[1], dtype=torch.long)  # (B,) every row runs n slots
        x_sel = gather_tokens(x, idx)  # (B, n, C) in original order
        mask = subset_attention_mask(idx, valid, causal=self.causal)  # (B, 1, n, n)
        d = block.delta(x_sel, attn_mask=mask, positions=idx if block.cfg.rope else None)  # (B, n, C)
        update = torch.where(valid[..., None], d, torch.zeros_like(d))  # padding adds exactly 0
        return scatter_add_tokens(x, idx, update), ran, sel.counts

    def run_tokens(self, block: Block, x: Tensor, idx: Tensor) -> Tensor:
        """``x`` with ``block``'s update added at the ``(B, n)`` positions ``idx`` (ascending)."""
        if idx.shape[1] == 0:
            return x
        x_sel = gather_tokens(x, idx)  # (B, n, C) in original order: the causal path is the plain one
        update = block.delta(x_sel, positions=idx if block.cfg.rope else None)  # (B, n, C)
        return scatter_add_tokens(x, idx, update)  # (B, T, C)

    def masked_forward(self, inputs: Tensor, keep_of: Callable[[int, Tensor], Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The training forward: every token runs every block; skipped ones are masked out.

        ``keep_of(index, logits)`` turns a block's ``(B, T)`` keep logits into a ``(B, T)`` 0/1 keep
        tensor (hard, possibly with a straight-through gradient). Kept tokens attend only to kept
        tokens (and themselves), the evaluation rule, and only their update is added.

        Returns:
            The logits and each controlled block's keep tensor.
        """
        bb = self.backbone
        x = bb.embed(inputs)  # (B, T, C)
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device)
        causal = torch.tril(causal) if self.causal else causal  # (T, T)
        eye = torch.eye(T, dtype=torch.bool, device=x.device)  # (T, T)
        keeps: list[Tensor] = []
        for i, block in enumerate(bb.blocks):
            if str(i) not in self.controllers:
                x = block(x)  # (B, T, C)
                continue
            keep = keep_of(i, self.keep_logits(i, x))  # (B, T) 0/1
            if self.keep_first:
                keep = torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], dim=1)
            keys = keep.detach() > 0.5  # (B, T)
            mask = (causal & keys[:, None, :]) | eye  # (B, T, T) kept keys, causal, and itself
            d = block.delta(x, attn_mask=mask[:, None])  # (B, T, C)
            x = x + keep[..., None] * d  # (B, T, C) skipped tokens pass unchanged
            keeps.append(keep)
        return bb.readout(x), keeps

    # ----------------------------------------------------------------------------------------------
    # The DynamicModel contract

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run at ``budget``: the dense backbone at 1.0, else threshold decisions at its bias.

        Args:
            inputs: the task input batch.
            budget: 1.0 or a calibrated target.

        Returns:
            Logits and a trace: a controlled block ran its kept tokens over the kept keys. ``extra``
            holds ``executed_fraction``, the real (token, block) pairs executed ÷ (T · L).
        """
        bb = self.backbone
        B = inputs.shape[0]
        T = bb.n_tokens(tuple(inputs.shape[1:]))
        if budget == 1.0:
            trace = bb.dense_trace(inputs)
            trace.extra = {"executed_fraction": torch.ones(B, dtype=torch.float64)}
            return StepOutput(bb(inputs), trace)
        logits, tokens, kept = self.run(inputs, self.calibrated_bias(budget))
        trace = Trace(
            block_tokens=tokens,
            block_kv=tokens.clone(),  # each kept token attends over the kept tokens only
            block_heads=torch.full((B, bb.n_blocks), bb.n_heads, dtype=torch.long),
            readout=torch.ones(B, dtype=torch.long),
            controller_flops=torch.full((B,), self.controller_flops(T), dtype=torch.float64),
            extra={"executed_fraction": kept / (T * bb.n_blocks)},
        )
        return StepOutput(logits, trace)

    def controller_flops(self, tokens: int) -> float:
        """``Linear(d → 2)`` on every token of every controlled block; 0 for the fixed input."""
        if self.cfg.controller == "fixed":
            return 0.0
        return 2.0 * tokens * self.backbone.block_config.d_model * 2 * len(self.controlled)

    def controller_modules(self) -> list[nn.Module]:
        """The controllers: their FLOPs are the decision overhead."""
        return list(self.controllers.values())

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """``executed_fraction``: (token, block) pairs run ÷ all, what a per-token method spends."""
        return {"executed_fraction": (float(trace.extra["executed_fraction"].mean()), "fraction", False)}


def gumbel_keep(logits: Tensor) -> Tensor:
    """``(B, T)`` hard 0/1 keep, straight-through: Gumbel-softmax over [keep, skip], τ = 1."""
    pair = torch.stack([logits, torch.zeros_like(logits)], dim=-1)  # (B, T, 2) keep-minus-skip as two logits
    return F.gumbel_softmax(pair, tau=1.0, hard=True)[..., 0]  # (B, T)


def calibrate(model: TokenSkipModel, inputs: Tensor, target: float, steps: int) -> tuple[float, float]:
    """The bias whose threshold decisions execute the most pairs, at most ``target``, on ``inputs``.

    Bisection on one bias shared by every block, over a range that keeps every token at the top and
    none at the bottom (the logits of a dense pass bound it). The kept fraction rises with the bias
    except where an earlier decision changes a later block's input; the best feasible bias seen is
    kept, so the answer never spends more than ``target``.

    Returns:
        ``(bias, executed fraction)`` on ``inputs``.
    """
    bb = model.backbone
    T = bb.n_tokens(tuple(inputs.shape[1:]))

    def fraction(bias: float) -> float:
        _, _, kept = model.run(inputs, bias)
        return float(kept.sum()) / (kept.numel() * T * bb.n_blocks)

    with torch.no_grad():
        x = bb.embed(inputs)  # (B, T, C)
        bound = 0.0
        for i, block in enumerate(bb.blocks):
            if str(i) in model.controllers:
                bound = max(bound, float(model.keep_logits(i, x).abs().max()))
            x = block(x)  # (B, T, C)
        lo, hi = -(2 * bound + 1.0), 2 * bound + 1.0
        best = (lo, fraction(lo))
        for _ in range(steps):
            mid = (lo + hi) / 2
            f = fraction(mid)
            if f <= target:
                lo = mid
                if f >= best[1]:
                    best = (mid, f)
            else:
                hi = mid
    return best


@register_method("token_skip")
class TokenSkip(Method):
    """Per-token layer skipping by per-block controllers that read hidden states (or a constant)."""

    version = "1"
    paper = "https://arxiv.org/abs/2410.20022"
    reconstructed = False
    Config = TokenSkipConfig
    # a study (the paper's negative result), not a default-suite method: its controller training
    # would add minutes to the main job
    in_default_suite = False
    # the fixed-input controller decides the same blocks for every token: the best learned static
    # set at matched compute, the control the paper compares with
    controls = {"static": {"controller": "fixed"}}
    extra_metrics = ("executed_fraction",)
    # quick profile: a short fit; the controllers of a 2-block toy model learn in a few dozen steps
    quick_options = {"steps": 100}
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    budget_doc = "fraction of (token, block) pairs executed: 1.0 = dense, then the calibrated targets"

    def wrap(self, backbone: Backbone) -> TokenSkipModel:
        """Wrap ``backbone`` (controllers start as ``nn.Linear``'s, from a fixed seed)."""
        torch.manual_seed(0)  # wrap is deterministic; fit re-initialises from its seed
        return TokenSkipModel(backbone, self.config)

    def fit_identity(self) -> TokenSkipConfig:
        """The config less ``batching``: how a ragged batch executes does not change the fit."""
        return dataclasses.replace(self.config, batching="per_sample")

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """1.0, then the targets, descending."""
        return (1.0, *sorted(self.config.targets, reverse=True))

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """As :meth:`Method.resolve_budgets`, refusing budgets that were not calibrated.

        Raises:
            ValueError: a budget out of range or not among ``targets``.
        """
        budgets = super().resolve_budgets(override, n_blocks)
        missing = budgets_not_among(budgets, self.budgets(n_blocks), budget_key)
        if missing:
            raise ValueError(
                f"token_skip calibrates only its targets; budgets {missing} are not among "
                f"{list(self.budgets(n_blocks))}. "
                "Choose among those, or set token_skip[targets=...] to calibrate others."
            )
        return budgets

    def shape_problems(self, task: Task) -> list[str]:
        """Targets below what the always-run blocks already spend on ``task``'s backbone."""
        L = task.n_blocks()
        floor = lowest_budget(L, self.config.keep_ends)
        low = [t for t in self.config.targets if t < floor]
        if not low:
            return []
        return [
            f"token_skip targets {low} are below {floor:.3g}, what the always-run first and last of the "
            f"{L} blocks spend. Use targets >= {floor:.3g}, or keep_ends=false."
        ]

    def fit(self, model: TokenSkipModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Train the controllers on the frozen backbone, then calibrate each target's bias.

        Training: the task loss plus ``cost_weight · (kept − train_budget)²`` with hard Gumbel
        decisions (straight-through), on the training split. Calibration: by :func:`calibrate` on
        ``calibration_samples`` shuffled validation inputs (a threshold is a selection: it is made
        on held-out data).

        Args:
            model: the wrapped model whose controllers and biases are set in place.
            task: supplies the training and validation splits and the loss.
            seed: seeds the controllers, the Gumbel noise and the batch order.
        """
        cfg = self.config
        if problems := self.shape_problems(task):
            raise ValueError(problems[0])
        torch.manual_seed(seed)
        for ctrl in model.controllers.values():
            ctrl.reset_parameters()
        freeze(model.backbone)
        was_training = model.training
        model.eval()  # the backbone runs as evaluated (no dropout); only the controllers learn
        device = next(model.parameters()).device
        shape = tuple(next(task.batches("train", batch_size=1)).inputs.shape[1:])
        per_sample = 3 * model.backbone.dense_flops(shape)
        steps = max(1, min(cfg.steps, int(cfg.max_train_flops // (per_sample * cfg.batch_size))))
        recipe = TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=0.0, warmup_steps=0)

        def step_loss(batch: Batch) -> Tensor:
            logits, keeps = model.masked_forward(batch.inputs.to(device), lambda i, z: gumbel_keep(z))
            kept = torch.stack([k.mean() for k in keeps]).mean()
            return task.metric.loss(logits, batch.targets.to(device)) + cfg.cost_weight * (kept - cfg.train_budget) ** 2

        def batches(epoch: int) -> Iterator[Batch]:
            return task.batches("train", batch_size=cfg.batch_size, seed=seed * 1000 + epoch, shuffle=True)

        if model.controlled:
            fit_loop(list(model.controllers.parameters()), step_loss, endless(batches), recipe)
        held_out = task.validation_split
        passes = (cfg.calibration_steps + 2) * len(cfg.targets)  # the bound pass and the bisection, per target
        affordable = max(4, int(cfg.calibration_flops // (per_sample / 3 * passes)))
        n_cal = min(cfg.calibration_samples, affordable, task.n_samples(held_out))
        inputs = next(task.batches(held_out, batch_size=n_cal, seed=seed, shuffle=True)).inputs.to(device)
        batching, model.batching = model.batching, "per_sample"  # one fit for both batchings (fit_identity)
        try:
            for k, target in enumerate(model.targets.tolist()):
                bias, fraction = calibrate(model, inputs, target, cfg.calibration_steps)
                model.bias[k] = bias
                model.kept_fraction[k] = fraction
        finally:
            model.batching = batching
        model.train(was_training)
