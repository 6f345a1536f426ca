from __future__ import annotations

import dataclasses

import pytest
import torch

from dynbench.hardware.host_sync import count_host_syncs
from dynbench.harness.flops import count_flops
from dynbench.methods._exit_heads import TunedExit
from dynbench.methods.base import METHODS
from dynbench.methods.early_exit import EarlyExit, EarlyExitConfig, EarlyExitModel, confidence
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViT, ViTConfig
from dynbench.tasks.base import TASKS

TASK_NAMES = ("toy-vision", "toy-text")
QUICK = TrainConfig(steps=12, batch_size=64, lr=3e-3, warmup_steps=2)  # a briefly trained toy backbone
FIT = EarlyExitConfig(steps=8, batch_size=32, warmup_steps=2)


@pytest.fixture(scope="module")
def setups() -> dict:
    """Per toy task: (task, trained backbone, fitted early-exit model, a test batch of 8 inputs)."""
    out = {}
    for name in TASK_NAMES:
        cls = TASKS.get(name)
        task = cls(cls.Config(train=QUICK))
        backbone = task.backbone(seed=0).eval()
        model = EarlyExit(FIT).wrap(backbone).eval()
        EarlyExit(FIT).fit(model, task, seed=0)
        inputs = next(task.batches("test", batch_size=8)).inputs
        out[name] = (task, backbone, model, inputs)
    return out


def deep_vit() -> ViT:
    """An untrained 4-block ViT on toy-vision inputs, with a sharp readout to spread confidences."""
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=8, patch_size=4, n_classes=4, d_model=32, n_layers=4, n_heads=2)).eval()
    with torch.no_grad():
        vit.readout.head.weight.mul_(20.0)
    return vit


def threshold_far_from(conf: torch.Tensor, lo: int, hi: int) -> float:
    """A threshold between ``lo`` and ``hi`` exits at head 0, as far as possible from every
    confidence."""
    values = conf.flatten().sort().values
    mids = (values[1:] + values[:-1]) / 2  # candidate thresholds between neighbouring confidences
    best, gap = 0.0, -1.0
    for tau in mids.tolist():
        exits = int((conf[0] > tau).sum())
        margin = float((conf - tau).abs().min())
        if lo <= exits <= hi and margin > gap:
            best, gap = tau, margin
    assert gap > 1e-4  # no decision sits on the threshold, so batch size cannot flip one
    return best


def toy_images(n: int) -> torch.Tensor:
    return next(TASKS.get("toy-vision")().batches("test", batch_size=n)).inputs  # (n, 1, 8, 8)


def test_registered_with_paper_and_budgets() -> None:
    method = METHODS.get("early_exit")()
    budgets = method.resolve_budgets(None, 6)
    assert budgets[0] == method.full_budget == 1.0
    assert len(budgets) >= 5 and list(budgets) == sorted(budgets, reverse=True)
    assert method.paper and "2410.20022" in method.paper
    assert method.learns()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_full_budget_reproduces_dense(setups: dict, name: str) -> None:
    _, backbone, model, inputs = setups[name]
    with torch.no_grad():
        out = model(inputs, budget=1.0)
        dense = backbone(inputs)
    assert torch.equal(out.logits, dense)
    assert out.trace.readout.tolist() == [1] * len(inputs)
    assert out.trace.exit_layer.tolist() == [backbone.n_blocks - 1] * len(inputs)
    assert not out.trace.extra["exited_early"].any()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_flops_never_increase_as_threshold_falls(setups: dict, name: str) -> None:
    _, backbone, model, inputs = setups[name]
    shape = tuple(inputs.shape[1:])
    previous = None
    with torch.no_grad():
        for budget in (*EarlyExit().resolve_budgets(None, backbone.n_blocks), 0.2, 0.0):
            flops = backbone.flops(model(inputs, budget=budget).trace, shape)  # (B,)
            if previous is not None:
                assert (flops <= previous).all(), budget
            previous = flops
    dense = backbone.flops(backbone.dense_trace(inputs), shape)
    assert (previous < dense).all()  # at τ = 0 everyone exits after block 0


@pytest.mark.parametrize("batch", [8, 1])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_analytic_flops_equal_counted_flops(setups: dict, name: str, batch: int) -> None:
    _, backbone, model, inputs = setups[name]
    x = inputs[:batch]
    with torch.no_grad():
        conf = confidence(model.exit_heads[0](backbone.blocks[0](backbone.embed(inputs))))  # (8,)
    for budget in (1.0, float(conf.median()), 0.0):
        with torch.no_grad():
            trace = model(x, budget=budget).trace
        counted = count_flops(lambda b=budget: model(x, budget=b), model, model.controller_modules())
        assert float(backbone.flops(trace, tuple(x.shape[1:])).sum()) == counted.total
        assert float(trace.controller_flops.sum()) == counted.controller > 0


def test_zero_threshold_exits_after_block_zero_with_head_zero(setups: dict) -> None:
    _, backbone, model, inputs = setups["toy-vision"]
    with torch.no_grad():
        out = model(inputs, budget=0.0)
        expected = model.exit_heads[0](backbone.blocks[0](backbone.embed(inputs)))
    assert torch.equal(out.logits, expected)
    assert out.trace.exit_layer.tolist() == [0] * len(inputs)
    assert out.trace.readout.tolist() == [0] * len(inputs)
    assert (out.trace.block_tokens[:, 1:] == 0).all() and (out.trace.block_tokens[:, 0] > 0).all()
    assert out.trace.extra["exited_early"].all()


def test_sequence_confidence_is_mean_token_max_probability(setups: dict) -> None:
    _, backbone, model, inputs = setups["toy-text"]
    with torch.no_grad():
        out = model(inputs, budget=0.0)
        head = model.exit_heads[0](backbone.blocks[0](backbone.embed(inputs)))  # (B, T, V)
    expected = torch.softmax(head, dim=-1).amax(dim=-1).mean(dim=1)  # (B,)
    assert out.logits.shape == head.shape
    torch.testing.assert_close(out.trace.extra["exit_confidence"], expected)


def test_batch_compaction_matches_running_each_sample_alone() -> None:
    vit = deep_vit()
    model = EarlyExit().wrap(vit).eval()
    x = toy_images(16)
    with torch.no_grad():
        hidden = model.exit_inputs(x)
        conf = torch.stack([confidence(head(h)) for head, h in zip(model.exit_heads, hidden)])  # (L-1, B)
        tau = threshold_far_from(conf, lo=4, hi=12)
        batched = model(x, budget=tau)
        alone = [model(x[i : i + 1], budget=tau) for i in range(len(x))]
    layers = batched.trace.exit_layer
    assert len(set(layers.tolist())) >= 3  # exits at block 0, in the middle and at the end
    assert layers.tolist() == [int(o.trace.exit_layer) for o in alone]
    torch.testing.assert_close(batched.logits, torch.cat([o.logits for o in alone]), rtol=1e-5, atol=1e-5)
    expected_heads = torch.clamp(layers + 1, max=vit.n_blocks - 1).double() * vit.readout.flops(5)
    assert torch.equal(batched.trace.controller_flops, expected_heads)


def test_compaction_really_skips_blocks_for_exited_samples() -> None:
    vit = deep_vit()
    model = EarlyExit().wrap(vit).eval()
    x = toy_images(16)
    seen: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.shape[0])) for b in vit.blocks]
    with torch.no_grad():
        out = model(x, budget=0.3)
    for h in hooks:
        h.remove()
    ran = (out.trace.block_tokens > 0).sum(dim=0)  # (L,) samples each block ran on
    assert seen == [int(n) for n in ran if n > 0]
    assert sum(seen) < len(x) * vit.n_blocks


def test_fit_trains_only_the_heads_deterministically(setups: dict) -> None:
    task, backbone, _, _ = setups["toy-vision"]
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    a, b = EarlyExit(FIT).wrap(backbone), EarlyExit(FIT).wrap(backbone)
    start = {k: v.clone() for k, v in a.exit_heads.state_dict().items()}
    EarlyExit(FIT).fit(a, task, seed=0)
    EarlyExit(FIT).fit(b, task, seed=0)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, start[k]) for k, v in a.exit_heads.state_dict().items())
    batch = next(task.batches("train", batch_size=256))
    with torch.no_grad():
        h = a.exit_inputs(batch.inputs)[0]
        untrained = EarlyExit().wrap(backbone).exit_heads[0](h)
        loss_before = task.metric.loss(untrained, batch.targets)
        loss_after = task.metric.loss(a.exit_heads[0](h), batch.targets)
    assert loss_after < loss_before


@pytest.mark.parametrize("name", TASK_NAMES)
def test_state_dict_round_trip_into_fresh_wrap(setups: dict, name: str) -> None:
    _, backbone, model, inputs = setups[name]
    fresh = EarlyExit(FIT).wrap(backbone).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        for budget in (1.0, 0.6, 0.0):
            a, b = model(inputs, budget=budget), fresh(inputs, budget=budget)
            assert torch.equal(a.logits, b.logits)
            assert torch.equal(a.trace.exit_layer, b.trace.exit_layer)


def test_controller_modules_are_the_exit_heads(setups: dict) -> None:
    _, backbone, model, _ = setups["toy-text"]
    heads = model.controller_modules()
    assert len(heads) == backbone.n_blocks - 1
    assert all(any(h is m for m in model.modules()) for h in heads)
    assert isinstance(model, EarlyExitModel)


BAD = [("steps", -1), ("lr", 0.0), ("batch_size", 0), ("weight_decay", -0.1), ("warmup_steps", -5)]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_invalid_config_raises_helpful_value_error(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"EarlyExitConfig\.{field} must be .*got {value}"):
        EarlyExitConfig(**{field: value})


def test_budget_out_of_range_raises(setups: dict) -> None:
    _, _, model, inputs = setups["toy-vision"]
    with pytest.raises(ValueError, match="confidence threshold"):
        model(inputs, budget=1.5)
    with pytest.raises(ValueError, match="out of range"):
        EarlyExit().resolve_budgets([0.5, -0.1], 6)


def test_shared_exits_apply_the_readout_and_own_no_weights(setups: dict) -> None:
    task, backbone, _, inputs = setups["toy-text"]
    method = EarlyExit(EarlyExitConfig(heads="shared"))
    model = method.wrap(backbone).eval()
    method.fit(model, task, seed=0)  # nothing to train: returns at once
    assert model.shared and sum(p.numel() for p in model.exit_heads.parameters()) == 0
    assert not any(k.startswith("exit_heads") for k in model.state_dict())  # the head is not saved per exit
    with torch.no_grad():
        h = backbone.blocks[0](backbone.embed(inputs))  # (B, T, C)
        torch.testing.assert_close(model.exit_heads[0](h), backbone.readout(h), rtol=0, atol=0)
        count = count_flops(lambda: model(inputs, budget=0.0), model, model.controller_modules())
    # at τ = 0 every sequence leaves after block 0 through exit 0: the controller FLOPs are that
    # head's
    assert count.controller == inputs.shape[0] * backbone.readout.flops(inputs.shape[1])


def test_auto_tunes_only_large_heads(setups: dict) -> None:
    _, backbone, _, _ = setups["toy-text"]
    assert EarlyExit().wrap(backbone).kind == "copy"  # a 2-block toy's head is tiny: trained copies
    with torch.device("meta"):
        big = GPT(GPTConfig(vocab_size=50_000, block_size=8, d_model=64, n_layers=2, n_heads=2))
    model = EarlyExit().wrap(big)
    assert model.kind == "tuned" and model.decision_tokens == 16
    assert isinstance(model.exit_heads[0], TunedExit) and not any(
        "head.weight" in k for k in model.state_dict() if k.startswith("exit_heads")
    )  # the 50k-word head is not saved per exit, only the translators
    assert EarlyExit(EarlyExitConfig(heads="copy")).wrap(big).exit_heads[0].head


@pytest.mark.parametrize("name", TASK_NAMES)
def test_tuned_exits_fit_the_last_block_and_cost_what_the_trace_says(setups: dict, name: str) -> None:
    """Least-squares translators beat the untrained (shared) exit at predicting the last block's
    output."""
    task, backbone, _, inputs = setups[name]
    method = EarlyExit(EarlyExitConfig(heads="tuned", tuned_samples=64))
    model = method.wrap(backbone).eval()
    method.fit(model, task, seed=0)
    head = model.exit_heads[0]
    assert head.translator.weight.abs().sum() > 0  # fitted, no longer the zero (shared) translator
    with torch.no_grad():
        train = next(task.batches("train", batch_size=64, seed=5)).inputs
        h = backbone.blocks[0](backbone.embed(train))  # (B, T, C)
        last = backbone.blocks[1](h)  # (B, T, C) the 2-block toy's final output
        pos = slice(0, 1) if backbone.readout.pool == "cls" else slice(None)
        fitted = (h + head.translator(h) - last)[:, pos].pow(2).mean()
        assert fitted < (h - last)[:, pos].pow(2).mean()  # better than the identity (logit lens)
        torch.testing.assert_close(head(h), backbone.readout(h + head.translator(h)))
        count = count_flops(lambda: model(inputs, budget=0.0), model, model.controller_modules())
        out = model(inputs, budget=0.0)
    assert count.controller == pytest.approx(float(out.trace.controller_flops.sum()))
    assert any(k.endswith("translator.weight") for k in model.state_dict())  # cached with the fit


def test_decisions_on_a_few_positions_cost_what_the_trace_says(setups: dict) -> None:
    _, backbone, _, inputs = setups["toy-text"]  # (8, 16) token ids
    model = EarlyExitModel(backbone, heads="shared", decision_tokens=4).eval()
    assert model.decision_positions(16).tolist() == [3, 7, 11, 15]
    T = inputs.shape[1]
    with torch.no_grad():
        h = backbone.blocks[0](backbone.embed(inputs))  # (B, T, C)
        conf = confidence(backbone.readout(h)[:, [3, 7, 11, 15]])  # (B,) the decision's confidence
        tau = float(conf.median())
        out = model(inputs, budget=tau)
        count = count_flops(lambda: model(inputs, budget=tau), model, model.controller_modules())
    left = conf > tau
    assert torch.equal(out.trace.extra["exited_early"] & (out.trace.exit_layer == 0), left)
    torch.testing.assert_close(out.logits[left], backbone.readout(h)[left])  # leavers get every position
    assert count.controller == float(out.trace.controller_flops.sum())
    per_head = backbone.readout.flops(T)
    assert float(out.trace.controller_flops[left][0]) == per_head * 4 / T + per_head  # decide on 4, then all 16


def test_static_depth_rule_runs_k_blocks_and_leaves_by_head_k() -> None:
    """``rule="depth"``: budget k/L runs blocks 0..k-1 for every sample and exit head k-1; counted =
    analytic."""
    vit = deep_vit()
    method = EarlyExit(EarlyExitConfig(rule="depth"))
    model = method.wrap(vit).eval()
    x = toy_images(5)
    assert method.resolve_budgets(None, 4) == (1.0, 0.75, 0.5, 0.25)
    with torch.no_grad():
        assert torch.equal(model(x, budget=1.0).logits, vit(x))
        for k in (1, 2, 3):
            out = model(x, budget=k / 4)
            h = vit.embed(x)
            for block in list(vit.blocks)[:k]:
                h = block(h)
            assert torch.equal(out.logits, model.exit_heads[k - 1](h))
            assert out.trace.exit_layer.tolist() == [k - 1] * 5 and out.trace.readout.tolist() == [0] * 5
            counted = count_flops(lambda b=k / 4: model(x, budget=b), model, model.controller_modules())
            assert float(vit.flops(out.trace, tuple(x.shape[1:])).sum()) == counted.total
            assert float(out.trace.controller_flops.sum()) == counted.controller > 0


def test_rule_and_decision_width_do_not_change_the_fit_cache_key() -> None:
    """Both rules use the same trained heads, so sweeping the rule reuses one fit."""
    a = EarlyExit(EarlyExitConfig(rule="depth", decision_tokens=4)).fit_identity()
    assert a == EarlyExit().fit_identity()
    assert EarlyExit(EarlyExitConfig(steps=5)).fit_identity() != EarlyExit().fit_identity()


def spread_threshold(conf: torch.Tensor) -> float:
    """The threshold whose exits ``(L-1, B)`` confidences spread over the most exits (then the one
    farthest from every confidence)."""
    values = conf.flatten().sort().values
    best, key = 0.0, (-1, -1.0)
    for tau in ((values[1:] + values[:-1]) / 2).tolist():
        over = conf > tau  # (L-1, B)
        exits = torch.where(over.any(dim=0), over.int().argmax(dim=0), len(conf))  # (B,) first confident exit
        candidate = (len(set(exits.tolist())), float((conf - tau).abs().min()))
        best, key = (tau, candidate) if candidate > key else (best, key)
    assert key[1] > 1e-4  # no decision sits on the threshold
    return best


def deep_gpt() -> GPT:
    """An untrained 4-block GPT with a sharp readout, so sequences leave at different exits."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=16, block_size=12, d_model=32, n_layers=4, n_heads=2)).eval()
    with torch.no_grad():
        gpt.readout.head.weight.mul_(20.0)
    return gpt


@pytest.mark.parametrize("every", [2, 3])
@pytest.mark.parametrize("kind", ["vision", "text"])
def test_compact_every_keeps_outputs_and_charges_the_blocks_rows_wait(kind: str, every: int) -> None:
    """Compacting every few blocks changes when rows leave the batch, not what they output.

    Text runs shared (readout) exits deciding on 3 positions, so rows waiting for a compaction keep
    their hidden state and get their exit's head at the compaction; vision keeps the head's output.
    """
    backbone = deep_vit() if kind == "vision" else deep_gpt()
    exact = EarlyExit(EarlyExitConfig(heads="copy" if kind == "vision" else "shared", decision_tokens=3))
    lazy = EarlyExit(dataclasses.replace(exact.config, compact_every=every))
    assert lazy.fit_identity() == exact.fit_identity()  # one fit serves every interval
    model, lazy_model = exact.wrap(backbone).eval(), lazy.wrap(backbone).eval()
    lazy_model.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    x = toy_images(16) if kind == "vision" else torch.randint(0, 16, (16, 12))
    with torch.no_grad():
        picks = model.decision_positions(x.shape[1])
        hidden = model.exit_inputs(x)
        conf = torch.stack(
            [confidence(head(h if picks is None else h[:, picks])) for head, h in zip(model.exit_heads, hidden)]
        )  # (L-1, B)
        tau = spread_threshold(conf)
        ref, out = model(x, budget=tau), lazy_model(x, budget=tau)
    L = backbone.n_blocks
    assert len(set(ref.trace.exit_layer.tolist())) >= 3  # rows leave early, late and at the end
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.trace.exit_layer, ref.trace.exit_layer)
    torch.testing.assert_close(out.trace.extra["exit_confidence"], ref.trace.extra["exit_confidence"], equal_nan=True)
    # a row that left runs on to the next compaction (after every `every` blocks, and the last exit)
    last = (out.trace.block_tokens > 0).sum(dim=1) - 1  # (B,) the last block each row ran
    points = torch.tensor([i for i in range(L - 1) if (i + 1) % every == 0 or i == L - 2])  # compactions
    leaving = ref.trace.exit_layer < L - 1
    waits = points[torch.searchsorted(points, ref.trace.exit_layer[leaving])]  # the first at or after the exit
    assert torch.equal(last[leaving], waits) and (last[~leaving] == L - 1).all()
    assert (out.trace.block_tokens >= ref.trace.block_tokens).all() and (
        last[leaving] > ref.trace.exit_layer[leaving]
    ).any()
    counted = count_flops(lambda: lazy_model(x, budget=tau), lazy_model, lazy_model.controller_modules())
    assert float(backbone.flops(out.trace, tuple(x.shape[1:])).sum()) == pytest.approx(counted.total, rel=1e-12)
    assert float(out.trace.controller_flops.sum()) == pytest.approx(counted.controller, rel=1e-12)
    with torch.no_grad():
        syncs = count_host_syncs(lambda: lazy_model(x, budget=tau), lazy_model, x)
    assert len(syncs) <= len(points) + 1, syncs.summary()  # one per compaction + the confidences' copy


def test_compact_every_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"EarlyExitConfig\.compact_every must be .*got 0"):
        EarlyExitConfig(compact_every=0)
