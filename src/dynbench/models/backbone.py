"""The backbone contract every method works on: ``embed → blocks → readout``.

A backbone is a dense transformer for one task. Methods never reach inside a specific architecture:
they call ``embed``, iterate over ``blocks`` (each a :class:`~dynbench.models.block.Block`) and
finish with ``readout`` (final norm → pooling → head), or with a copy of it as an exit head.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor, nn

from dynbench.models.block import Block, BlockConfig, Norm, block_flops, make_norm
from dynbench.types import Trace

Pool = Literal["cls", "none"]


class Readout(nn.Module):
    """Final norm, pooling and linear head. Also the shape of every exit head.

    Args:
        d_model: residual width.
        n_out: classes or vocabulary size.
        pool: ``"cls"`` reads token 0 (ViT), ``"none"`` keeps every token (language models).
        norm_eps: LayerNorm / RMSNorm epsilon.
        norm: ``"layernorm"`` (GPT-2/ViT) or ``"rmsnorm"`` (Llama).
        bias: whether the head has a bias (Llama's and tied heads have none).
    """

    def __init__(
        self, d_model: int, n_out: int, pool: Pool, norm_eps: float = 1e-5, norm: Norm = "layernorm", bias: bool = True
    ) -> None:
        super().__init__()
        self.pool = pool
        self.norm = make_norm(norm, d_model, norm_eps)
        self.head = nn.Linear(d_model, n_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` → ``(B, K)`` for ``cls`` pooling or ``(B, T, V)`` for ``none``."""
        if self.pool == "cls":
            x = x[:, 0]  # (B, C)
        return self.head(self.norm(x))

    def flops(self, tokens: int) -> float:
        """Analytic FLOPs of one application on a sequence of ``tokens`` tokens."""
        positions = 1 if self.pool == "cls" else tokens
        return 2.0 * positions * self.head.in_features * self.head.out_features


class Backbone(nn.Module, ABC):
    """A dense transformer: ``embed → blocks → readout``.

    Subclasses build ``blocks`` and ``readout`` in ``__init__`` and implement :meth:`embed`.
    """

    blocks: nn.ModuleList
    readout: Readout
    block_config: BlockConfig

    @abstractmethod
    def embed(self, inputs: Tensor) -> Tensor:
        """Task input → ``(B, T, C)`` token states."""

    @abstractmethod
    def embed_flops(self, inputs_shape: tuple[int, ...]) -> float:
        """Analytic :meth:`embed` FLOPs for one sample of this shape (batch dimension excluded)."""

    @abstractmethod
    def n_tokens(self, inputs_shape: tuple[int, ...]) -> int:
        """Tokens the blocks see for one sample of this input shape (batch dimension excluded)."""

    def forward(self, inputs: Tensor) -> Tensor:
        """Dense forward pass: logits ``(B, K)`` or ``(B, T, V)``."""
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x)
        return self.readout(x)

    @property
    def n_blocks(self) -> int:
        """Number of transformer blocks L."""
        return len(self.blocks)

    @property
    def n_heads(self) -> int:
        """Attention heads per block."""
        return self.block_config.n_heads

    def dense_trace(self, inputs: Tensor) -> Trace:
        """The trace of a full forward pass over ``inputs`` (every block, token and head)."""
        return Trace.dense(inputs.shape[0], self.n_blocks, self.n_tokens(tuple(inputs.shape[1:])), self.n_heads)

    def flops(self, trace: Trace, inputs_shape: tuple[int, ...]) -> Tensor:
        """Analytic executed FLOPs per sample, ``(B,)`` float64, from what the trace says ran.

        Args:
            trace: per-sample record of executed blocks, tokens, heads and (optionally) MLP hidden
                units.
            inputs_shape: shape of one sample's input (no batch dimension).
        """
        tokens = self.n_tokens(inputs_shape)
        cfg = self.block_config
        blocks = block_flops(cfg, trace.block_tokens, trace.block_kv, trace.block_heads)  # (B, L)
        if trace.block_mlp_units is not None:  # part of the MLP width ran: charge the hidden units executed
            full_units = trace.block_tokens.double() * cfg.mlp_hidden  # (B, L) what block_flops charged
            blocks = blocks + mlp_unit_flops(cfg) * (trace.block_mlp_units.double() - full_units)
        blocks = blocks.sum(dim=1)  # (B,)
        readout = trace.readout.double() * self.readout.flops(tokens)
        return self.embed_flops(inputs_shape) + blocks + readout + trace.controller_flops.double()

    def dense_flops(self, inputs_shape: tuple[int, ...]) -> float:
        """Analytic FLOPs of one dense forward pass on one sample."""
        with torch.device("cpu"):  # an analytic count: on the host, whatever device the model or the caller uses
            return float(self.flops(self.dense_trace(torch.zeros((1, *inputs_shape))), inputs_shape)[0])


def mlp_unit_flops(cfg: BlockConfig) -> float:
    """FLOPs of one MLP hidden unit on one token: its input row(s) and output column.

    2 FLOPs per multiply-add. GELU MLP: ``fc_in`` row + ``fc_out`` column = 4·C; SwiGLU: gate and up
    rows + down column = 6·C.
    """
    return 2.0 * cfg.d_model * (3 if cfg.mlp == "swiglu" else 2)


def make_blocks(cfg: BlockConfig, n_layers: int) -> nn.ModuleList:
    """``n_layers`` identical-shape blocks."""
    return nn.ModuleList(Block(cfg) for _ in range(n_layers))


def init_weights(module: nn.Module) -> None:
    """GPT-2/ViT init: N(0, 0.02) weights, zero biases, unit norms (LayerNorm and RMSNorm)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.RMSNorm):
            nn.init.ones_(m.weight)
