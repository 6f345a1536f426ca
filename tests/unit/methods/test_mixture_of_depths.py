from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dynbench.harness.flops import count_flops, flop_counter
from dynbench.harness.memory import module_bytes, modules_bytes
from dynbench.methods._token_gather import padded_positions, topk_positions
from dynbench.methods.base import METHODS
from dynbench.methods.mixture_of_depths import (
    MixtureOfDepths,
    MixtureOfDepthsConfig,
    MixtureOfDepthsModel,
    generate,
    n_selected,
    trains_from_scratch,
)
from dynbench.models.backbone import Backbone
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.vit import ViT, ViTConfig
from dynbench.tasks.base import TASKS


def tiny_gpt(kind: str = "learned") -> GPT:
    """A 4-block GPT: ``learned`` positions (GPT-2) or ``rope`` with grouped-query attention
    (Llama-style)."""
    torch.manual_seed(0)
    if kind == "rope":
        cfg = GPTConfig(
            vocab_size=16,
            block_size=24,
            d_model=32,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            rope=True,
            learned_positions=False,
            norm="rmsnorm",
            mlp="swiglu",
            bias=False,
        )
    else:
        cfg = GPTConfig(vocab_size=16, block_size=24, d_model=32, n_layers=4, n_heads=4)
    return GPT(cfg).eval()


def tiny_vit() -> ViT:
    """A 4-block ViT with 16 patches + CLS."""
    torch.manual_seed(0)
    return ViT(ViTConfig(image_size=8, patch_size=2, n_classes=4, d_model=32, n_layers=4, n_heads=2)).eval()


def wrap(backbone: Backbone, **options) -> MixtureOfDepthsModel:
    """An unfitted MoD model: routers and predictors as initialised (deterministic), backbone
    weights copied."""
    return MixtureOfDepths(MixtureOfDepthsConfig(**options)).wrap(backbone).eval()


def ids(batch: int = 3, T: int = 24) -> torch.Tensor:
    return torch.randint(16, (batch, T), generator=torch.Generator().manual_seed(1))


def randomize_routers(model: MixtureOfDepthsModel) -> None:
    """Routers with spread-out scores (std 1, not the init's 0.02), so top-k is far from ties."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for v in model.variants.values():
            for router in v.routers.values():
                router.weight.copy_(torch.randn(router.weight.shape, generator=g))


def test_registered_budgets_and_capacity_rule() -> None:
    method = METHODS.get("mod")()
    assert method.paper and "2404.02258" in method.paper and method.learns()
    assert method.resolve_budgets(None, 4) == (1.0, 0.5, 0.25, 0.125)
    assert MixtureOfDepths(MixtureOfDepthsConfig(capacities=(0.125,))).resolve_budgets(None, 4) == (1.0, 0.125)
    with pytest.raises(ValueError, match=r"no model for budget\(s\) \[0.3\]"):
        method.resolve_budgets([1.0, 0.3], 4)
    assert n_selected(0.125, 128) == 16 and n_selected(0.125, 17) == 3 and n_selected(0.125, 5) == 1
    assert n_selected(1 / 3, 9) == 3 and n_selected(0.01, 16) == 1 and n_selected(0.99, 16) == 16


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"capacities": (1.0,)}, r"capacities must be in \(0, 1\), got 1.0. Capacity 1.0 is always swept"),
        ({"capacities": ()}, "capacities must be non-empty fractions"),
        ({"route_every": 0}, "route_every must be >= 1"),
        ({"router": "greedy"}, "router must be one of"),
        ({"routing": "causal"}, "routing must be one of"),
        ({"weight": "tanh"}, "weight must be one of"),
        ({"init": "pretrained"}, "init must be one of"),
        ({"finetune_fraction": 0.0}, "finetune_fraction must be in"),
    ],
)
def test_config_errors_say_what_to_do(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MixtureOfDepthsConfig(**options)


def test_routed_blocks_every_other_or_every_block() -> None:
    assert wrap(tiny_gpt()).routed == [1, 3]
    assert wrap(tiny_gpt(), route_every=1).routed == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="routes no block"):
        wrap(tiny_gpt(), route_every=5)


def test_topk_positions_are_exactly_k_and_in_order_even_with_ties() -> None:
    ties = topk_positions(torch.zeros(3, 10), 4)  # a strict '>' threshold on the k-th value would pick none
    assert ties.shape == (3, 4) and (ties.diff(dim=1) > 0).all()
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2], [3.0, -1.0, 2.0, 0.0, 1.0]])
    assert topk_positions(scores, 2).tolist() == [[1, 3], [0, 2]]
    with pytest.raises(ValueError, match="1 <= k <= T=5"):
        topk_positions(scores, 6)
    idx, valid, ragged, counts = padded_positions(
        torch.tensor([[False, True, False, True], [True, False, False, False]])
    )
    assert idx.tolist() == [[1, 3], [0, 1]] and valid.tolist() == [[True, True], [True, False]] and ragged
    assert counts.tolist() == [2, 1] and counts.device.type == "cpu"  # read in the same host sync
    assert padded_positions(torch.zeros(2, 0, dtype=torch.bool)).counts.tolist() == [0, 0]
    assert not padded_positions(torch.tensor([[False, True], [True, False]])).ragged


@pytest.mark.parametrize("kind", ["learned", "rope"])
def test_selects_the_topk_of_the_router_scores(kind: str) -> None:
    model = wrap(tiny_gpt(kind), routing="topk")
    randomize_routers(model)
    x = ids()
    v = model.variant(0.25)
    scores: dict[str, torch.Tensor] = {}
    hooks = [
        r.register_forward_hook(lambda m, i, o, n=n: scores.__setitem__(n, o[..., 0])) for n, r in v.routers.items()
    ]
    with torch.no_grad():
        trace = model(x, budget=0.25).trace
    for h in hooks:
        h.remove()
    k = n_selected(0.25, x.shape[1])
    selected = trace.extra["selected"]  # (B, R, T)
    assert selected.sum(dim=-1).eq(k).all()  # exactly k per sample and routed block
    for j, block in enumerate(model.routed):
        expected = torch.zeros_like(selected[:, j]).scatter_(1, scores[str(block)].topk(k).indices, True)
        assert torch.equal(selected[:, j], expected)
    assert trace.block_tokens[0].tolist() == [24, k, 24, k] and torch.equal(trace.block_kv, trace.block_tokens)


@pytest.mark.parametrize("kind", ["learned", "rope"])
def test_routed_block_matches_a_per_sample_reference(kind: str) -> None:
    """Selected tokens run in their original order at their original positions; x + r·f(x_sel),
    others unchanged."""
    model = wrap(tiny_gpt(kind))
    randomize_routers(model)
    v = model.variant(0.25)
    block, router = v.net.blocks[1], v.routers["1"]
    torch.manual_seed(3)
    x = torch.randn(3, 20, 32)
    with torch.no_grad():
        out, step = model.routed_block(v, 1, block, x, 5, "topk")
        for b in range(3):
            r = router(x[b]).squeeze(-1)  # (T,)
            idx = torch.sort(r.topk(5).indices).values  # (5,)
            d = block.delta(x[b, idx][None], positions=idx[None] if kind == "rope" else None)[0]  # (5, C)
            expected = x[b].clone()
            expected[idx] += r[idx, None] * d
            torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)
            untouched = torch.ones(20, dtype=torch.bool)
            untouched[idx] = False
            assert torch.equal(out[b, untouched], x[b, untouched])
            assert step.selected[b].nonzero().squeeze(1).tolist() == idx.tolist()


@pytest.mark.parametrize("causal", [True, False])
def test_selected_tokens_attend_only_to_earlier_selected_tokens(causal: bool) -> None:
    """Decoders: a selected token's update ignores later selected tokens. Encoders: it sees all
    selected ones."""
    model = wrap(tiny_gpt() if causal else tiny_vit())
    v = model.variant(0.25)
    block = v.net.blocks[1]
    with torch.no_grad():
        v.routers["1"].weight.zero_()
        v.routers["1"].weight[0, 0] = 1.0  # the router reads channel 0 only, so the selection is ours to set
    torch.manual_seed(4)
    x = torch.randn(2, 17, 32)
    x[:, :, 0] = -5.0
    chosen = [2, 5, 9, 12, 16]
    x[:, chosen, 0] = 5.0  # these five win the top-5 (and token 0 when the model keeps CLS)
    k = 5 if causal else 6
    y = x.clone()
    y[:, 12, 1:] += torch.randn(2, 31)  # change a late selected token without changing the routing
    with torch.no_grad():
        out_x, step = model.routed_block(v, 1, block, x, k, "topk")
        out_y, _ = model.routed_block(v, 1, block, y, k, "topk")
    sel = step.selected[0].nonzero().squeeze(1).tolist()
    assert sel == (chosen if causal else [0, *chosen])
    earlier = [2, 5, 9] + ([] if causal else [0])
    assert (out_y[:, 12] - out_x[:, 12]).abs().max() > 1e-3
    change = (out_y[:, earlier] - out_x[:, earlier]).abs().max()
    assert change < 1e-6 if causal else change > 1e-4
    assert (out_y[:, 16] - out_x[:, 16]).abs().max() > 1e-4  # a later selected token does see it
    assert torch.equal(out_y[:, 13], y[:, 13])  # an unselected token passes unchanged


@pytest.mark.parametrize("kind", ["learned", "rope", "vit"])
def test_capacity_one_is_the_dense_backbone(kind: str) -> None:
    bb = tiny_vit() if kind == "vit" else tiny_gpt(kind)
    model = wrap(bb)
    x = torch.randn(2, 1, 8, 8) if kind == "vit" else ids()
    with torch.no_grad():
        out = model(x, budget=1.0)
        assert torch.equal(out.logits, bb(x))
    assert torch.equal(out.trace.block_tokens, bb.dense_trace(x).block_tokens)


@pytest.mark.parametrize("rule", ["topk", "predictor"])
@pytest.mark.parametrize("kind", ["learned", "rope", "vit"])
@pytest.mark.parametrize("batch", [1, 5])
def test_analytic_flops_equal_counted_flops(kind: str, rule: str, batch: int) -> None:
    bb = tiny_vit() if kind == "vit" else tiny_gpt(kind)
    model = wrap(bb, routing=rule)
    randomize_routers(model)
    x = torch.randn(batch, 1, 8, 8) if kind == "vit" else ids(batch)
    previous = float("inf")
    for budget in (1.0, 0.5, 0.25, 0.125):
        counted = count_flops(lambda b=budget: model(x, budget=b), model, model.controller_modules())
        trace = counted.output.trace
        assert counted.total == float(bb.flops(trace, tuple(x.shape[1:])).sum())
        assert counted.controller == float(trace.controller_flops.sum())
        if rule == "topk":  # static shapes: FLOPs fall with the capacity
            assert counted.total < previous
        previous = counted.total


@pytest.mark.parametrize("rule", ["topk", "predictor"])
def test_encoders_always_keep_cls(rule: str) -> None:
    model = wrap(tiny_vit(), routing=rule)
    randomize_routers(model)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        trace = model(x, budget=0.125).trace  # 17 tokens: k = 3, CLS + 2
    assert trace.extra["selected"][:, :, 0].all()
    if rule == "topk":
        assert trace.extra["selected"].sum(dim=-1).eq(3).all()


@pytest.mark.parametrize("batch", [3, 1])
@pytest.mark.parametrize("kind", ["learned", "rope"])
def test_kv_cached_decode_equals_full_recompute(kind: str, batch: int) -> None:
    """Prompt in one call, then token by token: the logits of the predictor-routed full forward, and
    routed blocks cache exactly the tokens that ran them."""
    bb = tiny_gpt(kind)
    model = wrap(bb, routing="predictor")
    x = ids(batch=batch, T=20)
    with torch.no_grad():
        full = model(x, budget=0.5)
        dec = model.decoder(0.5, batch_size=batch, max_len=20)
        parts = [dec(x[:, :7])] + [dec(x[:, t : t + 1]) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full.logits, rtol=1e-4, atol=1e-5)
    selected = full.trace.extra["selected"]  # (B, R, T)
    assert 0 < selected.sum() < selected.numel()  # some tokens skipped, some ran
    for j, block in enumerate(model.routed):
        assert dec.caches[block].length.tolist() == selected[:, j].sum(dim=-1).tolist()  # skipped: no KV written
        assert dec.executed[:, block].tolist() == selected[:, j].sum(dim=-1).tolist()
    assert dec.caches[0].filled == 20 and dec.executed[:, 0].tolist() == [20] * batch
    with torch.no_grad():
        dense = model.decoder(1.0, batch_size=batch, max_len=20)
        torch.testing.assert_close(torch.cat([dense(x[:, :5]), dense(x[:, 5:])], dim=1), bb(x), rtol=1e-4, atol=1e-5)
        tokens = generate(model, x[:, :10], 6, budget=0.5)
        assert tokens.shape == (batch, 16) and torch.equal(tokens[:, :10], x[:, :10])
        assert torch.equal(tokens[:, 10], model(x[:, :10], budget=0.5).logits[:, -1].argmax(dim=-1))


def test_random_routing_is_exactly_k_repeatable_and_not_the_router() -> None:
    model = wrap(tiny_gpt(), router="random", routing="predictor")
    learned = wrap(tiny_gpt(), routing="topk")
    randomize_routers(model)
    randomize_routers(learned)
    x = ids(batch=4)
    with torch.no_grad():
        a, b = model(x, budget=0.25), model(x, budget=0.25)
        ref = learned(x, budget=0.25)
    assert model.routing_rule() == "topk" and "predictor_agreement" not in a.trace.extra
    assert torch.equal(a.logits, b.logits) and torch.equal(a.trace.extra["selected"], b.trace.extra["selected"])
    assert a.trace.extra["selected"].sum(dim=-1).eq(6).all()
    assert not torch.equal(a.trace.extra["selected"], ref.trace.extra["selected"])
    with pytest.raises(ValueError, match="router=random has no causal routing rule"):
        model.decoder(0.25, batch_size=1, max_len=8)


@pytest.mark.parametrize("backbone", [tiny_gpt, tiny_vit])
def test_gaussian_random_routing_ignores_the_router_and_learned_scale_reads_it(backbone) -> None:
    """The paper's stochastic routing scales by its random weights; random_scale=learned scales by
    the router."""
    x = ids(batch=2) if backbone is tiny_gpt else torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    outs = {}
    for scale in ("gaussian", "learned"):
        model = wrap(backbone(), router="random", random_scale=scale)
        with torch.no_grad():
            before = model(x, budget=0.25)
            randomize_routers(model)
            after = model(x, budget=0.25)
        assert torch.equal(before.trace.extra["selected"], after.trace.extra["selected"])  # random either way
        outs[scale] = (before.logits, after.logits)
    assert torch.equal(*outs["gaussian"])  # the router's output is not used at all
    assert not torch.allclose(*outs["learned"])  # its r scales every routed update
    with pytest.raises(ValueError, match="random_scale must be one of"):
        MixtureOfDepthsConfig(random_scale="uniform")


def test_unknown_capacity_and_non_causal_decoding_are_errors() -> None:
    with pytest.raises(ValueError, match=r"no model trained at capacity 0.3.*\[0.5, 0.25, 0.125\]"):
        wrap(tiny_gpt())(ids(), budget=0.3)
    with pytest.raises(ValueError, match="needs a causal language model"):
        wrap(tiny_vit()).decoder(0.5, batch_size=1, max_len=8)


def test_init_rule_text_from_scratch_others_fine_tuned() -> None:
    text, vision = TASKS.get("toy-text")(), TASKS.get("toy-vision")()
    assert trains_from_scratch(MixtureOfDepthsConfig(), text)
    assert not trains_from_scratch(MixtureOfDepthsConfig(), vision)
    assert trains_from_scratch(MixtureOfDepthsConfig(init="scratch"), vision)
    assert not trains_from_scratch(MixtureOfDepthsConfig(init="dense"), text)


@pytest.fixture(scope="module")
def fitted_text() -> tuple:
    """toy-text, dense backbone trained briefly, MoD fitted from scratch at capacity 0.5 with
    isoFLOP steps."""
    task = TASKS.get("toy-text")()
    backbone = task.backbone(seed=0).eval()
    method = MixtureOfDepths(MixtureOfDepthsConfig(capacities=(0.5,)))
    model = method.wrap(copy.deepcopy(backbone))
    method.fit(model, task, seed=0)
    return task, backbone, model.eval()


def test_scratch_training_is_iso_flop_with_the_dense_recipe(fitted_text: tuple) -> None:
    task, backbone, model = fitted_text
    v = model.variant(0.5)
    recipe = task.train_config
    shape = (task.config.seq_len,)
    per_step = 3 * MixtureOfDepths.forward_flops(model, 0.5, shape) * recipe.batch_size
    dense = float(model.dense_train_flops)
    assert dense == 3 * backbone.dense_flops(shape) * recipe.batch_size * recipe.steps
    assert int(v.train_steps) > recipe.steps  # cheaper steps buy more of them
    assert abs(float(v.train_flops) - dense) <= per_step / 2  # matched to within half a step
    assert not torch.equal(v.net.blocks[0].attn.q_proj.weight, backbone.blocks[0].attn.q_proj.weight)
    x = next(task.batches("test", batch_size=32)).inputs
    with torch.no_grad():
        metrics = model.trace_metrics(model(x, budget=0.5).trace)
    assert metrics["train_flops"][0] == float(v.train_flops)


def test_trained_predictor_agrees_with_topk(fitted_text: tuple) -> None:
    """The causal predictor reproduces most top-k decisions, far above always-route or never-route
    (50%)."""
    task, _, model = fitted_text
    batch = next(task.batches("test", batch_size=128))
    with torch.no_grad():
        pred = model(batch.inputs, budget=0.5, routing="predictor")
        top = model(batch.inputs, budget=0.5, routing="topk")
    agreement = model.trace_metrics(pred.trace)["predictor_agreement"][0]
    assert agreement > 0.8
    loss_pred = task.metric.loss(pred.logits, batch.targets)
    loss_top = task.metric.loss(top.logits, batch.targets)
    assert abs(float(loss_pred - loss_top)) < 0.1  # predictor routing costs little quality


def test_training_flops_are_three_forward_passes_as_counted() -> None:
    """The isoFLOP convention (training step ≈ 3 × forward) checked with the FLOP counter, for MoD
    and dense alike."""
    gpt = tiny_gpt()
    model = wrap(gpt, capacities=(0.25,))
    x, y = ids(batch=4), ids(batch=4).roll(1, dims=1)
    v = model.variant(0.25)
    v.train()
    with flop_counter() as fc:
        logits, steps = model.run_variant(v, x, 0.25, "topk")
        bce = sum(F.binary_cross_entropy_with_logits(s.predictor_logits, s.topk.float()) for s in steps)
        (F.cross_entropy(logits.flatten(0, 1), y.flatten()) + bce).backward()
    mod = fc.get_total_flops() / (3 * MixtureOfDepths.forward_flops(model, 0.25, (24,)) * 4)
    gpt.train()
    with flop_counter() as fc:
        F.cross_entropy(gpt(x).flatten(0, 1), y.flatten()).backward()
    dense = fc.get_total_flops() / (3 * gpt.dense_flops((24,)) * 4)
    assert 0.95 < mod < 1.05 and 0.95 < dense < 1.05
    assert abs(mod - dense) < 0.03  # the convention favours neither side of the isoFLOP comparison


def test_predictor_calibration_trains_only_the_predictors_and_is_paid_for() -> None:
    """The calibration phase moves the predictors alone, raises agreement, and its FLOPs are in
    ``train_flops``."""
    task = TASKS.get("toy-text")()
    model = wrap(tiny_gpt(), capacities=(0.5,))
    method = MixtureOfDepths(MixtureOfDepthsConfig(capacities=(0.5,)))
    v = model.variant(0.5)
    randomize_routers(model)
    before = {k: t.clone() for k, t in v.state_dict().items()}
    x = next(task.batches("test", batch_size=64)).inputs[:, :24] % 16

    def agreement() -> float:
        with torch.no_grad():
            return model.trace_metrics(model(x, budget=0.5, routing="predictor").trace)["predictor_agreement"][0]

    start = agreement()
    text = _SixteenTokenText(task)
    method.calibrate_predictors(model, v, 0.5, text, 150, 32, 0, torch.device("cpu"))
    after = v.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])} - {"train_flops"}  # NaN until fit: NaN != NaN
    assert moved and all(k.startswith("predictors.") for k in moved), sorted(moved)
    assert all(p.requires_grad for p in v.parameters())  # the frozen parts are trainable again afterwards
    assert agreement() > max(start, 0.85)
    per_sample = MixtureOfDepths.calibration_flops(model, 0.5, (24,))
    assert per_sample > MixtureOfDepths.forward_flops(model, 0.5, (24,))  # the predictors' backward on top


class _SixteenTokenText:
    """toy-text's batches with ids folded into the 16-token vocabulary of :func:`tiny_gpt`, 24
    tokens long."""

    def __init__(self, task) -> None:
        self.task = task

    def batches(self, split: str, **kw):
        for b in self.task.batches(split, **kw):
            yield type(b)(b.inputs[:, :24] % 16, b.targets[:, :24] % 16, b.sample_ids)


@pytest.mark.parametrize(("kind", "rule"), [("vit", "topk"), ("learned", "predictor"), ("learned", "topk")])
def test_one_capacity_holds_one_model(kind: str, rule: str) -> None:
    """1.0 reads the dense backbone; capacity c only its own network and routers (+ predictors under
    their rule)."""
    bb = tiny_vit() if kind == "vit" else tiny_gpt(kind)
    model = wrap(bb, routing=rule)
    dense = modules_bytes(METHODS.get("dense")().wrap(bb).operating_modules(1.0))
    assert model.operating_modules(1.0) == [model.backbone]
    assert modules_bytes(model.operating_modules(1.0)) == pytest.approx(dense, rel=0.1)
    for c in (0.5, 0.25, 0.125):
        v = model.variant(c)
        expected = [v.net, v.routers, *([v.predictors] if rule == "predictor" else [])]
        assert model.operating_modules(c) == expected
        assert model.operating_modules(c, routing="topk") == [v.net, v.routers]  # the per-call override, as forward
        assert dense < modules_bytes(expected) < 1.1 * dense
    assert module_bytes(model) > 3.9 * dense  # the backbone and three capacities' copies
    with pytest.raises(ValueError, match="no model trained at capacity 0.3"):
        model.operating_modules(0.3)
