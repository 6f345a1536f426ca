from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from dynbench.config import build_dataclass, parse_plugin
from dynbench.harness.flops import count_flops
from dynbench.methods._bandits import (
    beta_update,
    exploit_arm,
    exploit_units,
    kmeans,
    thompson_units,
    tilted_distribution,
    ucb_scores,
    ucb_select,
    ucb_update,
)
from dynbench.methods.base import METHODS
from dynbench.methods.dht import DHT, DHTConfig, DHTModel, sample_correctness
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViTConfig
from dynbench.tasks.base import TASKS, Perplexity, TopOneAccuracy
from dynbench.tasks.toy_text import ToyTextConfig
from dynbench.tasks.toy_vision import ToyVisionConfig

TASK_NAMES = ("toy-vision", "toy-text")
QUICK = TrainConfig(steps=12, batch_size=64, lr=3e-3, warmup_steps=2)  # a briefly trained toy backbone
FIT = DHTConfig(
    contexts=2, budgets=(1.0, 0.6, 0.2), steps=12, batch_size=32, warmup_steps=2, refine_per_arm=3, kmeans_samples=256
)
DEEP_VIT = ViTConfig(image_size=8, patch_size=4, n_classes=4, d_model=32, n_layers=4, n_heads=4)


def fitted(task, backbone, config: DHTConfig = FIT, seed: int = 0) -> DHTModel:
    """A DHT model fitted on a copy of ``backbone`` (the fit fine-tunes the copy, never the
    original)."""
    method = DHT(config)
    model = method.wrap(copy.deepcopy(backbone))
    method.fit(model, task, seed=seed)
    return model.eval()


def random_twin(model: DHTModel) -> DHTModel:
    """The random policy on the same fitted weights and tables."""
    return policy_twin(model, "random")


def policy_twin(model: DHTModel, policy: str) -> DHTModel:
    """``policy`` ("bandit", "static" or "random") on the same fitted weights and tables, as a
    cached fit loads."""
    twin = DHT(dataclasses.replace(model.config, policy=policy)).wrap(copy.deepcopy(model.backbone))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@pytest.fixture(scope="module")
def setups() -> dict:
    """Per toy task: (task, trained backbone, fitted bandit model, its random twin, 16 test
    inputs)."""
    out = {}
    for name in TASK_NAMES:
        cls = TASKS.get(name)
        task = cls(cls.Config(train=QUICK))
        backbone = task.backbone(seed=0).eval()
        model = fitted(task, backbone)
        inputs = next(task.batches("test", batch_size=16)).inputs
        out[name] = (task, backbone, model, random_twin(model), inputs)
    return out


@pytest.fixture(scope="module")
def deep() -> tuple:
    """A 4-block, 4-head ViT on toy-vision (16 arms), fitted without fine-tuning: (task, model, 64
    inputs)."""
    task = TASKS.get("toy-vision")(ToyVisionConfig(model=DEEP_VIT, train=QUICK))
    backbone = task.backbone(seed=0).eval()
    model = fitted(task, backbone, dataclasses.replace(FIT, steps=0, refine_per_arm=2))
    return task, model, next(task.batches("train", batch_size=64)).inputs


# --------------------------------------------------------------------------------------------------
# Registration and options


def test_registered_reconstructed_with_full_budget_first() -> None:
    method = METHODS.get("dht")()
    assert isinstance(method, DHT) and method.reconstructed and method.learns()
    assert method.paper and "2312.03038" in method.paper
    assert method.budgets(4) == (1.0, 0.98, 0.95, 0.9, 0.8, 0.6)
    assert DHT(DHTConfig(budgets=(0.5, 1.0, 0.7))).budgets(4) == (1.0, 0.7, 0.5)
    assert DHTConfig(budgets=(0.5, 1.0, 0.7)).table_budgets == (0.7, 0.5)
    auto = method.recipe(TASKS.get("toy-vision")())  # a quarter of the dense recipe's 150 steps, its batch size
    assert (auto.steps, auto.batch_size) == (37, 64)
    assert DHT(DHTConfig(policy="random", contexts=3)).fit_identity() == DHTConfig(contexts=3)  # one shared fit
    assert DHT(DHTConfig(policy="static", contexts=3)).fit_identity() == DHTConfig(contexts=3)
    assert DHT.controls == {"static": {"policy": "static"}, "random": {"policy": "random"}}
    given = DHT(DHTConfig(steps=5, batch_size=8)).recipe(TASKS.get("toy-text")())
    assert (given.steps, given.batch_size) == (5, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": "greedy"}, r"policy must be one of .*got 'greedy'\. Use 'bandit' \(the method\)"),
        ({"policy": "bandt"}, r"got 'bandt'\. Did you mean: bandit\b"),
        ({"correctness": "bleu"}, r"correctness must be one of .*got 'bleu'"),
        ({"refine_split": "test"}, r"refine_split must be one of .*got 'test'"),
        ({"contexts": 0}, r"contexts must be >= 1, got 0"),
        ({"kappa": -1.0}, r"kappa must be >= 0, got -1.0"),
        ({"lambda_max": 1.0}, r"lambda_max must be in \(0, 1\), got 1.0\. At 1 the dense network's reward is 0"),
        ({"budgets": (0.8, 0.5)}, r"budgets must be distinct values in \[0, 1\] including the full budget 1.0"),
        ({"budgets": (1.0, 1.5)}, r"budgets must be distinct values"),
        ({"budgets": (1.0, 0.5, 0.5)}, r"budgets must be distinct values"),
        ({"steps": -2}, r"steps must be >= -1, got -2"),
        ({"batch_size": -1}, r"batch_size must be >= 0, got -1"),
        ({"refine_per_arm": -1}, r"refine_per_arm must be >= 0, got -1"),
        ({"kmeans_samples": 0}, r"kmeans_samples must be >= 1, got 0"),
        ({"lr": 0.0}, r"lr must be > 0, got 0.0"),
    ],
)
def test_invalid_options_raise_helpful_value_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DHTConfig(**kwargs)


def test_options_parse_from_the_command_line_syntax() -> None:
    spec = parse_plugin("dht[policy=random,budgets=1;0.7;0.3]")
    cfg, errors = build_dataclass(DHTConfig, spec.options_dict(), "method 'dht'")
    assert errors == [] and cfg.policy == "random" and cfg.budgets == (1.0, 0.7, 0.3)
    _, errors = build_dataclass(DHTConfig, {"policy": "oracle"}, "method 'dht'")
    assert len(errors) == 1 and "policy must be one of ['bandit', 'static', 'random']" in errors[0]
    cfg, errors = build_dataclass(DHTConfig, parse_plugin("dht[policy=static]").options_dict(), "method 'dht'")
    assert errors == [] and cfg.policy == "static"


def test_unfitted_or_unknown_budgets_are_refused(setups: dict) -> None:
    task, backbone, model, _, inputs = setups["toy-vision"]
    fresh = DHT(FIT).wrap(copy.deepcopy(backbone)).eval()
    with torch.no_grad():
        assert torch.equal(fresh(inputs, budget=1.0).logits, backbone(inputs))
        with pytest.raises(ValueError, match=r"no fitted bandit tables yet \(budget 0.6\).*DHT\.fit"):
            fresh(inputs, budget=0.6)
        with pytest.raises(ValueError, match=r"fitted for budgets \[1.0, 0.6, 0.2\] only, got 0.5.*option budgets"):
            model(inputs, budget=0.5)


# --------------------------------------------------------------------------------------------------
# Bandit rules


def test_ucb_plays_each_arm_once_first_then_counts_means_and_bonus() -> None:
    reward_sum, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    played = []
    for rewards in ([1.0], [0.0, 0.0], [0.5]):
        arm = ucb_select(reward_sum, count, kappa=1.0)
        played.append(arm)
        ucb_update(reward_sum, count, arm, torch.tensor(rewards))
    assert played == [0, 1, 2]
    assert count.tolist() == [1, 2, 1] and reward_sum.tolist() == [1.0, 0.0, 0.5]
    for kappa in (0.0, 0.5, 2.0):
        bonus = [kappa * math.sqrt(2 * math.log(4) / n) for n in (1, 2, 1)]
        expected = torch.tensor([1.0 + bonus[0], 0.0 + bonus[1], 0.5 + bonus[2]], dtype=torch.float64)
        torch.testing.assert_close(ucb_scores(reward_sum, count, kappa), expected)
    assert ucb_select(reward_sum, count, kappa=1.0) == 0  # mean 1 with the largest bonus
    reward_sum[0] = 0.0  # now arm 2 (0.5 + b) leads arm 0 (0 + b)
    assert ucb_select(reward_sum, count, kappa=1.0) == 2
    often, once = torch.tensor([9.0, 0.5], dtype=torch.float64), torch.tensor([10.0, 1.0], dtype=torch.float64)
    assert ucb_select(often, once, kappa=0.0) == 0  # greedy: mean 0.9 beats 0.5
    assert ucb_select(often, once, kappa=2.0) == 1  # the bonus of the arm seen once wins
    tie_sum, tie_count = torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert ucb_select(tie_sum, tie_count, kappa=1.0) == 0  # ties: the lowest index
    assert torch.isinf(ucb_scores(torch.zeros(2), torch.tensor([1.0, 0.0]), 1.0)[1])


def test_beta_posteriors_update_only_the_chosen_heads_of_each_layer() -> None:
    alpha, beta = torch.ones(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)
    units = torch.tensor([[0, 2], [1, 3], [0, 1]])
    beta_update(alpha, beta, units, torch.tensor([1.0, 0.25]))
    chosen = torch.zeros(3, 4, dtype=torch.bool)
    chosen[torch.arange(3)[:, None], units] = True
    assert torch.equal(alpha[chosen], torch.full((6,), 2.25, dtype=torch.float64))
    assert torch.equal(beta[chosen], torch.full((6,), 1.75, dtype=torch.float64))
    assert (alpha[~chosen] == 1).all() and (beta[~chosen] == 1).all()


def test_thompson_sampling_keeps_the_heads_its_draws_rank_first() -> None:
    alpha, beta = torch.ones(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)
    alpha[:, [1, 3]] = 1e6  # posteriors piled up at 1 for heads 1 and 3 …
    beta[:, [0, 2]] = 1e6  # … and at 0 for heads 0 and 2
    rng = np.random.default_rng(0)
    picks = thompson_units(alpha, beta, 2, rng)
    assert picks.dtype == torch.long and picks.tolist() == [[1, 3]] * 3
    flat = thompson_units(torch.ones(2, 4), torch.ones(2, 4), 3, rng)  # uniform posteriors: any 3, sorted
    assert flat.shape == (2, 3) and all(row == sorted(set(row)) for row in flat.tolist())
    again = thompson_units(torch.ones(5, 4), torch.ones(5, 4), 2, np.random.default_rng(7))
    assert torch.equal(again, thompson_units(torch.ones(5, 4), torch.ones(5, 4), 2, np.random.default_rng(7)))


def test_exploitation_is_argmax_mean_and_top_h_posterior_mean() -> None:
    reward_sum = torch.tensor([3.0, 4.0, 0.0, 9.0], dtype=torch.float64)
    count = torch.tensor([4.0, 5.0, 0.0, 10.0], dtype=torch.float64)  # means 0.75, 0.8, —, 0.9
    everything = torch.ones(4, dtype=torch.bool)
    assert exploit_arm(reward_sum, count, everything) == 3
    assert exploit_arm(reward_sum, count, torch.tensor([True, True, True, False])) == 1
    assert exploit_arm(reward_sum, count, torch.tensor([False, False, True, False])) is None  # unplayed only
    alpha = torch.tensor([[2.0, 9.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    beta = torch.tensor([[8.0, 1.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])  # means .2 .9 .5 .5 / all .5
    mask = exploit_units(alpha, beta, 2)
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]  # ties: lowest index


def test_tilted_distribution_hits_the_target_mean_cost() -> None:
    costs = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    for target in (1.2, 2.5, 2.75, 4.9):
        p = tilted_distribution(costs, target)
        assert float(p.sum()) == pytest.approx(1.0) and float((p * costs).sum()) == pytest.approx(target, rel=1e-9)
    low = tilted_distribution(costs, 2.0)
    assert (low[1:] < low[:-1]).all()  # below the uniform mean: cheaper arms are likelier
    assert tilted_distribution(costs, 9.0).tolist() == [0, 0, 0, 1]
    assert tilted_distribution(costs, 0.5).tolist() == [1, 0, 0, 0]


def test_kmeans_separates_clear_clusters_deterministically() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g, dtype=torch.float64) for c in centres])
    found = kmeans(points, 3, 50, torch.Generator().manual_seed(1))
    order = torch.cdist(centres, found).argmin(dim=1)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(found[order], centres, atol=0.05, rtol=0)
    assert torch.equal(found, kmeans(points, 3, 50, torch.Generator().manual_seed(1)))


def test_correctness_is_likelihood_or_accuracy() -> None:
    logits = torch.zeros(2, 3, 5)  # uniform over 5 tokens
    logits[1, :, 2] = 50.0  # sequence 1 is sure of token 2
    targets = torch.tensor([[0, 1, 2], [2, 2, 0]])
    likelihood = sample_correctness(logits, targets, Perplexity(), "likelihood")
    torch.testing.assert_close(likelihood[0], torch.tensor(0.2, dtype=torch.float64))
    assert 0 < float(likelihood[1]) < 1e-6  # one token of three is impossible: exp(-mean CE) ≈ 0
    accuracy = sample_correctness(logits, targets, Perplexity(), "accuracy")
    torch.testing.assert_close(accuracy[1], torch.tensor(2 / 3, dtype=torch.float64))
    classes = torch.tensor([[0.0, 2.0], [3.0, 0.0]])  # p(label) = σ(2) for sample 0, σ(−3) for sample 1
    labels = torch.tensor([1, 1])
    expected = torch.sigmoid(torch.tensor([2.0, -3.0], dtype=torch.float64))
    torch.testing.assert_close(sample_correctness(classes, labels, TopOneAccuracy(), "likelihood"), expected)
    assert sample_correctness(classes, labels, TopOneAccuracy(), "accuracy").tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------------
# Execution: what runs, its FLOPs, the dense budget


@pytest.mark.parametrize("policy", ["bandit", "static", "random"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_full_budget_is_the_dense_backbone(setups: dict, name: str, policy: str) -> None:
    _, _, model, twin, inputs = setups[name]
    m = {"bandit": model, "random": twin}.get(policy) or policy_twin(model, policy)
    with torch.no_grad():
        out = m(inputs, budget=1.0)
        assert torch.equal(out.logits, m.backbone(inputs))
    dense = m.backbone.dense_trace(inputs)
    assert torch.equal(out.trace.block_tokens, dense.block_tokens) and torch.equal(
        out.trace.block_heads, dense.block_heads
    )
    assert float(out.trace.controller_flops.sum()) == 0.0 and (out.trace.extra["context"] == -1).all()


@pytest.mark.parametrize("batch", [16, 1])
@pytest.mark.parametrize("policy", ["bandit", "static", "random"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_counted_flops_equal_the_trace(setups: dict, name: str, policy: str, batch: int) -> None:
    _, backbone, model, twin, inputs = setups[name]
    m = {"bandit": model, "random": twin}.get(policy) or policy_twin(model, policy)
    x = inputs[:batch]
    for budget in DHT(FIT).resolve_budgets(None, backbone.n_blocks):
        counted = count_flops(lambda b=budget: m(x, budget=b), m, m.controller_modules())
        trace = counted.output.trace
        assert float(m.backbone.flops(trace, tuple(x.shape[1:])).sum()) == pytest.approx(counted.total, rel=1e-12)
        assert counted.controller == pytest.approx(float(trace.controller_flops.sum()), abs=0.5)
        if policy == "bandit" and budget < 1.0:
            M, C = model.config.contexts, backbone.block_config.d_model
            assert trace.controller_flops.tolist() == [2.0 * M * C] * batch


def test_grouped_forward_runs_exactly_the_chosen_layers_and_heads(deep: tuple) -> None:
    task, model, inputs = deep
    k = 0  # the first table below the full budget
    saved = model.policy_arm.clone(), model.policy_units.clone()
    try:
        check_grouped_forward(model, inputs, k)
    finally:  # restore the fitted policy for the other tests
        model.policy_arm.copy_(saved[0])
        model.policy_units.copy_(saved[1])


def check_grouped_forward(model: DHTModel, inputs: torch.Tensor, k: int) -> None:
    """Set table ``k``'s policy by hand; check blocks, heads, logits and FLOPs of one forward."""
    with torch.no_grad():
        contexts = model.contexts(model.backbone.embed(inputs))  # (B,)
    assert sorted(set(contexts.tolist())) == [0, 1], "both contexts should occur among the 64 inputs"
    # context 0: 2 blocks, heads {0, 2, 3}; context 1: 4 blocks, 1 head per block (3, 1, 0, 2)
    model.policy_arm[k] = torch.tensor([1 * 4 + 2, 3 * 4 + 0])
    model.policy_units[k] = False
    model.policy_units[k, 0, :, [0, 2, 3]] = True
    for layer, head in enumerate((3, 1, 0, 2)):
        model.policy_units[k, 1, layer, head] = True
    calls: list[tuple[int, int, list[int] | None]] = []

    def record(module, args, kwargs, output, j):
        head_idx = kwargs.get("head_idx")
        calls.append((j, args[0].shape[0], None if head_idx is None else head_idx.tolist()))

    blocks = model.backbone.blocks
    hooks = [
        b.register_forward_hook(lambda m, a, kw, o, j=j: record(m, a, kw, o, j), with_kwargs=True)
        for j, b in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            out = model(inputs, budget=model.table_budgets[k])
    finally:
        for h in hooks:
            h.remove()
    n0, n1 = int((contexts == 0).sum()), int((contexts == 1).sum())
    expected = [(j, n0, [0, 2, 3]) for j in range(2)] + [(j, n1, [h]) for j, h in enumerate((3, 1, 0, 2))]
    assert sorted(calls) == sorted(expected)
    depth = torch.where(contexts == 0, 2, 4)
    heads = torch.where(contexts == 0, 3, 1)
    assert torch.equal(out.trace.extra["depth"], depth) and torch.equal(out.trace.extra["heads"], heads)
    assert torch.equal(out.trace.extra["context"], contexts)
    assert torch.equal(out.trace.block_heads, (torch.arange(4) < depth[:, None]) * heads[:, None])
    with torch.no_grad():  # each sample alone through its own sub-network gives the same logits
        for i in (int((contexts == 0).nonzero()[0, 0]), int((contexts == 1).nonzero()[0, 0])):
            x = model.backbone.embed(inputs[i : i + 1])
            plan = [[0, 2, 3]] * 2 if contexts[i] == 0 else [[3], [1], [0], [2]]
            for j, heads_j in enumerate(plan):
                x = blocks[j](x, head_idx=torch.tensor(heads_j))
            torch.testing.assert_close(out.logits[i : i + 1], model.backbone.readout(x), atol=1e-5, rtol=1e-5)
    counted = count_flops(lambda: model(inputs, budget=model.table_budgets[k]), model, model.controller_modules())
    assert float(model.backbone.flops(counted.output.trace, tuple(inputs.shape[1:])).sum()) == pytest.approx(
        counted.total, rel=1e-12
    )


def test_policy_compute_never_rises_as_the_budget_falls(deep: tuple) -> None:
    _, model, inputs = deep
    costs = model.arm_flops(tuple(inputs.shape[1:]))
    per_table = costs[model.policy_arm]  # (K, M)
    assert (per_table[1:] <= per_table[:-1]).all()
    with torch.no_grad():
        flops = [model.backbone.flops(model(inputs, budget=b).trace, tuple(inputs.shape[1:])) for b in (1.0, 0.6, 0.2)]
    assert (flops[1] <= flops[0]).all() and (flops[2] <= flops[1]).all()


# --------------------------------------------------------------------------------------------------
# The random policy


def test_random_policy_matches_the_bandit_mean_compute(deep: tuple) -> None:
    task, model, _ = deep
    twin = random_twin(model)
    inputs = task.split("train").inputs  # 512 images
    shape = tuple(inputs.shape[1:])
    per_budget = []
    for budget in model.table_budgets:
        k = model.table_index(budget)
        costs, target = twin.random_target(k, shape)
        p = tilted_distribution(costs, target)  # the random policy has no controller: it matches the total
        assert float((p * costs).sum()) == pytest.approx(target, rel=1e-9)
        with torch.no_grad():
            rand = twin(inputs, budget=budget).trace
            bandit = model(inputs, budget=budget).trace
        rand_mean = float(twin.backbone.flops(rand, shape).mean())
        bandit_mean = float(model.backbone.flops(bandit, shape).mean())
        assert rand_mean == pytest.approx(bandit_mean, rel=0.05), f"budget {budget}"
        assert (rand.extra["context"] == -1).all() and float(rand.controller_flops.sum()) == 0.0
        per_budget.append(rand)
    assert any(len(set(t.extra["depth"].tolist())) > 1 for t in per_budget)  # it really is per-sample random
    with torch.no_grad():  # repeatable per sample, and never costlier at a lower budget (common random numbers)
        again = twin(inputs[:32], budget=model.table_budgets[0]).trace
    assert torch.equal(again.extra["depth"], per_budget[0].extra["depth"][:32])
    assert torch.equal(again.extra["heads"], per_budget[0].extra["heads"][:32])
    flops = [twin.backbone.flops(t, shape) for t in per_budget]
    assert all((lo <= hi).all() for hi, lo in zip(flops, flops[1:]))


# --------------------------------------------------------------------------------------------------
# The static control


def pooled_heads(model: DHTModel, n: int) -> torch.Tensor:
    """``(L, U)`` bool: per layer the ``n`` units of largest posterior mean pooled over every table
    and context."""
    alpha = 1 + (model.unit_alpha - 1).sum(dim=(0, 1))  # (L, U)
    beta = 1 + (model.unit_beta - 1).sum(dim=(0, 1))
    return exploit_units(alpha, beta, n)


def static_reference(model: DHTModel, inputs: torch.Tensor, budget: float) -> torch.Tensor:
    """The static control's logits built by hand: the stored arm's blocks with the pooled top heads,
    the readout."""
    depth, n = model.arm_shape(int(model.static_arm[model.table_index(budget)]))
    mask = pooled_heads(model, n)
    x = model.backbone.embed(inputs)
    for j in range(depth):
        heads = None if n == model.n_units else model.head_index(mask[j].nonzero()[:, 0], x.device)
        x = model.backbone.blocks[j](x, head_idx=heads)
    return model.backbone.readout(x)


@pytest.mark.parametrize("where", ["toy-vision", "toy-text", "deep"])
def test_static_runs_one_subnetwork_for_every_sample(setups: dict, deep: tuple, where: str) -> None:
    model, inputs = (deep[1], deep[2]) if where == "deep" else (setups[where][2], setups[where][4])
    static = policy_twin(model, "static")
    B, cpu = len(inputs), torch.device("cpu")
    calls: list[tuple[int, int, list[int] | None]] = []

    def record(args: tuple, kwargs: dict, j: int) -> None:
        head_idx = kwargs.get("head_idx")
        calls.append((j, args[0].shape[0], None if head_idx is None else head_idx.tolist()))

    hooks = [
        b.register_forward_hook(lambda m, a, kw, o, j=j: record(a, kw, j), with_kwargs=True)
        for j, b in enumerate(static.backbone.blocks)
    ]
    try:
        for budget in model.table_budgets:
            depth, n = model.arm_shape(int(model.static_arm[model.table_index(budget)]))
            calls.clear()
            with torch.no_grad():
                out = static(inputs, budget=budget)
            tr = out.trace
            assert tr.extra["depth"].tolist() == [depth] * B
            assert tr.extra["heads"].tolist() == [n * model.unit_size] * B
            assert (tr.extra["context"] == -1).all() and float(tr.controller_flops.sum()) == 0.0
            assert torch.equal(tr.block_heads, tr.block_heads[:1].expand_as(tr.block_heads))  # one trace row
            mask = pooled_heads(model, n)  # the heads the bandit's posteriors prefer, fixed for every sample
            heads = [None if n == model.n_units else model.head_index(mask[j].nonzero()[:, 0], cpu).tolist()
                     for j in range(depth)]  # fmt: skip
            assert calls == [(j, B, heads[j]) for j in range(depth)]  # one group: each block once, whole batch
            with torch.no_grad():
                torch.testing.assert_close(out.logits, static_reference(model, inputs, budget), atol=1e-5, rtol=1e-5)
    finally:
        for h in hooks:
            h.remove()
    costs = model.arm_flops(tuple(inputs.shape[1:]))[model.static_arm]  # (K,) budgets descending
    assert (costs[1:] <= costs[:-1]).all()  # never costlier at a lower budget


def test_static_is_the_best_arm_within_the_bandits_validation_flops(deep: tuple) -> None:
    """Re-derive the choice from forward passes on the validation split: bandit FLOPs cap, every
    arm's quality."""
    task, model, _ = deep
    val = task.split("val")
    shape = tuple(val.inputs.shape[1:])
    metric = task.metric
    static = policy_twin(model, "static")
    costs = model.arm_flops(shape)
    quality = []
    probe = policy_twin(model, "static")
    for arm in range(model.n_arms):  # each arm with its fixed heads, run through the static forward
        probe.static_arm[0] = arm
        probe.static_units[0] = pooled_heads(model, model.arm_shape(arm)[1])
        with torch.no_grad():
            out = probe(val.inputs, budget=model.table_budgets[0])
        assert float(probe.backbone.flops(out.trace, shape).mean()) == pytest.approx(float(costs[arm]), rel=1e-12)
        quality.append(metric.aggregate(metric.score(out.logits, val.targets).numpy()))
    torch.testing.assert_close(model.static_quality, torch.tensor(quality, dtype=torch.float64))  # accuracy: up
    chosen_somewhere_cheaper = False
    for k, budget in enumerate(model.table_budgets):
        with torch.no_grad():
            cap = float(model.backbone.flops(model(val.inputs, budget=budget).trace, shape).mean())
            mine = float(static.backbone.flops(static(val.inputs, budget=budget).trace, shape).mean())
        assert float(model.static_cap[k]) == pytest.approx(cap, rel=1e-12)
        arm = int(model.static_arm[k])
        assert mine <= cap * (1 + 1e-12), f"budget {budget}: static {mine} > bandit {cap} FLOPs on validation"
        fits = [a for a in range(model.n_arms) if float(costs[a]) <= cap * (1 + 1e-12)]
        assert quality[arm] == max(quality[a] for a in fits)
        assert all(float(costs[a]) >= float(costs[arm]) for a in fits if quality[a] == quality[arm])  # ties: cheaper
        chosen_somewhere_cheaper |= arm != model.n_arms - 1
    assert chosen_somewhere_cheaper  # the toy fit really exercises the cap


def test_static_is_chosen_on_the_validation_split_only(setups: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    task, backbone, model, _, _ = setups["toy-vision"]
    read: list[str] = []
    real_batches, real_split = task.batches, task.split

    def batches(split, **kwargs):
        if split == task.eval_split:
            raise AssertionError(f"the fit read the evaluation split '{split}'")
        read.append(split)
        return real_batches(split, **kwargs)

    def split_of(split):
        if split == task.eval_split:
            raise AssertionError(f"the fit read the evaluation split '{split}'")
        return real_split(split)

    monkeypatch.setattr(task, "batches", batches)
    monkeypatch.setattr(task, "split", split_of)
    cfg = dataclasses.replace(FIT, steps=0, refine_per_arm=1)
    again = fitted(task, backbone, cfg)  # the whole fit, never the evaluation split
    assert "val" in read and bool(again.fitted)
    read.clear()
    monkeypatch.setattr(task, "validation_split", "train", raising=False)  # a task naming another validation split
    DHT(cfg)._fit_static(again, task, 0, torch.device("cpu"), 32)
    assert set(read) == {"train"}


# --------------------------------------------------------------------------------------------------
# Fitting


def test_fit_fine_tunes_subnetworks_and_accounts_training_flops(setups: dict) -> None:
    task, backbone, model, _, inputs = setups["toy-vision"]
    shape = tuple(inputs.shape[1:])
    dense = backbone.dense_flops(shape)
    assert float(model.dense_train_flops) == pytest.approx(3 * dense * FIT.steps * FIT.batch_size, rel=1e-12)
    assert 0 < float(model.train_flops) < float(model.dense_train_flops)
    metrics = model.trace_metrics(model(inputs, budget=0.6).trace)
    assert 0 < metrics["train_flops_ratio"][0] < 1 and metrics["fit_flops"][0] > 0
    assert 1 <= metrics["mean_depth"][0] <= backbone.n_blocks and 1 <= metrics["mean_heads"][0] <= backbone.n_heads
    # the refinement re-learns the arm statistics: one observation per sample per table per batch
    K = len(model.table_budgets)
    rounds = FIT.refine_per_arm * model.n_arms
    assert model.arm_count.sum().tolist() == rounds * FIT.batch_size * K
    assert (model.arm_count.sum(dim=(1, 2)) == rounds * FIT.batch_size).all()
    assert bool(model.fitted)
    # blocks and readout were fine-tuned; the embedding (what the contexts read) was not
    before, after = backbone.state_dict(), model.backbone.state_dict()
    assert not torch.equal(before["blocks.0.attn.q_proj.weight"], after["blocks.0.attn.q_proj.weight"])
    assert not torch.equal(before["readout.head.weight"], after["readout.head.weight"])
    assert torch.equal(before["patch_embed.weight"], after["patch_embed.weight"])
    assert torch.equal(before["pos_embed"], after["pos_embed"])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_fit_is_deterministic_and_its_state_round_trips(setups: dict, name: str) -> None:
    task, backbone, model, _, inputs = setups[name]
    again = fitted(task, backbone)
    state, state2 = model.state_dict(), again.state_dict()
    assert state.keys() == state2.keys()
    for key in state:
        assert torch.equal(state[key], state2[key]), key
    fresh = DHT(FIT).wrap(copy.deepcopy(backbone)).eval()
    fresh.load_state_dict(state)
    static = DHT(dataclasses.replace(FIT, policy="static")).wrap(copy.deepcopy(backbone)).eval()
    static.load_state_dict(state)  # the bandit's fit carries the static control's choice
    assert static.static_arm.tolist() == model.static_arm.tolist()
    assert torch.equal(static.static_units, model.static_units)
    with torch.no_grad():
        for budget in (1.0, 0.6, 0.2):
            assert torch.equal(fresh(inputs, budget=budget).logits, model(inputs, budget=budget).logits)
            expected = model(inputs, budget=1.0).logits if budget == 1.0 else static_reference(model, inputs, budget)
            torch.testing.assert_close(static(inputs, budget=budget).logits, expected, atol=1e-5, rtol=1e-5)


def test_other_seed_gives_another_fit(setups: dict) -> None:
    task, backbone, model, _, _ = setups["toy-text"]
    other = fitted(task, backbone, seed=1)
    assert not torch.equal(other.arm_count, model.arm_count) or not torch.equal(other.unit_alpha, model.unit_alpha)


def test_grouped_query_attention_chooses_whole_kv_groups() -> None:
    task = TASKS.get("toy-text")(ToyTextConfig(train=QUICK))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=16, block_size=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    model = fitted(task, gpt, dataclasses.replace(FIT, steps=0, refine_per_arm=1))
    assert (model.n_units, model.unit_size, model.n_arms) == (2, 2, 4)
    assert model.head_index(torch.tensor([1]), torch.device("cpu")).tolist() == [2, 3]
    x = next(task.batches("test", batch_size=8)).inputs
    for budget in (1.0, 0.6, 0.2):
        counted = count_flops(lambda b=budget: model(x, budget=b), model, model.controller_modules())
        trace = counted.output.trace
        assert set(trace.extra["heads"].tolist()) <= {2, 4}
        assert float(model.backbone.flops(trace, tuple(x.shape[1:])).sum()) == pytest.approx(counted.total, rel=1e-12)
