"""The stop policy of the Transformer^-1 reconstruction, and the price a budget gives it.

Part of :mod:`dynbench.methods.transformer_inverse` (Ji et al., "Transformer^-1: Input-Adaptive
Computation for Resource-Constrained Deployment", https://arxiv.org/abs/2501.16394, reconstructed
from its abstract). At each fold point past the predicted bucket a GRU cell reads the pooled hidden
state and the exit head's confidence and says continue or stop; the compute price λ enters only the
continue logit, so one policy serves every budget and a higher price can only stop a sample earlier.
Kept apart from the plugin because it is a self-contained module with its own contract (the price
monotonicity, the analytic FLOPs of a step): tensors in, logits out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.types import Budget

__all__ = ["CONFIDENCE_STATS", "PRICE_FLOOR", "StopPolicy", "confidence_stats", "price"]

CONFIDENCE_STATS = 3
"""What the policy reads of an exit head: top-1 probability, margin over the runner-up, entropy."""
PRICE_FLOOR = 1e-4
"""The policy reads the price as ``log(1 + λ/λ_floor)`` with λ_floor = PRICE_FLOOR·λ_max.

~0 at λ = 0, log-linear above ~10⁻⁴·λ_max.
"""


def price(budget: Budget, lambda_max: float) -> float:
    """The compute price λ of a budget: ``λ_max·(1 − b)²``; quadratic, so the grid spans decades."""
    return lambda_max * (1.0 - budget) ** 2


def confidence_stats(logits: Tensor) -> Tensor:
    """``(B, 3)`` top-1 probability, margin over the runner-up, entropy; tokens: position means."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top2 = logp.topk(2, dim=-1).values.exp()  # (B, 2) or (B, S, 2)
    ent = -(logp.exp() * logp).sum(dim=-1)  # (B,) or (B, S)
    stats = torch.stack([top2[..., 0], top2[..., 0] - top2[..., 1], ent], dim=-1)  # (B, 3) or (B, S, 3)
    return stats if stats.dim() == 2 else stats.mean(dim=1)


class StopPolicy(nn.Module):
    """A GRU-cell policy over fold points; continue logit ``a(h) − g(λ)·softplus(c(h))``.

    ``g(λ) = log(1 + λ/λ_floor)`` puts the price on a log scale: stopping is right when the chance
    that going on fixes the output is below about λ·cost, i.e. when the continue log-odds fall below
    ``log λ`` + a constant, and the budget grid spans decades of λ (a linear ``λ·softplus(c)`` term
    stays ≤ 0.25 on the default grid, too small to tell the prices apart). ``g`` is increasing and
    ``softplus`` positive, so the continue logit falls monotonically with the price. The critic
    ``v(h) + λ·w(h)`` serves PPO's training only.

    Every matmul is an ``F.linear``, so FLOP counters see it; ``step_flops`` is the analytic count
    per step.

    Args:
        d_model: width of the pooled hidden state.
        n_paths: fold points K (the one-hot bucket's width).
        proj_dim: width the hidden state is projected to before the GRU reads it.
        hidden: GRU width.
        price_floor: λ_floor of ``g``.
    """

    def __init__(self, d_model: int, n_paths: int, proj_dim: int, hidden: int, price_floor: float) -> None:
        super().__init__()
        self.n_paths = n_paths
        self.hidden = hidden
        self.price_floor = price_floor
        self.proj = nn.Linear(d_model, proj_dim)
        self.w_ih = nn.Linear(proj_dim + CONFIDENCE_STATS + n_paths + 2, 3 * hidden)
        self.w_hh = nn.Linear(hidden, 3 * hidden)
        self.actor = nn.Linear(hidden, 2)
        self.critic = nn.Linear(hidden, 2)  # training only: never run by forward

    def step_flops(self) -> float:
        """FLOPs of one :meth:`forward` step for one sample (2 per multiply-add)."""
        return 2.0 * sum(m.in_features * m.out_features for m in (self.proj, self.w_ih, self.w_hh, self.actor))

    def cell(self, pooled: Tensor, conf: Tensor, start: Tensor, k: int, h: Tensor) -> Tensor:
        """One GRU step at fold point ``k`` → the new state ``(A, H)``.

        Args:
            pooled: ``(A, C)`` pooled hidden states.
            conf: ``(A, 3)`` the exit head's confidence statistics there (:func:`confidence_stats`).
            start: ``(A,)`` predicted buckets.
            k: fold-point index.
            h: ``(A, H)`` previous state.
        """
        K = self.n_paths
        dt = self.proj.weight.dtype  # the policy's dtype (fp32, or a bf16/fp16 target's cast)
        z = F.layer_norm(pooled.to(dt), pooled.shape[-1:])  # (A, C) scale-free across depths; no FLOPs counted
        onehot = F.one_hot(start, K).to(dt)  # (A, K)
        pos = torch.full_like(onehot[:, :1], k / max(1, K - 1))  # (A, 1)
        past = (start <= k).to(dt)[:, None]  # (A, 1) the policy's decision counts from here on
        u = torch.cat([self.proj(z), conf.to(dt), onehot, pos, past], dim=1)  # (A, P + 3 + K + 2)
        gi, gh = self.w_ih(u), self.w_hh(h)  # (A, 3H) each
        ir, iz, i_n = gi.chunk(3, dim=1)
        hr, hz, h_n = gh.chunk(3, dim=1)
        r, zg = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        return (1 - zg) * n + zg * h  # (A, H)

    def logit(self, h: Tensor, lam: Tensor | float) -> Tensor:
        """``(A,)`` continue logit; non-increasing in the compute price ``lam``."""
        a, c = self.actor(h).unbind(dim=1)  # (A,) each
        # a float price stays a Python float: no tensor is made inside a captured CUDA graph
        g = torch.log1p(lam / self.price_floor) if isinstance(lam, Tensor) else math.log1p(lam / self.price_floor)
        return a - g * F.softplus(c)

    def forward(
        self, pooled: Tensor, conf: Tensor, start: Tensor, k: int, h: Tensor, lam: float
    ) -> tuple[Tensor, Tensor]:
        """One decision at fold point ``k`` → (new state ``(A, H)``, continue logit ``(A,)``)."""
        h = self.cell(pooled, conf, start, k, h)
        return h, self.logit(h, lam)

    def unroll(self, pooled: Tensor, conf: Tensor, start: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced pass over the fold points → continue logits and critic values ``(N, K)``.

        Args: pooled ``(N, K, C)``, conf ``(N, K, 3)``, start ``(N,)`` buckets, lam ``(N,)`` prices.
        """
        N, K = pooled.shape[:2]
        h = pooled.new_zeros(N, self.hidden, dtype=torch.float32)
        logits, values = [], []
        for k in range(K):
            h = self.cell(pooled[:, k], conf[:, k], start, k, h)
            logits.append(self.logit(h, lam))
            v, w = self.critic(h).unbind(dim=1)
            values.append(v + lam * w)
        return torch.stack(logits, dim=1), torch.stack(values, dim=1)
