from __future__ import annotations

import pytest
import torch

from dynbench.harness.flops import count_flops
from dynbench.methods._layer_sets import importance_samples, n_kept, uniform_blocks
from dynbench.methods.base import METHODS
from dynbench.methods.layer_skip import LayerSkip, LayerSkipConfig
from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViT, ViTConfig
from dynbench.tasks.base import TASKS

TASK_NAMES = ("toy-vision", "toy-text")
QUICK = TrainConfig(steps=12, batch_size=64, lr=3e-3, warmup_steps=2)  # a briefly trained toy backbone
FIT = LayerSkipConfig(importance_batches=2, batch_size=32)


@pytest.fixture(scope="module")
def setups() -> dict:
    """Per toy task: (task, trained backbone, fitted importance model, a test batch of 8 inputs)."""
    out = {}
    for name in TASK_NAMES:
        cls = TASKS.get(name)
        task = cls(cls.Config(train=QUICK))
        backbone = task.backbone(seed=0).eval()
        method = LayerSkip(FIT)
        model = method.wrap(backbone).eval()
        method.fit(model, task, seed=0)
        inputs = next(task.batches("test", batch_size=8)).inputs
        out[name] = (task, backbone, model, inputs)
    return out


def deep_vit(n_layers: int = 4) -> ViT:
    """An untrained ViT on toy-vision inputs with ``n_layers`` blocks."""
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=4, n_classes=4, d_model=32, n_layers=n_layers, n_heads=2)
    return ViT(cfg).eval()


def test_registered_and_default_budgets_follow_depth() -> None:
    method = METHODS.get("layer_skip")()
    assert method.paper and "2410.20022" in method.paper and method.learns()
    sixths = tuple(k / 6 for k in range(6, 0, -1))
    assert method.resolve_budgets(None, 6) == sixths
    assert method.resolve_budgets(None, 2) == (1.0, 0.5)
    floor2 = LayerSkip(LayerSkipConfig(min_layers=2))
    assert floor2.resolve_budgets(None, 6)[-1] == 2 / 6


def test_budget_to_block_count() -> None:
    assert [n_kept(k / 6, 6, 1) for k in range(7)] == [1, 1, 2, 3, 4, 5, 6]
    assert n_kept(0.25, 6, 1) == 2  # 1.5 rounds half up
    assert n_kept(0.4, 6, 1) == 2 and n_kept(0.45, 6, 1) == 3
    assert n_kept(0.0, 6, 3) == 3
    with pytest.raises(ValueError, match="must lie in"):
        n_kept(1.2, 6, 1)


def test_uniform_sets_for_six_blocks() -> None:
    expected = {6: [0, 1, 2, 3, 4, 5], 5: [0, 1, 3, 4, 5], 4: [0, 2, 3, 5], 3: [0, 3, 5], 2: [0, 5], 1: [5]}
    assert {k: uniform_blocks(6, k) for k in range(1, 7)} == expected
    model = LayerSkip(LayerSkipConfig(pattern="uniform")).wrap(deep_vit(6))
    assert [model.kept_blocks(k / 6) for k in range(6, 0, -1)] == [expected[k] for k in range(6, 0, -1)]


@pytest.mark.parametrize("n_blocks", range(1, 13))
def test_uniform_sets_are_valid_for_any_depth(n_blocks: int) -> None:
    for k in range(1, n_blocks + 1):
        kept = uniform_blocks(n_blocks, k)
        assert len(kept) == k and kept == sorted(set(kept)) and kept[-1] == n_blocks - 1
        assert k == 1 or kept[0] == 0


@pytest.mark.parametrize("pattern", ["importance", "uniform"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_full_budget_reproduces_dense(setups: dict, name: str, pattern: str) -> None:
    task, backbone, fitted, inputs = setups[name]
    model = fitted if pattern == "importance" else LayerSkip(LayerSkipConfig(pattern=pattern)).wrap(backbone)
    with torch.no_grad():
        out = model(inputs, budget=1.0)
        dense = backbone(inputs)
    assert torch.equal(out.logits, dense)
    assert torch.equal(out.trace.block_tokens, backbone.dense_trace(inputs).block_tokens)


def test_unfitted_importance_runs_full_budget_but_refuses_less(setups: dict) -> None:
    _, backbone, _, inputs = setups["toy-vision"]
    model = LayerSkip().wrap(backbone)
    with torch.no_grad():
        assert torch.equal(model(inputs, budget=1.0).logits, backbone(inputs))
    with pytest.raises(ValueError, match=r"no block ranking yet.*LayerSkip\.fit"):
        model(inputs, budget=0.5)


@pytest.mark.parametrize("batch", [8, 1])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_analytic_flops_equal_counted_flops(setups: dict, name: str, batch: int) -> None:
    _, backbone, model, inputs = setups[name]
    x = inputs[:batch]
    for budget in (1.0, 0.5, 0.0):
        with torch.no_grad():
            trace = model(x, budget=budget).trace
        counted = count_flops(lambda b=budget: model(x, budget=b), model, model.controller_modules())
        assert float(backbone.flops(trace, tuple(x.shape[1:])).sum()) == counted.total
        assert counted.controller == 0 and float(trace.controller_flops.sum()) == 0.0


@pytest.mark.parametrize("pattern", ["importance", "uniform"])
def test_flops_fall_with_budget_and_skipped_blocks_never_run(pattern: str) -> None:
    vit = deep_vit(6)
    task = TASKS.get("toy-vision")()
    method = LayerSkip(LayerSkipConfig(pattern=pattern, importance_batches=1, batch_size=32))
    model = method.wrap(vit).eval()
    method.fit(model, task, seed=0)
    x = next(task.batches("test", batch_size=4)).inputs
    calls: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o, j=j: calls.append(j)) for j, b in enumerate(vit.blocks)]
    previous = None
    for budget in method.resolve_budgets(None, vit.n_blocks):
        calls.clear()
        with torch.no_grad():
            out = model(x, budget=budget)
        kept = model.kept_blocks(budget)
        assert calls == kept and len(kept) == n_kept(budget, 6, 1)
        assert (out.trace.block_tokens > 0).sum(dim=1).tolist() == [len(kept)] * len(x)
        assert out.trace.readout.tolist() == [1] * len(x) and out.trace.exit_layer is None
        flops = vit.flops(out.trace, tuple(x.shape[1:]))  # (B,)
        assert previous is None or (flops < previous).all()
        previous = flops
    for h in hooks:
        h.remove()


def test_importance_is_the_loss_increase_of_skipping_each_block_alone() -> None:
    vit = deep_vit(4)
    task = TASKS.get("toy-vision")()
    method = LayerSkip(LayerSkipConfig(importance_batches=8, batch_size=64))  # covers all 128 validation images
    model = method.wrap(vit)
    method.fit(model, task, seed=3)
    split = task.split(task.validation_split)  # a ranking is a selection: measured on validation data
    with torch.no_grad():

        def loss_without(skipped: int | None) -> float:
            x = vit.embed(split.inputs)
            for j, block in enumerate(vit.blocks):
                x = x if j == skipped else block(x)
            return float(task.metric.loss(vit.readout(x), split.targets))

        dense = loss_without(None)
        expected = torch.tensor([loss_without(j) - dense for j in range(4)], dtype=torch.float64)
    torch.testing.assert_close(model.importance, expected, rtol=1e-4, atol=1e-5)
    assert model.ranking.tolist() == sorted(range(4), key=lambda j: (-expected[j].item(), j))


def test_importance_ranking_is_deterministic_nested_and_in_state_dict(setups: dict) -> None:
    task, backbone, model, _ = setups["toy-text"]
    again = LayerSkip(FIT).wrap(backbone)
    LayerSkip(FIT).fit(again, task, seed=0)
    assert torch.equal(again.ranking, model.ranking) and torch.equal(again.importance, model.importance)
    vit = deep_vit(6)
    deep = LayerSkip(FIT).wrap(vit)
    LayerSkip(FIT).fit(deep, TASKS.get("toy-vision")(), seed=0)
    state = deep.state_dict()
    assert state["ranking"].dtype == torch.long and sorted(state["ranking"].tolist()) == list(range(6))
    sets = [set(deep.kept_blocks(k / 6)) for k in range(1, 7)]
    assert all(a < b for a, b in zip(sets, sets[1:]))  # nested as k grows


@pytest.mark.parametrize("name", TASK_NAMES)
def test_state_dict_round_trip_into_fresh_wrap(setups: dict, name: str) -> None:
    _, backbone, model, inputs = setups[name]
    fresh = LayerSkip(FIT).wrap(backbone).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        for budget in (1.0, 0.5):
            assert fresh.kept_blocks(budget) == model.kept_blocks(budget)
            assert torch.equal(fresh(inputs, budget=budget).logits, model(inputs, budget=budget).logits)


def test_uniform_fit_is_a_no_op_but_buffers_exist(setups: dict) -> None:
    task, backbone, _, _ = setups["toy-vision"]
    method = LayerSkip(LayerSkipConfig(pattern="uniform"))
    model = method.wrap(backbone)
    method.fit(model, task, seed=0)
    assert model.state_dict()["ranking"].shape == (backbone.n_blocks,)
    assert model.kept_blocks(0.5) == [1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pattern": "random"}, r"pattern must be one of .*got 'random'"),
        ({"min_layers": 0}, r"min_layers must be >= 1, got 0"),
        ({"importance_batches": 0}, r"importance_batches must be >= 1, got 0"),
        ({"batch_size": -1}, r"batch_size must be >= 1, got -1"),
    ],
)
def test_invalid_config_raises_helpful_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LayerSkipConfig(**kwargs)


def test_min_layers_beyond_depth_is_rejected_at_wrap() -> None:
    with pytest.raises(ValueError, match=r"min_layers=3 exceeds the backbone's 2 blocks"):
        LayerSkip(LayerSkipConfig(min_layers=3)).wrap(deep_vit(2))


def test_importance_samples_are_capped_by_flops(setups: dict) -> None:
    task, backbone = setups["toy-text"][:2]
    shape = tuple(next(task.batches("train", batch_size=1)).inputs.shape[1:])
    per_sample = backbone.dense_flops(shape) * (backbone.n_blocks + 3) / 2

    def samples(max_flops: float) -> int:
        return importance_samples(backbone, task, batches=8, batch_size=64, max_flops=max_flops)

    assert samples(LayerSkipConfig().importance_flops) == 8 * 64  # a toy is far below the cap
    assert samples(10.5 * per_sample) == 10
    assert samples(1.0) == 1  # never 0
    model = LayerSkip(LayerSkipConfig(importance_flops=3 * per_sample)).wrap(backbone)
    LayerSkip(LayerSkipConfig(importance_flops=3 * per_sample)).fit(model, task, seed=0)
    assert sorted(model.ranking.tolist()) == list(range(backbone.n_blocks))


def test_deep_models_get_at_most_twelve_default_budgets() -> None:
    counts = [round(b * 30) for b in LayerSkip().budgets(30)]
    assert len(counts) == 12 and counts[0] == 30 and counts[-1] == 1 and counts == sorted(set(counts), reverse=True)
    assert [round(b * 6) for b in LayerSkip().budgets(6)] == [6, 5, 4, 3, 2, 1]  # shallow: every count
