"""A Vision Transformer built from the shared :class:`~dynbench.models.block.Block`.

Paper: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", https://arxiv.org/abs/2010.11929.
Patches are flattened and projected by a linear layer (equivalent to the usual stride-p convolution,
and counted exactly), a CLS token is prepended, learned positions are added, and the readout
classifies the CLS token.

The same module runs pretrained timm and torchvision ViTs (:mod:`dynbench.models.vit_import`): a
patch is flattened in (channel, row, column) order, so a convolution weight ``(C, 3, p, p)``
reshaped to ``(C, 3·p·p)`` is this linear layer exactly; their LayerNorm epsilon (1e-6) is
``ViTConfig.norm_eps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynbench.models.backbone import Backbone, Readout, init_weights, make_blocks
from dynbench.models.block import BlockConfig


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT."""

    image_size: int = 8  # square input side in pixels
    patch_size: int = 2  # square patch side; image_size must be a multiple
    channels: int = 1  # input channels (1 for grey digits, 3 for RGB)
    n_classes: int = 10  # classifier outputs
    d_model: int = 64  # residual width
    n_layers: int = 6  # transformer blocks
    n_heads: int = 4  # attention heads per block
    mlp_ratio: float = 4.0  # MLP width / d_model
    dropout: float = 0.0  # training-time dropout
    norm_eps: float = 1e-5  # LayerNorm epsilon: torch's default for models trained here; timm/torchvision ViTs: 1e-6

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}. "
                "Pick a patch size that tiles the image."
            )

    @property
    def n_patches(self) -> int:
        """Patches per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch."""
        return self.channels * self.patch_size**2

    def block_config(self) -> BlockConfig:
        """The shape of each block."""
        return BlockConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            mlp_hidden=int(self.d_model * self.mlp_ratio),
            causal=False,
            dropout=self.dropout,
            norm_eps=self.norm_eps,
        )


def patchify(images: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` images → ``(B, N, C·p·p)`` flattened non-overlapping patches (no FLOPs)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(B, (H // patch) * (W // patch), C * patch * patch)  # (B, N, C·p·p)


class ViT(Backbone):
    """ViT classifier over ``(B, C, H, W)`` images."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.block_config = cfg.block_config()
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.d_model))
        self.blocks = make_blocks(self.block_config, cfg.n_layers)
        self.readout = Readout(cfg.d_model, cfg.n_classes, pool="cls", norm_eps=cfg.norm_eps)
        init_weights(self)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, inputs: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, 1 + N, C)`` with the CLS token first."""
        x = self.patch_embed(patchify(inputs, self.config.patch_size))  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1+N, C)

    def embed_flops(self, inputs_shape: tuple[int, ...]) -> float:
        """Patch projection: 2 · N · patch_dim · C."""
        return 2.0 * self.config.n_patches * self.config.patch_dim * self.config.d_model

    def n_tokens(self, inputs_shape: tuple[int, ...]) -> int:
        """Patches plus the CLS token."""
        return self.config.n_patches + 1
