"""An audio transformer encoder over log-mel frames.

Built from the shared :class:`~dynbench.models.block.Block`, the model follows
:mod:`dynbench.models.vit` with time in place of space: ``stack`` consecutive feature frames are
concatenated into one token (frame stacking, as in low-frame-rate acoustic models, which cuts the
token count by ``stack``), projected by a linear layer, a CLS token is prepended, learned positions
are added, and the readout classifies the CLS token. The features are computed by the task
(:mod:`dynbench.tasks.data.logmel`), not here, so the model's FLOPs are the transformer's. Nothing
in this file is data; it is the same for real or synthetic speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynbench.models.backbone import Backbone, Readout, init_weights, make_blocks
from dynbench.models.block import BlockConfig


@dataclass(frozen=True)
class AudioConfig:
    """Shape of an audio encoder."""

    n_mels: int = 40  # feature bins per frame (the front end's n_mels)
    n_frames: int = 100  # frames per clip (1.0 s at a 10 ms hop); must be a multiple of stack
    stack: int = 4  # frames per token: 40 ms tokens, 25 tokens per clip
    n_classes: int = 10  # classifier outputs
    d_model: int = 64  # residual width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads per block
    mlp_ratio: float = 4.0  # MLP width / d_model
    dropout: float = 0.0  # training-time dropout

    def __post_init__(self) -> None:
        if self.stack < 1 or self.n_frames % self.stack:
            raise ValueError(
                f"n_frames={self.n_frames} is not a multiple of stack={self.stack}. "
                "Pick a stack that divides the frame count (e.g. 4 for 100 frames)."
            )

    @property
    def n_patches(self) -> int:
        """Tokens per clip before the CLS token."""
        return self.n_frames // self.stack

    @property
    def token_dim(self) -> int:
        """Values per stacked token."""
        return self.stack * self.n_mels

    def block_config(self) -> BlockConfig:
        """The shape of each block (bidirectional attention)."""
        return BlockConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            mlp_hidden=int(self.d_model * self.mlp_ratio),
            causal=False,
            dropout=self.dropout,
        )


def stack_frames(features: Tensor, stack: int) -> Tensor:
    """``(B, T, M)`` frames → ``(B, T / stack, stack · M)`` tokens (no FLOPs).

    Each token concatenates ``stack`` consecutive frames.
    """
    B, T, M = features.shape
    return features.reshape(B, T // stack, stack * M)  # (B, N, k·M)


class AudioEncoder(Backbone):
    """Transformer encoder classifier over ``(B, n_frames, n_mels)`` log-mel features."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.config = cfg
        self.block_config = cfg.block_config()
        self.frame_embed = nn.Linear(cfg.token_dim, cfg.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.d_model))
        self.blocks = make_blocks(self.block_config, cfg.n_layers)
        self.readout = Readout(cfg.d_model, cfg.n_classes, pool="cls")
        init_weights(self)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, inputs: Tensor) -> Tensor:
        """``(B, T, M)`` features → ``(B, 1 + T / stack, C)`` token states, the CLS token first."""
        cfg = self.config
        if inputs.dim() != 3 or tuple(inputs.shape[1:]) != (cfg.n_frames, cfg.n_mels):
            raise ValueError(
                f"AudioEncoder expects (B, {cfg.n_frames}, {cfg.n_mels}) log-mel features, got "
                f"{tuple(inputs.shape)}. Match AudioConfig.n_frames/n_mels to the front end."
            )
        x = self.frame_embed(stack_frames(inputs, cfg.stack))  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1+N, C)

    def embed_flops(self, inputs_shape: tuple[int, ...]) -> float:
        """Frame projection: 2 · N · stack · n_mels · C."""
        return 2.0 * self.config.n_patches * self.config.token_dim * self.config.d_model

    def n_tokens(self, inputs_shape: tuple[int, ...]) -> int:
        """Stacked-frame tokens plus the CLS token."""
        return self.config.n_patches + 1
