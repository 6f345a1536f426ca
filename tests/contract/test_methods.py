"""Every registered method × every toy task: the contract of DESIGN §3.

A new method gets all of these by registering; nothing here names a method except to read its
budgets.
"""

from __future__ import annotations

import copy
import re
from fnmatch import fnmatch

import pytest
import torch
from fitting import TOY_TASKS, eval_batch, fit, fitted  # the session's shared fits (same folder, on sys.path)

from dynbench.harness.flops import count_flops
from dynbench.methods.base import METHODS, DynamicModel, Method
from dynbench.models.backbone import Backbone

METHOD_NAMES = METHODS.names()
MAX_FULL_BUDGET_ATOL = 1e-5  # a stated full-budget tolerance is float rounding, not room for an approximation


def reference(method: Method, model: DynamicModel, dense: Backbone) -> tuple[Backbone, str]:
    """``(network, its name)``: what ``model``'s full budget must reproduce, independent of the
    model under test.

    ``reference_network == "dense"``: the pristine dense copy itself. Otherwise (a fit that changes
    the backbone's weights) a fresh copy of the pristine dense backbone loaded with the fitted
    backbone's weights: the plain dense forward pass over those weights, not the method's own
    full-budget path and not ``model.backbone``.
    """
    if method.reference_network == "dense":
        return dense, "dense backbone (a pristine copy taken before wrap and fit)"
    net = copy.deepcopy(dense)
    net.load_state_dict(model.backbone.state_dict())
    return net.eval(), f"{method.reference_network} (a fresh dense backbone loaded with the fitted backbone's weights)"


def assert_full_budget_matches(
    method: Method, model: DynamicModel, x: torch.Tensor, expected: torch.Tensor, network: str
) -> None:
    """``model``'s full-budget logits equal ``expected`` (the reference's) within
    ``method.full_budget_atol``."""
    with torch.no_grad():
        got = model(x, budget=method.full_budget).logits
    torch.testing.assert_close(
        got,
        expected,
        rtol=0,
        atol=method.full_budget_atol,
        msg=lambda m: f"{method.name} at its full budget {method.full_budget} vs the {network}: {m}",
    )


def eval_inputs(toy, task_name: str) -> torch.Tensor:
    return eval_batch(toy, task_name).inputs


pytestmark = pytest.mark.parametrize("method_name", METHOD_NAMES)
per_task = pytest.mark.parametrize("task_name", TOY_TASKS)


@per_task
def test_outputs_have_dense_shape_and_are_finite(toy, method_name, task_name):
    method, model, _ = fitted(toy, method_name, task_name)
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


@per_task
def test_full_budget_reproduces_the_reference_network(toy, method_name, task_name):
    """Equal within the method's tolerance to a network the model under test cannot reach (see
    :func:`reference`)."""
    method, model, dense = fitted(toy, method_name, task_name)
    network, name = reference(method, model, dense)
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        expected = network(x)
    assert_full_budget_matches(method, model, x, expected, name)


@per_task
def test_fit_changes_the_backbone_only_when_declared(toy, method_name, task_name):
    """``reference_network == "dense"``: every backbone tensor is bit-identical to the snapshot
    after the fit.

    Otherwise the declaration is needed: the (default) fit does change some backbone weight.
    """
    method, model, dense = fitted(toy, method_name, task_name)
    before = dense.state_dict()
    after = model.backbone.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if after[k].dtype != before[k].dtype or not torch.equal(after[k], before[k])]
    if method.reference_network == "dense":
        assert not changed, (
            f"{method_name}'s fit changed backbone tensors {changed}: declare the network its full budget "
            "reproduces in Method.reference_network (e.g. 'fine-tuned backbone'), or freeze the backbone"
        )
    else:
        assert changed, (
            f"{method_name} declares reference_network={method.reference_network!r} but its fit left the "
            "backbone bit-identical: declare 'dense'"
        )


@per_task
def test_full_budget_check_fails_when_a_read_weight_changes(toy, method_name, task_name):
    """Mutation check: the full-budget comparison is not vacuous.

    On a deep copy of the fitted model (the session's cached model stays intact), the backbone's
    parameters are perturbed one at a time, blocks first, until one changes the full-budget output;
    the same comparison against the reference computed before the perturbation must then fail.
    """
    method, model, dense = fitted(toy, method_name, task_name)
    network, name = reference(method, model, dense)
    x = eval_inputs(toy, task_name)
    mutant = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(0)
    hit = None
    with torch.no_grad():
        expected = network(x)
        unperturbed = mutant(x, budget=method.full_budget).logits
        params = sorted(mutant.backbone.named_parameters(), key=lambda kv: not kv[0].startswith("blocks."))
        for param_name, p in params:
            saved = p.detach().clone()
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
            if not torch.equal(mutant(x, budget=method.full_budget).logits, unperturbed):
                hit = param_name
                break
            p.copy_(saved)
    assert hit is not None, f"{method_name}: no backbone parameter changes the full-budget output"
    with pytest.raises(AssertionError, match=re.escape(name)):
        assert_full_budget_matches(method, mutant, x, expected, name)


def test_full_budget_tolerance_is_tight(method_name):
    """``full_budget_atol`` is a stated float-rounding tolerance, not room for an approximation of
    the network."""
    atol = METHODS.get(method_name).full_budget_atol
    assert atol <= MAX_FULL_BUDGET_ATOL, (
        f"{method_name}.full_budget_atol = {atol} > {MAX_FULL_BUDGET_ATOL}: its full budget must run the reference "
        "network, not an approximation of it"
    )


@per_task
def test_counted_flops_fall_with_budget_and_match_the_trace(toy, method_name, task_name):
    method, model, _ = fitted(toy, method_name, task_name)
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


@per_task
def test_same_seed_same_fit_and_outputs(toy, method_name, task_name):
    method, model, _ = fitted(toy, method_name, task_name)
    model2 = fit(toy, METHODS.get(method_name)(), task_name).model
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        for budget in method.resolve_budgets(None, model.backbone.n_blocks):
            a, b = model(x, budget=budget), model2(x, budget=budget)
            assert torch.equal(a.logits, b.logits)
            assert torch.equal(a.trace.block_tokens, b.trace.block_tokens)


@per_task
def test_state_dict_round_trip(toy, method_name, task_name):
    method, model, _ = fitted(toy, method_name, task_name)
    _, backbone = toy(task_name)
    fresh = METHODS.get(method_name)().wrap(copy.deepcopy(backbone))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        for budget in method.resolve_budgets(None, model.backbone.n_blocks):
            assert torch.equal(fresh(x, budget=budget).logits, model(x, budget=budget).logits)


@per_task
def test_every_trace_metric_is_declared(toy, method_name, task_name):
    """Paper tables and claims name metrics by ``Method.extra_metrics``: nothing may go unlisted."""
    method, model, _ = fitted(toy, method_name, task_name)
    x = eval_inputs(toy, task_name)
    with torch.no_grad():
        for budget in method.resolve_budgets(None, model.backbone.n_blocks):
            names = model.trace_metrics(model(x, budget=budget).trace)
            undeclared = [n for n in names if not any(fnmatch(n, p) for p in method.extra_metrics)]
            assert not undeclared, f"{method_name}.extra_metrics lacks {undeclared} (budget {budget})"


@per_task
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_runs_cast_to_a_targets_dtype(toy, method_name, task_name, dtype):
    """``cpu[dtype=…]`` casts the fitted model and the inputs: every budget runs, its logits are in
    that dtype and finite, and the counted FLOPs still match the trace's analytic count (FLOPs
    depend on what ran, not on the dtype)."""
    from dynbench.hardware.cpu import CPU, CPUConfig

    method, model, _ = fitted(toy, method_name, task_name)
    target = CPU(CPUConfig(dtype=dtype))
    cast = target.cast(copy.deepcopy(model))
    x = eval_batch(toy, task_name).to("cpu", target.torch_dtype).inputs
    assert not any(p.dtype == torch.float32 for p in cast.parameters()), "an fp32 parameter was not cast"
    for budget in method.resolve_budgets(None, cast.backbone.n_blocks):
        c = count_flops(lambda b=budget: cast(x, budget=b), cast, cast.controller_modules())
        logits = c.output.logits
        assert logits.dtype == target.torch_dtype and torch.isfinite(logits).all(), f"budget {budget}"
        analytic = cast.backbone.flops(c.output.trace, tuple(x.shape[1:])).sum().item()
        assert c.total == pytest.approx(analytic, rel=1e-9), f"budget {budget}"
