"""A decoder-only language model built from the shared :class:`~dynbench.models.block.Block`.

Paper: "Language Models are Unsupervised Multitask Learners" (GPT-2). By default the nanoGPT shape:
token and learned position embeddings, LayerNorm/GELU causal blocks, and an untied readout that
predicts the next token at every position.

The same class holds Llama-style models (SmolLM2, converted by :mod:`dynbench.models.convert`):
RMSNorm, SwiGLU, grouped-query attention, rotary positions inside attention instead of learned ones
(``learned_positions=False``), no biases, and the output head tied to the token embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynbench.models.backbone import Backbone, Readout, init_weights, make_blocks
from dynbench.models.block import BlockConfig, MLPKind, Norm


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT.

    The defaults are GPT-2's; :mod:`dynbench.models.convert` fills the Llama fields.
    """

    vocab_size: int = 64  # tokens in the vocabulary
    block_size: int = 64  # longest sequence (learned positions, or the context length of a rotary model)
    d_model: int = 64  # residual width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads per block
    mlp_ratio: float = 4.0  # MLP width / d_model (ignored when mlp_hidden is set)
    dropout: float = 0.0  # training-time dropout
    mlp_hidden: int | None = None  # exact MLP width, for pretrained models whose width is no round ratio
    n_kv_heads: int | None = None  # grouped-query attention key/value heads; None = n_heads
    norm: Norm = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama), in the blocks and the readout
    mlp: MLPKind = "gelu"  # "gelu" (GPT-2) or "swiglu" (Llama)
    bias: bool = True  # biases on every projection and the head (GPT-2); Llama has none
    norm_eps: float = 1e-5  # norm epsilon (SmolLM2: 1e-5 as well)
    rope: bool = False  # rotary positions inside attention (Llama)
    rope_theta: float = 10000.0  # rotary base θ
    learned_positions: bool = True  # add a learned position embedding (GPT-2); Llama uses rope instead
    tie_embeddings: bool = False  # the output head reuses the token embedding matrix (SmolLM2, GPT-2 original)

    def __post_init__(self) -> None:
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"GPTConfig.mlp_hidden must be >= 1 or None, got {self.mlp_hidden}. Use e.g. 256.")

    def block_config(self) -> BlockConfig:
        """The shape of each block."""
        return BlockConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            mlp_hidden=int(self.d_model * self.mlp_ratio) if self.mlp_hidden is None else self.mlp_hidden,
            causal=True,
            bias=self.bias,
            dropout=self.dropout,
            norm_eps=self.norm_eps,
            norm=self.norm,
            mlp=self.mlp,
            n_kv_heads=self.n_kv_heads,
            rope=self.rope,
            rope_theta=self.rope_theta,
        )


class GPT(Backbone):
    """Causal language model over ``(B, T)`` token ids; logits ``(B, T, V)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.block_config = cfg.block_config()
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.learned_positions else None
        self.blocks = make_blocks(self.block_config, cfg.n_layers)
        self.readout = Readout(
            cfg.d_model, cfg.vocab_size, pool="none", norm_eps=cfg.norm_eps, norm=cfg.norm, bias=cfg.bias
        )
        init_weights(self)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make the head share the token embedding's parameter when ``tie_embeddings``.

        Call it again after ``load_state_dict(..., assign=True)``, which replaces parameters one by
        one.
        """
        if self.config.tie_embeddings:
            self.readout.head.weight = self.tok_embed.weight

    def embed(self, inputs: Tensor) -> Tensor:
        """``(B, T)`` token ids → ``(B, T, C)``."""
        T = inputs.shape[1]
        if T > self.config.block_size:
            raise ValueError(
                f"Sequence length {T} exceeds block_size={self.config.block_size}. "
                "Use shorter sequences or a backbone with a larger block_size."
            )
        if self.pos_embed is None:
            return self.tok_embed(inputs)  # (B, T, C); positions enter inside attention (rope)
        pos = torch.arange(T, device=inputs.device)
        return self.tok_embed(inputs) + self.pos_embed(pos)  # (B, T, C)

    def embed_flops(self, inputs_shape: tuple[int, ...]) -> float:
        """Embedding lookups are gathers, not multiply-adds: 0 FLOPs."""
        return 0.0

    def n_tokens(self, inputs_shape: tuple[int, ...]) -> int:
        """One token per input id."""
        return int(inputs_shape[0])
