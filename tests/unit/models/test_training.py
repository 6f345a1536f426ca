"""The one training loop: parameter groups, clipping and the schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynbench.models.training import (
    ParamGroup,
    ScheduledOptimizer,
    TrainConfig,
    constant,
    fit_loop,
    lr_at,
    unit_warmup_cosine,
    warmup_cosine,
)
from dynbench.types import Batch


def params(*values: float) -> list[nn.Parameter]:
    return [nn.Parameter(torch.tensor([v])) for v in values]


def test_each_group_gets_its_lr_scale_and_weight_decay() -> None:
    """With zero gradients AdamW only decays: p ← p · (1 − lr · wd), so lr and wd show in the new
    value."""
    a, b, c = params(1.0, 1.0, 1.0)
    opt = ScheduledOptimizer(
        [ParamGroup([a]), ParamGroup([b], lr_scale=10.0, weight_decay=0.5), ParamGroup([c], weight_decay=0.0)],
        constant(0.01),
        weight_decay=0.1,
        grad_clip=0.0,
    )
    opt.step((a + b + c).sum() * 0.0)
    assert [g["lr"] for g in opt.optimizer.param_groups] == [0.01, 0.1, 0.01]
    assert [g["weight_decay"] for g in opt.optimizer.param_groups] == [0.1, 0.5, 0.0]
    assert a.item() == pytest.approx(1 - 0.01 * 0.1)
    assert b.item() == pytest.approx(1 - 0.1 * 0.5)
    assert c.item() == 1.0


def test_empty_groups_are_left_out_and_no_parameters_is_an_error() -> None:
    (a,) = params(1.0)
    opt = ScheduledOptimizer(
        [ParamGroup([]), ParamGroup([a], lr_scale=2.0)], constant(0.1), weight_decay=0, grad_clip=0
    )
    opt.step(a.sum())
    assert [g["lr"] for g in opt.optimizer.param_groups] == [0.2]
    with pytest.raises(ValueError, match="no parameters"):
        ScheduledOptimizer([ParamGroup([])], constant(0.1), weight_decay=0, grad_clip=0)


@pytest.mark.parametrize(("clip", "norms"), [("global", (0.6, 0.8)), ("per_group", (1.0, 1.0))])
def test_clipping_is_global_or_per_group(clip: str, norms: tuple[float, float]) -> None:
    """Gradients 3 and 4: one global norm of 5 scales both by 1/5; per group each is clipped to 1
    alone."""
    a, b = params(0.0, 0.0)
    opt = ScheduledOptimizer(
        [ParamGroup([a]), ParamGroup([b])], constant(0.0), weight_decay=0, grad_clip=1.0, clip=clip
    )
    opt.step((3 * a + 4 * b).sum())
    assert a.grad is not None and b.grad is not None  # kept until the next step's zero_grad
    assert (a.grad.norm().item(), b.grad.norm().item()) == pytest.approx(norms)


def test_an_unknown_clip_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="Did you mean: per_group"):
        ScheduledOptimizer([ParamGroup(params(1.0))], constant(0.1), weight_decay=0, grad_clip=1, clip="per_grup")  # type: ignore[arg-type]


def test_schedule_warms_up_linearly_then_decays_to_a_tenth() -> None:
    cfg = TrainConfig(steps=100, lr=0.5, warmup_steps=10)
    assert [lr_at(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.05, 0.25, 0.5])
    assert lr_at(10, cfg) == pytest.approx(0.5)
    assert lr_at(55, cfg) == pytest.approx(0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))))
    assert lr_at(100, cfg) == pytest.approx(0.05) and lr_at(500, cfg) == pytest.approx(0.05)
    assert warmup_cosine(cfg)(37) == lr_at(37, cfg)
    assert unit_warmup_cosine(cfg)(37) * cfg.lr == pytest.approx(lr_at(37, cfg))


def test_the_optimizer_follows_the_schedule_step_by_step() -> None:
    (a,) = params(1.0)
    cfg = TrainConfig(steps=6, lr=0.1, warmup_steps=2)
    opt = ScheduledOptimizer([ParamGroup([a], lr_scale=3.0)], warmup_cosine(cfg), weight_decay=0, grad_clip=0)
    seen = []
    for _ in range(cfg.steps):
        opt.step(a.sum())
        seen.append(opt.optimizer.param_groups[0]["lr"])
    assert seen == [lr_at(s, cfg) * 3.0 for s in range(cfg.steps)]


def batches(n: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    return [Batch(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g), torch.arange(8)) for _ in range(n)]


def test_fit_loop_with_plain_parameters_is_the_hand_written_adamw_loop() -> None:
    """Bit for bit: one group with the recipe's lr, decay and global clip, in the same order of
    operations."""
    cfg = TrainConfig(steps=20, lr=0.05, weight_decay=0.1, warmup_steps=3, grad_clip=0.5)
    data = batches(cfg.steps)
    torch.manual_seed(0)
    ours, theirs = nn.Linear(4, 2), nn.Linear(4, 2)
    theirs.load_state_dict(ours.state_dict())

    def loss_of(model: nn.Module, batch: Batch) -> torch.Tensor:
        return (model(batch.inputs) - batch.targets).pow(2).mean()

    fit_loop(list(ours.parameters()), lambda b: loss_of(ours, b), iter(data), cfg)
    ps = list(theirs.parameters())
    opt = torch.optim.AdamW(ps, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    for step, batch in enumerate(data):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = loss_of(theirs, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ps, cfg.grad_clip)
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters()))


def test_fit_loop_takes_groups_and_refuses_a_mix() -> None:
    cfg = TrainConfig(steps=4, lr=0.05, warmup_steps=1)
    model = nn.Linear(4, 2)
    frozen_bias = model.bias.detach().clone()
    groups = [ParamGroup([model.weight]), ParamGroup([model.bias], lr_scale=0.0)]  # a zero rate: no update
    fit_loop(groups, lambda b: (model(b.inputs) - b.targets).pow(2).mean(), iter(batches(4)), cfg)
    assert torch.equal(model.bias, frozen_bias)
    with pytest.raises(TypeError, match="not a mix"):
        fit_loop([model.weight, ParamGroup([model.bias])], lambda b: b.inputs.sum(), iter(batches(1)), cfg)  # type: ignore[list-item]
