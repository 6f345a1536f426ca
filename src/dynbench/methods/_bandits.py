"""The bandit rules of DHT (arXiv 2312.03038, reconstructed), kept apart to be tested alone.

UCB1 over arms, combinatorial Thompson sampling over heads with Beta posteriors, exploitation, a
cost-matched random allocation, and the k-means that makes the contexts: pure functions on the
statistics tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def ucb_scores(reward_sum: Tensor, count: Tensor, kappa: float) -> Tensor:
    """``(A,)`` UCB1 indices ``Q̂ + κ·sqrt(2 ln N / n)``; ``+inf`` for arms never played.

    Args:
        reward_sum: ``(A,)`` summed rewards per arm.
        count: ``(A,)`` observations per arm.
        kappa: exploration scale κ.
    """
    total = float(count.sum())
    played = count > 0
    mean = reward_sum / count.clamp(min=1)  # (A,)
    bonus = kappa * torch.sqrt(2 * math.log(max(total, 1.0)) / count.clamp(min=1))  # (A,)
    return torch.where(played, mean + bonus, torch.full_like(mean, math.inf))


def ucb_select(reward_sum: Tensor, count: Tensor, kappa: float) -> int:
    """The arm to play: the first never-played arm, else the largest UCB index (ties: lowest)."""
    unplayed = (count == 0).nonzero()
    if len(unplayed):
        return int(unplayed[0, 0])
    return int(torch.argmax(ucb_scores(reward_sum, count, kappa)))


def ucb_update(reward_sum: Tensor, count: Tensor, arm: int, rewards: Tensor) -> None:
    """Add one observation per sample of ``rewards`` (``(G,)``) to ``arm``, in place."""
    count[arm] += len(rewards)
    reward_sum[arm] += float(rewards.double().sum())


def thompson_units(alpha: Tensor, beta: Tensor, n_units: int, rng: np.random.Generator) -> Tensor:
    """Combinatorial Thompson sampling: per layer, the ``n_units`` units of largest θ ~ Beta(α, β).

    Args:
        alpha: ``(a, U)`` posterior α of the executed layers' units.
        beta: ``(a, U)`` posterior β.
        n_units: units to keep per layer.
        rng: the draw's random generator.

    Returns:
        ``(a, n_units)`` long, each row ascending.
    """
    theta = rng.beta(alpha.double().cpu().numpy(), beta.double().cpu().numpy())  # (a, U)
    top = np.argsort(-theta, axis=1, kind="stable")[:, :n_units]  # (a, n_units)
    return torch.from_numpy(np.sort(top, axis=1)).long()


def beta_update(alpha: Tensor, beta: Tensor, units: Tensor, rewards: Tensor) -> None:
    """Shared-outcome update of the units ``(a, u)`` (rows: layers): ``α += Σr, β += Σ(1 − r)``."""
    total = float(rewards.double().sum())
    units = units.to(alpha.device)
    rows = torch.arange(units.shape[0], device=alpha.device)[:, None].expand_as(units)  # (a, u)
    alpha[rows, units] += total
    beta[rows, units] += len(rewards) - total


def exploit_arm(reward_sum: Tensor, count: Tensor, allowed: Tensor) -> int | None:
    """The allowed, played arm of largest mean reward (ties: lowest index), else ``None``."""
    ok = allowed & (count > 0)
    if not bool(ok.any()):
        return None
    mean = torch.where(ok, reward_sum / count.clamp(min=1), torch.full_like(reward_sum, -math.inf))  # (A,)
    return int(torch.argmax(mean))


def exploit_units(alpha: Tensor, beta: Tensor, n_units: int) -> Tensor:
    """``(L, U)`` bool: per layer the ``n_units`` units of largest mean α/(α+β) (ties: lowest)."""
    mean = alpha / (alpha + beta)  # (L, U)
    top = torch.argsort(-mean, dim=1, stable=True)[:, :n_units]  # (L, n_units)
    mask = torch.zeros_like(mean, dtype=torch.bool)
    return mask.scatter_(1, top, True)


def tilted_distribution(costs: Tensor, target: float) -> Tensor:
    """The maximum-entropy distribution over arms with mean cost ``target``: ``p ∝ exp(−τ·cost)``.

    τ is found by bisection; a target at or beyond the cheapest/costliest arm puts all mass there.

    Args:
        costs: ``(A,)`` cost of each arm.
        target: the mean cost wanted.

    Returns:
        ``(A,)`` float64 probabilities.
    """
    costs = costs.double()
    lo, hi = float(costs.min()), float(costs.max())
    if target >= hi or hi - lo <= 0:
        p = (costs == hi).double()
        return p / p.sum()
    if target <= lo:
        p = (costs == lo).double()
        return p / p.sum()
    z = (costs - lo) / (hi - lo)  # (A,) in [0, 1]
    goal = (target - lo) / (hi - lo)
    t_lo, t_hi = -2000.0, 2000.0  # mean(z) falls from ~1 to ~0 over this range of τ
    for _ in range(200):
        tau = 0.5 * (t_lo + t_hi)
        p = torch.softmax(-tau * z, dim=0)
        if float((p * z).sum()) > goal:
            t_lo = tau
        else:
            t_hi = tau
    return torch.softmax(-0.5 * (t_lo + t_hi) * z, dim=0)


def kmeans(points: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """k-means++ initialisation, then Lloyd iterations (float64); deterministic given ``generator``.

    Args:
        points: ``(N, C)`` points, N ≥ k.
        k: clusters.
        iters: most Lloyd iterations (stops when the centres stop moving).
        generator: seeds the k-means++ draws.

    Returns:
        ``(k, C)`` float64 centres (an empty cluster keeps its centre).
    """
    x = points.double()
    first = int(torch.randint(len(x), (1,), generator=generator, device=generator.device))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(dim=1)  # (N,) squared distance to the nearest centre so far
    for _ in range(1, k):
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        pick = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        centres.append(x[pick])
        d2 = torch.minimum(d2, ((x - x[pick]) ** 2).sum(dim=1))
    c = torch.stack(centres)  # (k, C)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(dim=1)  # (N,)
        sums = torch.zeros_like(c).index_add_(0, assign, x)  # (k, C)
        counts = torch.bincount(assign, minlength=k).double()  # (k,)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)  # (k, C)
        if torch.equal(new, c):
            break
        c = new
    return c
