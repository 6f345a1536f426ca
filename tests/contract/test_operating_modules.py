"""Every registered method (and each of its controls) × every toy task × every budget:
``operating_modules``.

``peak_mem_bytes`` counts only the weights of a budget's operating modules, so they must really be
all that budget's forward reads: every parameter and floating buffer outside them is set to NaN and
the outputs must not change. Nothing here names a method.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from fitting import TOY_TASKS, eval_batch, fitted  # the session's shared fits (same folder, on sys.path)

from dynbench.harness.memory import module_bytes, modules_bytes
from dynbench.methods.base import METHODS, DynamicModel, Method


def specs() -> list[tuple[str, str]]:
    """``(method name, control kind or "")``: every method as configured by default, and each of its
    controls."""
    out = []
    for name in METHODS.names():
        out.append((name, ""))
        out.extend((name, kind) for kind in METHODS.get(name).controls)
    return out


def fitted_spec(toy, name: str, control: str, task_name: str) -> tuple[Method, DynamicModel]:
    """The method (or its control ``control``) fitted on a toy task, on the session's shared fit."""
    options = dict(METHODS.get(name).controls[control]) if control else None
    method, model, _ = fitted(toy, name, task_name, options)
    return method, model


def storages(modules: list[torch.nn.Module]) -> set[int]:
    """Data pointers of every parameter and buffer storage of ``modules``."""
    return {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}


def poison_all_but(model: DynamicModel, keep: list[torch.nn.Module]) -> int:
    """Set each parameter and floating buffer of ``model`` to NaN unless ``keep`` holds its storage.

    Returns:
        How many tensors were poisoned.
    """
    kept = storages(keep)
    poisoned = 0
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t.untyped_storage().data_ptr() not in kept:
                t.fill_(math.nan)
                poisoned += 1
    return poisoned


pytestmark = [
    pytest.mark.parametrize("task_name", TOY_TASKS),
    pytest.mark.parametrize(("method_name", "control"), specs(), ids=[f"{n}[{c}]" if c else n for n, c in specs()]),
]


def test_operating_modules_are_all_a_budget_reads(toy, method_name, control, task_name):
    """On a copy whose every tensor outside a budget's operating modules is NaN, that budget's
    logits are unchanged."""
    method, model = fitted_spec(toy, method_name, control, task_name)
    x = eval_batch(toy, task_name).inputs
    for budget in method.resolve_budgets(None, model.backbone.n_blocks):
        poisoned = copy.deepcopy(model)
        poison_all_but(poisoned, poisoned.operating_modules(budget))
        with torch.no_grad():
            expected = model(x, budget=budget).logits
            got = poisoned(x, budget=budget).logits
        assert torch.isfinite(got).all(), f"budget {budget} read a tensor outside its operating modules"
        assert torch.equal(got, expected), f"budget {budget}"


def test_resident_bytes_hold_every_operating_point(toy, method_name, control, task_name):
    """The operating modules are part of the model: resident ≥ operating weights, per storage."""
    method, model = fitted_spec(toy, method_name, control, task_name)
    resident = module_bytes(model)
    whole = storages([model])
    for budget in method.resolve_budgets(None, model.backbone.n_blocks):
        operating = model.operating_modules(budget)
        assert storages(operating) <= whole, f"budget {budget}: an operating tensor the model does not hold"
        assert 0 < modules_bytes(operating) <= resident, f"budget {budget}"
