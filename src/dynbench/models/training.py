"""The one training loop: AdamW over parameter groups, a learning-rate schedule, clipping.

Every fit in dynbench steps its parameters through :class:`ScheduledOptimizer`: the dense backbone
(:func:`dynbench.tasks.base.train_backbone`), every method's training phases (through
:func:`fit_loop`) and PPO's updates (:mod:`dynbench.methods._ppo`). A recipe is a
:class:`TrainConfig`; a :class:`ParamGroup` gives its parameters their own learning-rate scale and
weight decay, and clipping is global or per group.

Also here: the stable config hash and the atomic checkpoint write that the checkpoint caches are
keyed and written with (:func:`config_digest`, :func:`atomic_torch_save`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dynbench.types import Batch
from dynbench.validation import check_range, choice_message


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for one training run: steps, batch size, the schedule, weight decay and clip."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # training batch size
    lr: float = 3e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_steps: int = 50  # linear warm-up before the cosine decay
    grad_clip: float = 1.0  # gradient-norm clip (global, or per group: see fit_loop); 0 = none

    def __post_init__(self) -> None:
        # steps may be 0: methods build recipes with no steps for "no fine-tuning" (dht[steps=0]);
        # a task's own recipe must train, which Task checks (dynbench.tasks.base).
        check_range("TrainConfig.steps", self.steps, 0, advice="Use e.g. steps=1000.")
        check_range("TrainConfig.batch_size", self.batch_size, 1, advice="Use e.g. batch_size=64.")
        check_range("TrainConfig.warmup_steps", self.warmup_steps, 0, advice="Use e.g. warmup_steps=50.")
        # NaN fails every check_range; inf is refused too: an infinite rate or decay trains NaN.
        for name, low_open in (("lr", True), ("weight_decay", False), ("grad_clip", False)):
            value = getattr(self, name)
            check_range(
                f"TrainConfig.{name}", value, 0, low_open=low_open, advice=f"Use e.g. {name}={_DEFAULTS[name]}."
            )
            if math.isinf(value):
                raise ValueError(f"TrainConfig.{name} must be finite, got {value}. Use e.g. {name}={_DEFAULTS[name]}.")


_DEFAULTS = {"lr": 3e-3, "weight_decay": 0.05, "grad_clip": 1.0}  # the advice of TrainConfig's messages


class NonFiniteError(RuntimeError):
    """A loss, an input or a weight became NaN or infinite; training stopped (nothing is cached)."""


Schedule = Callable[[int], float]
"""Optimizer step (0, 1, …) → the learning rate of a group whose ``lr_scale`` is 1."""

Clip = Literal["global", "per_group"]
"""``"global"``: one gradient norm over all groups; ``"per_group"``: each group clipped alone."""


@dataclass(frozen=True)
class ParamGroup:
    """Parameters that train with one learning-rate scale and one weight decay."""

    params: Sequence[nn.Parameter]  # the group's parameters, in a fixed order (clipping sums in this order)
    lr_scale: float = 1.0  # the group's learning rate at a step is schedule(step) × lr_scale
    weight_decay: float | None = None  # decoupled weight decay; None = the recipe's


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak learning rate."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def warmup_cosine(cfg: TrainConfig) -> Schedule:
    """The recipe's schedule in absolute units: :func:`lr_at`, peaking at ``cfg.lr``."""
    return functools.partial(lr_at, cfg=cfg)


def unit_warmup_cosine(cfg: TrainConfig) -> Schedule:
    """The recipe's schedule over its peak: for groups whose ``lr_scale`` is their own peak rate."""
    return lambda step: lr_at(step, cfg) / cfg.lr


def constant(lr: float) -> Schedule:
    """A constant learning rate."""
    return lambda step: lr


class ScheduledOptimizer:
    """AdamW over parameter groups, one step per loss: scheduled rates, backward, clip, update.

    Args:
        groups: the parameter groups; empty ones are left out.
        schedule: step → learning rate of a group with ``lr_scale`` 1.
        weight_decay: the decay of groups that do not set their own.
        grad_clip: the gradient-norm bound; 0 = no clipping.
        clip: one norm over all groups (``"global"``) or one per group (``"per_group"``).
        betas: AdamW's moment decay rates.

    Raises:
        ValueError: ``clip`` is not a :data:`Clip`, or no group has parameters.
    """

    def __init__(
        self,
        groups: Sequence[ParamGroup],
        schedule: Schedule,
        *,
        weight_decay: float,
        grad_clip: float,
        clip: Clip = "global",
        betas: tuple[float, float] = (0.9, 0.95),
    ) -> None:
        if clip not in ("global", "per_group"):
            raise ValueError(choice_message("ScheduledOptimizer clip", clip, ("global", "per_group")))
        self.groups = [g for g in groups if len(g.params)]
        if not self.groups:
            raise ValueError("ScheduledOptimizer got no parameters to train. Pass at least one non-empty ParamGroup.")
        self.schedule = schedule
        self.grad_clip = grad_clip
        self.clip = clip
        self.steps_taken = 0
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(g.params), "weight_decay": weight_decay if g.weight_decay is None else g.weight_decay}
                for g in self.groups
            ],
            lr=0.0,  # set from the schedule before every step
            betas=betas,
        )

    def step(self, loss: Tensor) -> None:
        """One optimizer step on ``loss``: this step's rates, fresh gradients, clipping, update."""
        for group, spec in zip(self.optimizer.param_groups, self.groups):
            group["lr"] = self.schedule(self.steps_taken) * spec.lr_scale
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            if self.clip == "global":
                torch.nn.utils.clip_grad_norm_([p for g in self.groups for p in g.params], self.grad_clip)
            else:
                for g in self.groups:
                    torch.nn.utils.clip_grad_norm_(list(g.params), self.grad_clip)
        self.optimizer.step()
        self.steps_taken += 1


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
    params: Sequence[nn.Parameter] | Sequence[ParamGroup],
    step_loss: Callable[[Batch], Tensor],
    batches: Iterator[Batch],
    cfg: TrainConfig,
    *,
    schedule: Schedule | None = None,
    clip: Clip = "global",
) -> float:
    """Minimise ``step_loss`` over ``cfg.steps`` batches with :class:`ScheduledOptimizer`.

    Args:
        params: the parameters to train (everything else stays as it is): one plain list, trained
            with the recipe's learning rate and weight decay, or :class:`ParamGroup` s with their
            own.
        step_loss: batch → scalar loss; the caller puts modules in train/eval mode.
        batches: endless training batches.
        cfg: the recipe: steps, weight decay, gradient clip and (by default) the schedule.
        schedule: step → learning rate at ``lr_scale`` 1; ``None`` = :func:`warmup_cosine` of
            ``cfg``.
        clip: ``cfg.grad_clip`` bounds one norm over all groups (``"global"``) or each group's own.

    Returns:
        The mean loss over the last 10% of steps (a cheap convergence readout for logs).

    Raises:
        TypeError: ``params`` mixes parameters and groups.
    """
    groups = list(params)
    if not all(isinstance(g, ParamGroup) for g in groups):
        if any(isinstance(g, ParamGroup) for g in groups):
            raise TypeError("fit_loop params must be all parameters or all ParamGroups, not a mix. Wrap the rest.")
        groups = [ParamGroup(groups)]  # type: ignore[arg-type]
    optimizer = ScheduledOptimizer(
        groups,  # type: ignore[arg-type]
        schedule or warmup_cosine(cfg),
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        clip=clip,
    )
    tail: list[float] = []
    for step in range(cfg.steps):
        batch = next(batches)
        loss = step_loss(batch)
        value = loss.item()  # one sync per step: a NaN must stop training before it reaches the weights
        if not math.isfinite(value):
            raise NonFiniteError(non_finite_message(value, step, cfg, batch))
        optimizer.step(loss)
        if step >= cfg.steps * 0.9:
            tail.append(value)
        if (listener := _STEP_LISTENER.get()) is not None:
            listener(step + 1, cfg.steps)
    return sum(tail) / max(1, len(tail))


StepListener = Callable[[int, int], None]
"""``listener(step, steps)``: called after each optimizer step of :func:`fit_loop` (1-based)."""

_STEP_LISTENER: contextvars.ContextVar[StepListener | None] = contextvars.ContextVar("step_listener", default=None)


@contextmanager
def step_listener(listener: StepListener) -> Iterator[None]:
    """Call ``listener(step, steps)`` after every :func:`fit_loop` step inside the block.

    The harness shows training progress with it (the dense backbone, every method's fit phases);
    the listener throttles what it prints. Nothing else changes: the steps and their random draws
    are the same with or without one.
    """
    token = _STEP_LISTENER.set(listener)
    try:
        yield
    finally:
        _STEP_LISTENER.reset(token)


def non_finite_message(value: float, step: int, cfg: TrainConfig, batch: Batch) -> str:
    """Why the loss of ``batch`` at ``step`` is ``value`` (NaN or infinite), and what to do."""
    inputs = batch.inputs
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        bad = int((~torch.isfinite(inputs)).sum())
        cause = (
            f"the batch's inputs hold {bad} NaN/Inf values. Check the task's data and options "
            "(e.g. a noise level of nan or inf)"
        )
    else:
        cause = f"the inputs are finite, so the weights diverged. Lower the learning rate (lr={cfg.lr:g})"
    return f"Training stopped at step {step + 1} of {cfg.steps}: the loss is {value}; {cause}. Nothing was cached."


def config_digest(obj: Any) -> str:
    """Stable short hash of a (nested) dataclass or JSON-able value."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {"__type__": type(obj).__name__, **dataclasses.asdict(obj)}
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` via a temporary file: a killed process leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk or Ctrl-C: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        raise
