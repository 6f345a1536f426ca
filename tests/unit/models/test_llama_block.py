"""The Llama variants of the Block (RMSNorm, SwiGLU, GQA, rotary positions): exact FLOPs and the
semantics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import dynbench.models.block as block_mod
from dynbench.harness.flops import count_flops
from dynbench.models.block import Block, BlockConfig, apply_rope, block_flops, rope_tables
from dynbench.models.gpt import GPT, GPTConfig

torch.set_num_threads(1)

VARIANTS = [
    dict(norm=norm, mlp=mlp, n_kv_heads=kv, rope=rope, bias=bias, causal=causal)
    for norm, mlp, kv, rope, bias, causal in itertools.product(
        ("layernorm", "rmsnorm"), ("gelu", "swiglu"), (None, 2, 1), (False, True), (True, False), (True, False)
    )
]


def make(seed: int = 0, **kw) -> Block:
    torch.manual_seed(seed)
    cfg = BlockConfig(d_model=32, n_heads=4, mlp_hidden=48, **kw)
    block = Block(cfg).eval()
    for p in block.parameters():  # norms and biases away from their 1/0 init, so they matter in the checks
        p.data.add_(0.1 * torch.randn_like(p))
    return block


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_counted_flops_equal_analytic_for_every_variant(kw):
    block = make(**kw)
    x = torch.randn(2, 7, 32)
    counted = count_flops(lambda: block(x), block).total
    analytic = block_flops(block.cfg, torch.tensor([7, 7]), torch.tensor([7, 7]), torch.tensor([4, 4])).sum().item()
    assert counted == analytic


@pytest.mark.parametrize("force_repeat", [False, True])
def test_gqa_costs_kv_heads_only(monkeypatch, force_repeat):
    """k/v projections cost n_kv_heads·head_dim rows; attention is per query head; repeating k/v
    costs 0."""
    if force_repeat:
        monkeypatch.setattr(block_mod, "sdpa_counts_gqa", lambda: False)
    block = make(n_kv_heads=2, mlp="swiglu", norm="rmsnorm", rope=True, bias=False, causal=True)
    T, C, hd, f = 10, 32, 8, 48
    counted = count_flops(lambda: block(torch.randn(1, T, C)), block).total
    q_o = 2 * 2 * T * C * C
    k_v = 2 * 2 * T * C * (2 * hd)
    attn = 2 * 2 * T * T * C
    mlp = 3 * 2 * T * C * f
    assert counted == q_o + k_v + attn + mlp


def test_gqa_equals_mha_with_repeated_kv_weights():
    """Query head i reads kv head i // group (Llama's grouping): a GQA block = an MHA block with k/v
    rows repeated."""
    gqa = make(n_kv_heads=2, rope=True, norm="rmsnorm", mlp="swiglu", causal=True)
    mha = Block(BlockConfig(d_model=32, n_heads=4, mlp_hidden=48, rope=True, norm="rmsnorm", mlp="swiglu", causal=True))
    sd = dict(gqa.state_dict())
    for name in ("k_proj", "v_proj"):
        for kind in ("weight", "bias"):
            w = sd[f"attn.{name}.{kind}"]  # (2·hd, …)
            sd[f"attn.{name}.{kind}"] = w.view(2, 8, *w.shape[1:]).repeat_interleave(2, dim=0).reshape(32, *w.shape[1:])
    mha.load_state_dict(sd)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(gqa(x), mha.eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kv", [None, 2, 1])
def test_head_subset_equals_masking_with_gqa(kv):
    block = make(n_kv_heads=kv, rope=True, causal=True)
    x = torch.randn(2, 6, 32)
    for idx in ([1, 3], [2, 0], [3], [0, 1, 2, 3]):
        mask = torch.zeros(2, 4)
        mask[:, idx] = 1
        got = block(x, head_idx=torch.tensor(idx))
        torch.testing.assert_close(got, block(x, head_mask=mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("idx", "groups"), [([0, 1], 1), ([2, 3], 1), ([0, 1, 2], 2), ([1, 2], 2), ([3], 1)])
def test_head_subset_computes_only_the_kv_groups_it_reads(idx, groups):
    """k/v rows are sliced to the groups the chosen heads use; block_flops assumes the fewest
    groups."""
    cfg_kw = dict(n_kv_heads=2, rope=True, norm="rmsnorm", mlp="swiglu", bias=False, causal=True)
    block = make(**cfg_kw)
    T, C, hd = 6, 32, 8
    counted = count_flops(lambda: block(torch.randn(1, T, C), head_idx=torch.tensor(idx)), block).total
    h = len(idx)
    expected = 2 * T * C * h * hd * 2 + 2 * 2 * T * C * groups * hd + 2 * 2 * T * T * h * hd + 3 * 2 * T * C * 48
    assert counted == expected
    analytic = block_flops(block.cfg, torch.tensor(T), torch.tensor(T), torch.tensor(h)).item()
    assert (analytic == counted) == (groups == math.ceil(h / 2))  # exact when the heads are packed into groups


def test_rope_matches_complex_rotation_of_half_split_pairs():
    """Pair (x[i], x[i + d/2]) is rotated by angle pos · θ^(-2i/d), as a complex multiplication."""
    hd, T, theta = 8, 5, 100.0
    x = torch.randn(1, 2, T, hd, dtype=torch.float64)
    cos, sin = rope_tables(torch.arange(T), hd, theta, torch.float64)
    got = apply_rope(x, cos, sin)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2 :])
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = z * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(got, torch.cat([rot.real, rot.imag], dim=-1), rtol=1e-6, atol=1e-6)


def test_rope_attention_depends_only_on_relative_positions():
    block = make(rope=True, n_kv_heads=2, causal=True)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(block(x), block(x, positions=torch.arange(6)), rtol=0, atol=0)
    torch.testing.assert_close(block(x), block(x, positions=torch.arange(6) + 37), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(block(x), block(x, positions=torch.arange(6) * 2), atol=1e-3)


def test_token_subset_keeps_original_positions():
    """A token subset with its original positions (Mixture-of-Depths) = full attention restricted to
    those keys."""
    block = make(rope=True, n_kv_heads=2, causal=True, norm="rmsnorm", mlp="swiglu")
    x = torch.randn(2, 8, 32)
    keep = torch.tensor([[0, 2, 3, 6], [1, 4, 5, 7]])  # (B, k) sorted positions per sample
    sub = torch.gather(x, 1, keep[:, :, None].expand(-1, -1, 32))  # (B, k, C)
    got = block(sub, positions=keep)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)  # full-length run that may only attend to the kept tokens
    for b in range(2):
        mask[b, 0, :, keep[b]] = True
    mask &= torch.ones(8, 8, dtype=torch.bool).tril()
    mask |= torch.eye(8, dtype=torch.bool)  # rows of dropped tokens stay finite (they are discarded)
    full = block(x, attn_mask=mask)
    torch.testing.assert_close(got, torch.gather(full, 1, keep[:, :, None].expand(-1, -1, 32)), rtol=1e-5, atol=1e-5)


def test_rmsnorm_and_swiglu_are_the_llama_formulas():
    block = make(norm="rmsnorm", mlp="swiglu", bias=False)
    x = torch.randn(3, 32)
    w = block.attn_norm.weight
    torch.testing.assert_close(block.attn_norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w)
    m = block.mlp
    want = (F.silu(x @ m.fc_gate.weight.T) * (x @ m.fc_in.weight.T)) @ m.fc_out.weight.T
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)


def test_default_block_is_unchanged():
    """GPT-2/ViT block: same parameters and names as before the Llama options existed."""
    block = Block(BlockConfig(d_model=32, n_heads=4, mlp_hidden=64))
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == {
        "attn_norm.weight": (32,),
        "attn_norm.bias": (32,),
        "attn.q_proj.weight": (32, 32),
        "attn.q_proj.bias": (32,),
        "attn.k_proj.weight": (32, 32),
        "attn.k_proj.bias": (32,),
        "attn.v_proj.weight": (32, 32),
        "attn.v_proj.bias": (32,),
        "attn.o_proj.weight": (32, 32),
        "attn.o_proj.bias": (32,),
        "mlp_norm.weight": (32,),
        "mlp_norm.bias": (32,),
        "mlp.fc_in.weight": (64, 32),
        "mlp.fc_in.bias": (64,),
        "mlp.fc_out.weight": (32, 64),
        "mlp.fc_out.bias": (32,),
    }


def test_llama_gpt_flops_tied_head_and_round_trip():
    cfg = GPTConfig(
        vocab_size=40, block_size=16, d_model=32, n_layers=2, n_heads=4, mlp_hidden=48, n_kv_heads=2,
        norm="rmsnorm", mlp="swiglu", bias=False, rope=True, rope_theta=1000.0, learned_positions=False,
        tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    assert model.pos_embed is None and model.readout.head.weight is model.tok_embed.weight
    assert model.readout.head.bias is None and isinstance(model.readout.norm, torch.nn.RMSNorm)
    ids = torch.randint(0, 40, (3, 16))
    counted = count_flops(lambda: model(ids), model).total
    assert counted == model.flops(model.dense_trace(ids), (16,)).sum().item()
    clone = GPT(cfg).eval()
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone(ids), model(ids), rtol=0, atol=0)


def test_bad_llama_options_are_rejected_with_advice():
    with pytest.raises(ValueError, match="must be >= 1 and divide n_heads"):
        BlockConfig(d_model=36, n_heads=9, n_kv_heads=2)
    with pytest.raises(ValueError, match="norm must be one of"):
        BlockConfig(norm="batchnorm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mlp must be one of"):
        BlockConfig(mlp="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="even head dim"):
        BlockConfig(d_model=36, n_heads=12, rope=True)
