"""PPO for optimal-stopping policies: over steps 0 … S-1 a policy continues or stops at each.

Used by :mod:`dynbench.methods.transformer_inverse` (steps are the backbone's fold points), and kept
apart so it can be tested on toy stopping problems with a known optimum.

An episode is one sample. Before its ``first`` decision step it always continues; from there on, at
step ``t < S - 1`` the policy stops (terminal reward ``quality[t]``) or continues (reward
``-cost[t]``, the price of the compute up to step ``t + 1``). Reaching the last step ends the
episode with ``quality[S - 1]``. Since the observations at each step do not depend on the actions (a
frozen backbone's hidden states), the episodes are precomputed tensors and a rollout is a few tensor
operations. PPO with the clipped surrogate (Schulman et al., "Proximal Policy Optimization
Algorithms", https://arxiv.org/abs/1707.06347) and generalised advantage estimation (Schulman et
al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
https://arxiv.org/abs/1506.02438) trains the policy; a recurrent policy is re-run over whole
episodes (teacher forcing), which is exact because its inputs do not depend on earlier actions. The
update is Adam at a constant rate through the one training loop's optimizer
(:class:`~dynbench.models.training.ScheduledOptimizer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.models.training import ParamGroup, ScheduledOptimizer, constant
from dynbench.validation import check_range


@dataclass(frozen=True)
class PPOConfig:
    """PPO recipe: the PPO paper's clip and GAE values; sizes for thousands of short episodes."""

    iterations: int = 40  # rollout → update rounds; a few thousand episodes of <= 6 steps converge in ~30
    epochs: int = 4  # passes over each rollout's episodes (PPO paper: 3–10)
    minibatch: int = 256  # episodes per gradient step
    lr: float = 3e-3  # constant Adam learning rate: the policy is a tiny recurrent net
    clip: float = 0.2  # clipped-surrogate ε (PPO paper)
    gae_lambda: float = 0.95  # GAE λ (PPO paper)
    gamma: float = 1.0  # no discount: episodes are a handful of steps and the reward is the whole trade-off
    entropy_coef: float = 0.01  # keeps both actions explored early on
    value_coef: float = 0.5  # weight of the critic's squared error
    max_grad_norm: float = 1.0  # global gradient-norm clip

    def __post_init__(self) -> None:
        for name in ("iterations", "epochs", "minibatch"):
            check_range(f"PPOConfig.{name}", getattr(self, name), 1, advice="Use e.g. 4.")
        for name in ("lr", "clip", "max_grad_norm"):
            check_range(f"PPOConfig.{name}", getattr(self, name), 0, low_open=True, advice="Use the default.")
        for name in ("gae_lambda", "gamma"):
            check_range(f"PPOConfig.{name}", getattr(self, name), 0, 1, advice="Use the default.")
        for name in ("entropy_coef", "value_coef"):
            check_range(f"PPOConfig.{name}", getattr(self, name), 0, advice="Use 0 to disable it.")


@dataclass
class StoppingEpisodes:
    """A batch of stopping problems with ``S`` steps each.

    Attributes:
        quality: ``(N, S)`` terminal reward when the episode stops at step ``t``.
        cost: ``(N, S)`` price of continuing from step ``t`` to ``t + 1`` (the last column is
            unused).
        first: ``(N,)`` long, the first step at which the policy decides; earlier steps always
            continue.
        context: per-episode tensors ``(N, ...)`` the policy reads (observations, prices); indexed
            with the rest.
    """

    quality: Tensor
    cost: Tensor
    first: Tensor
    context: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.quality.shape[0])

    def select(self, index: Tensor) -> StoppingEpisodes:
        """The episodes at ``index``."""
        return StoppingEpisodes(
            self.quality[index], self.cost[index], self.first[index], {k: v[index] for k, v in self.context.items()}
        )


PolicyFn = Callable[[StoppingEpisodes], tuple[Tensor, Tensor]]
"""Episodes → ``(continue logits (N, S), state values (N, S))`` for every step of every episode."""


@dataclass
class Rollout:
    """Sampled episodes as transitions on the ``(N, S)`` step grid.

    Attributes:
        go_on: ``(N, S)`` bool, the action taken: continue (True) or stop.
        valid: ``(N, S)`` bool, steps where the policy acted (``first <= t <=`` the episode's last
            decision).
        done: ``(N, S)`` bool, the episode's last transition.
        rewards: ``(N, S)`` reward of each transition (0 where not valid).
        stop: ``(N,)`` long, the step whose output the episode ends with.
    """

    go_on: Tensor
    valid: Tensor
    done: Tensor
    rewards: Tensor
    stop: Tensor


def first_stop(go_on: Tensor, first: Tensor) -> Tensor:
    """``(N,)`` each episode's last step: the first ``t >= first``, ``t < S - 1``, not ``go_on``.

    Args:
        go_on: ``(N, S)`` bool decisions to continue at each step (the last column is ignored).
        first: ``(N,)`` first step at which decisions count.
    """
    N, S = go_on.shape
    steps = torch.arange(S, device=go_on.device)  # (S,)
    stops = (~go_on) & (steps >= first[:, None]) & (steps < S - 1)  # (N, S)
    when = torch.where(stops, steps.expand(N, S), torch.full_like(stops, S - 1, dtype=torch.long))  # (N, S)
    return when.amin(dim=1)  # (N,)


def rollout(logits: Tensor, episodes: StoppingEpisodes, generator: torch.Generator) -> Rollout:
    """Sample continue/stop at every step from ``sigmoid(logits)``; episodes become transitions."""
    N, S = logits.shape
    u = torch.rand((N, S), generator=generator, dtype=torch.float32).to(logits.device)  # (N, S)
    go_on = u < torch.sigmoid(logits.detach().float())  # (N, S)
    stop = first_stop(go_on, episodes.first)  # (N,)
    steps = torch.arange(S, device=logits.device)[None, :]  # (1, S)
    last = torch.clamp(stop, max=S - 2)[:, None]  # (N, 1) last decision step
    valid = (steps >= episodes.first[:, None]) & (steps <= last) & (episodes.first[:, None] <= S - 2)  # (N, S)
    go_on = go_on & (steps < stop[:, None])  # the action actually taken at each valid step
    done = valid & (steps == last)  # (N, S)
    cost = episodes.cost.to(logits.dtype)
    quality = episodes.quality.to(logits.dtype)
    rewards = torch.where(go_on, -cost, quality)  # (N, S) continue pays, stop collects quality[t]
    at_end = (stop == S - 1)[:, None] & done  # continued past the last decision: the end's quality
    rewards = rewards + at_end * quality[:, S - 1 : S]
    return Rollout(go_on, valid, done, rewards * valid, stop)


def gae(
    rewards: Tensor, values: Tensor, valid: Tensor, done: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over padded episodes.

    ``A_t = δ_t + γλ·A_{t+1}`` and ``δ_t = r_t + γ·V_{t+1} − V_t`` within an episode; nothing flows
    across ``done`` (a terminal transition) or into invalid steps.

    Args:
        rewards: ``(N, S)`` transition rewards.
        values: ``(N, S)`` critic values of each step's state.
        valid: ``(N, S)`` bool, steps that are transitions.
        done: ``(N, S)`` bool, each episode's last transition.
        gamma: discount γ.
        lam: GAE λ.

    Returns:
        ``(advantages, returns)``, each ``(N, S)``, 0 where not valid;
        ``returns = advantages + values``.
    """
    N, S = rewards.shape
    adv = torch.zeros_like(rewards)  # (N, S)
    next_adv = torch.zeros(N, dtype=rewards.dtype, device=rewards.device)  # (N,)
    next_value = torch.zeros_like(next_adv)
    for t in range(S - 1, -1, -1):
        carry = (~done[:, t]).to(rewards.dtype)  # (N,) 0 at a terminal transition
        delta = rewards[:, t] + gamma * next_value * carry - values[:, t]
        a = delta + gamma * lam * next_adv * carry
        a = a * valid[:, t]
        adv[:, t] = a
        next_adv = a
        next_value = values[:, t] * valid[:, t]
    returns = (adv + values) * valid
    return adv, returns


def action_log_prob(logits: Tensor, go_on: Tensor) -> Tensor:
    """``(N, S)`` log-probability of the action taken, Bernoulli(continue = sigmoid(logit))."""
    return torch.where(go_on, F.logsigmoid(logits), F.logsigmoid(-logits))


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """``(N, S)`` entropy of Bernoulli(sigmoid(logits)) in nats."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def train_stopping_policy(
    policy_fn: PolicyFn,
    params: list[nn.Parameter],
    make_episodes: Callable[[torch.Generator], StoppingEpisodes],
    cfg: PPOConfig,
    *,
    seed: int,
) -> list[float]:
    """Train a stopping policy with PPO; deterministic given ``seed``.

    Args:
        policy_fn: episodes → continue logits and values at every step (the policy and critic,
            differentiable).
        params: the parameters of ``policy_fn`` to train.
        make_episodes: a fresh batch of episodes per iteration (e.g. with newly sampled prices),
            drawing any randomness from the generator it is given.
        cfg: the PPO recipe.
        seed: seeds action sampling, episode shuffling and ``make_episodes``.

    Returns:
        The mean episode return of every iteration's rollout (sampled actions), for logs and tests.
    """
    gen = torch.Generator().manual_seed(seed)
    # Adam at a constant rate: AdamW without weight decay is Adam, step for step
    opt = ScheduledOptimizer(
        [ParamGroup(params)], constant(cfg.lr), weight_decay=0.0, grad_clip=cfg.max_grad_norm, betas=(0.9, 0.999)
    )
    history: list[float] = []
    for _ in range(cfg.iterations):
        episodes = make_episodes(gen)
        with torch.no_grad():
            logits, values = policy_fn(episodes)  # (N, S) each
        ro = rollout(logits, episodes, gen)
        adv, returns = gae(ro.rewards, values.detach(), ro.valid, ro.done, gamma=cfg.gamma, lam=cfg.gae_lambda)
        old_logp = action_log_prob(logits, ro.go_on)  # (N, S)
        history.append(float(ro.rewards.sum(dim=1).mean()))
        n_valid = int(ro.valid.sum())
        if n_valid == 0:  # every episode starts at its last step: nothing to decide
            continue
        mean = adv[ro.valid].mean()
        std = adv[ro.valid].std() if n_valid > 1 else adv.new_tensor(1.0)
        adv = torch.where(ro.valid, (adv - mean) / (std + 1e-8), adv)  # normalised over real transitions
        N = len(episodes)
        for _ in range(cfg.epochs):
            order = torch.randperm(N, generator=gen)
            for i in range(0, N, cfg.minibatch):
                idx = order[i : i + cfg.minibatch]
                valid = ro.valid[idx]
                n = valid.sum()
                if n == 0:
                    continue
                new_logits, new_values = policy_fn(episodes.select(idx))  # (n, S) each
                logp = action_log_prob(new_logits, ro.go_on[idx])
                ratio = torch.exp(logp - old_logp[idx])
                a = adv[idx]
                surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip) * a)
                value_err = (new_values - returns[idx]) ** 2
                entropy = bernoulli_entropy(new_logits)
                per_step = -surrogate + cfg.value_coef * value_err - cfg.entropy_coef * entropy  # (n, S)
                opt.step((per_step * valid).sum() / n)
    return history
