from __future__ import annotations

import pytest
import torch

from dynbench.methods._stop_policy import CONFIDENCE_STATS, StopPolicy, confidence_stats, price


def test_price_is_zero_at_the_full_budget_and_quadratic_below() -> None:
    assert price(1.0, 2.0) == 0.0
    assert price(0.0, 2.0) == 2.0
    assert price(0.5, 2.0) == pytest.approx(0.5)


def test_confidence_stats_of_pooled_and_token_outputs() -> None:
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    stats = confidence_stats(logits)
    assert stats.shape == (2, CONFIDENCE_STATS)
    torch.testing.assert_close(stats[0], torch.tensor([0.5, 0.0, 0.6931472]))  # uniform: no margin, log 2
    assert stats[1, 0] > 0.99 and stats[1, 2] < 1e-6
    tokens = torch.stack([logits, logits], dim=1)  # (B, S, V): position means
    torch.testing.assert_close(confidence_stats(tokens), stats)


def test_the_continue_logit_never_rises_with_the_price() -> None:
    torch.manual_seed(0)
    policy = StopPolicy(d_model=8, n_paths=3, proj_dim=4, hidden=16, price_floor=1e-4)
    h = torch.randn(64, 16)
    prices = [0.0, 1e-4, 1e-2, 0.25, 1.0]
    logits = torch.stack([policy.logit(h, lam) for lam in prices])  # (5, 64)
    assert bool((logits[1:] <= logits[:-1]).all())
    as_tensor = policy.logit(h, torch.full((64,), 0.25))  # the training path (one price per episode)
    torch.testing.assert_close(as_tensor, logits[3])


def test_unroll_matches_stepwise_forward() -> None:
    torch.manual_seed(1)
    policy = StopPolicy(d_model=8, n_paths=3, proj_dim=4, hidden=16, price_floor=1e-4)
    pooled, conf = torch.randn(5, 3, 8), torch.rand(5, 3, CONFIDENCE_STATS)
    start = torch.tensor([0, 1, 2, 0, 1])
    logits, values = policy.unroll(pooled, conf, start, torch.full((5,), 0.1))
    assert logits.shape == values.shape == (5, 3)
    h = torch.zeros(5, 16)
    for k in range(3):
        h, go = policy(pooled[:, k], conf[:, k], start, k, h, 0.1)
        torch.testing.assert_close(go, logits[:, k])
    assert policy.step_flops() == 2.0 * (8 * 4 + (4 + 3 + 3 + 2) * 48 + 16 * 48 + 16 * 2)
