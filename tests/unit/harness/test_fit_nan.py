"""A fit that leaves NaN in its state stops the run and caches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynbench.config import PluginSpec, RunSpec
from dynbench.harness.fit_cache import fit_path, fitted_model
from dynbench.harness.planning import plan_suite
from dynbench.models.training import NonFiniteError


def test_a_nan_fit_fails_and_leaves_no_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = RunSpec(task=PluginSpec("toy-vision"), method=PluginSpec.make("early_exit", {"steps": "2"}), seed=0)
    plan = plan_suite([spec])[0]
    backbone = plan.task.backbone(0, cache_dir=tmp_path)
    real_fit = type(plan.method).fit

    def poisoned_fit(self, model, task, *, seed):  # the exit heads diverge
        real_fit(self, model, task, seed=seed)
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if not n.startswith("backbone.")).fill_(float("nan"))

    monkeypatch.setattr(type(plan.method), "fit", poisoned_fit)
    with pytest.raises(NonFiniteError, match=r"The fit of method 'early_exit' left NaN in 1 tensor\(s\)"):
        fitted_model(plan, backbone, tmp_path)
    assert not fit_path(plan, tmp_path).exists()
