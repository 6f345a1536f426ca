"""Adaptive Computation Modules: each MLP becomes N learners; a per-token gate picks how many run.

Paper: Wójcik, Devoto, Pustelnik, Minervini, Scardapane, "Adaptive Computation Modules: Granular
Conditional Computation for Efficient Inference", AAAI 2025, https://arxiv.org/abs/2312.10193;
code https://github.com/bartwojcik/adaptive_computation_modules (commit 6760ad6, read, not copied).

Mechanism: each MLP becomes N learners whose outputs add up (Eq. 1), and a small gate picks k ∈
{0 … N} of them per token (Gumbel-softmax in training, argmax at inference). Three phases: distil
the learners onto the MLP (Eq. 3), pre-train the gates, fine-tune end to end at a target β.

What we changed / reconstructed:
- learners start as the dense MLP split into N groups of hidden units, ordered by importance (mean
  |activation| × output-column norm on training data) so learner 1 holds the units that matter most
  (``init="split"``, our choice; the released code initialises them randomly, ``init="random"``);
- each learner has its own output bias when the MLP has biases (``out_bias``; the released config
  keeps hidden biases only): k = 0 still outputs zero, and split learners are the MLP exactly;
- distillation mode ``no_detach`` (every prefix's error reaches all of its learners, as Eq. 3 and
  the released script's arguments say); ``detach``, the released code's effective mode, is optional;
- gate = ``gate_depth`` linear layers of width 16 with GELU between them (the released "deep Gumbel"
  gate has no nonlinearity between its layers; the paper calls the gate a small MLP);
- gate pre-training uses plain cross-entropy; the label rule is the paper's text
  (``label_rule="paper"``) or the released code's (``"code"``), see
  :func:`~dynbench.methods._learner_stack.improvement_labels`;
- phase 3 feeds the straight-through one-hot into the output, ``Σ_n g_n h(z, n)`` (Eq. 2), so the
  task loss trains the gates too (in the released code only the auxiliary losses reach the gates);
- each β ∈ ``targets`` gets its own fine-tuned copy; budget 1.0 is the dense backbone itself (the
  all-learners model only approximates it);
- inference runs learner i over the contiguous prefix of tokens (sorted by k) that need it, up to
  max k inclusive (the released ``forward_gated`` drops the last learner of the largest choice);
- budget calibration (``calibrate``, our addition): a learner price λ per fine-tuned model lowers
  logit k by λ·k (:func:`set_price`), set by bisection so the argmax choices spend β on
  ``task.validation_split`` samples, before phase 3 and after it (sampled Gumbel choices are not
  argmax choices);
- ``kernel="triton"`` (our addition, opt-in until measured on a GPU): the same grouped learners as
  two Triton kernels in the spirit of the paper's, where each tile of sorted tokens reads on the
  device how many learners it runs, so a block makes no host synchronisation
  (:mod:`dynbench.methods._learner_kernels`; checked against the eager path under Triton's
  interpreter);
- CPU-sized recipe: a few hundred steps per phase instead of 2 + 1 + 97 ImageNet epochs, at most
  ``max_epochs`` passes over the training split, a 10× learning rate for the gates in phase 3
  (``gate_lr_scale``); MLPs only (the paper also replaces ViT-B's q/k/v/o projections).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods._learner_kernels import triton_problem
from dynbench.methods._learner_stack import (
    LabelRule,
    LearnerStack,
    budget_loss,
    diversity_loss,
    entropy_loss,
    improvement_labels,
)
from dynbench.methods.base import DynamicModel, Method, budgets_not_among, freeze, register_method
from dynbench.models.audio import AudioEncoder
from dynbench.models.backbone import Backbone, mlp_unit_flops
from dynbench.models.block import Block
from dynbench.models.training import ParamGroup, TrainConfig, endless, fit_loop
from dynbench.models.vit import ViT
from dynbench.tasks.base import Task
from dynbench.types import Batch, Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range


@dataclass(frozen=True)
class ACMConfig:
    """Module shape, gate, losses and the CPU-sized three-phase recipe."""

    n_learners: int = 4  # N learners per MLP (the paper's default); each is mlp_hidden / N wide
    targets: tuple[float, ...] = (0.75, 0.6, 0.4, 0.25)  # β: target fraction of learner FLOPs, one model each
    init: Literal["split", "random"] = "split"  # "split": learner i starts as the MLP's i-th group of hidden units
    distill_mode: Literal["no_detach", "detach"] = "no_detach"  # "no_detach" (Eq. 3) or the released code's
    label_rule: LabelRule = "paper"  # gate labels: "paper" (the paper's text) or "code" (the released code's rule)
    tau: float = 1.2  # relative-improvement threshold of the label rule (gating_error_factor)
    gate_hidden: int = 16  # gate width (released config: 16)
    gate_depth: int = 3  # gate linear layers (released config: 3)
    gumbel_tau: float = 0.8  # Gumbel-softmax temperature in fine-tuning (released config: 0.8)
    alpha_budget: float = 0.1  # weight of the L1 budget loss (paper: 0.1)
    alpha_entropy: float = 0.05  # weight of the intra-sample entropy loss (paper: 0.05)
    alpha_diversity: float = 0.05  # weight of the inter-sample diversity loss (paper: 0.05)
    finetune: Literal["entire_model", "acms_only"] = "entire_model"  # phase 3 trains the whole model (paper) or
    # "acms_only" (learners and gates)
    batch_tokens: int = 1024  # tokens per training batch: batch = batch_tokens / tokens per sample, within [4, 64]
    distill_steps: int = 400  # phase 1 steps: the full-budget error keeps falling beyond this, slowly
    distill_lr: float = 1e-3  # phase 1 Adam learning rate (paper: 1e-3)
    gate_steps: int = 100  # phase 2 steps: the gates are tiny and their labels fixed
    gate_lr: float = 1e-2  # phase 2 learning rate (paper: 1e-2)
    finetune_steps: int = 150  # phase 3 steps per β (the paper's 97 epochs are out of reach on a CPU)
    finetune_lr: float = 1e-3  # phase 3 peak learning rate: 10× the paper's 1e-4 for 1000× fewer samples
    gate_lr_scale: float = 10.0  # phase 3 gates learn this much faster: they must reach β in a few hundred steps
    calibrate: bool = True  # price learners so the argmax choices spend β on validation data (our addition)
    calibration_samples: int = 128  # validation samples the price is set on (before and after phase 3)
    out_bias: bool = True  # an output bias per learner when the MLP has biases (released: hidden biases only)
    max_epochs: float = 3.0  # no phase passes over the training split more often (keeps toy fits short)
    kernel: Literal["torch", "triton"] = "torch"  # inference learners: "torch" grouped matmuls (a host
    # sync per block for the row counts) or "triton" kernels (none; CUDA, or Triton's interpreter in
    # tests); opt-in until measured on a GPU; evaluation only, so both share one fit

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "init": "Use split (learners start as the dense MLP) or random (the released code's start).",
                "distill_mode": "Use no_detach (Eq. 3) or detach (the released code's effective mode).",
                "label_rule": "Use paper (the paper's text) or code (the released code's rule).",
                "finetune": "Use entire_model (the paper) or acms_only (learners and gates only).",
                "kernel": "Use torch (grouped matmuls, any device) or triton (Triton kernels: CUDA).",
            },
        )
        for name, value, use in (
            ("n_learners", self.n_learners, 4),
            ("gate_hidden", self.gate_hidden, 16),
            ("gate_depth", self.gate_depth, 3),
            ("batch_tokens", self.batch_tokens, 1024),
        ):
            check_range(f"ACMConfig.{name}", value, 1, advice=f"Use e.g. {name}={use}.")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(
                f"ACMConfig.targets must be distinct budgets strictly between 0 and 1, got {self.targets}. "
                "Use e.g. targets=0.75;0.6;0.4;0.25 (budget 1.0, the dense backbone, is always there)."
            )
        for beta in self.targets:
            check_range(
                "ACMConfig.targets",
                beta,
                0.0,
                1.0,
                low_open=True,
                high_open=True,
                advice="Use e.g. targets=0.75;0.6;0.4;0.25 (budget 1.0, the dense backbone, is always there).",
            )
        for name, value, use in (
            ("distill_steps", self.distill_steps, 400),
            ("gate_steps", self.gate_steps, 100),
            ("finetune_steps", self.finetune_steps, 150),
        ):
            check_range(f"ACMConfig.{name}", value, 0, advice=f"Use e.g. {name}={use}.")
        for name, value, use in (
            ("max_epochs", self.max_epochs, 3),
            ("tau", self.tau, 1.2),
            ("gumbel_tau", self.gumbel_tau, 0.8),
            ("gate_lr_scale", self.gate_lr_scale, 10),
        ):
            check_range(f"ACMConfig.{name}", value, 0, low_open=True, advice=f"Use e.g. {name}={use}.")


# --------------------------------------------------------------------------------------------------
# Where compute goes


def voiced_tokens(features: Tensor, stack: int) -> Tensor:
    """``(B, P)`` bool: tokens louder than the midpoint of the clip's loudest and quietest token.

    A token's loudness is the mean log-mel of its stacked frames.

    Args:
        features: ``(B, frames, mels)`` log-mel features (any affine normalisation).
        stack: frames per token.
    """
    B, frames, mels = features.shape
    energy = features.reshape(B, frames // stack, stack * mels).mean(dim=-1)  # (B, P)
    mid = (energy.amax(dim=1, keepdim=True) + energy.amin(dim=1, keepdim=True)) / 2  # (B, 1)
    return energy > mid


# --------------------------------------------------------------------------------------------------
# The dynamic model


def is_full(budget: Budget) -> bool:
    """Whether ``budget`` is 1.0, the dense backbone (up to float rounding)."""
    return abs(budget - 1.0) < 1e-9


def budget_key(budget: Budget) -> str:
    """ModuleDict key of a target budget (module names have no dots): 0.25 → ``b02500``."""
    return f"b{round(budget * 10000):05d}"


def with_acms(backbone: Backbone, acms: Sequence[LearnerStack]) -> Backbone:
    """A copy of ``backbone`` whose blocks' MLPs are copies of ``acms``."""
    net = copy.deepcopy(backbone)
    for block, acm in zip(net.blocks, acms):
        block.mlp = copy.deepcopy(acm)
    return net


class ACMModel(DynamicModel):
    """The dense backbone (budget 1.0) and per target β a fine-tuned copy with gated learner stacks.

    Args:
        backbone: the dense model (never modified); run as is at budget 1.0.
        cfg: the method's options.

    Submodules:
        distilled: ``(L,)`` learner stacks after phases 1 and 2, the common start of every β's
            fine-tuning; no budget runs them.
        variants: one fine-tuned copy of the whole model per target β (key :func:`budget_key`),
            whose blocks' ``mlp`` are learner stacks.
    """

    def __init__(self, backbone: Backbone, cfg: ACMConfig) -> None:
        super().__init__(backbone)
        bc = backbone.block_config
        self.n = cfg.n_learners
        self.width = round(bc.mlp_hidden / cfg.n_learners)
        stack = dict(
            swiglu=bc.mlp == "swiglu",
            bias=bc.bias,
            out_bias=bc.bias and cfg.out_bias,
            gate_hidden=cfg.gate_hidden,
            gate_depth=cfg.gate_depth,
        )
        self.distilled = nn.ModuleList(
            LearnerStack(bc.d_model, self.n, self.width, **stack) for _ in range(backbone.n_blocks)
        )
        if cfg.init == "split":
            for acm, block in zip(self.distilled, backbone.blocks):
                acm.split_from(block.mlp)
        self.targets = tuple(sorted(cfg.targets, reverse=True))
        self.kernel = cfg.kernel
        self._vit_masks: Tensor | None = None  # (1, 3, T) CLS/border/inner token masks, built on first use
        self.variants = nn.ModuleDict({budget_key(b): with_acms(backbone, self.distilled) for b in self.targets})

    def stacks(self, budget: Budget) -> tuple[Backbone, list[LearnerStack]]:
        """``(network, its learner stacks)``: the fine-tuned model of the target β ``budget``.

        Raises:
            ValueError: budget 1.0 (the dense backbone, which has no learner stacks), or a budget
                with no fine-tuned model.
        """
        if is_full(budget):
            raise ValueError(
                "acm budget 1.0 runs the dense backbone, which has no learner stacks; ask for a target β "
                f"among {list(self.targets)}."
            )
        key = budget_key(budget)
        if key not in self.variants:
            raise ValueError(
                f"acm has no fine-tuned model for budget {budget}: it fitted {[1.0, *self.targets]}. "
                f"Add it to the targets (acm[targets=...]) and fit again."
            )
        net = self.variants[key]
        return net, [block.mlp for block in net.blocks]

    def controller_modules(self) -> list[nn.Module]:
        """Every gate: their FLOPs are the decision overhead."""
        return [acm.gate for acm in self.modules() if isinstance(acm, LearnerStack)]

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """1.0: the dense backbone; a target β: its fine-tuned model (stacks, gates), nothing else.

        The distilled stacks and the other β's models are fitting state no budget reads.

        Raises:
            ValueError: a budget with no fine-tuned model.
        """
        return [self.backbone if is_full(budget) else self.stacks(budget)[0]]

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run the model of ``budget``: the dense backbone at 1.0, β's gated learner stacks at a β.

        Returns:
            Logits and a trace. At 1.0: the dense trace (every MLP whole, no gate), with the extras
            of every token choosing all N learners. At β: ``block_mlp_units`` (executed learner
            widths × tokens), gate FLOPs as controller FLOPs and the extras of :meth:`extras`.
        """
        if is_full(budget):
            bb = self.backbone
            trace = bb.dense_trace(inputs)
            B, L = trace.block_tokens.shape
            every = torch.full((B, L, bb.n_tokens(tuple(inputs.shape[1:]))), self.n, dtype=torch.long)  # (B, L, T)
            trace.extra = self.extras(inputs, every)
            return StepOutput(bb(inputs), trace)
        net, acms = self.stacks(budget)
        if self.kernel == "triton" and (problem := triton_problem(inputs.device)):
            raise RuntimeError(f"acm[kernel=triton] cannot run: {problem}. Use acm[kernel=torch] here.")
        x = net.embed(inputs)  # (B, T, C)
        B, T, C = x.shape
        choices = []
        for block, acm in zip(net.blocks, acms):
            h, z = attend(block, x)  # (B, T, C) each
            z = z.reshape(B * T, C)  # (M, C)
            k = acm.choose(z)  # (M,)
            y = acm.gated_kernel(z, k) if self.kernel == "triton" else acm.gated(z, k)  # (M, C)
            x = h + block.drop(y.view(B, T, C))  # (B, T, C)
            choices.append(k.view(B, T))
        logits = net.readout(x)  # (B, K) or (B, T, V)
        return StepOutput(logits, self.trace(inputs, torch.stack(choices, dim=1), acms[0].gate_flops()))

    def trace(self, inputs: Tensor, k: Tensor, gate_flops: float) -> Trace:
        """The trace of a gated pass whose per-token choices were ``k`` ``(B, L, T)``."""
        B, L, T = k.shape
        k = k.cpu()
        full = torch.full((B, L), T, dtype=torch.long)
        return Trace(
            block_tokens=full,
            block_kv=full.clone(),
            block_heads=torch.full((B, L), self.backbone.n_heads, dtype=torch.long),
            readout=torch.ones(B, dtype=torch.long),
            controller_flops=torch.full((B,), L * T * gate_flops, dtype=torch.float64),
            extra=self.extras(inputs, k),
            block_mlp_units=k.sum(dim=2) * self.width,  # (B, L) learner-tokens × width
        )

    def extras(self, inputs: Tensor, k: Tensor) -> dict[str, Tensor]:
        """Where compute went, per sample, from the per-token choices ``k`` ``(B, L, T)``.

        The mean learners and the share of token-blocks at each k; for audio encoders the mean
        learners on voiced and on silent tokens, for ViTs on the CLS token, the border patches and
        the inner patches (:meth:`regions`). The full choices are in ``acm_choice`` ``(B, L, T)``
        for heat maps.
        """
        T = k.shape[2]
        k = k.cpu()
        shares = F.one_hot(k, self.n + 1).double().mean(dim=(1, 2))  # (B, K) share of token-blocks per k
        per_token = k.double().mean(dim=1)  # (B, T) learners per token, averaged over blocks
        extra = {"acm_choice": k.to(torch.uint8), "acm_mean_learners": per_token.mean(dim=1)}
        extra.update({f"acm_share_k{n}": shares[:, n] for n in range(self.n + 1)})
        names, masks = self.regions(inputs, T)  # masks (B or 1, R, T)
        if names:
            means = (per_token[:, None] * masks).sum(dim=2) / masks.sum(dim=2)  # (B, R); NaN: empty region
            extra.update({f"acm_learners_{name}": means[:, r] for r, name in enumerate(names)})
        return extra

    def regions(self, inputs: Tensor, T: int) -> tuple[list[str], Tensor]:
        """Where compute goes: region names and ``(B or 1, R, T)`` 0/1 token masks (float64).

        Audio encoders: voiced and silent tokens (:func:`voiced_tokens`); ViTs: the CLS token, the
        border patches and the inner patches; other backbones: none.
        """
        bb = self.backbone
        if isinstance(bb, AudioEncoder):
            voiced = voiced_tokens(inputs.detach().cpu(), bb.config.stack).double()  # (B, P)
            masks = torch.zeros(inputs.shape[0], 2, T, dtype=torch.float64)  # the CLS token is in neither
            masks[:, 0, 1:], masks[:, 1, 1:] = voiced, 1.0 - voiced
            return ["voiced", "silent"], masks
        if isinstance(bb, ViT):
            if self._vit_masks is None or self._vit_masks.shape[-1] != T:
                g = bb.config.image_size // bb.config.patch_size
                r, c = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
                inner = ((r > 0) & (r < g - 1) & (c > 0) & (c < g - 1)).reshape(-1).double()  # (N,)
                masks = torch.zeros(1, 3, T, dtype=torch.float64)
                masks[0, 0, 0], masks[0, 1, 1:], masks[0, 2, 1:] = 1.0, 1.0 - inner, inner
                self._vit_masks = masks
            return ["cls", "border", "inner"], self._vit_masks
        return [], torch.zeros(1, 0, T, dtype=torch.float64)

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """Mean learners per token-block, the share of token-blocks at each k, per-region means."""
        ex = trace.extra
        out = {"mean_learners": (float(ex["acm_mean_learners"].mean()), "learners", False)}
        for n in range(self.n + 1):
            out[f"learner_share_k{n}"] = (float(ex[f"acm_share_k{n}"].mean()), "fraction", False)
        for key, value in ex.items():
            if key.startswith("acm_learners_") and not value.isnan().all():  # skip regions absent here
                out[f"mean_{key[4:]}"] = (float(value.nanmean()), "learners", False)
        return out

    def train_forward(self, net: Backbone, inputs: Tensor, gumbel_tau: float) -> tuple[Tensor, Tensor]:
        """Phase-3 forward: hard Gumbel-softmax choices, output ``Σ_n g_n h(z, n)``.

        Returns:
            Logits and the ``(B, T, M, K)`` one-hot choices of the M = L modules.
        """
        x = net.embed(inputs)  # (B, T, C)
        B, T, C = x.shape
        onehots = []
        for block in net.blocks:
            h, z = attend(block, x)  # (B, T, C) each
            z = z.reshape(B * T, C)  # (M, C)
            g = F.gumbel_softmax(block.mlp.logits(z), tau=gumbel_tau, hard=True)  # (M, K)
            y = torch.einsum("mk,mkc->mc", g, block.mlp.prefixes(z))  # (M, C)
            x = h + block.drop(y.view(B, T, C))  # (B, T, C)
            onehots.append(g.view(B, T, -1))
        return net.readout(x), torch.stack(onehots, dim=2)  # logits, (B, T, M, K)


def attend(block: Block, x: Tensor) -> tuple[Tensor, Tensor]:
    """A block's attention half: ``(h, z)`` = stream after attention, normalised MLP input."""
    h = x + block.drop(block.attn(block.attn_norm(x)))  # (B, T, C)
    return h, block.mlp_norm(h)


@torch.no_grad()
def dense_mlp_io(backbone: Backbone, inputs: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Every block's MLP input and output ``(M, C)`` in the dense backbone: distillation pairs."""
    x = backbone.embed(inputs)  # (B, T, C)
    pairs = []
    for block in backbone.blocks:
        h, z = attend(block, x)  # (B, T, C) each
        o = block.mlp(z)  # (B, T, C)
        pairs.append((z.flatten(0, 1), o.flatten(0, 1)))
        x = h + o
    return pairs


# --------------------------------------------------------------------------------------------------
# The method


@register_method("acm")
class ACM(Method):
    """Adaptive Computation Modules: MLPs as N learners, a per-token gate picks how many run."""

    version = "3"  # 2: budget 1.0 runs the dense backbone (1: the distilled learners, all on); 3: the price is
    # calibrated on the validation split, not on training samples
    paper = "https://arxiv.org/abs/2312.10193"
    extra_metrics = ("mean_learners", "learner_share_k*", "mean_learners_*")
    reconstructed = False
    Config = ACMConfig
    # quick profile: about a third of each phase's steps and two targets (β = 0.6 and 0.25) of four:
    # one fine-tuned copy per target is what costs
    quick_options = {"targets": (0.6, 0.25), "distill_steps": 120, "gate_steps": 40, "finetune_steps": 50}
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    budget_doc = "target fraction of learner FLOPs β: 1.0 (the dense backbone) and each fitted target (0.75 … 0.25)"

    def fit_identity(self) -> ACMConfig:
        """The config less ``kernel``: how the fitted learners execute does not change the fit."""
        return dataclasses.replace(self.config, kernel="torch")

    def wrap(self, backbone: Backbone) -> ACMModel:
        """Replace every MLP by a learner stack (copies; ``backbone`` itself is kept intact).

        Raises:
            ValueError: ``init="split"`` with an MLP width that N does not divide.
        """
        if problem := self.width_problem(backbone):
            raise ValueError(problem)
        return ACMModel(backbone, self.config)

    def width_problem(self, backbone: Backbone) -> str | None:
        """Why ``n_learners`` cannot split ``backbone``'s MLP width, or ``None``."""
        f = backbone.block_config.mlp_hidden
        if self.config.init != "split" or f % self.config.n_learners == 0:
            return None
        return (
            f"acm init='split' needs n_learners dividing the MLP width {f}, got n_learners="
            f"{self.config.n_learners}. Pick a divisor (e.g. 4) or init=random."
        )

    def shape_problems(self, task: Task) -> list[str]:
        """``n_learners`` against ``task``'s MLP width, before training (:meth:`width_problem`)."""
        problem = self.width_problem(task.meta_backbone())
        return [problem] if problem else []

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """1.0 (the dense backbone) then the fitted targets, descending."""
        return (1.0, *sorted(self.config.targets, reverse=True))

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """Like the base, but only 1.0 and the fitted targets exist.

        Raises:
            ValueError: a budget that is neither 1.0 nor a target.
        """
        budgets = super().resolve_budgets(override, n_blocks)
        missing = budgets_not_among(budgets, self.budgets(n_blocks), budget_key)
        if missing:
            raise ValueError(
                f"acm budget(s) {missing} have no fine-tuned model: acm fits one model per target β and has "
                f"{list(self.budgets(n_blocks))}. Choose among those, or set acm[targets=...] to fit others."
            )
        return budgets

    def fit(self, model: ACMModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """The three phases: distil every MLP, pre-train the gates, fine-tune a model per target β.

        Args:
            model: the wrapped model, trained in place (its backbone stays frozen and unchanged).
            task: supplies the training split, the task loss and the validation inputs the price is
                set on.
            seed: seeds initialisation, batch order and Gumbel noise.
        """
        cfg = self.config
        torch.manual_seed(seed)
        freeze(model.backbone)
        was_training = model.training
        model.backbone.eval()
        device = _device(model.backbone)
        shape = tuple(next(task.batches("train", batch_size=1)).inputs.shape[1:])
        batch_size = min(64, max(4, cfg.batch_tokens // model.backbone.n_tokens(shape)))
        cap = max(1, int(cfg.max_epochs * math.ceil(task.n_samples("train") / batch_size)))

        def batches(phase: int) -> Iterator[Batch]:
            return endless(
                lambda epoch: task.batches(
                    "train", batch_size=batch_size, seed=1000 * seed + 100 * phase + epoch, shuffle=True
                )
            )

        def recipe(steps: int, lr: float) -> TrainConfig:
            steps = min(steps, cap)
            return TrainConfig(steps, batch_size, lr, weight_decay=0.0, warmup_steps=steps // 10)

        for acm, block in zip(model.distilled, model.backbone.blocks):  # start every stack from the seed
            for layer in acm.gate:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
            if cfg.init == "split":
                acm.split_from(block.mlp)
            else:
                acm.reset_random()
        if cfg.init == "split":
            order_units(model, next(batches(0)).inputs.to(device))
        distill(model, batches(1), recipe(cfg.distill_steps, cfg.distill_lr), cfg.distill_mode == "detach")
        pretrain_gates(model, batches(2), recipe(cfg.gate_steps, cfg.gate_lr), cfg)
        held_out = task.validation_split  # the price is a calibration: set on held-out inputs
        n_cal = min(cfg.calibration_samples, task.n_samples(held_out))
        calibration = next(task.batches(held_out, batch_size=n_cal, seed=seed, shuffle=True)).inputs.to(device)
        kernel, model.kernel = model.kernel, "torch"  # the price is set through the reference path: one fit
        try:  # for both kernels (fit_identity), on any device
            for i, beta in enumerate(model.targets):
                recipe_i = recipe(cfg.finetune_steps, cfg.finetune_lr)
                finetune(model, beta, task, batches(3 + i), recipe_i, cfg, calibration)
        finally:
            model.kernel = kernel
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def order_units(model: ACMModel, inputs: Tensor) -> None:
    """Re-split every MLP by importance: learner 1 gets the ``b`` hidden units that matter most.

    Importance of a hidden unit = its mean absolute activation on ``inputs`` × the norm of its
    output column, the size of its contribution to the MLP output. The split learners still sum to
    the MLP.
    """
    x = model.backbone.embed(inputs)  # (B, T, C)
    for acm, block in zip(model.distilled, model.backbone.blocks):
        h, z = attend(block, x)  # (B, T, C) each
        z2 = z.flatten(0, 1)  # (M, C)
        act = acm.hidden(z2, 0, acm.n).abs().mean(dim=0)  # (N·b,) units in the current split's order
        importance = act * acm.w_out.reshape(acm.n * acm.width, -1).norm(dim=1)  # (N·b,)
        acm.reorder(importance.argsort(descending=True, stable=True))
        x = h + block.mlp(z)  # (B, T, C) the dense stream


def distill(model: ACMModel, batches: Iterator[Batch], recipe: TrainConfig, detach: bool) -> float:
    """Phase 1: every learner stack learns its dense MLP from that MLP's own inputs and outputs."""
    params = [p for acm in model.distilled for name, p in acm.named_parameters() if not name.startswith("gate.")]
    for p in params:
        p.requires_grad_(True)
    device = _device(model.backbone)

    def step_loss(batch: Batch) -> Tensor:
        pairs = dense_mlp_io(model.backbone, batch.inputs.to(device))
        losses = [
            (acm.prefixes(z, detach=detach)[:, 1:] - o[:, None]).pow(2).mean()  # every prefix n = 1 … N
            for acm, (z, o) in zip(model.distilled, pairs)
        ]
        return torch.stack(losses).sum()

    return fit_loop(params, step_loss, batches, recipe)


def pretrain_gates(model: ACMModel, batches: Iterator[Batch], recipe: TrainConfig, cfg: ACMConfig) -> float:
    """Phase 2: learners frozen; each gate learns the relative-improvement labels of its tokens."""
    for acm in model.distilled:
        acm.requires_grad_(False)
    params = [p for acm in model.distilled for p in acm.gate.parameters()]
    for p in params:
        p.requires_grad_(True)
    device = _device(model.backbone)

    def step_loss(batch: Batch) -> Tensor:
        pairs = dense_mlp_io(model.backbone, batch.inputs.to(device))
        losses = []
        for acm, (z, o) in zip(model.distilled, pairs):
            with torch.no_grad():
                errors = (acm.prefixes(z) - o[:, None]).norm(dim=-1)  # (M, N + 1)
                labels = improvement_labels(errors, cfg.tau, cfg.label_rule)  # (M,)
            losses.append(F.cross_entropy(acm.gate(z), labels))
        return torch.stack(losses).mean()

    return fit_loop(params, step_loss, batches, recipe)


def finetune(
    model: ACMModel,
    beta: float,
    task: Task,
    batches: Iterator[Batch],
    recipe: TrainConfig,
    cfg: ACMConfig,
    calibration: Tensor,
) -> float:
    """Phase 3 at one β: a copy of backbone + distilled stacks, trained end to end with 3 losses.

    With ``cfg.calibrate`` the learner price is set to spend β on ``calibration`` inputs before and
    after.
    """
    net = with_acms(model.backbone, model.distilled)
    model.variants[budget_key(beta)] = net
    device = _device(net)
    if cfg.calibrate:
        set_price(model, beta, calibration)
    net.requires_grad_(False)
    trained = net if cfg.finetune == "entire_model" else nn.ModuleList(block.mlp for block in net.blocks)
    trained.requires_grad_(True)
    gates = {id(p) for block in net.blocks for p in block.mlp.gate.parameters()}
    groups = [
        ParamGroup([p for p in trained.parameters() if id(p) not in gates]),
        ParamGroup([p for p in trained.parameters() if id(p) in gates], lr_scale=cfg.gate_lr_scale),
    ]
    net.train()
    width = model.width
    costs = torch.arange(model.n + 1, dtype=torch.float64, device=device) * width * mlp_unit_flops(net.block_config)
    costs = costs.expand(net.n_blocks, -1)  # (M, K) per module; identical for MLP-only ACMs

    def step_loss(batch: Batch) -> Tensor:
        logits, onehots = model.train_forward(net, batch.inputs.to(device), cfg.gumbel_tau)
        loss = task.metric.loss(logits, batch.targets.to(device))
        loss = loss + cfg.alpha_budget * budget_loss(onehots, costs, beta)
        loss = loss + cfg.alpha_entropy * entropy_loss(onehots)
        return loss + cfg.alpha_diversity * diversity_loss(onehots)

    final = fit_loop(groups, step_loss, batches, recipe)
    net.eval()
    if cfg.calibrate:
        set_price(model, beta, calibration)
    return final


@torch.no_grad()
def set_price(model: ACMModel, beta: float, inputs: Tensor) -> float:
    """Set the learner price λ of β's model: its argmax choices spend β of the learner FLOPs.

    The spend is measured on ``inputs``.

    The Lagrangian view of the budget: ``argmax_k (logit_k - λ k)`` trades each gate's preference
    against the cost of k learners. One λ serves every gate of the model; it is found by bisection
    on full forward passes (a higher λ spends less). The price only moves the decision boundary; the
    gates' weights are untouched.

    Returns:
        λ.
    """
    net = model.variants[budget_key(beta)]
    stacks = [block.mlp for block in net.blocks]
    was_training = net.training
    net.eval()

    def spend(lam: float) -> float:
        for acm in stacks:
            acm.price.fill_(lam)
        return float(model(inputs, budget=beta).trace.extra["acm_mean_learners"].mean()) / model.n

    lo, hi = -32.0, 32.0  # gate logits differ by a few units: ±32 reaches "all learners" and "none"
    for _ in range(14):  # invariant: spend(lo) >= β > spend(hi); λ to within 64 / 2^14 = 0.004
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend(mid) >= beta else (lo, mid)
    spend(lo)
    net.train(was_training)
    return lo
