"""The method-fit cache keeps what a fit made or changed, never a copy of the untouched backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynbench.config import PluginSpec, RunSpec
from dynbench.harness.fit_cache import fitted_model, load_fitted_state
from dynbench.harness.planning import plan_suite

TASK = PluginSpec("toy-text", (("train.steps", "5"),))


def plan(method: PluginSpec):
    return plan_suite([RunSpec(task=TASK, method=method)])[0]


def test_cached_fit_holds_method_state_only_and_reloads_identically(tmp_path: Path):
    p = plan(PluginSpec("layer_skip"))
    backbone = p.task.backbone(0)
    first = fitted_model(p, backbone, tmp_path)
    (file,) = (tmp_path / "methods").glob("*.pt")
    saved = torch.load(file, weights_only=True)
    assert set(saved) == {"ranking", "importance"}  # the backbone is not saved again
    again = fitted_model(p, p.task.backbone(0), tmp_path)  # from the cache: no fit
    inputs = next(p.task.batches("test", batch_size=4)).inputs
    with torch.no_grad():
        torch.testing.assert_close(again(inputs, budget=0.5).logits, first(inputs, budget=0.5).logits, rtol=0, atol=0)


def test_backbone_weights_a_fit_changes_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    p = plan(PluginSpec("layer_skip"))

    def fit_that_edits_the_backbone(model, task, *, seed):
        with torch.no_grad():
            model.backbone.blocks[0].mlp.fc_in.weight.add_(1.0)  # in place, as an optimizer step is

    monkeypatch.setattr(p.method, "fit", fit_that_edits_the_backbone)
    fitted_model(p, p.task.backbone(0), tmp_path)
    (file,) = (tmp_path / "methods").glob("*.pt")
    saved = set(torch.load(file, weights_only=True))
    assert {k for k in saved if k.startswith("backbone.")} == {"backbone.blocks.0.mlp.fc_in.weight"}


def test_a_stale_cache_file_is_refused_with_its_path(tmp_path: Path):
    p = plan(PluginSpec("layer_skip"))
    model = p.method.wrap(p.task.backbone(0))
    with pytest.raises(ValueError, match="does not match the method's model.*Delete it"):
        load_fitted_state(model, {"no_such_buffer": torch.zeros(1)}, tmp_path / "stale.pt")
