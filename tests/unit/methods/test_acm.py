from __future__ import annotations

import copy

import pytest
import torch

from dynbench.harness.flops import count_flops
from dynbench.harness.memory import module_bytes, modules_bytes
from dynbench.methods.acm import (
    ACM,
    ACMConfig,
    ACMModel,
    LearnerStack,
    budget_loss,
    dense_mlp_io,
    diversity_loss,
    entropy_loss,
    improvement_labels,
    set_price,
    voiced_tokens,
)
from dynbench.methods.base import METHODS, Method
from dynbench.models.audio import AudioConfig, AudioEncoder
from dynbench.models.backbone import mlp_unit_flops
from dynbench.models.block import MLP, BlockConfig
from dynbench.models.training import TrainConfig
from dynbench.models.vit import ViT, ViTConfig
from dynbench.tasks.base import TASKS

QUICK = TrainConfig(steps=12, batch_size=64, lr=3e-3, warmup_steps=2)  # a briefly trained toy backbone
FIT = ACMConfig(distill_steps=24, gate_steps=8, finetune_steps=8, targets=(0.6, 0.25))  # seconds, not minutes


def stack(swiglu: bool = False, n: int = 4, width: int = 8, d: int = 16) -> LearnerStack:
    torch.manual_seed(0)
    return LearnerStack(d, n, width, swiglu=swiglu, bias=not swiglu, out_bias=not swiglu, gate_hidden=16, gate_depth=3)


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(image_size=12, patch_size=4, n_classes=3, d_model=16, n_layers=2, n_heads=2)).eval()


def force_choice(model: ACMModel, budget: float, k: int) -> None:
    """Make every gate of ``budget``'s model pick ``k`` learners for every token."""
    net, acms = model.stacks(budget)
    for acm in acms:
        last = acm.gate[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[k] = 1.0


def naive_masked(acm: LearnerStack, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The obvious reference: learner i on the tokens whose k >= i, by boolean masks, learner by
    learner."""
    out = torch.zeros_like(z)
    for i in range(acm.n):
        mask = k >= i + 1
        out[mask] += acm.learner(z[mask], i)
    return out


def test_registered_with_paper_and_budgets() -> None:
    method = METHODS.get("acm")()
    assert method.resolve_budgets(None, 4) == (1.0, 0.75, 0.6, 0.4, 0.25)
    assert method.paper and "2312.10193" in method.paper
    assert method.learns()
    assert method.full_budget_atol == Method.full_budget_atol  # 1.0 is the dense backbone: no stated tolerance
    with pytest.raises(ValueError, match=r"no fine-tuned model.*acm\[targets"):
        method.resolve_budgets([1.0, 0.5], 4)


@pytest.mark.parametrize("swiglu", [False, True])
def test_gated_runs_exactly_the_chosen_learners(swiglu: bool) -> None:
    """Counted FLOPs = Σ_tokens k · width · FLOPs per hidden unit; outputs = the chosen prefix of
    every token."""
    acm = stack(swiglu).eval()
    z = torch.randn(40, 16)
    k = torch.randint(0, 5, (40,))
    counted = count_flops(lambda: acm.gated(z, k), acm)
    unit = mlp_unit_flops(BlockConfig(d_model=16, n_heads=2, mlp="swiglu" if swiglu else "gelu"))
    assert counted.total == int(k.sum()) * acm.width * unit
    expected = acm.prefixes(z)[torch.arange(40), k]  # (40, C) the k-learner output of each token
    torch.testing.assert_close(counted.output, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(counted.output[k == 0], torch.zeros_like(z[k == 0]))


def test_last_learner_of_the_largest_choice_runs() -> None:
    """The released forward_gated stops at max(k) - 1: with every k = 1 it ran nothing. Here learner
    1 runs."""
    acm = stack().eval()
    z = torch.randn(10, 16)
    ones = torch.ones(10, dtype=torch.long)
    torch.testing.assert_close(acm.gated(z, ones), acm.learner(z, 0))
    k = torch.tensor([3, 1, 3, 0, 2, 3, 1, 0, 2, 3])  # batch maximum 3: learner 3 must run for 4 tokens
    y = acm.gated(z, k)
    top = k == 3
    torch.testing.assert_close(y[top], sum(acm.learner(z[top], i) for i in range(3)), rtol=1e-5, atol=1e-6)
    assert count_flops(lambda: acm.gated(z, k), acm).total == int(k.sum()) * acm.width * 4 * 16


def test_grouped_equals_naive_masked_computation() -> None:
    acm = stack().eval()
    z = torch.randn(64, 16)
    for k in (torch.randint(0, 5, (64,)), torch.full((64,), 4), torch.zeros(64, dtype=torch.long)):
        torch.testing.assert_close(acm.gated(z, k), naive_masked(acm, z, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("swiglu", [False, True])
def test_split_learners_sum_to_the_dense_mlp(swiglu: bool) -> None:
    cfg = BlockConfig(d_model=16, n_heads=2, mlp_hidden=32, mlp="swiglu" if swiglu else "gelu", bias=not swiglu)
    torch.manual_seed(0)
    mlp = MLP(cfg).eval()
    with torch.no_grad():
        if mlp.fc_out.bias is not None:
            mlp.fc_out.bias.normal_()  # a visible output bias: it must be carried by learner 1
    acm = stack(swiglu, width=8)
    acm.split_from(mlp)
    z = torch.randn(20, 16)
    torch.testing.assert_close(acm(z), mlp(z), rtol=1e-5, atol=1e-6)
    acm.reorder(torch.randperm(32))
    torch.testing.assert_close(acm(z), mlp(z), rtol=1e-5, atol=1e-6)  # a permutation keeps the sum


def test_improvement_labels_hand_made() -> None:
    """rel(n) = e(n)/e(n+1); τ = 1.2."""
    errors = torch.tensor(
        [
            [8.0, 4.0, 2.0, 1.9, 1.8],  # rel = 2, 2, 1.05, 1.06: learner 3 buys too little → 2 (code: 3)
            [8.0, 7.0, 2.0, 1.0, 0.5],  # rel = 1.14, …: even learner 1 buys too little → 0 (code: N)
            [8.0, 4.0, 2.0, 1.0, 0.5],  # every learner halves the error → N (code: N)
            [8.0, 4.0, 1.0, 0.0, 0.0],  # exact from 3 learners: 0/0 is no gain → 3 (code: 4)
        ]
    )
    assert improvement_labels(errors, 1.2, "paper").tolist() == [2, 0, 4, 3]
    assert improvement_labels(errors, 1.2, "code").tolist() == [3, 4, 4, 4]
    with pytest.raises(ValueError, match="label rule"):
        improvement_labels(errors, 1.2, "other")


def onehot(choices: list[list[int]], k: int) -> torch.Tensor:
    """``(B, T)`` choices of one module → ``(B, T, 1, K)`` one-hots."""
    return torch.nn.functional.one_hot(torch.tensor(choices), k).float()[:, :, None, :]


def test_budget_loss_hand_made() -> None:
    costs = torch.tensor([[0.0, 5.0, 10.0]])  # one module, N = 2 learners of 5 FLOPs each
    g = onehot([[2, 0]], 3)  # tokens spend 10 and 0 → half of the maximum
    assert budget_loss(g, costs, 0.25).item() == pytest.approx(0.25)
    assert budget_loss(g, costs, 0.5).item() == pytest.approx(0.0)
    two = torch.cat([g, onehot([[1, 1]], 3)], dim=2)  # a second module at 5 + 5: total (10 + 10) / (2 · 20)
    assert budget_loss(two, costs.repeat(2, 1), 0.75).item() == pytest.approx(0.25)


def test_entropy_loss_hand_made() -> None:
    assert entropy_loss(onehot([[0, 1]], 2)).item() == pytest.approx(-1.0)  # uniform over both choices
    assert entropy_loss(onehot([[1, 1]], 2)).item() == pytest.approx(0.0)  # one choice only
    assert entropy_loss(onehot([[0, 1], [1, 1]], 2)).item() == pytest.approx(-0.5)  # the mean over samples


def test_diversity_loss_hand_made() -> None:
    # b = mean over tokens, modules and choice slots of onehot · index: sample 0 → 2/3, sample 1 → 0
    g = onehot([[2], [0]], 3)
    assert diversity_loss(g).item() == pytest.approx(-2.0 * (2 / 3 + 2 / 3) / 4)
    assert diversity_loss(onehot([[1], [1]], 3)).item() == 0.0


def test_voiced_tokens_rule() -> None:
    quiet, loud = -2.0, 1.5
    features = torch.full((1, 12, 5), quiet)
    features[0, 4:8] = loud  # frames 4-7: the word
    assert voiced_tokens(features, 4).tolist() == [[False, True, False]]


def test_forced_choice_costs_and_extras_on_a_vit() -> None:
    vit = tiny_vit()
    model = ACM(ACMConfig(targets=(0.5,))).wrap(vit).eval()
    force_choice(model, 0.5, 2)
    x = torch.randn(3, 1, 12, 12)
    c = count_flops(lambda: model(x, budget=0.5), model, model.controller_modules())
    trace = c.output.trace
    assert c.total == model.backbone.flops(trace, (1, 12, 12)).sum().item()
    assert c.controller == trace.controller_flops.sum().item() > 0
    T = 1 + 9
    assert trace.block_mlp_units.tolist() == [[T * 2 * model.width] * 2] * 3
    assert trace.extra["acm_choice"].shape == (3, 2, T) and (trace.extra["acm_choice"] == 2).all()
    metrics = model.trace_metrics(trace)
    assert metrics["mean_learners"][0] == 2.0 and metrics["learner_share_k2"][0] == 1.0
    assert {"mean_learners_cls", "mean_learners_border", "mean_learners_inner"} <= set(metrics)
    dense = count_flops(lambda: vit(x), vit).total
    full = count_flops(lambda: model(x, budget=1.0), model, model.controller_modules())
    assert full.total == dense and full.controller == 0  # every learner = the dense MLP's FLOPs, no gate


def test_audio_extras_split_voiced_and_silent_tokens() -> None:
    torch.manual_seed(0)
    enc = AudioEncoder(AudioConfig(n_mels=8, n_frames=16, stack=4, d_model=16, n_layers=1, n_heads=2)).eval()
    model = ACM(ACMConfig(targets=(0.5,))).wrap(enc).eval()
    force_choice(model, 0.5, 3)
    x = torch.full((2, 16, 8), -3.0)
    x[:, 4:8] = 2.0  # token 2 of 4 is voiced (token 1 is the CLS token)
    extra = model(x, budget=0.5).trace.extra
    assert extra["acm_learners_voiced"].tolist() == [3.0, 3.0] == extra["acm_learners_silent"].tolist()


def test_set_price_meets_the_budget_and_is_monotone() -> None:
    vit = tiny_vit()
    model = ACM(ACMConfig(targets=(0.75, 0.5, 0.25))).wrap(vit).eval()
    x = torch.randn(32, 1, 12, 12)
    spent = []
    for beta in model.targets:
        set_price(model, beta, x)
        mean_k = float(model(x, budget=beta).trace.extra["acm_mean_learners"].mean())
        spent.append(mean_k / model.n)
    assert spent == sorted(spent, reverse=True)
    assert all(s >= b - 1e-9 and s - b < 0.1 for s, b in zip(spent, model.targets))


def test_config_and_wrap_errors() -> None:
    with pytest.raises(ValueError, match="init must be one of"):
        ACMConfig(init="zeros")
    with pytest.raises(ValueError, match=r"targets must be in \(0, 1\), got 1.0"):
        ACMConfig(targets=(1.0,))
    vit = tiny_vit()  # MLP width 64
    with pytest.raises(ValueError, match="n_learners dividing"):
        ACM(ACMConfig(n_learners=5)).wrap(vit)
    assert ACM(ACMConfig(n_learners=5, init="random")).wrap(vit).width == 13
    model = ACM(ACMConfig(targets=(0.5,))).wrap(vit)
    with pytest.raises(ValueError, match="no fine-tuned model for budget 0.3"):
        model(torch.randn(1, 1, 12, 12), budget=0.3)


@pytest.fixture(scope="module")
def fitted() -> dict:
    """Per toy task: (task, backbone, model fitted with a seconds-long recipe, eval inputs)."""
    out = {}
    for name in ("toy-vision", "toy-text"):
        cls = TASKS.get(name)
        task = cls(cls.Config(train=QUICK))
        backbone = task.backbone(seed=0).eval()
        model = ACM(FIT).wrap(copy.deepcopy(backbone))
        ACM(FIT).fit(model, task, seed=0)
        out[name] = (task, backbone, model.eval(), next(task.batches("test", batch_size=32)).inputs)
    return out


@pytest.mark.parametrize("name", ["toy-vision", "toy-text"])
def test_full_budget_is_the_dense_backbone_and_distillation_fits_the_mlps(fitted, name: str) -> None:
    task, backbone, model, x = fitted[name]
    with torch.no_grad():
        dense = backbone(x)
        assert torch.equal(model.backbone(x), dense)  # phase 3 trained copies, never the backbone
        full = model(x, budget=1.0)
        assert torch.equal(full.logits, dense)  # the dense backbone itself, not the distilled learners
        pairs = dense_mlp_io(backbone, x)
        for acm, (z, o) in zip(model.distilled, pairs):  # all N learners: trained approximations of each MLP
            rel = ((acm(z) - o).norm() / o.norm()).item()
            assert 0 < rel < 0.25  # 6-8% after the 24-step toy distillation
    assert full.trace.block_mlp_units is None and not full.trace.controller_flops.any()  # the dense trace
    metrics = model.trace_metrics(full.trace)
    assert metrics["mean_learners"][0] == model.n and metrics[f"learner_share_k{model.n}"][0] == 1.0


def test_one_budget_holds_one_model() -> None:
    """1.0 reads the dense backbone (dense's weight bytes), a β its own fine-tuned copy; resident
    holds them all."""
    vit = tiny_vit()
    model = ACM(ACMConfig(targets=(0.75, 0.5, 0.25))).wrap(vit).eval()
    dense = modules_bytes(METHODS.get("dense")().wrap(vit).operating_modules(1.0))
    assert model.operating_modules(1.0) == [model.backbone]
    assert modules_bytes(model.operating_modules(1.0)) == pytest.approx(dense, rel=0.1)
    for beta in model.targets:
        (net,) = model.operating_modules(beta)
        assert net is model.stacks(beta)[0]
        assert dense < modules_bytes([net]) < 1.2 * dense  # the backbone's weights with learner stacks and gates
    assert module_bytes(model) > 4 * dense  # backbone, distilled stacks and three fine-tuned copies
    with pytest.raises(ValueError, match="no fine-tuned model for budget 0.3"):
        model.operating_modules(0.3)


@pytest.mark.parametrize("name", ["toy-vision", "toy-text"])
def test_fitted_budgets_spend_their_target(fitted, name: str) -> None:
    """The price is set on training data; on eval data the spend lands near β, and falls with β."""
    task, _, model, x = fitted[name]
    spent = []
    with torch.no_grad():
        for beta in model.targets:
            spent.append(float(model(x, budget=beta).trace.extra["acm_mean_learners"].mean()) / model.n)
    assert spent == sorted(spent, reverse=True)
    assert all(abs(s - b) < 0.15 for s, b in zip(spent, model.targets))
