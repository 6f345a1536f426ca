"""The task contract: data, a backbone recipe and a quality metric, in one modality.

A task is one file, one class, one decorator::

    @register_task("digits")
    class Digits(Task):
        modality = "vision"
        metric = TopOneAccuracy()
        Config = DigitsConfig                  # data, backbone shape and training recipe
        def build_backbone(self): ...          # untrained dense model
        def load_split(self, split): ...       # → TensorSplit (or override ``batches`` to stream)

The dense backbone is trained once per (task config, seed) by the shared loop in
:mod:`dynbench.models.training` and cached, so every method reuses the same trained model.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dynbench.models.backbone import Backbone
from dynbench.registry import Registry
from dynbench.types import Batch, NoOptions, QualitySpec

Split = Literal["train", "val", "test"]
Modality = Literal["vision", "speech", "text"]


class QualityMetric(ABC):
    """How a task turns logits into per-sample scores and one aggregate number."""

    spec: ClassVar[QualitySpec]

    @abstractmethod
    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Scalar training loss."""

    @abstractmethod
    def score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``(B,)`` per-sample scores that :meth:`aggregate` combines."""

    @abstractmethod
    def aggregate(self, scores: np.ndarray) -> float:
        """The task's quality from all per-sample scores."""

    @abstractmethod
    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``(B,)`` fraction of correct predictions per sample (1/0 for classification)."""

    def secondary(self, correct: np.ndarray) -> dict[str, tuple[float, str, bool]]:
        """Further task metrics from the per-sample correctness: ``name → (value, unit, higher_is_better)``."""
        return {}


class TopOneAccuracy(QualityMetric):
    """Classification: cross-entropy loss, quality = top-1 accuracy."""

    spec = QualitySpec(unit="top1", higher_is_better=True)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over ``(B, K)`` logits."""
        return F.cross_entropy(logits, targets)

    def score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """1.0 where the arg-max is the label."""
        return self.correct(logits, targets)

    def aggregate(self, scores: np.ndarray) -> float:
        """Mean accuracy."""
        return float(np.mean(scores))

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """1.0 where the arg-max is the label."""
        return (logits.argmax(dim=-1) == targets).double()


class Perplexity(QualityMetric):
    """Language modelling: next-token cross-entropy, quality = perplexity over all scored tokens."""

    spec = QualitySpec(unit="ppl", higher_is_better=False)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy over ``(B, T, V)`` logits."""
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-sequence mean negative log-likelihood (nats per token)."""
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
        return nll.double().mean(dim=1)

    def aggregate(self, scores: np.ndarray) -> float:
        """exp(mean NLL); every sequence has the same length, so this is the token-level perplexity."""
        return float(math.exp(float(np.mean(scores))))

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-sequence next-token accuracy."""
        return (logits.argmax(dim=-1) == targets).double().mean(dim=1)

    def secondary(self, correct: np.ndarray) -> dict[str, tuple[float, str, bool]]:
        """Next-token accuracy over all scored tokens (sequences are equally long)."""
        return {"next_token_accuracy": (float(np.mean(correct)), "fraction", True)}


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for training a dense backbone."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # training batch size
    lr: float = 3e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_steps: int = 50  # linear warm-up before the cosine decay
    grad_clip: float = 1.0  # global gradient-norm clip


@dataclass
class TensorSplit:
    """A split held in memory as two tensors.

    Attributes:
        inputs: ``(N, ...)`` model inputs.
        targets: ``(N, ...)`` labels or next tokens.
    """

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batches(self, *, batch_size: int, seed: int, shuffle: bool, limit: int | None) -> Iterator[Batch]:
        """Yield batches in a fixed order: the split order, or a seeded permutation when ``shuffle``."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        if limit is not None:
            order = order[:limit]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield Batch(self.inputs[idx], self.targets[idx], idx.clone())


class Task(ABC):
    """A task: data + backbone recipe + quality metric. See the module docstring for the contract.

    Class variables:
        name: registry key, set by ``@register_task``.
        version: bump to invalidate cached backbones and stored results.
        modality: ``vision``, ``speech`` or ``text``.
        description: one line for ``bench ls tasks``.
        size: the data's size in words, for ``bench ls tasks`` (e.g. ``"1,797 images"``).
        is_default: the modality's default task (run by a bare ``bench run``).
        metric: the quality metric.
        Config: frozen dataclass with the data, backbone shape and a ``train`` :class:`TrainConfig`.
        eval_split: the split quality is reported on.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality]
    description: ClassVar[str] = ""
    size: ClassVar[str] = ""
    is_default: ClassVar[bool] = False
    metric: ClassVar[QualityMetric]
    Config: ClassVar[type] = NoOptions
    eval_split: ClassVar[Split] = "test"

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self._splits: dict[str, TensorSplit] = {}

    @abstractmethod
    def build_backbone(self) -> Backbone:
        """A fresh, untrained dense backbone for this task (the caller seeds torch first)."""

    @abstractmethod
    def load_split(self, split: Split) -> TensorSplit:
        """Load one split into memory. Called once per split; raise a clear error if the data is missing."""

    @property
    def train_config(self) -> TrainConfig:
        """Recipe for the dense backbone; tasks keep it in ``Config.train``."""
        return getattr(self.config, "train", TrainConfig())

    def split(self, split: Split) -> TensorSplit:
        """The split, loaded once."""
        if split not in self._splits:
            self._splits[split] = self.load_split(split)
        return self._splits[split]

    def batches(
        self, split: Split, *, batch_size: int, seed: int = 0, shuffle: bool = False, limit: int | None = None
    ) -> Iterator[Batch]:
        """Batches of ``split`` in a fixed order (seeded when shuffled), at most ``limit`` samples."""
        return self.split(split).batches(batch_size=batch_size, seed=seed, shuffle=shuffle, limit=limit)

    def augment(self, inputs: Tensor) -> Tensor:
        """Training-time augmentation of a batch of inputs (the dense recipe only; never at evaluation)."""
        return inputs

    def n_blocks(self) -> int:
        """Depth L of this task's backbone, found without allocating or training it (meta device)."""
        with torch.device("meta"):
            return self.build_backbone().n_blocks

    def n_samples(self, split: Split) -> int:
        """Samples in ``split``."""
        return len(self.split(split))

    def data_status(self) -> str:
        """One word for ``bench ls tasks``: where the data comes from, or that it is missing."""
        return "synthetic"

    def data_problem(self) -> str | None:
        """Why this task's data cannot be loaded, saying how to get it; ``None`` when it can.

        A cheap look (file sizes, installed packages), run by ``bench run`` before anything is written, so a
        missing data set is a usage error (exit 2) rather than a failed run.
        """
        return None

    def backbone(self, seed: int, *, cache_dir: Path | None = None) -> Backbone:
        """The trained dense backbone for ``seed``, trained on first use and cached.

        Args:
            seed: training seed.
            cache_dir: checkpoint cache; ``None`` trains without caching.
        """
        from dynbench.models.training import trained_backbone

        return trained_backbone(self, seed, cache_dir=cache_dir)


TASKS: Registry[type[Task]] = Registry("task", Task, "dynbench.tasks", "dynbench.tasks")
register_task = TASKS.register
