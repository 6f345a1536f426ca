from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynbench.harness.fit_cache import fitted_state, load_fitted_state, tensor_versions
from dynbench.harness.flops import count_flops
from dynbench.methods._exit_heads import HEAD_KINDS
from dynbench.methods._ppo import PPOConfig
from dynbench.methods._static_paths import GraphCache, Segment, graphs_allowed, trace_segment
from dynbench.methods._tree_ensemble import TreeEnsemble
from dynbench.methods.base import METHODS
from dynbench.methods.transformer_inverse import (
    FitData,
    TransformerInverse,
    TransformerInverseConfig,
    TransformerInverseModel,
    fold_depths,
    input_entropy,
    sufficient_bucket,
)
from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViTConfig
from dynbench.tasks.base import TASKS
from dynbench.tasks.toy_vision import ToyVisionConfig
from dynbench.validation import literal_choices

TASK_NAMES = ("toy-vision", "toy-text")
QUICK = TrainConfig(steps=12, batch_size=64, lr=3e-3, warmup_steps=2)  # a briefly trained toy backbone
FIT = TransformerInverseConfig(
    exit_steps=20, fit_samples=256, gbdt_iterations=10, ppo=PPOConfig(iterations=6, minibatch=64)
)
DEEP = ViTConfig(image_size=8, patch_size=4, n_classes=4, d_model=32, n_layers=4, n_heads=2)


def fit(task, config: TransformerInverseConfig = FIT) -> TransformerInverseModel:
    backbone = task.backbone(seed=0).eval()
    method = TransformerInverse(config)
    model = method.wrap(copy.deepcopy(backbone))
    method.fit(model, task, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def setups() -> dict:
    """Per task: (task, fitted model, a test batch of 16 inputs); 'deep' is a 4-block toy ViT (4
    fold points)."""
    out = {}
    for name in TASK_NAMES:
        cls = TASKS.get(name)
        task = cls(cls.Config(train=QUICK))
        out[name] = (task, fit(task), next(task.batches("test", batch_size=16)).inputs)
    deep = TASKS.get("toy-vision")(ToyVisionConfig(model=DEEP, train=QUICK))
    out["deep"] = (deep, fit(deep), next(deep.batches("test", batch_size=32)).inputs)
    return out


def variant(model: TransformerInverseModel, **changes) -> TransformerInverseModel:
    """The same fitted model with another executor setting (policy kind, compiled)."""
    other = copy.deepcopy(model)
    for key, value in changes.items():
        setattr(other, {"policy": "policy_kind"}.get(key, key), value)
    return other.eval()


def budgets(model: TransformerInverseModel) -> tuple[float, ...]:
    return (*TransformerInverse().resolve_budgets(None, model.backbone.n_blocks), 0.2, 0.0)


def test_registered_with_alias_paper_and_budgets() -> None:
    assert METHODS.get("tinv") is METHODS.get("transformer_inverse") is TransformerInverse
    method = TransformerInverse()
    b = method.resolve_budgets(None, 6)
    assert b[0] == method.full_budget == 1.0 and len(b) == 6 and list(b) == sorted(b, reverse=True)
    assert method.reconstructed and method.learns() and "2501.16394" in (method.paper or "")
    # the random baseline reuses the learned fit (the same cache key): only the forward reads the
    # policy
    assert TransformerInverse(TransformerInverseConfig(policy="random")).fit_identity() == method.fit_identity()
    assert TransformerInverse(TransformerInverseConfig(policy="static")).fit_identity() == method.fit_identity()
    assert TransformerInverse.controls == {"static": {"policy": "static"}, "random": {"policy": "random"}}


def test_fold_depths() -> None:
    assert fold_depths(2, 0) == [1, 2]
    assert fold_depths(6, 0) == [1, 2, 3, 4, 5, 6]
    assert fold_depths(30, 0) == [8, 15, 23, 30]  # 7.5 and 22.5 round up
    assert fold_depths(6, 3) == [2, 4, 6]
    assert fold_depths(3, 10) == [1, 2, 3]
    assert fold_depths(1, 0) == [1]


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("policy", "oracle", r"policy must be one of \['learned', 'static', 'random'\], got 'oracle'\. Use"),
        ("policy", "learnd", r"got 'learnd'\. Did you mean: learned\b"),
        ("heads", "tuned", "heads must be one of .* tuned exits are not offered"),
        ("n_paths", -1, "n_paths must be >= 0"),
        ("lambda_max", 0.0, "lambda_max must be > 0"),
        ("text_tolerance", -0.1, "text_tolerance must be >= 0"),
        ("fit_samples", 0, "fit_samples must be >= 1"),
        ("gbdt_leaves", 1, "gbdt_leaves must be >= 2"),
        ("exit_steps", -1, "exit_steps must be >= 0"),
        ("fit_flops", 0.0, "fit_flops must be > 0"),
        ("fit_split", "test", "fit_split must be one of"),
    ],
)
def test_config_errors(option: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TransformerInverseConfig(**{option: value})


def test_exit_head_choices_are_early_exits_less_tuned_exits() -> None:
    choices = literal_choices(typing.get_type_hints(TransformerInverseConfig)["heads"])
    assert set(choices) == set(HEAD_KINDS) - {"tuned"}


def test_forward_errors(setups: dict) -> None:
    task, model, x = setups["toy-vision"]
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        model(x, budget=1.5)
    fresh = TransformerInverse().wrap(copy.deepcopy(model.backbone))
    with pytest.raises(ValueError, match="no fitted predictor/policy"):
        fresh(x, budget=1.0)


def test_minimal_sufficient_depth_labels() -> None:
    agree = torch.tensor([[True, True, True], [False, True, True], [False, False, True], [True, False, True]])
    ce = torch.tensor([[2.0, 1.5, 1.0], [1.04, 1.2, 1.0], [3.0, 1.05, 1.0], [1.2, 1.06, 1.0]], dtype=torch.float64)
    data = FitData(torch.zeros(4, 1), torch.zeros(4, 3, 1), torch.zeros(4, 3), ce, agree, torch.zeros(4, 3, 3))
    assert sufficient_bucket(data, text=False, tolerance=0.05).tolist() == [0, 1, 2, 0]
    assert sufficient_bucket(data, text=True, tolerance=0.05).tolist() == [2, 0, 1, 2]
    assert sufficient_bucket(data, text=True, tolerance=10.0).tolist() == [0, 0, 0, 0]


def test_input_entropy() -> None:
    tokens = torch.tensor([[1, 1, 1, 1], [1, 2, 3, 4], [5, 5, 7, 7]])
    torch.testing.assert_close(input_entropy(tokens), torch.tensor([0.0, np.log(4), np.log(2)], dtype=torch.float32))
    flat = torch.zeros(2, 1, 4, 4)
    flat[1, 0, :2] = 1.0  # half the pixels bright: two equally full bins
    torch.testing.assert_close(input_entropy(flat), torch.tensor([0.0, np.log(2)], dtype=torch.float32))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_tree_ensemble_predicts_like_sklearn_and_round_trips(n_classes: int) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    y = (X[:, 0] > 0).astype(int) + (n_classes > 2) * 2 * (X[:, 1] > 0.5)
    clf = HistGradientBoostingClassifier(max_iter=15, max_leaf_nodes=7, max_depth=4, random_state=0).fit(X, y)
    ens = TreeEnsemble()
    ens.load_sklearn(clf)
    Xt = rng.normal(size=(300, 6))
    torch.testing.assert_close(ens.raw(torch.from_numpy(Xt)), torch.from_numpy(clf._raw_predict(Xt)))
    assert ens(torch.from_numpy(Xt)).tolist() == clf.predict(Xt).tolist()
    assert ens.ops_per_sample() == ens.n_trees * (int(ens.steps) + 1) > 0
    again = TreeEnsemble()
    again.load_state_dict(ens.state_dict())  # buffers resize to the fitted trees
    assert torch.equal(again(torch.from_numpy(Xt)), ens(torch.from_numpy(Xt)))


def test_constant_tree_ensemble() -> None:
    ens = TreeEnsemble()
    ens.load_constant(3)
    assert ens(torch.zeros(5, 2, dtype=torch.float64)).tolist() == [3] * 5 and ens.ops_per_sample() == 0


def test_tree_ensemble_fit_matches_sklearn_and_falls_back_to_a_constant() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.normal(size=(300, 4)))
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # 3 classes
    ens = TreeEnsemble()
    ens.fit(X, y, iterations=8, leaves=5, depth=3, seed=0)
    clf = HistGradientBoostingClassifier(
        max_iter=8, max_leaf_nodes=5, max_depth=3, early_stopping=False, random_state=0
    )
    clf.fit(X.numpy(), y.numpy())
    assert ens(X).tolist() == clf.predict(X.numpy()).tolist() and int(ens.steps) <= 3
    ens.fit(X, torch.full((300,), 2), iterations=8, leaves=5, depth=3, seed=0)  # one class: sklearn would refuse
    assert ens.n_trees == 0 and ens(X).tolist() == [2] * 300


def test_cross_fitted_predictions_come_from_trees_that_never_saw_the_sample() -> None:
    rng = np.random.default_rng(2)
    X = torch.from_numpy(rng.normal(size=(200, 3)))
    y = (X[:, 0] > 0).long()
    y[::7] = 1 - y[::7]  # label noise: in-sample trees would memorise it, out-of-sample ones cannot
    recipe = {"iterations": 6, "leaves": 5, "depth": 3, "seed": 4}
    predicted = TreeEnsemble().cross_fitted_predictions(X, y, **recipe)
    assert torch.equal(predicted, TreeEnsemble().cross_fitted_predictions(X, y, **recipe))  # deterministic
    order = torch.randperm(200, generator=torch.Generator().manual_seed(4))
    first, second = order[:100], order[100:]
    other_half = TreeEnsemble()
    other_half.fit(X[second], y[second], **recipe)
    assert torch.equal(predicted[first], other_half(X[first]))


def test_static_paths_only_replace_eager_inference() -> None:
    blocks = [torch.nn.Linear(4, 4), torch.nn.Tanh()]
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        assert graphs_allowed()
        traced = trace_segment(Segment(blocks), x)
        torch.testing.assert_close(traced(x[:1]), blocks[1](blocks[0](x[:1])))  # the batch size stays free
        with FlopCounterMode(display=False):
            assert not graphs_allowed()  # a FLOP counter must see every op
    assert not graphs_allowed()  # grad enabled: training, never graphs
    cache = GraphCache({("key",): traced})
    assert len(copy.deepcopy(cache)) == 0  # graphs hold the original blocks: a copy prepares its own


@pytest.mark.parametrize("name", (*TASK_NAMES, "deep"))
@pytest.mark.parametrize("policy", ["learned", "static", "random"])
def test_full_budget_reproduces_dense(setups: dict, name: str, policy: str) -> None:
    _, model, x = setups[name]
    m = variant(model, policy=policy)
    with torch.no_grad():
        out = m(x, budget=1.0)
        dense = m.backbone(x)
    assert torch.equal(out.logits, dense)
    assert out.trace.readout.tolist() == [1] * len(x)


@pytest.mark.parametrize("name", (*TASK_NAMES, "deep"))
@pytest.mark.parametrize("policy", ["learned", "static", "random"])
def test_depth_never_increases_as_the_budget_falls(setups: dict, name: str, policy: str) -> None:
    _, model, x = setups[name]
    m = variant(model, policy=policy)
    previous = None
    with torch.no_grad():
        for b in budgets(m):
            depth = m(x, budget=b).trace.exit_layer
            if previous is not None:
                assert (depth <= previous).all(), b
            previous = depth


@pytest.mark.parametrize("name", (*TASK_NAMES, "deep"))
@pytest.mark.parametrize("policy", ["learned", "static", "random"])
@pytest.mark.parametrize("batch", [16, 1])
def test_counted_flops_equal_the_trace(setups: dict, name: str, policy: str, batch: int) -> None:
    _, model, x = setups[name]
    m = variant(model, policy=policy)
    x = x[:batch]
    for b in budgets(m):
        c = count_flops(lambda b=b: m(x, budget=b), m, m.controller_modules())
        trace = c.output.trace
        assert float(m.backbone.flops(trace, tuple(x.shape[1:])).sum()) == c.total, b
        assert float(trace.controller_flops.sum()) == c.controller, b


def manual_output(model: TransformerInverseModel, x: torch.Tensor, depth: int) -> torch.Tensor:
    """What a sample stopping at ``depth`` must output: ``depth`` blocks, then that depth's head."""
    bb = model.backbone
    h = bb.embed(x)
    for block in list(bb.blocks)[:depth]:
        h = block(h)
    return bb.readout(h) if depth == bb.n_blocks else model.exit_heads[depth - 1](h)


@pytest.mark.parametrize("name", ("deep", "toy-text"))
@pytest.mark.parametrize("policy", ["learned", "static", "random"])
def test_grouping_by_path_runs_exactly_the_chosen_blocks(setups: dict, name: str, policy: str) -> None:
    _, model, x = setups[name]
    m = variant(model, policy=policy)
    seen = set()
    with torch.no_grad():
        for b in budgets(m):
            out = m(x, budget=b)
            tr = out.trace
            depth = tr.exit_layer + 1  # (B,)
            assert tr.block_tokens.gt(0).sum(dim=1).tolist() == depth.tolist()
            assert (tr.readout == (depth == m.backbone.n_blocks)).all()
            for i in range(len(x)):
                seen.add(int(depth[i]))
                expected = manual_output(m, x[i : i + 1], int(depth[i]))[0]
                torch.testing.assert_close(out.logits[i], expected, rtol=1e-5, atol=1e-5)
    assert len(seen) >= 2  # more than one path was exercised


@pytest.mark.parametrize("name", (*TASK_NAMES, "deep"))
@pytest.mark.parametrize("policy", ["learned", "static", "random"])
def test_compiled_paths_equal_eager(setups: dict, name: str, policy: str) -> None:
    _, model, x = setups[name]
    eager = variant(model, policy=policy, compiled=False)
    compiled = variant(model, policy=policy, compiled=True)
    with torch.inference_mode():
        for batch in (len(x), 1, 3):
            for b in budgets(eager):
                e, c = eager(x[:batch], budget=b), compiled(x[:batch], budget=b)
                torch.testing.assert_close(c.logits, e.logits, rtol=0, atol=1e-6)
                assert torch.equal(c.trace.exit_layer, e.trace.exit_layer)
    assert len(compiled._graphs) > 0  # the compiled model really ran prepared graphs


@pytest.mark.gpu
def test_cuda_graph_paths_equal_eager(setups: dict) -> None:
    _, model, x = setups["deep"]
    eager = variant(model, compiled=False).to("cuda")
    graphed = variant(model, compiled=True).to("cuda")
    x = x.to("cuda")
    with torch.inference_mode():
        for b in budgets(eager):
            e, g = eager(x, budget=b), graphed(x, budget=b)
            torch.testing.assert_close(g.logits, e.logits, rtol=1e-5, atol=1e-5)
            assert torch.equal(g.trace.exit_layer, e.trace.exit_layer)
    assert len(graphed._graphs) > 0


def test_fit_leaves_the_backbone_alone_and_its_cache_round_trips(setups: dict, tmp_path: Path) -> None:
    """As the harness caches a fit: only changed tensors saved, loaded with strict=False onto a
    fresh wrap."""
    task, model, x = setups["toy-vision"]
    method = TransformerInverse(FIT)
    fitted = method.wrap(copy.deepcopy(model.backbone))
    before = tensor_versions(fitted)
    method.fit(fitted, task, seed=0)
    fitted.eval()
    path = tmp_path / "fit.pt"
    torch.save(fitted_state(fitted, before), path)
    state = torch.load(path, weights_only=True)
    assert state and not any(k.startswith("backbone.") for k in state)
    loaded = method.wrap(copy.deepcopy(model.backbone))
    load_fitted_state(loaded, state, path)
    loaded.eval()
    assert loaded.predictor.n_trees == fitted.predictor.n_trees > 0
    with torch.no_grad():
        for b in budgets(fitted):
            a, c = fitted(x, budget=b), loaded(x, budget=b)
            assert torch.equal(a.logits, c.logits) and torch.equal(a.trace.exit_layer, c.trace.exit_layer)
            assert torch.equal(a.logits, model(x, budget=b).logits)  # the same seed fits the same model
    for name in ("static_quality", "static_cost", "static_cap", "static_path"):  # the static choice: cached, same
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name


@pytest.mark.parametrize("name", ("toy-text", "deep"))
def test_state_dict_round_trips_onto_a_fresh_wrap(setups: dict, name: str) -> None:
    _, model, x = setups[name]
    fresh = TransformerInverse(FIT).wrap(copy.deepcopy(model.backbone))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    static = TransformerInverse(dataclasses.replace(FIT, policy="static")).wrap(copy.deepcopy(model.backbone))
    static.load_state_dict(model.state_dict())  # the learned fit carries the static control's choice
    static.eval()
    assert static.static_path.tolist() == model.static_path.tolist()
    with torch.no_grad():
        for b in budgets(model):
            assert torch.equal(fresh(x, budget=b).logits, model(x, budget=b).logits)
            assert torch.equal(static(x, budget=b).logits, variant(model, policy="static")(x, budget=b).logits)


def test_random_baseline_matches_the_calibrated_mean_depth(setups: dict) -> None:
    _, model, _ = setups["deep"]
    m = variant(model, policy="random")
    x = torch.randn(4000, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    depths = torch.tensor(m.depths, dtype=torch.float64)
    for b, target in zip(m.calib_budgets.tolist(), m.calib_depth.tolist()):
        mean = float(depths[m.path_index(b, x)].mean()) if b < 1 else float(m.backbone.n_blocks)
        assert mean == pytest.approx(target, abs=0.05), b
    assert torch.equal(m.path_index(0.5, x[:7]), m.path_index(0.5, x)[:7])  # independent of the batch
    reseeded = copy.deepcopy(m)  # another fit seed draws anew for the same inputs
    reseeded.random_seed.fill_(int(m.random_seed) + 1)
    assert any(not torch.equal(reseeded.path_index(b, x), m.path_index(b, x)) for b in m.calib_budgets.tolist())


@pytest.mark.parametrize("name", ("toy-text", "deep"))
def test_static_runs_one_fold_point_per_budget(setups: dict, name: str) -> None:
    _, model, x = setups[name]
    m = variant(model, policy="static")
    shape = tuple(x.shape[1:])
    calibrated = dict(zip(m.calib_budgets.tolist(), m.static_path.tolist()))
    previous = None
    with torch.no_grad():
        for b in budgets(m):  # the default budgets, and 0.2 and 0.0 beyond them
            tr = m(x, budget=b).trace
            j = m.static_index(b)
            assert tr.exit_layer.tolist() == [m.depths[j] - 1] * len(x), b  # every sample: one fold point
            assert j == calibrated.get(b, j) and (b < 1.0 or j == len(m.depths) - 1)
            assert m.backbone.flops(tr, shape).tolist() == [float(m.static_cost[j])] * len(x)
            assert float(tr.extra["predictor_ops"].sum()) == 0 and not tr.extra["policy_moved"].any()
            assert previous is None or j <= previous
            previous = j
    assert len(set(m.static_path.tolist())) > 1  # the toy fits choose a shallower path below the full budget


def test_static_is_the_best_fold_point_within_the_learned_validation_flops(setups: dict) -> None:
    """Re-derive the choice by forward passes on the validation split (all 128 samples: fit_samples
    is 256)."""
    task, model, _ = setups["deep"]
    val = task.split("val")
    shape = tuple(val.inputs.shape[1:])
    static = variant(model, policy="static")
    quality, cost = [], []
    with torch.no_grad():
        for depth in model.depths:  # every sample stopped at this fold point
            logits = manual_output(model, val.inputs, depth)
            quality.append(task.metric.aggregate(task.metric.score(logits, val.targets).numpy()))  # accuracy: up
        for j in range(len(model.depths)):
            static.static_path.fill_(j)  # a probe: the static executor pinned to fold point j
            cost.append(float(static.backbone.flops(static(val.inputs, budget=0.5).trace, shape).mean()))
    torch.testing.assert_close(model.static_quality, torch.tensor(quality, dtype=torch.float64))
    assert model.static_cost.tolist() == cost
    for i, b in enumerate(model.calib_budgets.tolist()):
        with torch.no_grad():
            cap = float(model.backbone.flops(model(val.inputs, budget=b).trace, shape).mean())
        assert float(model.static_cap[i]) == pytest.approx(cap, rel=1e-9), b
        j = int(model.static_path[i])
        if b >= 1.0:
            assert j == len(model.depths) - 1  # the full budget reproduces dense
            continue
        assert cost[j] <= cap, f"budget {b}: static {cost[j]} > learned {cap} FLOPs on validation"
        fits = [k for k in range(len(cost)) if cost[k] <= cap]
        assert quality[j] == max(quality[k] for k in fits) and j == min(k for k in fits if quality[k] == quality[j])


def test_static_is_chosen_on_the_validation_split_only(monkeypatch: pytest.MonkeyPatch) -> None:
    task = TASKS.get("toy-vision")(ToyVisionConfig(train=QUICK))
    read: list[str] = []
    real_batches, real_split = task.batches, task.split

    def guard(split: str) -> None:
        if split == task.eval_split:
            raise AssertionError(f"the fit read the evaluation split '{split}'")
        read.append(split)

    monkeypatch.setattr(task, "batches", lambda split, **kw: (guard(split), real_batches(split, **kw))[1])
    monkeypatch.setattr(task, "split", lambda split: (guard(split), real_split(split))[1])
    model = fit(task)  # the whole fit (exit heads, predictor, policy, static choice), never the evaluation split
    assert "val" in read and bool(model.fitted)
    read.clear()
    monkeypatch.setattr(task, "validation_split", "train", raising=False)  # a task naming another validation split
    TransformerInverse(FIT)._fit_static(model, task, seed=0)
    assert set(read) == {"train"}


def test_trace_metrics_and_controller_overhead(setups: dict) -> None:
    _, model, x = setups["deep"]
    with torch.no_grad():
        trace = model(x, budget=0.5).trace
    metrics = model.trace_metrics(trace)
    assert set(metrics) == {"policy_moved", "predicted_depth", "predictor_ops_per_sample"}
    assert 0.0 <= metrics["policy_moved"][0] <= 1.0
    assert metrics["predictor_ops_per_sample"][0] == model.predictor.ops_per_sample()
    moved = trace.extra["policy_moved"]
    assert ((trace.exit_layer + 1)[moved] > trace.extra["predicted_depth"][moved]).all()  # only ever later
    assert (trace.controller_flops > 0).all()
