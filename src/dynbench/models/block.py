"""The one transformer block every backbone is built from: pre-norm attention + MLP.

Written for exact FLOP counting: every multiply-add goes through ``F.linear`` or
``F.scaled_dot_product_attention`` (both counted by ``FlopCounterMode``; the harness registers the
CPU attention formula PyTorch leaves out). No fused ``nn.TransformerEncoderLayer``, whose fast path
counts 0 FLOPs.

Two families share the code, chosen by :class:`BlockConfig` fields whose defaults are the GPT-2/ViT
block:

- GPT-2 / ViT (default): LayerNorm, GELU MLP, biases, multi-head attention, positions added outside
  the block.
- Llama (SmolLM2 …): ``norm="rmsnorm"``, ``mlp="swiglu"`` (gate/up/down projections),
  ``bias=False``, grouped-query attention (``n_kv_heads`` < ``n_heads``) and rotary position
  embeddings (``rope=True``, half-split "rotate_half" convention of Hugging Face's Llama) applied to
  q and k inside attention.

Methods that execute part of a block use its pieces directly: a subset of heads (``head_idx``, the
weights are sliced so the skipped heads cost nothing), the residual-free update ``delta``
(Mixture-of-Depths), and ``positions`` (the original positions of a token subset, so rotary
attention stays correct when only some tokens run).

Grouped-query attention and head subsets: query head ``i`` reads key/value head
``i // (n_heads / n_kv_heads)`` (the grouping of Llama and llama.cpp). With ``head_idx`` the q/o
rows of the chosen heads are sliced and the k/v rows of only the kv groups those heads use; each
chosen head is then given its group's k/v by an index gather (a copy, 0 FLOPs). Dense GQA passes
``enable_gqa=True`` to ``F.scaled_dot_product_attention`` when this torch's FLOP formula counts GQA
shapes correctly, and otherwise repeats k/v heads explicitly (again 0 FLOPs); either way attention
is counted per *query* head. :func:`block_flops` counts k/v projections for the fewest groups that
can hold the executed heads, ``ceil(heads / group)``: exact for dense blocks and for head subsets
packed into whole groups; a method that scatters heads over more groups than that must report the
extra k/v cost itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.validation import check_choices, check_range

Norm = Literal["layernorm", "rmsnorm"]
MLPKind = Literal["gelu", "swiglu"]
BLOCK_CHOICE_ADVICE = {
    "norm": "Use layernorm (GPT-2/ViT) or rmsnorm (Llama).",
    "mlp": "Use gelu (GPT-2/ViT: fc_in → GELU → fc_out) or swiglu (Llama).",
}
"""What each :class:`BlockConfig` choice means, appended to the message of a value outside them."""


@dataclass(frozen=True)
class BlockConfig:
    """Shape of one block.

    The defaults are the GPT-2/ViT block; see the module docstring for Llama.
    """

    d_model: int = 64  # residual width C
    n_heads: int = 4  # attention (query) heads; head dim = d_model // n_heads
    mlp_hidden: int = 256  # MLP inner width (4 × d_model is the usual ratio; SwiGLU models use ~8/3)
    causal: bool = False  # decoder blocks attend only to earlier positions
    bias: bool = True  # GPT-2/ViT style biases on every projection; Llama has none
    dropout: float = 0.0  # residual and attention dropout while training; off at eval
    norm_eps: float = 1e-5  # LayerNorm / RMSNorm epsilon
    norm: Norm = "layernorm"  # "layernorm" (GPT-2/ViT) or "rmsnorm" (Llama)
    mlp: MLPKind = "gelu"  # "gelu": fc_in → GELU → fc_out; "swiglu": fc_out(silu(fc_gate x) · fc_in x) (Llama)
    n_kv_heads: int | None = None  # key/value heads for grouped-query attention; None = n_heads (plain MHA)
    rope: bool = False  # rotary position embeddings on q and k (Llama); False = positions added outside
    rope_theta: float = 10000.0  # rotary base θ (10,000 in Llama 2; SmolLM2 uses 100,000)

    def __post_init__(self) -> None:
        check_choices(self, BLOCK_CHOICE_ADVICE)
        check_range("BlockConfig.n_heads", self.n_heads, 1, advice="Use e.g. 4.")
        check_range("BlockConfig.mlp_hidden", self.mlp_hidden, 1, advice="Use e.g. 4 × d_model.")
        check_range("BlockConfig.dropout", self.dropout, 0, 1, high_open=True, advice="Use 0.0 (no dropout).")
        check_range("BlockConfig.norm_eps", self.norm_eps, 0, low_open=True, advice="Use 1e-5.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}. "
                "Pick n_heads dividing d_model (e.g. d_model=64, n_heads=4)."
            )
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must be >= 1 and divide n_heads={self.n_heads}. "
                "Use a divisor of n_heads (e.g. n_heads=9, n_kv_heads=3), or None for plain multi-head attention."
            )
        if self.rope and (self.head_dim % 2 or self.rope_theta <= 0):
            raise ValueError(
                f"Rotary embeddings need an even head dim and rope_theta > 0, got head_dim={self.head_dim}, "
                f"rope_theta={self.rope_theta}. Change d_model/n_heads or rope_theta, or set rope=False."
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_heads`` unless grouped-query attention)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head."""
        return self.n_heads // self.kv_heads


def make_norm(kind: Norm, d_model: int, eps: float) -> nn.Module:
    """A ``LayerNorm`` (weight and bias) or an ``RMSNorm`` (weight only) over the last dimension."""
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    return nn.LayerNorm(d_model, eps=eps)


def head_rows(head_idx: Tensor, head_dim: int) -> Tensor:
    """Weight rows belonging to heads ``head_idx`` in a ``(n_heads * head_dim, ·)`` projection."""
    offsets = torch.arange(head_dim, device=head_idx.device)
    return (head_idx[:, None] * head_dim + offsets).reshape(-1)  # (h * hd,)


@functools.cache
def sdpa_counts_gqa() -> bool:
    """Whether this torch's attention FLOP formula accepts fewer k/v heads than q heads.

    That is, whether it counts grouped-query attention (``enable_gqa``).
    """
    try:
        from torch.utils.flop_counter import sdpa_flop_count

        return sdpa_flop_count((1, 2, 1, 2), (1, 1, 1, 2), (1, 1, 1, 2)) == 2 * 2 * 2 * 2
    except Exception:  # an older formula asserts equal head counts: repeat k/v explicitly instead
        return False


def rope_tables(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Cosines and sines of the rotary angles ``position · θ^(-2i/head_dim)``, computed in float32.

    Args:
        positions: ``(T,)`` or ``(B, T)`` integer positions.
        head_dim: width of one head (even).
        theta: rotary base.
        dtype: dtype of the returned tables.

    Returns:
        ``cos, sin``, each ``(T, head_dim/2)`` or ``(B, 1, T, head_dim/2)`` (broadcastable over
        heads).
    """
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim  # (hd/2,)
    inv_freq = 1.0 / (theta**exponent)  # (hd/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (T, hd/2) or (B, T, hd/2); elementwise: 0 FLOPs
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, T, hd/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``(B, h, T, hd)`` by the tables, in the half-split convention.

    The rotated pairs are ``(x[i], x[i + hd/2])``.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, h, T, hd/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, h, T, hd)


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention with separate q/k/v/o projections.

    The projections are separate so heads can be sliced.
    """

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(c, c, bias=cfg.bias)
        self.k_proj = nn.Linear(c, kv, bias=cfg.bias)
        self.v_proj = nn.Linear(c, kv, bias=cfg.bias)
        self.o_proj = nn.Linear(c, c, bias=cfg.bias)
        self._rope_cache: tuple[tuple[int, torch.device, torch.dtype], tuple[Tensor, Tensor]] | None = None

    def _rope(self, T: int, positions: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary tables for ``positions`` (default ``arange(T)``).

        The default's tables are cached per length, device and dtype.
        """
        if positions is not None:
            return rope_tables(positions.to(like.device), self.cfg.head_dim, self.cfg.rope_theta, like.dtype)
        key = (T, like.device, like.dtype)
        if self._rope_cache is None or self._rope_cache[0] != key:
            pos = torch.arange(T, device=like.device)
            self._rope_cache = (key, rope_tables(pos, self.cfg.head_dim, self.cfg.rope_theta, like.dtype))
        return self._rope_cache[1]

    def forward(
        self,
        x: Tensor,
        *,
        head_idx: Tensor | None = None,
        head_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Attend over the tokens of ``x``.

        Args:
            x: ``(B, T, C)`` normalised block input.
            head_idx: ``(h,)`` query heads to execute for the whole batch; the others are not
                computed. With grouped-query attention only the k/v groups these heads read are
                computed.
            head_mask: ``(B, n_heads)`` per-sample 0/1 multipliers on head outputs (computes every
                head; for training-time masking, not for saving compute).
            attn_mask: boolean mask broadcastable to ``(B, h, T, T)``; True = may attend.
            positions: ``(T,)`` or ``(B, T)`` positions of the tokens of ``x`` for rotary embeddings
                (default ``arange(T)``); ignored without ``rope``.

        Returns:
            ``(B, T, C)`` attention output after the output projection.
        """
        B, T, C = x.shape
        cfg = self.cfg
        hd = cfg.head_dim
        wq, wk, wv, wo = self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.o_proj.weight
        bq, bk, bv = self.q_proj.bias, self.k_proj.bias, self.v_proj.bias
        kv_of_head: Tensor | None = None  # (h,) position of each executed head's k/v head among those computed
        if head_idx is not None:
            rows = head_rows(head_idx, hd)
            kv_rows = rows
            if cfg.group_size > 1:
                groups = torch.unique(head_idx // cfg.group_size)  # (g,) sorted kv groups the heads read
                kv_of_head = torch.searchsorted(groups, head_idx // cfg.group_size)  # (h,)
                kv_rows = head_rows(groups, hd)
            wq, wo, bq = wq[rows], wo[:, rows], None if bq is None else bq[rows]
            wk, wv = wk[kv_rows], wv[kv_rows]
            bk, bv = (None if b is None else b[kv_rows] for b in (bk, bv))
        h, hk = wq.shape[0] // hd, wk.shape[0] // hd
        q = F.linear(x, wq, bq).view(B, T, h, hd).transpose(1, 2)  # (B, h, T, hd)
        k = F.linear(x, wk, bk).view(B, T, hk, hd).transpose(1, 2)  # (B, hk, T, hd)
        v = F.linear(x, wv, bv).view(B, T, hk, hd).transpose(1, 2)  # (B, hk, T, hd)
        if cfg.rope:
            cos, sin = self._rope(T, positions, q)  # (T, hd/2) or (B, 1, T, hd/2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, h, T, hd), (B, hk, T, hd)
        gqa = {}
        if kv_of_head is None and hk != h:  # dense grouped-query attention
            if sdpa_counts_gqa():
                gqa = {"enable_gqa": True}
            else:
                kv_of_head = torch.arange(h, device=x.device) // cfg.group_size  # (h,)
        if kv_of_head is not None:  # each executed query head gets its group's k/v (a gather: 0 FLOPs)
            k, v = k.index_select(1, kv_of_head), v.index_select(1, kv_of_head)  # (B, h, T, hd)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=cfg.dropout if self.training else 0.0,
            is_causal=cfg.causal and attn_mask is None,
            **gqa,
        )  # (B, h, T, hd)
        if head_mask is not None:
            y = y * head_mask[:, :, None, None].to(y.dtype)
        y = y.transpose(1, 2).reshape(B, T, h * hd)  # (B, T, h*hd)
        return F.linear(y, wo, self.o_proj.bias)  # (B, T, C)


class MLP(nn.Module):
    """Two-layer GELU MLP, or SwiGLU.

    SwiGLU: ``fc_gate`` = Llama's gate_proj, ``fc_in`` = up_proj, ``fc_out`` = down_proj.
    """

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.fc_gate = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=cfg.bias)
        self.fc_in = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C) → (B, T, C)``."""
        if self.swiglu:
            return self.fc_out(F.silu(self.fc_gate(x)) * self.fc_in(x))  # (B, T, C)
        return self.fc_out(F.gelu(self.fc_in(x)))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: ``h = x + attn(norm(x)); out = h + mlp(norm(h))``."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        head_idx: Tensor | None = None,
        head_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """``(B, T, C) → (B, T, C)``; see :meth:`Attention.forward` for the optional arguments."""
        a = self.attn(
            self.attn_norm(x), head_idx=head_idx, head_mask=head_mask, attn_mask=attn_mask, positions=positions
        )
        h = x + self.drop(a)  # (B, T, C)
        return h + self.drop(self.mlp(self.mlp_norm(h)))

    def delta(self, x: Tensor, *, attn_mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """The block's update without the residual: ``forward(x) - x``.

        Computed without the cancellation of that subtraction.
        """
        a = self.drop(self.attn(self.attn_norm(x), attn_mask=attn_mask, positions=positions))  # (B, T, C)
        return a + self.drop(self.mlp(self.mlp_norm(x + a)))  # (B, T, C)


def block_flops(cfg: BlockConfig, tokens: Tensor, kv: Tensor, heads: Tensor) -> Tensor:
    """Analytic forward FLOPs of one block (1 multiply-add = 2 FLOPs; matmuls and attention only).

    Norms, activations, softmax, rotary embeddings and residual adds are not counted — the same
    convention as ``torch.utils.flop_counter``. Causal attention is counted over the full
    ``tokens × kv`` score matrix, as PyTorch's attention formulas do. With grouped-query attention
    the k/v projections cost ``kv_heads · head_dim`` output rows, for the
    ``ceil(heads / group_size)`` groups the executed heads need (see the module docstring).

    Args:
        cfg: block shape.
        tokens: query tokens processed (any shape; 0 = block skipped).
        kv: keys attended per query token.
        heads: query heads executed.

    Returns:
        FLOPs, float64, same shape as ``tokens``.
    """
    t, s, h = tokens.double(), kv.double(), heads.double()
    c, hd, f = cfg.d_model, cfg.head_dim, cfg.mlp_hidden
    if cfg.group_size == 1:
        qkv = 3 * 2 * t * c * (h * hd)  # q, k, v projections of the processed tokens, executed heads only
    else:
        kvh = torch.ceil(h / cfg.group_size)  # kv groups the executed query heads read
        qkv = 2 * t * c * (h * hd) + 2 * 2 * t * c * (kvh * hd)  # q for the heads; k, v for their groups
    scores = 2 * t * s * (h * hd) * 2  # QKᵀ and attention-weighted V, per query head
    out = 2 * t * (h * hd) * c
    mlp = 2 * t * c * f * (3 if cfg.mlp == "swiglu" else 2)  # SwiGLU: gate, up and down projections
    return qkv + scores + out + mlp
