"""Every registered method × every toy task: the contract of DESIGN §3.

A new method gets all of these by registering; nothing here names a method except to read its budgets.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dynbench.harness.flops import count_flops
from dynbench.methods.base import METHODS, DynamicModel, Method
from dynbench.types import Batch

TOY_TASKS = ("toy-vision", "toy-text")  # 2 blocks, d=32, seeded synthetic data

METHOD_NAMES = METHODS.names()
_fitted: dict[tuple[str, str], tuple[Method, DynamicModel]] = {}


def fit(toy, method: Method, task_name: str) -> DynamicModel:
    """Wrap a copy of the toy backbone and fit ``method`` (seed 0), as the harness does.

    A method that sees the evaluation labels (an upper bound) is also fitted on the evaluation batch the tests use.
    """
    task, backbone = toy(task_name)
    model = method.wrap(copy.deepcopy(backbone))
    torch.manual_seed(0)
    method.fit(model, task, seed=0)
    if method.sees_eval_labels:
        budgets = method.resolve_budgets(None, model.backbone.n_blocks)
        method.fit_eval(model.eval(), task, [eval_batch(toy, task_name)], budgets=budgets, seed=0)
    return model.eval()


def fitted(toy, method_name: str, task_name: str) -> tuple[Method, DynamicModel]:
    """The method fitted once per session on a toy task (seed 0)."""
    key = (method_name, task_name)
    if key not in _fitted:
        method = METHODS.get(method_name)()
        _fitted[key] = (method, fit(toy, method, task_name))
    return _fitted[key]


def eval_batch(toy, task_name: str, n: int = 16) -> Batch:
    task, _ = toy(task_name)
    return next(task.batches(task.eval_split, batch_size=n))


def eval_inputs(toy, task_name: str, n: int = 16) -> torch.Tensor:
    return eval_batch(toy, task_name, n).inputs


pytestmark = [
    pytest.mark.parametrize("task_name", TOY_TASKS),
    pytest.mark.parametrize("method_name", METHOD_NAMES),
]


def test_outputs_have_dense_shape_and_are_finite(toy, method_name, task_name):
    method, model = fitted(toy, method_name, task_name)
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        dense = model.backbone(x)
        for budget in method.resolve_budgets(None, model.backbone.n_blocks):
            out = model(x, budget=budget)
            assert out.logits.shape == dense.shape
            assert torch.isfinite(out.logits).all()
            L = model.backbone.n_blocks
            assert out.trace.block_tokens.shape == (len(x), L) == out.trace.block_heads.shape
            assert out.trace.readout.shape == out.trace.controller_flops.shape == (len(x),)


def test_full_budget_reproduces_dense(toy, method_name, task_name):
    """Equal up to float rounding, or within the tolerance the method states (``Method.full_budget_atol``)."""
    method, model = fitted(toy, method_name, task_name)
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        got = model(x, budget=method.full_budget).logits
        torch.testing.assert_close(got, model.backbone(x), rtol=0, atol=method.full_budget_atol)


def test_counted_flops_fall_with_budget_and_match_the_trace(toy, method_name, task_name):
    method, model = fitted(toy, method_name, task_name)
    x = eval_inputs(toy, task_name)
    previous = float("inf")
    for budget in method.resolve_budgets(None, model.backbone.n_blocks):  # descending
        c = count_flops(lambda b=budget: model(x, budget=b), model, model.controller_modules())
        trace = c.output.trace
        analytic = model.backbone.flops(trace, tuple(x.shape[1:])).sum().item()
        assert c.total == pytest.approx(analytic, rel=1e-9), f"budget {budget}"
        assert c.controller == pytest.approx(trace.controller_flops.sum().item(), rel=1e-9, abs=0.5)
        assert c.total <= previous + 1e-6, f"FLOPs rose when the budget fell to {budget}"
        previous = c.total


def test_same_seed_same_fit_and_outputs(toy, method_name, task_name):
    method, model = fitted(toy, method_name, task_name)
    model2 = fit(toy, METHODS.get(method_name)(), task_name)
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        for budget in method.resolve_budgets(None, model.backbone.n_blocks):
            a, b = model(x, budget=budget), model2(x, budget=budget)
            assert torch.equal(a.logits, b.logits)
            assert torch.equal(a.trace.block_tokens, b.trace.block_tokens)


def test_state_dict_round_trip(toy, method_name, task_name):
    method, model = fitted(toy, method_name, task_name)
    _, backbone = toy(task_name)
    fresh = METHODS.get(method_name)().wrap(copy.deepcopy(backbone))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        for budget in method.resolve_budgets(None, model.backbone.n_blocks):
            assert torch.equal(fresh(x, budget=budget).logits, model(x, budget=budget).logits)
