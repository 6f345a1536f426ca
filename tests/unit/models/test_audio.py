"""The audio encoder: shapes, frame stacking and analytic FLOPs equal to FlopCounterMode's count."""

from __future__ import annotations

import pytest
import torch

from dynbench.harness.flops import count_flops
from dynbench.models.audio import AudioConfig, AudioEncoder, stack_frames


@pytest.mark.parametrize(
    "cfg",
    [
        AudioConfig(n_mels=40, n_frames=100, stack=4, d_model=32, n_layers=2, n_heads=4),
        AudioConfig(n_mels=8, n_frames=12, stack=3, n_classes=5, d_model=24, n_layers=3, n_heads=3),
        AudioConfig(n_mels=16, n_frames=10, stack=1, d_model=16, n_layers=1, n_heads=2),
    ],
)
def test_counted_flops_equal_analytic(cfg):
    torch.manual_seed(0)
    model = AudioEncoder(cfg).eval()
    inputs = torch.randn(3, cfg.n_frames, cfg.n_mels)
    counted = count_flops(lambda: model(inputs), model).total
    analytic = model.flops(model.dense_trace(inputs), tuple(inputs.shape[1:])).sum().item()
    assert counted == analytic
    assert counted > 0
    assert model.dense_flops(tuple(inputs.shape[1:])) * 3 == analytic


def test_shapes_and_tokens():
    cfg = AudioConfig(n_mels=40, n_frames=100, stack=4, d_model=32, n_layers=2, n_heads=4)
    model = AudioEncoder(cfg).eval()
    x = torch.randn(5, 100, 40)
    assert model.embed(x).shape == (5, 26, 32)
    assert model(x).shape == (5, 10)
    assert model.n_tokens((100, 40)) == 26
    assert model.n_blocks == 2 and model.n_heads == 4
    assert model.embed_flops((100, 40)) == 2 * 25 * 160 * 32


def test_stack_frames_concatenates_consecutive_frames():
    x = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)  # (B, T, M)
    y = stack_frames(x, 3)
    assert y.shape == (2, 2, 6)
    assert y[0, 1].tolist() == x[0, 3:6].reshape(-1).tolist()


def test_bad_inputs_are_rejected_with_advice():
    with pytest.raises(ValueError, match="not a multiple of stack"):
        AudioConfig(n_frames=100, stack=3)
    model = AudioEncoder(AudioConfig(d_model=16, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match=r"expects \(B, 100, 40\)"):
        model(torch.randn(2, 98, 40))
