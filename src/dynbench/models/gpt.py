"""A decoder-only language model built from the shared :class:`~dynbench.models.block.Block` (nanoGPT shape).

Paper: "Language Models are Unsupervised Multitask Learners" (GPT-2). Token and learned position embeddings,
causal blocks, and a readout that predicts the next token at every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynbench.models.backbone import Backbone, Readout, init_weights, make_blocks
from dynbench.models.block import BlockConfig


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT."""

    vocab_size: int = 64  # tokens in the vocabulary
    block_size: int = 64  # longest sequence (learned positions)
    d_model: int = 64  # residual width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads per block
    mlp_ratio: float = 4.0  # MLP width / d_model
    dropout: float = 0.0  # training-time dropout

    def block_config(self) -> BlockConfig:
        """The shape of each block."""
        return BlockConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            mlp_hidden=int(self.d_model * self.mlp_ratio),
            causal=True,
            dropout=self.dropout,
        )


class GPT(Backbone):
    """Causal language model over ``(B, T)`` token ids; logits ``(B, T, V)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.block_config = cfg.block_config()
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = make_blocks(self.block_config, cfg.n_layers)
        self.readout = Readout(cfg.d_model, cfg.vocab_size, pool="none")
        init_weights(self)

    def embed(self, inputs: Tensor) -> Tensor:
        """``(B, T)`` token ids → ``(B, T, C)``."""
        T = inputs.shape[1]
        if T > self.config.block_size:
            raise ValueError(
                f"Sequence length {T} exceeds block_size={self.config.block_size}. "
                "Use shorter sequences or a backbone with a larger block_size."
            )
        pos = torch.arange(T, device=inputs.device)
        return self.tok_embed(inputs) + self.pos_embed(pos)  # (B, T, C)

    def embed_flops(self, inputs_shape: tuple[int, ...]) -> float:
        """Embedding lookups are gathers, not multiply-adds: 0 FLOPs."""
        return 0.0

    def n_tokens(self, inputs_shape: tuple[int, ...]) -> int:
        """One token per input id."""
        return int(inputs_shape[0])
