"""The one transformer block every backbone is built from: pre-norm attention + MLP.

Written for exact FLOP counting: every multiply-add goes through ``F.linear`` or
``F.scaled_dot_product_attention`` (both counted by ``FlopCounterMode``; the harness registers the CPU attention
formula PyTorch leaves out). No fused ``nn.TransformerEncoderLayer``, whose fast path counts 0 FLOPs.

Methods that execute part of a block use its pieces directly: a subset of heads (``head_idx``, the weights are
sliced so the skipped heads cost nothing), or the residual-free update ``delta`` (Mixture-of-Depths).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class BlockConfig:
    """Shape of one block."""

    d_model: int = 64  # residual width C
    n_heads: int = 4  # attention heads; head dim = d_model // n_heads
    mlp_hidden: int = 256  # MLP inner width (4 × d_model is the usual ratio)
    causal: bool = False  # decoder blocks attend only to earlier positions
    bias: bool = True  # GPT-2/ViT style biases on every projection
    dropout: float = 0.0  # residual and attention dropout while training; off at eval
    norm_eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}. "
                "Pick n_heads dividing d_model (e.g. d_model=64, n_heads=4)."
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads


def head_rows(head_idx: Tensor, head_dim: int) -> Tensor:
    """Weight rows belonging to heads ``head_idx`` in a ``(n_heads * head_dim, ·)`` projection."""
    offsets = torch.arange(head_dim, device=head_idx.device)
    return (head_idx[:, None] * head_dim + offsets).reshape(-1)  # (h * hd,)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections (so heads can be sliced out)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.d_model
        self.q_proj = nn.Linear(c, c, bias=cfg.bias)
        self.k_proj = nn.Linear(c, c, bias=cfg.bias)
        self.v_proj = nn.Linear(c, c, bias=cfg.bias)
        self.o_proj = nn.Linear(c, c, bias=cfg.bias)

    def forward(
        self,
        x: Tensor,
        *,
        head_idx: Tensor | None = None,
        head_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend over the tokens of ``x``.

        Args:
            x: ``(B, T, C)`` normalised block input.
            head_idx: ``(h,)`` heads to execute for the whole batch; the others are not computed.
            head_mask: ``(B, n_heads)`` per-sample 0/1 multipliers on head outputs (computes every head;
                for training-time masking, not for saving compute).
            attn_mask: boolean mask broadcastable to ``(B, h, T, T)``; True = may attend.

        Returns:
            ``(B, T, C)`` attention output after the output projection.
        """
        B, T, C = x.shape
        hd = self.cfg.head_dim
        wq, wk, wv, wo = self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.o_proj.weight
        bq, bk, bv = self.q_proj.bias, self.k_proj.bias, self.v_proj.bias
        if head_idx is not None:
            rows = head_rows(head_idx, hd)
            wq, wk, wv, wo = wq[rows], wk[rows], wv[rows], wo[:, rows]
            bq, bk, bv = (None if b is None else b[rows] for b in (bq, bk, bv))
        h = wq.shape[0] // hd
        q = F.linear(x, wq, bq).view(B, T, h, hd).transpose(1, 2)  # (B, h, T, hd)
        k = F.linear(x, wk, bk).view(B, T, h, hd).transpose(1, 2)  # (B, h, T, hd)
        v = F.linear(x, wv, bv).view(B, T, h, hd).transpose(1, 2)  # (B, h, T, hd)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.cfg.dropout if self.training else 0.0,
            is_causal=self.cfg.causal and attn_mask is None,
        )  # (B, h, T, hd)
        if head_mask is not None:
            y = y * head_mask[:, :, None, None].to(y.dtype)
        y = y.transpose(1, 2).reshape(B, T, h * hd)  # (B, T, h*hd)
        return F.linear(y, wo, self.o_proj.bias)  # (B, T, C)


class MLP(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C) → (B, T, C)``."""
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``h = x + attn(norm(x)); out = h + mlp(norm(h))``."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        head_idx: Tensor | None = None,
        head_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``(B, T, C) → (B, T, C)``; see :meth:`Attention.forward` for the optional arguments."""
        h = x + self.drop(self.attn(self.attn_norm(x), head_idx=head_idx, head_mask=head_mask, attn_mask=attn_mask))
        return h + self.drop(self.mlp(self.mlp_norm(h)))

    def delta(self, x: Tensor, *, attn_mask: Tensor | None = None) -> Tensor:
        """The block's update without the residual: ``forward(x) - x``, computed without the cancellation."""
        a = self.drop(self.attn(self.attn_norm(x), attn_mask=attn_mask))  # (B, T, C)
        return a + self.drop(self.mlp(self.mlp_norm(x + a)))  # (B, T, C)


def block_flops(cfg: BlockConfig, tokens: Tensor, kv: Tensor, heads: Tensor) -> Tensor:
    """Analytic forward FLOPs of one block (1 multiply-add = 2 FLOPs; matmuls and attention only).

    Norms, activations, softmax and residual adds are not counted — the same convention as
    ``torch.utils.flop_counter``. Causal attention is counted over the full ``tokens × kv`` score matrix, as
    PyTorch's attention formulas do.

    Args:
        cfg: block shape.
        tokens: query tokens processed (any shape; 0 = block skipped).
        kv: keys attended per query token.
        heads: heads executed.

    Returns:
        FLOPs, float64, same shape as ``tokens``.
    """
    t, s, h = tokens.double(), kv.double(), heads.double()
    c, hd, f = cfg.d_model, cfg.head_dim, cfg.mlp_hidden
    qkv = 3 * 2 * t * c * (h * hd)  # q, k, v projections of the processed tokens, executed heads only
    scores = 2 * t * s * (h * hd) * 2  # QKᵀ and attention-weighted V
    out = 2 * t * (h * hd) * c
    mlp = 2 * t * c * f * 2
    return qkv + scores + out + mlp
