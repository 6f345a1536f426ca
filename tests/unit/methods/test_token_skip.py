from __future__ import annotations

import pytest
import torch

from dynbench import api
from dynbench.harness.flops import count_flops
from dynbench.methods.base import METHODS
from dynbench.methods.token_skip import (
    TokenSkip,
    TokenSkipConfig,
    TokenSkipModel,
    calibrate,
    controlled_blocks,
    lowest_budget,
)
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.training import TrainConfig
from dynbench.tasks.base import TASKS

QUICK = TrainConfig(steps=12, batch_size=64, lr=3e-3, warmup_steps=2)  # a briefly trained toy backbone


def llama_like(n_layers: int = 4) -> GPT:
    """An untrained 4-block rotary, grouped-query, SwiGLU decoder (SmolLM2's block shape, tiny)."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=16, block_size=16, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2, norm="rmsnorm",
        mlp="swiglu", bias=False, rope=True, learned_positions=False,
    )  # fmt: skip
    return GPT(cfg).eval()


def with_controllers(backbone: GPT, controller: str = "hidden") -> TokenSkipModel:
    """A wrapped model whose controllers hold random non-trivial weights (no fit needed)."""
    model = TokenSkip(TokenSkipConfig(controller=controller)).wrap(backbone).eval()
    torch.manual_seed(1)
    for ctrl in model.controllers.values():
        torch.nn.init.normal_(ctrl.weight, std=0.5)
        torch.nn.init.normal_(ctrl.bias, std=0.5)
    return model


@pytest.fixture(scope="module")
def toy_text() -> tuple:
    """The toy-text task, its briefly trained 2-block backbone and a test batch."""
    cls = TASKS.get("toy-text")
    task = cls(cls.Config(train=QUICK))
    backbone = task.backbone(seed=0).eval()
    return task, backbone, next(task.batches("test", batch_size=8)).inputs


def test_first_and_last_blocks_always_run_from_three_blocks_up() -> None:
    assert controlled_blocks(30, True) == list(range(1, 29))
    assert controlled_blocks(2, True) == [0, 1]  # nothing would be left to decide
    assert controlled_blocks(4, False) == [0, 1, 2, 3]
    assert lowest_budget(30, True) == pytest.approx(2 / 30)
    assert lowest_budget(2, True) == 0.0


def test_the_evaluation_path_equals_the_masked_training_rule_at_the_same_decisions() -> None:
    """Only the kept tokens run (what the trace charges) = all tokens, the skipped masked out."""
    model = with_controllers(llama_like())
    x = torch.randint(0, 16, (3, 16))
    with torch.no_grad():
        got, tokens, kept = model.run(x, bias=0.0)
        want, keeps = model.masked_forward(x, lambda i, z: (z > 0).float())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    per_block = torch.stack([k.sum(dim=1) for k in keeps], dim=1).long()  # (B, controlled)
    assert torch.equal(tokens[:, 1:3], per_block)  # controlled blocks ran exactly the kept tokens
    assert torch.equal(tokens[:, [0, 3]], torch.full((3, 2), 16))  # the ends ran every token
    assert torch.equal(kept, per_block.sum(dim=1).double() + 2 * 16)
    assert 0 < int(per_block.sum()) < 3 * 2 * 16  # the decisions really vary


def test_a_batch_runs_each_sample_as_it_would_run_alone() -> None:
    """Different kept counts per sample run unpadded: batched = one at a time, trace included."""
    model = with_controllers(llama_like())
    x = torch.randint(0, 16, (4, 16))
    with torch.no_grad():
        h = model.backbone.blocks[0](model.backbone.embed(x))  # (B, T, C) entering the first controlled block
        bias = -float(model.keep_logits(1, h).median())  # about half the tokens run it
        together = model.run(x, bias)
        alone = [model.run(x[b : b + 1], bias) for b in range(4)]
    assert len(set(together[1][:, 1].tolist())) > 1  # counts differ within the batch
    torch.testing.assert_close(together[0], torch.cat([a[0] for a in alone]), rtol=1e-5, atol=1e-5)
    assert torch.equal(together[1], torch.cat([a[1] for a in alone]))


def test_the_fixed_input_controller_decides_the_same_blocks_for_every_token() -> None:
    model = with_controllers(llama_like(6), controller="fixed")
    x = torch.randint(0, 16, (5, 16))
    with torch.no_grad():
        _, tokens, _ = model.run(x, bias=0.0)
    assert set(tokens.flatten().tolist()) <= {0, 16}  # a block runs every token or none
    assert (tokens == tokens[0]).all()  # and the same blocks for every input
    assert model.controller_flops(16) == 0.0  # a stored decision, no per-token work


def test_calibration_never_spends_more_than_the_target(toy_text) -> None:
    task, backbone, _ = toy_text
    model = with_controllers(backbone)
    inputs = next(task.batches("val", batch_size=16)).inputs
    for target in (0.8, 0.5, 0.2):
        bias, fraction = calibrate(model, inputs, target, steps=14)
        assert fraction <= target
        assert fraction >= target - 0.1  # ~2,000 decisions: the bisection gets close
        _, _, kept = model.run(inputs, bias)
        assert float(kept.sum()) / (16 * 16 * 2) == pytest.approx(fraction)


def test_fit_trains_controllers_calibrates_targets_and_leaves_the_backbone(toy_text) -> None:
    task, backbone, inputs = toy_text
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    method = TokenSkip(TokenSkipConfig(steps=40, batch_size=32))
    model = method.wrap(backbone)
    untrained = [c.weight.clone() for c in model.controllers.values()]
    method.fit(model, task, seed=0)
    assert all(not torch.equal(a, c.weight) for a, c in zip(untrained, model.controllers.values()))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert torch.isfinite(model.bias).all()
    assert (model.kept_fraction <= model.targets).all()
    previous = float("inf")
    for budget in method.resolve_budgets(None, backbone.n_blocks):
        c = count_flops(lambda b=budget: model(inputs, budget=b), model, model.controller_modules())
        assert c.total <= previous
        previous = c.total
        fraction = float(c.output.trace.extra["executed_fraction"].mean())
        assert fraction == pytest.approx(1.0) if budget == 1.0 else fraction < 1.0


def test_unfitted_or_uncalibrated_budgets_are_clear_errors(toy_text) -> None:
    _, backbone, inputs = toy_text
    method = TokenSkip()
    model = method.wrap(backbone)
    with pytest.raises(ValueError, match=r"not calibrated yet. Call TokenSkip.fit"):
        model(inputs, budget=0.5)
    with pytest.raises(ValueError, match=r"budgets \[0.4\] are not among .*token_skip\[targets=...\]"):
        method.resolve_budgets([1.0, 0.4], backbone.n_blocks)


def test_targets_below_the_always_run_blocks_are_refused_before_training() -> None:
    cls = TASKS.get("digits")  # 6 blocks: the first and last alone spend 1/3
    problems = TokenSkip(TokenSkipConfig(targets=(0.5, 0.25))).shape_problems(cls())
    assert problems and "targets [0.25] are below 0.333" in problems[0] and "keep_ends=false" in problems[0]
    assert TokenSkip(TokenSkipConfig(targets=(0.5, 0.25), keep_ends=False)).shape_problems(cls()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"controller": "hs"}, r"controller.*'hs'.*Use hidden"),
        ({"targets": (0.5, 0.5)}, r"targets must be distinct"),
        ({"targets": (1.0,)}, r"targets"),
        ({"train_budget": 0.0}, r"train_budget"),
    ],
)
def test_bad_options_name_the_field_and_the_fix(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenSkipConfig(**options)


def test_a_study_is_registered_but_left_out_of_the_default_suite() -> None:
    assert "token_skip" in METHODS.names()
    default = {m.name for m in api.default_suite().methods}
    assert "token_skip" not in default
    assert default == {n for n in METHODS.names() if METHODS.get(n).in_default_suite}
    info = {row["name"]: row for row in api.plugin_table("methods")}
    assert info["token_skip"]["note"] == "study: not in the default suite"  # bench ls methods says so
