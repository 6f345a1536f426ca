"""ACM's learner stack and the paper's gate-label rule and losses, as pure functions of tensors.

Part of :mod:`dynbench.methods.acm` (Wójcik et al., "Adaptive Computation Modules: Granular
Conditional Computation for Efficient Inference", https://arxiv.org/abs/2312.10193), kept apart
because these pieces are self-contained: :class:`LearnerStack` (N learners replacing one MLP plus
the gate choosing how many run per token, executing each learner as one contiguous matmul over the
tokens that chose it), the relative-improvement labels of gate pre-training and the budget, entropy
and diversity losses of fine-tuning.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.validation import choice_message

LabelRule = Literal["paper", "code"]
"""Gate labels: the paper's text (``"paper"``) or the released code's reading (``"code"``)."""


# --------------------------------------------------------------------------------------------------
# The rules and losses of the paper, as pure functions of tensors


def improvement_labels(errors: Tensor, tau: float, rule: LabelRule = "paper") -> Tensor:
    """Gate labels from the per-choice errors ``e(n) = ||h(z, n) - o||``, n = 0 … N.

    ``rel(n) = e(n) / e(n+1)`` is the improvement bought by learner n+1.

    - ``"paper"``: the smallest n with ``rel(n) < τ`` (the next learner is not worth it), N when
      there is none.
    - ``"code"``: the released code's reading: with j the first index where ``rel(j) < τ``, label
      ``j + 1``, and N when j = 0 or no index qualifies.

    Args:
        errors: ``(..., N + 1)`` non-negative errors per choice.
        tau: the threshold τ (> 1 means "at least τ times smaller").
        rule: ``"paper"`` or ``"code"``.

    Returns:
        ``(...)`` long labels in ``0 … N``.

    Raises:
        ValueError: ``rule`` is not a :data:`LabelRule`.
    """
    n = errors.shape[-1] - 1
    rel = errors[..., :-1] / errors[..., 1:].clamp_min(1e-12)  # (..., N); a perfect next learner: huge gain
    small = rel < tau  # (..., N)
    first = small.long().argmax(dim=-1)  # (...,) first qualifying index, 0 when none
    found = small.any(dim=-1)
    if rule == "paper":
        return torch.where(found, first, torch.full_like(first, n))
    if rule == "code":
        return torch.where(first == 0, torch.full_like(first, n), first + 1)
    raise ValueError(choice_message("ACM gate label rule", rule, typing.get_args(LabelRule)))


def budget_loss(onehots: Tensor, costs: Tensor, target: float) -> Tensor:
    """L1 distance between the batch's expected fraction of learner FLOPs and the target β.

    Args:
        onehots: ``(B, T, M, K)`` (straight-through) one-hot choices of M modules with K = N + 1
            choices.
        costs: ``(M, K)`` FLOPs of each choice of each module (learner FLOPs × n).
        target: β.
    """
    spent = torch.einsum("btmk,mk->m", onehots, costs.to(onehots.dtype)) / (onehots.shape[0] * onehots.shape[1])
    return (spent.sum() / costs[:, -1].sum() - target).abs()


def entropy_loss(onehots: Tensor) -> Tensor:
    """Minus the mean normalised entropy of each sample's per-module choices over its tokens.

    Args:
        onehots: ``(B, T, M, K)`` one-hot choices.
    """
    counts = onehots.sum(dim=1)  # (B, M, K) tokens per choice
    p = counts / counts.sum(dim=-1, keepdim=True)  # (B, M, K)
    entropy = -(p * (p + 1e-20).log()).sum(dim=-1) / math.log(onehots.shape[-1])  # (B, M) in [0, 1]
    return -entropy.mean()


def diversity_loss(onehots: Tensor) -> Tensor:
    """``-(2/B²) Σ_{i,m} |b_i - b_m|``, b_i = the mean of onehot · index over a sample's choices.

    The mean runs over tokens, modules and choice slots.

    Args:
        onehots: ``(B, T, M, K)`` one-hot choices.
    """
    index = torch.arange(onehots.shape[-1], device=onehots.device, dtype=onehots.dtype)  # (K,)
    b = (onehots * index).mean(dim=(1, 2, 3))  # (B,) each sample's cost share (chosen index / K)
    return -2.0 * (b[:, None] - b[None, :]).abs().mean()


# --------------------------------------------------------------------------------------------------
# The module


def make_gate(d_model: int, choices: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` linear layers ``d_model → hidden … → choices`` with GELU between them."""
    widths = [d_model] + [hidden] * (depth - 1) + [choices]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class LearnerStack(nn.Module):
    """N learners replacing one MLP, and the gate that picks how many of them run on each token.

    Learner i maps ``z → w_out[i]ᵀ act(w_in[i] z + b_in[i])`` (SwiGLU:
    ``silu(w_glu[i] z) · (w_in[i] z)``); its weights are stored stacked, so the first n learners are
    one contiguous slice.

    Args:
        d_model: residual width C.
        n_learners: N.
        width: hidden units per learner b.
        swiglu: SwiGLU learners (Llama blocks) instead of GELU ones.
        bias: hidden biases (the dense MLP has biases).
        out_bias: an output bias per learner (added only where the learner runs, so k = 0 outputs
            zero).
        gate_hidden: gate width.
        gate_depth: gate linear layers.
    """

    def __init__(
        self,
        d_model: int,
        n_learners: int,
        width: int,
        *,
        swiglu: bool,
        bias: bool,
        out_bias: bool,
        gate_hidden: int,
        gate_depth: int,
    ) -> None:
        super().__init__()
        self.n, self.width, self.swiglu = n_learners, width, swiglu
        shape = (n_learners, width, d_model)
        self.w_in = nn.Parameter(torch.empty(shape))  # (N, b, C) fc_in / up_proj rows of each learner
        self.b_in = nn.Parameter(torch.zeros(n_learners, width)) if bias else None
        self.w_glu = nn.Parameter(torch.empty(shape)) if swiglu else None  # SwiGLU's silu branch (gate_proj)
        self.b_glu = nn.Parameter(torch.zeros(n_learners, width)) if swiglu and bias else None
        self.w_out = nn.Parameter(torch.empty(shape))  # (N, b, C) fc_out / down_proj columns, transposed
        self.b_out = nn.Parameter(torch.zeros(n_learners, d_model)) if out_bias else None  # (N, C)
        self.gate = make_gate(d_model, n_learners + 1, gate_hidden, gate_depth)
        self.register_buffer("price", torch.zeros(()))  # λ: logit k is lowered by λ·k (0 = the gate as trained)
        self.register_buffer("choices", torch.arange(n_learners + 1.0), persistent=False)  # (K,) k = 0 … N
        self.reset_random()

    @torch.no_grad()
    def reset_random(self) -> None:
        """``nn.Linear``'s default initialisation, learner by learner (the released code's)."""
        C = self.w_in.shape[-1]
        for name, p in self.named_parameters(recurse=False):
            fan_in = self.width if name == "w_out" else C
            bound = 0.0 if name == "b_out" else fan_in**-0.5  # output biases start at zero
            p.uniform_(-bound, bound)

    @torch.no_grad()
    def split_from(self, mlp: nn.Module) -> None:
        """Learner i := the dense MLP's hidden units ``[i·b, (i+1)·b)``; output bias on learner 1.

        All N learners together are then the dense MLP (without ``out_bias``: the MLP minus its
        output bias).
        """
        C = self.w_in.shape[-1]
        if self.b_out is not None:
            self.b_out.zero_()
            if mlp.fc_out.bias is not None:
                self.b_out[0].copy_(mlp.fc_out.bias)
        self.w_in.copy_(mlp.fc_in.weight.view(self.n, self.width, C))
        self.w_out.copy_(mlp.fc_out.weight.t().reshape(self.n, self.width, C))
        if self.b_in is not None:
            self.b_in.copy_(mlp.fc_in.bias.view(self.n, self.width))
        if self.w_glu is not None:
            self.w_glu.copy_(mlp.fc_gate.weight.view(self.n, self.width, C))
            if self.b_glu is not None:
                self.b_glu.copy_(mlp.fc_gate.bias.view(self.n, self.width))

    @torch.no_grad()
    def reorder(self, perm: Tensor) -> None:
        """Permute the hidden units of all learners together (``perm`` over all ``N · b`` units).

        The sum of all learners is unchanged; which learner holds which unit changes.
        """
        n, b, C = self.w_in.shape
        for w in (self.w_in, self.w_glu, self.w_out):
            if w is not None:
                w.copy_(w.reshape(n * b, C)[perm].reshape(n, b, C))
        for bias in (self.b_in, self.b_glu):
            if bias is not None:
                bias.copy_(bias.reshape(-1)[perm].reshape(n, b))

    def hidden(self, z: Tensor, lo: int, hi: int) -> Tensor:
        """Activated hidden units of learners ``lo … hi-1``: ``(M, C) → (M, (hi-lo)·b)``."""
        C = z.shape[-1]
        bias = None if self.b_in is None else self.b_in[lo:hi].reshape(-1)
        h = F.linear(z, self.w_in[lo:hi].reshape(-1, C), bias)  # (M, (hi-lo)·b)
        if self.w_glu is None:
            return F.gelu(h)
        gbias = None if self.b_glu is None else self.b_glu[lo:hi].reshape(-1)
        return F.silu(F.linear(z, self.w_glu[lo:hi].reshape(-1, C), gbias)) * h  # (M, (hi-lo)·b)

    def learner(self, z: Tensor, i: int) -> Tensor:
        """Learner i alone: ``(M, C) → (M, C)``."""
        h = self.hidden(z, i, i + 1)  # (M, b)
        return h @ self.w_out[i] if self.b_out is None else torch.addmm(self.b_out[i], h, self.w_out[i])  # (M, C)

    def forward(self, z: Tensor) -> Tensor:
        """Every learner on every token (full budget): one matmul pair, ``(..., C) → (..., C)``."""
        shape = z.shape
        z = z.reshape(-1, shape[-1])  # (M, C)
        h = self.hidden(z, 0, self.n)  # (M, N·b)
        w = self.w_out.reshape(self.n * self.width, -1)  # (N·b, C)
        y = h @ w if self.b_out is None else torch.addmm(self.b_out.sum(dim=0), h, w)  # (M, C)
        return y.view(shape)

    def prefixes(self, z: Tensor, *, detach: bool = False) -> Tensor:
        """Outputs of every choice k = 0 … N: ``(M, C) → (M, N + 1, C)``; choice 0 is zeros.

        Args:
            z: module inputs.
            detach: each prefix's gradient reaches only its newest learner (the released code's
                'detach').
        """
        M = z.shape[0]
        h = self.hidden(z, 0, self.n).view(M, self.n, self.width)  # (M, N, b)
        outs = torch.einsum("mnb,nbc->mnc", h, self.w_out)  # (M, N, C) each learner's own output
        if self.b_out is not None:
            outs = outs + self.b_out
        sums = outs.cumsum(dim=1) if not detach else outs + outs.detach().cumsum(dim=1) - outs.detach()
        return torch.cat([torch.zeros_like(sums[:, :1]), sums], dim=1)  # (M, N + 1, C)

    def logits(self, z: Tensor) -> Tensor:
        """Gate logits of every choice, lowered by the learner price: ``(M, C) → (M, N + 1)``."""
        return self.gate(z) - self.price * self.choices  # elementwise: 0 FLOPs

    def choose(self, z: Tensor) -> Tensor:
        """Inference choice per token: argmax of the priced gate, ``(M, C) → (M,)`` in ``0 … N``."""
        return self.logits(z).argmax(dim=-1)

    def gated(self, z: Tensor, k: Tensor) -> Tensor:
        """Run learner i on exactly the tokens with ``k >= i``, grouped: ``(M, C), (M,) → (M, C)``.

        Tokens are sorted by k once (descending), so the tokens needing learner i are the first
        ``n_i`` sorted rows and each learner is one contiguous matmul. Learners 1 … max(k) all run,
        the last one included.
        """
        order = torch.argsort(k, descending=True, stable=True)  # (M,)
        # tokens per choice: a static-shape count (bincount's output size would need the data), read
        # once — the one host sync, since each learner's matmul needs its row count on the host
        counts = torch.zeros(self.n + 1, dtype=torch.long, device=k.device).scatter_add_(0, k, torch.ones_like(k))
        counts = counts.tolist()  # (N + 1,)
        zs = z[order]  # (M, C) grouped by choice, largest k first
        ys = torch.zeros_like(zs)  # (M, C)
        for i in range(self.n):
            rows = sum(counts[i + 1 :])  # tokens with k >= i + 1: the first rows of the sorted order
            if rows == 0:
                break
            ys[:rows] += self.learner(zs[:rows], i)  # (rows, C)
        return torch.empty_like(ys).index_copy_(0, order, ys)  # (M, C) back in token order

    def gated_kernel(self, z: Tensor, k: Tensor) -> Tensor:
        """As :meth:`gated`, with the learners in two Triton kernels: no host synchronisation.

        The tokens are sorted by k on the device and each tile of them finds there how many
        learners it runs (:mod:`dynbench.methods._learner_kernels`); ``(M, C), (M,) → (M, C)``.
        """
        from dynbench.methods._learner_kernels import acm_learners

        order = torch.argsort(k, descending=True, stable=True)  # (M,)
        ys = acm_learners(z[order], k[order], self.w_in, self.b_in, self.w_glu, self.b_glu, self.w_out, self.b_out)
        return torch.empty_like(ys).index_copy_(0, order, ys)  # (M, C) back in token order

    def gate_flops(self) -> float:
        """FLOPs of the gate on one token."""
        return float(sum(2 * m.in_features * m.out_features for m in self.gate if isinstance(m, nn.Linear)))
