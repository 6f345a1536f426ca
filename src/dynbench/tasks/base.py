"""The task contract: data, a backbone recipe and a quality metric, in one modality.

A task is one file, one class, one decorator::

    @register_task("digits")
    class Digits(Task):
        modality = "vision"
        metric = TopOneAccuracy()
        Config = DigitsConfig                  # data, backbone shape and training recipe
        def build_backbone(self): ...          # untrained dense model
        def load_split(self, split): ...       # → TensorSplit (or override ``batches`` to stream)

Every task has three disjoint splits: ``train`` (weights are trained on it), a validation split
(``Task.validation_split``: thresholds, rankings, calibrations and any selection are made on it) and
an evaluation split (``Task.eval_split``: quality is reported on it). While a method fits, the
harness seals the evaluation split (:meth:`Task.sealed`): reading it raises
:class:`EvalSplitAccessError`.

The dense backbone is trained once per (task config, seed) by :func:`train_backbone` (the one
training loop of :mod:`dynbench.models.training`, with the task's
:class:`~dynbench.models.training.TrainConfig`) and cached by :func:`trained_backbone`, so every
method reuses the same trained model.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dynbench.file_digest import files_digest
from dynbench.models.backbone import Backbone
from dynbench.models.cached_state import load_cached
from dynbench.models.training import (
    NonFiniteError,
    TrainConfig,
    atomic_torch_save,
    config_digest,
    endless,
    fit_loop,
)
from dynbench.registry import Registry
from dynbench.types import Batch, NoOptions, QualitySpec

Split = Literal["train", "val", "test", "minival"]
"""A split's name. ``val`` is the validation split of every task but ``imagenet``, whose ``val``
is ImageNet's official 50,000-image validation set — its evaluation split — and whose validation
split is ``minival``, carved from train. Code never assumes a name: it reads ``"train"``,
``task.validation_split`` and ``task.eval_split``."""
Modality = Literal["vision", "speech", "text"]

logger = logging.getLogger(__name__)


class QualityMetric(ABC):
    """How a task turns logits into per-sample scores and one aggregate number."""

    spec: ClassVar[QualitySpec]

    @abstractmethod
    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Scalar training loss."""

    @abstractmethod
    def score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``(B,)`` per-sample scores that :meth:`aggregate` combines."""

    def aggregate(self, scores: np.ndarray) -> float:
        """The task's quality from all per-sample scores: :meth:`from_mean` of their mean."""
        return float(self.from_mean(np.asarray(np.mean(scores))))

    def from_mean(self, mean: np.ndarray) -> np.ndarray:
        """The quality from the mean per-sample score, elementwise.

        Bootstrap resamples pass many means at once. Every quality dynbench reports is a function of
        the mean score — accuracy is the mean, perplexity the exponential of the mean NLL — so
        intervals resample the scores and transform after.
        """
        return mean

    @abstractmethod
    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``(B,)`` fraction of correct predictions per sample (1/0 for classification)."""

    def secondary(self, correct: np.ndarray) -> dict[str, tuple[float, str, bool]]:
        """Further task metrics from the per-sample correctness.

        Maps ``name → (value, unit, higher_is_better)``.
        """
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

    def from_mean(self, mean: np.ndarray) -> np.ndarray:
        """exp(mean NLL); all sequences have one length, so this is the token-level perplexity."""
        return np.exp(mean)

    def correct(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-sequence next-token accuracy."""
        return (logits.argmax(dim=-1) == targets).double().mean(dim=1)

    def secondary(self, correct: np.ndarray) -> dict[str, tuple[float, str, bool]]:
        """Next-token accuracy over all scored tokens (sequences are equally long)."""
        return {"next_token_accuracy": (float(np.mean(correct)), "fraction", True)}


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
        """Yield batches in the split's order, or in a seeded permutation when ``shuffle``."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        if limit is not None:
            order = order[:limit]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield Batch(self.inputs[idx], self.targets[idx], idx.clone())


class EvalSplitAccessError(RuntimeError):
    """A sealed split (the evaluation split, while a method fits) was read: :meth:`Task.sealed`."""


SPLIT_READERS = ("split", "load_split", "batches", "n_samples")
"""Task methods whose first argument is a split and that read it.

Every task's own versions are checked too.
"""


def _checks_split(read: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a split reader so it calls :meth:`Task.check_readable` on its split first."""

    @functools.wraps(read)
    def checked(self: Task, split: Split, *args: Any, **kwargs: Any) -> Any:
        self.check_readable(split, via=f"{type(self).__name__}.{read.__name__}({split!r})")
        return read(self, split, *args, **kwargs)

    checked._checks_split = True  # type: ignore[attr-defined]
    return checked


class Task(ABC):
    """A task: data + backbone recipe + quality metric. See the module docstring for the contract.

    Class variables:
        name: registry key, set by ``@register_task``.
        version: bump to invalidate cached backbones and stored results.
        modality: ``vision``, ``speech`` or ``text``.
        description: one line for ``bench ls tasks``.
        size: the data's size in words, for ``bench ls tasks`` (e.g. ``"1,797 images"``).
        is_default: the modality's default task (run by a bare ``bench run``).
        synthetic: inputs generated here, not recorded (rows: ``synthetic_data``; reports say so).
        metric: the quality metric.
        Config: frozen dataclass with the data, backbone shape and a ``train`` :class:`TrainConfig`.
        eval_split: the split quality is reported on.
        validation_split: the held-out split fits calibrate, rank and select on; disjoint from
        ``eval_split``.
        splits: every split the task has: ``"train"``, ``validation_split`` and ``eval_split``, all
        different.
        quick_options: the quick profile's values of ``Config`` options (a shorter backbone
        recipe), applied under ``--profile quick`` to every option the user did not set.
        quick_eval_samples: under the quick profile, measure a seeded sample of this many
        evaluation samples (the first of the fixed eval order); ``None`` = the whole split.

    Reading a split (:meth:`split`, :meth:`load_split`, :meth:`batches`, :meth:`n_samples` — a
    subclass's own versions included — and task-specific readers that call :meth:`check_readable`)
    checks that the task has it and that it is not sealed (:meth:`sealed`).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    modality: ClassVar[Modality]
    description: ClassVar[str] = ""
    size: ClassVar[str] = ""
    is_default: ClassVar[bool] = False
    synthetic: ClassVar[bool] = False
    metric: ClassVar[QualityMetric]
    Config: ClassVar[type] = NoOptions
    eval_split: ClassVar[Split] = "test"
    validation_split: ClassVar[Split] = "val"
    splits: ClassVar[tuple[Split, ...]] = ("train", "val", "test")
    quick_options: ClassVar[Mapping[str, Any]] = {}
    quick_eval_samples: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check the split roles and make the subclass's own split readers check their split.

        See the class doc.

        Raises:
            TypeError: ``"train"``, ``validation_split`` and ``eval_split`` are not three different
                entries of ``splits`` (a task must have a validation split apart from its evaluation
                split).
        """
        super().__init_subclass__(**kwargs)
        roles = ("train", cls.validation_split, cls.eval_split)
        if len(set(roles)) != 3 or not set(roles) <= set(cls.splits):
            raise TypeError(
                f"Task {cls.__qualname__}: train, validation_split={cls.validation_split!r} and "
                f"eval_split={cls.eval_split!r} must be three different splits listed in splits={cls.splits}. "
                "Give the task a validation split of its own, disjoint from the evaluation split."
            )
        for name in SPLIT_READERS:
            read = cls.__dict__.get(name)
            if callable(read) and not getattr(read, "_checks_split", False):
                setattr(cls, name, _checks_split(read))

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self._splits: dict[str, TensorSplit] = {}
        self._seals: dict[str, list[str]] = {}  # sealed split → who is fitting, innermost last

    def check_readable(self, split: str, *, via: str = "") -> None:
        """Check that the task has ``split`` and no :meth:`sealed` block forbids reading it now.

        Task-specific readers (a streamed split, a play's text) call this before reading.

        Args:
            split: the split about to be read.
            via: what reads it, for the message (e.g. ``"ImageNet.lazy_split('val')"``).

        Raises:
            ValueError: the task has no such split.
            EvalSplitAccessError: the split is sealed.
        """
        if split not in self.splits:
            raise ValueError(
                f"Task '{self.name}' has no split {split!r}; its splits are {', '.join(self.splits)}. Read 'train' "
                f"to train, task.validation_split ({self.validation_split!r}) to calibrate or select, "
                f"task.eval_split ({self.eval_split!r}) to evaluate."
            )
        seals = self.__dict__.get("_seals", {})
        readers = seals.get(split)
        if readers:
            role = "evaluation split" if split == self.eval_split else "sealed split"
            allowed = " and ".join(repr(s) for s in self.splits if s not in seals)
            raise EvalSplitAccessError(
                f"{readers[-1]} read the {role} {split!r} of task '{self.name}'{f' ({via})' if via else ''}; "
                f"fits may read {allowed} only. Train weights on 'train' and calibrate, rank or select on the "
                f"validation split task.validation_split ({self.validation_split!r}); only a method with "
                "sees_eval_labels (an upper bound) sees the evaluation samples, through fit_eval."
            )

    @contextmanager
    def sealed(self, split: Split | None = None, *, reader: str = "code under Task.sealed") -> Iterator[Task]:
        """Forbid reading ``split`` (default: the evaluation split) inside the ``with`` block.

        The harness fits every method under
        ``task.sealed(task.eval_split, reader="the fit of method 'x'")``, so a fit that reads the
        evaluation split fails instead of quietly selecting on it. Seals nest; each lifts when its
        block ends, normally or by an exception.

        Args:
            split: the split to seal; ``None`` = :attr:`eval_split`.
            reader: who runs inside the block, for the error message.

        Yields:
            The task itself.

        Raises:
            ValueError: the task has no such split.
        """
        split = self.eval_split if split is None else split
        if split not in self.splits:
            self.check_readable(split)  # raises: the task has no such split
        seals = self.__dict__.setdefault("_seals", {})
        seals.setdefault(split, []).append(reader)
        try:
            yield self
        finally:
            seals[split].pop()
            if not seals[split]:
                del seals[split]

    @abstractmethod
    def build_backbone(self) -> Backbone:
        """A fresh, untrained dense backbone for this task (the caller seeds torch first)."""

    @abstractmethod
    def load_split(self, split: Split) -> TensorSplit:
        """Load one split into memory.

        Called once per split; raise a clear error if the data is missing.
        """

    @property
    def train_config(self) -> TrainConfig:
        """Recipe for the dense backbone; tasks keep it in ``Config.train``."""
        return getattr(self.config, "train", TrainConfig())

    @_checks_split
    def split(self, split: Split) -> TensorSplit:
        """The split, loaded once."""
        if split not in self._splits:
            self._splits[split] = self.load_split(split)
        return self._splits[split]

    @_checks_split
    def batches(
        self, split: Split, *, batch_size: int, seed: int = 0, shuffle: bool = False, limit: int | None = None
    ) -> Iterator[Batch]:
        """Batches of ``split`` in a fixed order (seeded if shuffled), at most ``limit`` samples."""
        return self.split(split).batches(batch_size=batch_size, seed=seed, shuffle=shuffle, limit=limit)

    def augment(self, inputs: Tensor) -> Tensor:
        """Training-time augmentation of a batch of inputs.

        The dense recipe only; never at evaluation.
        """
        return inputs

    def n_blocks(self) -> int:
        """Depth L of the task's backbone, found without allocating or training it (meta device)."""
        with torch.device("meta"):
            return self.build_backbone().n_blocks

    @_checks_split
    def n_samples(self, split: Split) -> int:
        """Samples in ``split``."""
        return len(self.split(split))

    def meta_backbone(self) -> Backbone:
        """The backbone built on the meta device: its shape without weights, data or training.

        The planner reads it for checks before anything runs (a method's options against the
        depth and widths, the size of the checkpoint to cache). Tasks whose ``build_backbone``
        reads weights override this with a build from their config.
        """
        with torch.device("meta"):
            return self.build_backbone()

    def trains_backbone(self) -> bool:
        """Whether :meth:`backbone` trains and caches a dense backbone rather than converting one.

        Pretrained tasks override :meth:`backbone`.
        """
        return type(self).backbone is Task.backbone

    def problems(self) -> list[str]:
        """Problems of this task's options that its ``Config`` cannot see alone, one message each.

        The planner asks before anything runs. By default: a task that trains its backbone must
        train it for at least one step (``train.steps=0`` would measure an untrained network).
        """
        steps = self.train_config.steps
        if self.trains_backbone() and steps < 1:
            return [
                f"Task '{self.name}': train.steps={steps} trains nothing; the dense backbone needs at least one "
                f"step. Leave train.steps out for the recipe's {getattr(self.Config(), 'train', TrainConfig()).steps}."
            ]
        return []

    def data_status(self) -> str:
        """One word for ``bench ls tasks``: where the data comes from, or that it is missing."""
        return "synthetic"

    def data_problem(self) -> str | None:
        """Why this task's data cannot be loaded, saying how to get it; ``None`` when it can.

        A cheap look (file sizes, installed packages), run by ``bench run`` before anything is
        written, so a missing data set is a usage error (exit 2) rather than a failed run.
        """
        return None

    def source_files(self) -> tuple[Path, ...]:
        """Files the backbone is read from (pretrained weights); none for a trained backbone.

        Their content, not only their path, is part of :func:`backbone_key` and so of every
        method-fit cache key built on it: replacing the file at a path refits.
        """
        return ()

    def backbone(self, seed: int, *, cache_dir: Path | None = None, device: torch.device | str = "cpu") -> Backbone:
        """The trained dense backbone for ``seed``, trained on first use and cached.

        Args:
            seed: training seed.
            cache_dir: checkpoint cache; ``None`` trains without caching.
            device: where it is trained (on first use) and returned; one cache for every device.
        """
        return trained_backbone(self, seed, cache_dir=cache_dir, device=device)


TASKS: Registry[type[Task]] = Registry("task", Task, "dynbench.tasks", "dynbench.tasks")
register_task = TASKS.register


# --------------------------------------------------------------------------------------------------
# The dense backbone: trained once per (task config, seed), cached


def train_backbone(task: Task, seed: int, *, device: torch.device | str = "cpu") -> Backbone:
    """Train ``task``'s dense backbone from scratch with its recipe on ``device``, seeded."""
    torch.manual_seed(seed)
    with torch.device("cpu"):  # the host's initial weights on every device (a GPU's random streams differ)
        model = task.build_backbone().to(device)
    cfg = task.train_config
    model.train()
    batches = endless(
        lambda epoch: task.batches("train", batch_size=cfg.batch_size, seed=seed * 1000 + epoch, shuffle=True)
    )

    def step_loss(batch: Batch) -> Tensor:
        return task.metric.loss(model(task.augment(batch.inputs.to(device))), batch.targets.to(device))

    final = fit_loop([p for p in model.parameters() if p.requires_grad], step_loss, batches, cfg)
    logger.info("Trained %s backbone (seed %d): final training loss %.4f", task.name, seed, final)
    return model.eval()


def backbone_key(task: Task, seed: int) -> str:
    """Cache key: task name, version, full config, the content of its source files, and seed."""
    files = task.source_files()
    content = f"-{files_digest(files)}" if files else ""  # tasks without files keep their old keys
    return f"{task.name}-v{task.version}-{config_digest(task.config)}{content}-seed{seed}"


def trained_backbone(task: Task, seed: int, *, cache_dir: Path | None, device: torch.device | str = "cpu") -> Backbone:
    """The cached trained backbone, training and caching it on first use.

    Keyed by the task's name, version, full config and the seed (:func:`backbone_key`): a changed
    recipe trains a new one, never a stale checkpoint. A cached file that cannot be used (damaged,
    another model's, NaN) is set aside with a warning and the backbone trained again.
    """
    path = None if cache_dir is None else Path(cache_dir) / "backbones" / f"{backbone_key(task, seed)}.pt"
    if path is not None and path.exists():
        model = task.build_backbone()
        if load_cached(model, path, "cached backbone", "training it again"):
            return model.to(device).eval()
    model = train_backbone(task, seed, device=device)
    if bad := non_finite_tensors(model):
        raise NonFiniteError(
            f"The trained {task.name} backbone (seed {seed}) has NaN/Inf in {', '.join(bad[:3])}"
            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; it was not cached. Check the task's data "
            f"and lower its learning rate (train.lr={task.train_config.lr:g})."
        )
    if path is not None:  # host tensors: one cache file for every device
        atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return model


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of ``module``'s parameters and buffers that hold a NaN or an infinity."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]
