"""Digits: scikit-learn's real 8×8 handwritten digits (1,797 images, 10 classes) with a small ViT.

The data ships inside scikit-learn (UCI optical recognition of handwritten digits), so this task
runs anywhere with no download. A fixed, seeded, stratified split holds out 20% of the images for
testing and 10% for validation; quality = top-1 accuracy on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViT, ViTConfig
from dynbench.tasks.base import Split, Task, TensorSplit, TopOneAccuracy, register_task
from dynbench.validation import check_range


@dataclass(frozen=True)
class DigitsConfig:
    """Split and model for the 8×8 digits."""

    test_fraction: float = 0.2  # held-out test share (~360 images)
    val_fraction: float = 0.1  # validation share, for method fitting that needs held-out data
    split_seed: int = 0  # the split never changes with the training seed
    max_shift: int = 0  # training shifts of up to this many pixels; 1 cost 6 points of top-1 at 1,500 steps
    model: ViTConfig = ViTConfig(
        image_size=8, patch_size=2, n_classes=10, d_model=64, n_layers=6, n_heads=4, dropout=0.0
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1500, batch_size=64, lr=2e-3, warmup_steps=100)
    )

    def __post_init__(self) -> None:
        check_range("DigitsConfig.test_fraction", self.test_fraction, 0, 1, low_open=True, advice="Use 0.2.")
        check_range("DigitsConfig.val_fraction", self.val_fraction, 0, 1, low_open=True, advice="Use 0.1.")
        check_range(
            "DigitsConfig.test_fraction + val_fraction",
            self.test_fraction + self.val_fraction,
            high=1,
            high_open=True,
            advice="Leave images to train on: e.g. 0.2 + 0.1.",
        )
        check_range("DigitsConfig.max_shift", self.max_shift, 0, advice="Use 0 for none.")


@register_task("digits")
class Digits(Task):
    """scikit-learn digits, 6-block ViT on 2×2 patches; quality = top-1."""

    modality = "vision"
    description = "scikit-learn 8×8 handwritten digits (1,797 real images), 6-block ViT"
    size = "1,797 images (1,259 train / 179 val / 359 test)"
    is_default = False
    metric = TopOneAccuracy()
    Config = DigitsConfig
    # quick profile: a third of the recipe; the 359 test images are few enough to keep whole
    quick_options = {"train.steps": 500}

    def build_backbone(self) -> ViT:
        """A 6-block, d=64 ViT over 16 patches + CLS."""
        return ViT(self.config.model)

    def augment(self, inputs: Tensor) -> Tensor:
        """Shift each image by up to ``max_shift`` pixels each way (zeros enter at the border).

        1,257 training images are few for a ViT, which lacks a convolution's built-in translation
        invariance.
        """
        s = self.config.max_shift
        if s == 0:
            return inputs
        B, C, H, W = inputs.shape
        background = (0.0 - 0.3) / 0.4  # a blank pixel after normalisation
        padded = torch.nn.functional.pad(inputs, (s, s, s, s), value=background)  # (B, C, H+2s, W+2s)
        dy, dx = torch.randint(0, 2 * s + 1, (2, B)).to(inputs.device)  # drawn on the host: one stream on any device
        b = torch.arange(B, device=inputs.device)[:, None, None, None]  # (B, 1, 1, 1)
        c = torch.arange(C, device=inputs.device)[None, :, None, None]  # (1, C, 1, 1)
        rows = (dy[:, None] + torch.arange(H, device=inputs.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=inputs.device))[:, None, None, :]  # (B, 1, 1, W)
        return padded[b, c, rows, cols]  # (B, C, H, W)

    def data_status(self) -> str:
        """Bundled with scikit-learn."""
        return "present (bundled with scikit-learn)"

    def load_split(self, split: Split) -> TensorSplit:
        """A stratified split: per class, a seeded shuffle cut into test / val / train."""
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
        labels = torch.tensor(data.target, dtype=torch.long)
        rng = np.random.default_rng(self.config.split_seed)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(data.target == c))
            n_test = round(len(idx) * self.config.test_fraction)
            n_val = round(len(idx) * self.config.val_fraction)
            parts["test"].append(idx[:n_test])
            parts["val"].append(idx[n_test : n_test + n_val])
            parts["train"].append(idx[n_test + n_val :])
        chosen = torch.from_numpy(np.sort(np.concatenate(parts[split])))
        # Normalise with training statistics so no test information leaks into the inputs.
        mean, std = 0.3, 0.4  # ≈ pixel mean/std of the training images, fixed so splits agree
        return TensorSplit((images[chosen] - mean) / std, labels[chosen])
