from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from dynbench.analysis.report import _upper_bound_notes
from dynbench.analysis.tables import pareto_mask, summary_frame
from dynbench.cli import main
from dynbench.config import PluginSpec, RunSpec
from dynbench.harness.execution import eval_batches
from dynbench.harness.fit_cache import fitted_eval
from dynbench.harness.flops import count_flops
from dynbench.harness.planning import plan_suite
from dynbench.methods._layer_allocation import allocate
from dynbench.methods.base import METHODS
from dynbench.methods.oracle import (
    CandidateScorer,
    Oracle,
    OracleConfig,
    candidate_configs,
    depth_grid,
    input_hashes,
)
from dynbench.models.gpt import GPTConfig
from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViTConfig
from dynbench.tasks.base import Task
from dynbench.tasks.toy_text import ToyText, ToyTextConfig
from dynbench.tasks.toy_vision import ToyVision, ToyVisionConfig

L = 4
QUICK = TrainConfig(steps=40, batch_size=64, lr=3e-3, warmup_steps=5)


class NoisyToyVision(ToyVision):
    """Toy vision whose augmentation adds noise, so classification has a real second view."""

    def augment(self, inputs: Tensor) -> Tensor:
        return inputs + 0.5 * torch.randn_like(inputs)


def deep_tasks() -> dict[str, Task]:
    vit = ViTConfig(image_size=8, patch_size=4, n_classes=4, d_model=32, n_layers=L, n_heads=2)
    gpt = GPTConfig(vocab_size=16, block_size=16, d_model=32, n_layers=L, n_heads=2)
    return {
        "vision": NoisyToyVision(ToyVisionConfig(model=vit, train=QUICK)),
        "text": ToyText(ToyTextConfig(model=gpt, train=QUICK)),
    }


@pytest.fixture(scope="module")
def solved() -> dict:
    """Per modality: (task, method, solved model, eval batches of 16, budgets), 4-block backbones,
    48 samples."""
    out = {}
    for name, task in deep_tasks().items():
        backbone = task.backbone(seed=0).eval()
        method = Oracle()
        model = method.wrap(backbone).eval()
        batches = list(task.batches(task.eval_split, batch_size=16, limit=48))
        budgets = method.resolve_budgets(None, L)
        method.fit_eval(model, task, batches, budgets=budgets, seed=0)
        out[name] = (task, method, model, batches, budgets)
    return out


def quality(task: Task, model, batches, budget: float) -> float:
    with torch.no_grad():
        scores = [task.metric.score(model(b.inputs, budget=budget).logits, b.targets) for b in batches]
    return task.metric.aggregate(torch.cat(scores).double().numpy())


def test_registered_as_an_upper_bound_with_a_grid_down_to_one_block() -> None:
    method = METHODS.get("oracle")()
    assert method.sees_eval_labels and "2410.20022" in method.paper and not method.learns()
    assert method.resolve_budgets(None, 4) == (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
    assert method.resolve_budgets(None, 30)[-1] == 0.1 and method.resolve_budgets(None, 2)[-1] == 0.5
    with pytest.raises(ValueError, match="max_depths must be >= 2"):
        OracleConfig(max_depths=1)


def test_candidates_small_model_every_depth_deep_model_about_forty() -> None:
    configs = candidate_configs(6, OracleConfig(), seed=0)
    assert configs[0] == tuple(range(6)) and len(set(configs)) == len(configs)
    assert all(tuple(range(k)) in configs for k in range(1, 7))  # every early-exit depth
    assert (0, 5) in configs and (5,) in configs  # uniform spacing, 2 and 1 blocks
    assert configs == candidate_configs(6, OracleConfig(), seed=0) != candidate_configs(6, OracleConfig(), seed=1)
    assert depth_grid(30, 8) == [1, 5, 9, 13, 18, 22, 26, 30]
    deep = candidate_configs(30, OracleConfig(), seed=0)
    assert len(deep) <= 40 and {len(c) for c in deep} == set(depth_grid(30, 8))


def test_early_exits_share_one_forward() -> None:
    task = deep_tasks()["text"]
    backbone = task.build_backbone().eval()
    calls = []
    for block in backbone.blocks:
        block.register_forward_hook(lambda *_: calls.append(1))
    configs = [tuple(range(k)) for k in range(1, L + 1)]
    batch = next(task.batches("test", batch_size=4))
    table = CandidateScorer(backbone, configs, lambda lo, t: {"score": task.metric.score(lo, t)})(
        batch.inputs, batch.targets
    )
    assert len(calls) == L and table["score"].shape == (4, L)
    with torch.no_grad():  # the depth-L candidate is the dense model
        dense = task.metric.score(backbone(batch.inputs), batch.targets).double()
    torch.testing.assert_close(table["score"][:, -1], dense)


@pytest.mark.parametrize("name", ["vision", "text"])
def test_full_budget_is_dense_exactly(solved: dict, name: str) -> None:
    task, _, model, batches, _ = solved[name]
    for b in batches:
        with torch.no_grad():
            out = model(b.inputs, budget=1.0)
            assert torch.equal(out.logits, model.backbone(b.inputs))
        assert torch.equal(out.trace.block_tokens, model.backbone.dense_trace(b.inputs).block_tokens)


@pytest.mark.parametrize("name", ["vision", "text"])
def test_forward_runs_exactly_the_chosen_blocks(solved: dict, name: str) -> None:
    _, _, model, batches, budgets = solved[name]
    x = torch.cat([b.inputs for b in batches])
    bb = model.backbone
    previous = math.inf
    for budget in budgets:  # descending
        c = count_flops(lambda b=budget: model(x, budget=b), model, model.controller_modules())
        trace = c.output.trace
        assert c.total == float(bb.flops(trace, tuple(x.shape[1:])).sum())
        ran = trace.block_tokens > 0  # (N, L)
        assert torch.equal(ran, model.configs[trace.extra["oracle_config"]])
        assert ran.sum() <= budget * ran.numel() + 1e-9 and c.total <= previous
        previous = c.total
        for i in (0, 7, 29):  # one sample alone through its own blocks gives the same logits
            with torch.no_grad():
                h = bb.embed(x[i : i + 1])
                for block in torch.nonzero(ran[i]).flatten().tolist():
                    h = bb.blocks[block](h)
                torch.testing.assert_close(c.output.logits[i : i + 1], bb.readout(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vision", "text"])
def test_beats_every_static_candidate_and_matches_full_from_the_matching_budget(solved: dict, name: str) -> None:
    task, _, model, batches, budgets = solved[name]
    hib = task.metric.spec.higher_is_better
    better = (lambda a, b: a >= b - 1e-9) if hib else (lambda a, b: a <= b * (1 + 1e-6))
    full = quality(task, model, batches, 1.0)
    matching = float(model.matching_budget)
    assert 0 < matching <= 1
    configs = [tuple(torch.nonzero(row).flatten().tolist()) for row in model.configs]
    table = torch.cat([CandidateScorer(model.backbone, configs, lambda lo, t: {"s": task.metric.score(lo, t)})(
        b.inputs, b.targets)["s"] for b in batches])  # fmt: skip
    for budget in budgets:
        got = quality(task, model, batches, budget)
        for m, config in enumerate(configs):  # one config for every sample is a feasible allocation (below 1.0)
            if budget < 1.0 and len(config) <= budget * L + 1e-9:
                assert better(got, task.metric.aggregate(table[:, m].numpy()))
        if budget >= matching - 1e-12:
            assert better(got, full)
    trace_metrics = model.trace_metrics(model(batches[0].inputs, budget=budgets[-1]).trace)
    assert {"quality_selection_half", "quality_heldout_half", "matching_budget"} <= set(trace_metrics)


@pytest.mark.parametrize("name", ["vision", "text"])
def test_selection_bias_control(solved: dict, name: str) -> None:
    task, _, model, batches, budgets = solved[name]
    hib = task.metric.spec.higher_is_better
    x = torch.cat([b.inputs for b in batches])
    with torch.no_grad():
        metrics = {b: model.trace_metrics(model(x, budget=b).trace) for b in budgets}
    full = metrics[1.0]
    assert full["quality_selection_half"][0] == pytest.approx(full["quality_heldout_half"][0], rel=1e-12)
    if name == "text":  # even/odd halves of the window together are the whole window
        assert full["quality_selection_half"][0] == pytest.approx(quality(task, model, batches, 1.0), rel=1e-5)
    for budget, m in metrics.items():  # choosing on one half and scoring on the other can only lose
        sel, held = m["quality_selection_half"][0], m["quality_heldout_half"][0]
        assert (held <= sel + 1e-12) if hib else (held >= sel - 1e-12), budget
        assert m["quality_heldout_half"][1:] == (task.metric.spec.unit, hib)
    assert any(m["quality_heldout_half"][0] != m["quality_selection_half"][0] for m in metrics.values())
    assert float(model.matching_budget_heldout) in budgets


def test_allocate_on_a_hand_made_table() -> None:
    """Two samples, L=2, candidates full / block 0 / block 1; sample 1 is right only with the full
    network."""
    score = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    second_view = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    table = {"score": score, "a": score, "b": second_view}
    sol = allocate(table, np.array([10, 20]), [2, 1, 1], 2, (1.0, 0.75, 0.5), kind=0)
    assert sol["solved_budgets"].tolist() == [1.0, 0.75, 0.5]
    assert sol["choices"].tolist() == [[0, 0], [1, 0], [1, 1]]
    assert float(sol["matching_budget"]) == 0.75  # 3 of 4 layers: block 0 for sample 0, both for sample 1
    assert sol["selection_half"][2].tolist() == [1.0, 0.5] and sol["heldout_half"][2].tolist() == [0.5, 0.5]
    assert float(sol["matching_budget_heldout"]) == 1.0
    with pytest.raises(ValueError, match="below one block per sample"):
        allocate(table, np.array([10, 20]), [2, 1, 1], 2, (1.0, 0.4), kind=0)


def test_identical_inputs_share_one_choice() -> None:
    score = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # same input, different labels
    sol = allocate({"score": score, "a": score, "b": score}, np.array([5, 5]), [2, 1, 1], 2, (1.0, 0.5), kind=0)
    assert sol["sample_hashes"].tolist() == [5] and sol["choices"].tolist() == [[0], [1]]
    assert sol["selection_half"][1].tolist() == [0.5]  # the mean over the two samples
    # b == a: the "second view" is the first (an identity augment), so there is no selection-bias
    # control
    assert math.isnan(float(sol["matching_budget_heldout"])) and sol["heldout_half"].isnan().all()


def test_unknown_unsolved_and_unsolved_budget_are_refused(solved: dict) -> None:
    task, method, model, batches, _ = solved["vision"]
    stranger = batches[0].inputs[:2] + 1.0
    with pytest.raises(ValueError, match=r"2 of 2 inputs are not among the 48 samples.*only knows the samples"):
        model(stranger, budget=0.5)
    with pytest.raises(ValueError, match=r"budget 0\.55 was not solved"):
        model(batches[0].inputs, budget=0.55)
    with pytest.raises(ValueError, match="nothing is solved yet"):
        method.wrap(model.backbone)(batches[0].inputs, budget=1.0)
    assert input_hashes(batches[0].inputs).unique().numel() == len(batches[0])


def test_state_dict_round_trip_resizes_the_solution(solved: dict) -> None:
    _, method, model, batches, _ = solved["text"]
    fresh = method.wrap(model.backbone).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        for budget in (1.0, 0.5, 0.3):
            x = batches[1].inputs
            assert torch.equal(fresh(x, budget=budget).logits, model(x, budget=budget).logits)


def test_runner_solves_on_exactly_the_eval_batches_and_caches(tmp_path: Path, monkeypatch) -> None:
    calls: list[list[int]] = []
    original = Oracle.fit_eval

    def spy(self, model, task, batches, **kw):
        calls.append(torch.cat([b.sample_ids for b in batches]).tolist())
        return original(self, model, task, batches, **kw)

    monkeypatch.setattr(Oracle, "fit_eval", spy)
    task = PluginSpec("toy-text", (("train.steps", "5"),))
    plan = plan_suite([RunSpec(task=task, method=PluginSpec("oracle"), limit=20)])[0]
    model = plan.method.wrap(plan.task.backbone(0)).eval()
    batches = eval_batches(plan)
    fitted_eval(plan, model, batches, tmp_path)
    assert calls == [torch.cat([b.sample_ids for b in batches]).tolist()] and len(calls[0]) == 20
    again = plan.method.wrap(plan.task.backbone(0)).eval()
    fitted_eval(plan, again, batches, tmp_path)  # from the cache
    assert len(calls) == 1
    with torch.no_grad():
        assert torch.equal(again(batches[0].inputs, budget=0.5).logits, model(batches[0].inputs, budget=0.5).logits)
    other = plan_suite([RunSpec(task=task, method=PluginSpec("oracle"), limit=12)])[0]
    fitted_eval(other, other.method.wrap(other.task.backbone(0)).eval(), eval_batches(other), tmp_path)
    assert len(calls) == 2 and len(calls[1]) == 12  # another --limit: solved again, on its own samples


def test_upper_bound_column_labels_and_excludes_any_method() -> None:
    base = dict(task="t", hardware="cpu", seed=0, batch_size=1, unit="top1", higher_is_better=True, budget=1.0)
    rows = pd.DataFrame(
        [
            {**base, "method": "ub", "method_label": "ub", "metric": "quality", "value": 0.9, "upper_bound": True},
            {**base, "method": "ub", "method_label": "ub", "metric": "flops_per_sample", "value": 1.0,
             "upper_bound": True},
            {**base, "method": "m", "method_label": "m", "metric": "quality", "value": 0.5, "upper_bound": False},
            {**base, "method": "m", "method_label": "m", "metric": "flops_per_sample", "value": 2.0,
             "upper_bound": False},
        ]
    )  # fmt: skip
    summary = summary_frame(rows)
    assert summary["display_label"].tolist() == ["m", "ub (upper bound)"]
    assert pareto_mask(summary).tolist() == [True, False]


@pytest.mark.slow
def test_cli_run_and_report_show_the_oracle_on_the_layers_plot(tmp_path: Path) -> None:
    fast = ["--set", "measure.min_time_s=0.02", "--set", "measure.min_iters=3", "--set", "measure.timing_inputs=4",
            "--set", "measure.memory_inputs=1", "--batch-sizes", "1", "--executor", "inline"]  # fmt: skip
    res = tmp_path / "res"
    args = ["run", "--out", str(res), "--methods", "layer_skip,oracle", "--tasks", "toy-text", "--limit", "24"]
    assert main([*args, *fast]) == 0
    rows = pd.concat(pd.read_json(p, lines=True) for p in (res / "runs").glob("*.jsonl"))
    oracle = rows[rows.method == "oracle"]
    assert oracle.upper_bound.all() and not rows[rows.method == "layer_skip"].upper_bound.any()
    assert {"matching_budget", "quality_selection_half", "quality_heldout_half", "mean_layers"} <= set(oracle.metric)
    q = rows[(rows.metric == "quality") & (rows.budget == 1.0)].set_index("method").value
    assert q["oracle"] == pytest.approx(q["layer_skip"], rel=1e-6)  # full budget = dense, on the same samples
    (samples,) = [p for p in (res / "samples").glob("*.jsonl") if "oracle" in p.name]
    recs = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(recs) == 24 * oracle.budget.nunique() and "heldout_half_score" in recs[0]
    out = tmp_path / "report"
    assert main(["report", str(res), "--out", str(out)]) == 0
    assert (out / "toy-text" / "quality_layers.png").stat().st_size > 1000
    index = (out / "index.md").read_text()
    assert "![Quality vs executed layers](toy-text/quality_layers.png)" in index
    assert "**oracle (upper bound)** matches the full model's quality" in index and "held-out half" in index
    control = ["quality_selection_half", "quality_heldout_half", "matching_budget_heldout"]
    no_view = _upper_bound_notes(rows[~rows.metric.isin(control)])  # as for a task without a second view
    assert no_view is not None and "**No selection-bias control**" in no_view


def test_tuned_exit_candidates_and_budget_depths() -> None:
    """exits=tuned: prefixes read out through fitted translators (counted); each budget's depth is a
    candidate."""
    task = deep_tasks()["text"]
    backbone = task.backbone(seed=0).eval()
    method = Oracle(OracleConfig(exits="tuned", max_depths=2))
    model = method.wrap(backbone).eval()
    assert model.tuned_exits and len(model.exits) == L - 1
    assert not Oracle().wrap(backbone).tuned_exits  # auto: a 16-word head is not tuned
    batches = list(task.batches(task.eval_split, batch_size=16, limit=48))
    budgets = (1.0, 0.75, 0.5)
    method.fit_eval(model, task, batches, budgets=budgets, seed=0)
    assert all(bool(e.translator.weight.abs().sum() > 0) for e in model.exits)  # fitted, not the zero init
    configs = [tuple(torch.nonzero(row).flatten().tolist()) for row in model.configs]
    assert {len(c) for c in configs} == {1, 2, 3, 4}  # grid {1, 4} plus the budgets' depths 3 and 2
    assert model.is_exit((0, 1)) and not model.is_exit((0, 2)) and not model.is_exit(tuple(range(L)))
    x = torch.cat([b.inputs for b in batches])
    bb = model.backbone
    for budget in budgets:
        c = count_flops(lambda b=budget: model(x, budget=b), model, model.controller_modules())
        trace = c.output.trace
        assert c.total == float(bb.flops(trace, tuple(x.shape[1:])).sum())  # translators included
        assert c.controller == float(trace.controller_flops.sum())
        chosen = [configs[m] for m in trace.extra["oracle_config"].tolist()]
        for i, config in enumerate(chosen[:8]):  # each sample's logits come from its own config's head
            with torch.no_grad():
                h = bb.embed(x[i : i + 1])
                for block in config:
                    h = bb.blocks[block](h)
                torch.testing.assert_close(c.output.logits[i : i + 1], model.readout_for(config)(h))
        if budget < 1.0:
            assert any(model.is_exit(cfg) for cfg in chosen)  # the tuned exits are worth choosing
    state = model.state_dict()
    fresh = method.wrap(task.backbone(seed=0).eval())
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, budget=0.5).logits, model(x, budget=0.5).logits)
