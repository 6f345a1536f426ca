"""Toy vision: seeded synthetic 8×8 images for unit and contract tests (2 blocks, d=32).

Four classes, each a random template; every sample is its template scaled and buried in Gaussian
noise of a per-sample level, so samples range from easy to hard and input-adaptive methods have
something to adapt to. Not a benchmark: the data is made up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViT, ViTConfig
from dynbench.tasks.base import Split, Task, TensorSplit, TopOneAccuracy, register_task
from dynbench.validation import check_range


@dataclass(frozen=True)
class ToyVisionConfig:
    """Synthetic data and a tiny ViT."""

    n_train: int = 512  # training images
    n_test: int = 128  # validation and (another draw) evaluation images
    n_classes: int = 4  # template classes
    noise: tuple[float, float] = (0.2, 1.5)  # per-sample noise std range: the spread of difficulty
    data_seed: int = 1234  # the data never changes with the training seed
    model: ViTConfig = ViTConfig(image_size=8, patch_size=4, n_classes=4, d_model=32, n_layers=2, n_heads=2)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=10))

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test"):
            check_range(f"ToyVisionConfig.{name}", getattr(self, name), 1)
        check_range("ToyVisionConfig.n_classes", self.n_classes, 2, advice="Use 4.")
        check_range("ToyVisionConfig.noise[0]", self.noise[0], 0, advice="Give noise=(low, high), 0 <= low.")
        check_range(
            "ToyVisionConfig.noise[1]", self.noise[1], self.noise[0], advice="Give noise=(low, high), low <= high."
        )
        if math.isinf(self.noise[1]):  # infinite noise makes NaN images
            raise ValueError(f"ToyVisionConfig.noise[1] must be finite, got {self.noise[1]}. Use e.g. noise=0.2;1.5.")


@register_task("toy-vision")
class ToyVision(Task):
    """Synthetic template-matching images; quality = top-1."""

    modality = "vision"
    synthetic = True
    description = "synthetic 8×8 images, 4 classes, 2-block ViT (tests only)"
    size = "512 train / 128 val / 128 test images (generated)"
    metric = TopOneAccuracy()
    Config = ToyVisionConfig

    def build_backbone(self) -> ViT:
        """A 2-block, d=32 ViT."""
        return ViT(self.config.model)

    def load_split(self, split: Split) -> TensorSplit:
        """Generate the split from the data seed (train, val and test are disjoint draws)."""
        cfg = self.config
        n = cfg.n_train if split == "train" else cfg.n_test
        g = torch.Generator().manual_seed(cfg.data_seed)
        templates = torch.randn(cfg.n_classes, 1, 8, 8, generator=g)  # (K, 1, 8, 8)
        g.manual_seed(cfg.data_seed + {"train": 1, "val": 2, "test": 3}[split])
        labels = torch.randint(cfg.n_classes, (n,), generator=g)
        lo, hi = cfg.noise
        sigma = lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=g)  # (N, 1, 1, 1)
        images = templates[labels] + sigma * torch.randn(n, 1, 8, 8, generator=g)  # (N, 1, 8, 8)
        return TensorSplit(images, labels)
