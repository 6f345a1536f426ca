"""The shared training loop, and the checkpoint cache that lets every method reuse one trained dense backbone.

A backbone is keyed by its task's name, version and full config plus the seed, so changing any recipe value
trains a new one instead of silently reusing a stale checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dynbench.types import Batch

if TYPE_CHECKING:
    from dynbench.models.backbone import Backbone
    from dynbench.tasks.base import Task, TrainConfig

logger = logging.getLogger(__name__)


def config_digest(obj: Any) -> str:
    """Stable short hash of a (nested) dataclass or JSON-able value."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {"__type__": type(obj).__name__, **dataclasses.asdict(obj)}
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak learning rate."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def endless(make_batches: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    """Epoch after epoch of ``make_batches(epoch)``, reshuffled per epoch by the caller."""
    epoch = 0
    while True:
        yielded = False
        for batch in make_batches(epoch):
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("The training split is empty; there is nothing to train on.")
        epoch += 1


def fit_loop(
    params: list[nn.Parameter],
    step_loss: Callable[[Batch], Tensor],
    batches: Iterator[Batch],
    cfg: TrainConfig,
) -> float:
    """Minimise ``step_loss`` over ``cfg.steps`` batches with AdamW and a warm-up + cosine schedule.

    Args:
        params: the parameters to train (everything else stays as it is).
        step_loss: batch → scalar loss; the caller puts modules in train/eval mode.
        batches: endless training batches.
        cfg: the recipe.

    Returns:
        The mean loss over the last 10% of steps (a cheap convergence readout for logs).
    """
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    tail: list[float] = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = step_loss(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if step >= cfg.steps * 0.9:
            tail.append(loss.item())
    return sum(tail) / max(1, len(tail))


def train_backbone(task: Task, seed: int) -> Backbone:
    """Train ``task``'s dense backbone from scratch with its recipe; deterministic given ``seed``."""
    torch.manual_seed(seed)
    model = task.build_backbone()
    cfg = task.train_config
    model.train()
    batches = endless(
        lambda epoch: task.batches("train", batch_size=cfg.batch_size, seed=seed * 1000 + epoch, shuffle=True)
    )

    def step_loss(batch: Batch) -> Tensor:
        return task.metric.loss(model(task.augment(batch.inputs)), batch.targets)

    final = fit_loop([p for p in model.parameters() if p.requires_grad], step_loss, batches, cfg)
    logger.info("Trained %s backbone (seed %d): final training loss %.4f", task.name, seed, final)
    return model.eval()


def backbone_key(task: Task, seed: int) -> str:
    """Cache key: task name, version, full config and seed."""
    return f"{task.name}-v{task.version}-{config_digest(task.config)}-seed{seed}"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` through a temporary file, so a killed process leaves no half checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def trained_backbone(task: Task, seed: int, *, cache_dir: Path | None) -> Backbone:
    """The cached trained backbone, training and caching it on first use."""
    path = None if cache_dir is None else Path(cache_dir) / "backbones" / f"{backbone_key(task, seed)}.pt"
    if path is not None and path.exists():
        model = task.build_backbone()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    model = train_backbone(task, seed)
    if path is not None:
        atomic_torch_save(model.state_dict(), path)
    return model
