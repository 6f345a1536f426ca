"""Every method's cached fit loads into a fresh wrap, as the harness's fit cache loads it.

The cache checks a file's keys and shapes against a fresh wrap before loading it
(:func:`dynbench.harness.fit_cache.load_cached_fit`) and sets aside what does not fit; a method
whose fitted buffers change size must start them as empty placeholders, or every run fits again.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fitting import TOY_TASKS, eval_batch, fitted

from dynbench.harness.fit_cache import load_cached_fit
from dynbench.methods.base import METHODS
from dynbench.models.training import atomic_torch_save


@pytest.mark.parametrize("task_name", TOY_TASKS)
@pytest.mark.parametrize("method_name", METHODS.names())
def test_a_cached_fit_loads_into_a_fresh_wrap(toy, tmp_path: Path, method_name: str, task_name: str) -> None:
    method, model, pristine = fitted(toy, method_name, task_name)
    path = tmp_path / "fit.pt"
    atomic_torch_save(model.state_dict(), path)  # a fit may change the backbone too (DHT fine-tunes it)
    fresh = method.wrap(copy.deepcopy(pristine)).eval()
    assert load_cached_fit(fresh, path), "the fit cache would set this fit aside and fit again every run"
    assert path.exists()  # not moved aside
    x = eval_batch(toy, task_name, 8).inputs
    with torch.inference_mode():
        for budget in method.resolve_budgets(None, model.backbone.n_blocks):
            torch.testing.assert_close(fresh(x, budget=budget).logits, model(x, budget=budget).logits)
