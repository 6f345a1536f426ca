from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from dynbench.methods._ppo import (
    PPOConfig,
    StoppingEpisodes,
    first_stop,
    gae,
    rollout,
    train_stopping_policy,
)

BIG = 30.0  # a logit this large makes a Bernoulli draw certain in float32


def test_gae_matches_a_hand_computed_episode() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    done = torch.tensor([[False, False, True]])
    adv, ret = gae(rewards, values, valid, done, gamma=1.0, lam=0.95)
    # δ2 = 3 − 1.5 = 1.5; δ1 = 2 + 1.5 − 1 = 2.5; δ0 = 1 + 1 − 0.5 = 1.5
    a2 = 1.5
    a1 = 2.5 + 0.95 * a2
    a0 = 1.5 + 0.95 * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2]]))
    torch.testing.assert_close(ret, adv + values)


def test_gae_stops_at_done_and_ignores_padding() -> None:
    rewards = torch.tensor([[0.0, 5.0, 7.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[9.0, 1.0, 2.0, 9.0], [0.5, 9.0, 9.0, 9.0]])
    valid = torch.tensor([[False, True, True, False], [True, False, False, False]])
    done = torch.tensor([[False, False, True, False], [True, False, False, False]])
    adv, ret = gae(rewards, values, valid, done, gamma=0.9, lam=0.5)
    a2 = 7.0 - 2.0
    a1 = (5.0 + 0.9 * 2.0 - 1.0) + 0.9 * 0.5 * a2
    expected = torch.tensor([[0.0, a1, a2, 0.0], [2.0 - 0.5, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    assert (ret[~valid] == 0).all()


def test_first_stop_respects_the_first_decision_step() -> None:
    go_on = torch.tensor([[False, True, False, True], [True, True, True, True], [False, False, False, False]])
    first = torch.tensor([1, 0, 3])
    # row 0: step 0 is forced on, stops at 2; row 1 never stops → last step; row 2 starts at the
    # last step
    assert first_stop(go_on, first).tolist() == [2, 3, 3]


def test_rollout_rewards_for_certain_actions() -> None:
    quality = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]])
    cost = torch.full((3, 4), 0.05)
    first = torch.tensor([0, 1, 0])
    logits = torch.tensor([[BIG, -BIG, BIG, BIG], [-BIG, BIG, -BIG, BIG], [BIG, BIG, BIG, BIG]])
    ro = rollout(logits, StoppingEpisodes(quality, cost, first), torch.Generator().manual_seed(0))
    assert ro.stop.tolist() == [1, 2, 3]
    assert ro.valid.tolist() == [
        [True, True, False, False],
        [False, True, True, False],  # step 0 is before the first decision
        [True, True, True, False],
    ]
    expected = torch.tensor([[-0.05, 0.2, 0, 0], [0, -0.05, 0.3, 0], [-0.05, -0.05, -0.05 + 4.0, 0]])
    torch.testing.assert_close(ro.rewards, expected)
    assert ro.done.tolist() == [[False, True, False, False], [False, False, True, False], [False, False, True, False]]


class TablePolicy(nn.Module):
    """Per-step logits and values (optionally per observed type): the simplest learnable stopping
    policy."""

    def __init__(self, steps: int, types: int = 1) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(types, steps))
        self.values = nn.Parameter(torch.zeros(types, steps))

    def forward(self, ep: StoppingEpisodes) -> tuple[Tensor, Tensor]:
        kind = ep.context["type"]
        return self.logits[kind], self.values[kind]


def greedy(policy: TablePolicy, ep: StoppingEpisodes) -> Tensor:
    with torch.no_grad():
        logits, _ = policy(ep)
    return first_stop(logits > 0, ep.first)


def test_ppo_learns_the_best_stop_of_a_chain() -> None:
    quality = torch.tensor([0.1, 0.3, 0.9, 0.2, 0.0]).expand(256, 5)
    episodes = StoppingEpisodes(quality, torch.zeros(256, 5), torch.zeros(256, dtype=torch.long))
    episodes.context["type"] = torch.zeros(256, dtype=torch.long)
    policy = TablePolicy(5)
    cfg = PPOConfig(iterations=30, lr=0.05, minibatch=128)
    history = train_stopping_policy(policy, list(policy.parameters()), lambda g: episodes, cfg, seed=0)
    assert (greedy(policy, episodes) == 2).all()
    assert history[-1] > 0.8 > history[0]


def test_ppo_learns_stops_that_depend_on_the_observation_and_the_price() -> None:
    """Type 0 is best stopped at step 1, type 1 at step 3, once continuing costs something."""
    N, S = 512, 5
    kind = torch.arange(N) % 2
    quality = torch.where(
        kind[:, None] == 0, torch.tensor([0.2, 0.8, 0.8, 0.8, 0.8]), torch.tensor([0.0, 0.1, 0.2, 0.9, 0.9])
    )
    cost = torch.full((N, S), 0.05)
    episodes = StoppingEpisodes(quality, cost, torch.zeros(N, dtype=torch.long), {"type": kind})
    policy = TablePolicy(S, types=2)
    cfg = PPOConfig(iterations=40, lr=0.05, minibatch=256)
    train_stopping_policy(policy, list(policy.parameters()), lambda g: episodes, cfg, seed=1)
    stops = greedy(policy, episodes)
    assert (stops[kind == 0] == 1).all() and (stops[kind == 1] == 3).all()


def test_training_is_deterministic_given_the_seed() -> None:
    quality = torch.rand(64, 4, generator=torch.Generator().manual_seed(3))
    episodes = StoppingEpisodes(quality, torch.full((64, 4), 0.01), torch.zeros(64, dtype=torch.long))
    episodes.context["type"] = torch.zeros(64, dtype=torch.long)
    runs = []
    for _ in range(2):
        policy = TablePolicy(4)
        cfg = PPOConfig(iterations=3, lr=0.05)
        runs.append(train_stopping_policy(policy, list(policy.parameters()), lambda g: episodes, cfg, seed=5))
        runs.append(policy.logits.detach().clone())
    assert runs[0] == runs[2] and torch.equal(runs[1], runs[3])


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("iterations", 0, "iterations must be >= 1"),
        ("minibatch", 0, "minibatch must be >= 1"),
        ("clip", 0.0, "clip must be > 0"),
        ("lr", -1.0, "lr must be > 0"),
        ("gae_lambda", 1.5, r"gae_lambda must be in \[0, 1\]"),
        ("gamma", -0.1, r"gamma must be in \[0, 1\]"),
        ("entropy_coef", -1.0, "entropy_coef must be >= 0"),
    ],
)
def test_config_errors(option: str, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PPOConfig(**{option: value})
