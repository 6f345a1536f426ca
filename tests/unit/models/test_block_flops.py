"""The analytic FLOP count of the backbones equals FlopCounterMode's (attention included)."""

from __future__ import annotations

import pytest
import torch

from dynbench.harness.flops import count_flops
from dynbench.models.block import Block, BlockConfig, block_flops
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.vit import ViT, ViTConfig


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        (
            ViT(ViTConfig(image_size=8, patch_size=2, d_model=32, n_layers=3, n_heads=4)),
            torch.randn(5, 1, 8, 8),
        ),
        (
            ViT(ViTConfig(image_size=12, patch_size=4, channels=3, d_model=48, n_layers=2, n_heads=3)),
            torch.randn(2, 3, 12, 12),
        ),
        (
            GPT(GPTConfig(vocab_size=50, block_size=32, d_model=32, n_layers=2, n_heads=2)),
            torch.randint(0, 50, (3, 32)),
        ),
    ],
)
def test_counted_flops_equal_analytic(model, inputs):
    model.eval()
    counted = count_flops(lambda: model(inputs), model).total
    analytic = model.flops(model.dense_trace(inputs), tuple(inputs.shape[1:])).sum().item()
    assert counted == analytic
    assert counted > 0


def test_attention_is_counted_on_cpu():
    """Without the registered formula CPU attention counts 0: the block total would miss 4·T²·C per
    sample."""
    cfg = BlockConfig(d_model=32, n_heads=4, mlp_hidden=64)
    block = Block(cfg).eval()
    x = torch.randn(2, 10, 32)
    counted = count_flops(lambda: block(x), block).total
    T, C = 10, 32
    matmuls_only = 2 * (2 * T * C * C * 4 + 2 * T * C * 64 * 2)
    assert counted - matmuls_only == 2 * (4 * T * T * C)


def test_head_subset_costs_only_its_heads():
    cfg = BlockConfig(d_model=32, n_heads=4, mlp_hidden=64)
    block = Block(cfg).eval()
    x = torch.randn(1, 6, 32)
    idx = torch.tensor([0, 2])
    counted = count_flops(lambda: block(x, head_idx=idx), block).total
    expected = block_flops(cfg, torch.tensor(6), torch.tensor(6), torch.tensor(2)).item()
    assert counted == expected


def test_head_subset_equals_masking_the_other_heads():
    torch.manual_seed(0)
    cfg = BlockConfig(d_model=32, n_heads=4, mlp_hidden=64)
    block = Block(cfg).eval()
    x = torch.randn(2, 6, 32)
    idx = torch.tensor([1, 3])
    mask = torch.tensor([[0.0, 1, 0, 1]] * 2)
    torch.testing.assert_close(block(x, head_idx=idx), block(x, head_mask=mask), rtol=1e-5, atol=1e-6)


def test_delta_is_the_residual_update():
    torch.manual_seed(0)
    block = Block(BlockConfig(d_model=32, n_heads=4, mlp_hidden=64)).eval()
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(x + block.delta(x), block(x), rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_rejected_with_advice():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        BlockConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTConfig(image_size=8, patch_size=3)
    gpt = GPT(GPTConfig(block_size=8))
    with pytest.raises(ValueError, match="exceeds block_size"):
        gpt(torch.zeros(1, 9, dtype=torch.long))
