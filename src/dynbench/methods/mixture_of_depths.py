"""Mixture-of-Depths: per routed block, only the top-k tokens of each sequence are processed.

Paper: Raposo et al., "Mixture-of-Depths: Dynamically allocating compute in transformer-based language models",
https://arxiv.org/abs/2404.02258. There is no official code; two unofficial ones (astramind-ai/Mixture-of-depths,
sramshetty/mixture-of-depths) were read to avoid their bugs: a strict ``>`` against the k-th score (k−1 tokens),
the residual scaled by ``r``, the first k positions gathered instead of the top-k, truncated rotary positions, one
router shared by all blocks, and a Python loop over samples.

Mechanism (the paper's): every other block is *routed* (blocks 1, 3, 5 …; ``route_every=1`` routes every block,
the paper's worse ablation). A routed block has a router ``Linear(d → 1)`` giving each token a scalar weight
``r``; expert-choice routing keeps the ``k`` tokens of each sequence with the largest ``r`` (``torch.topk``, so
exactly k, whatever the ties), sorted back into their original order. Only they run the block's residual-free update
``f`` (:meth:`~dynbench.models.block.Block.delta`: attention among the selected tokens only — under the causal mask
of their original positions for decoders, unmasked for encoders — and the MLP), and
``x_out = x + r · f(x_sel)`` is scattered back; the other tokens pass unchanged. Multiplying by ``r`` puts the
router on the gradient path, its only training signal. ``k = ceil(c · T)`` for capacity ``c`` (at least 1), so
0.125 of 128 tokens is 16. Rotary models get the selected tokens' original positions; learned positions were added
at the embedding. Shapes are static: gathers and scatters are batched index ops (:mod:`._token_gather`).

Causal sampling: top-k over a sequence looks at future tokens, so each routed block also has the paper's auxiliary
predictor, a small MLP (``d → d/2 → 1``, SiLU) on the *detached* block input, trained with BCE on top-k membership
(it cannot change the language model). With ``routing="predictor"`` a token runs the block iff the predictor says
so (logit > 0), a causal rule; the counts then vary per sample and a batch is padded to its largest count, which
the trace charges. ``routing="auto"`` uses the predictor for causal (decoder) backbones — top-k perplexity would
let routing peek at the future — and top-k for encoders. :func:`generate` / :class:`RoutedDecoder` decode
with a KV cache in which a token a routed block skips writes no keys or values at that block.

Design choices (ours, documented because the paper leaves them open or the contract needs them):

- *Capacity 1.0 is the dense backbone.* With every token selected there is nothing to route, and the paper's
  baseline is the vanilla transformer, so budget 1.0 runs the wrapped backbone itself (exactly dense, as the
  contract requires). Below 1.0 each capacity is its own trained model (the paper trains one model per capacity),
  all kept in the method's state dict; a budget equals a trained capacity. A deployment of one capacity holds only
  its own model (:meth:`MixtureOfDepthsModel.operating_modules`), which ``peak_mem_bytes`` counts; the sum over
  capacities is ``resident_bytes``.
- *Raw router weight with a bias starting at 1* (``weight="raw"``, the paper's equation uses ``r`` itself;
  ``"sigmoid"`` is the common alternative). The bias does not change which tokens win the top-k, only the update's
  scale, and starting it at 1 makes a routed block start as the plain block on its chosen tokens — the paper's
  router is "typically without bias", an initialisation detail we changed so fine-tuning starts from dense.
- *Text from scratch, vision and speech fine-tuned* (``init="auto"``): a task that trains its backbone from scratch
  with a text recipe gets MoD trained from scratch, from the same initial weights and data order as its dense
  backbone, for the dense recipe's training FLOPs (isoFLOP: training ≈ 3 × forward FLOPs, routers and predictors
  included, so cheaper steps buy more of them). Other tasks fine-tune from the dense weights for
  ``finetune_fraction`` (0.2) of the dense recipe's training FLOPs, every parameter trainable.
- *CLS always kept* for encoders whose readout reads token 0; it counts toward k, so a routed block still runs
  exactly k tokens.
- *Predictor calibration* (optional, off by default as in the paper): after the joint training, the predictors of
  a decoder train alone for a ``predictor_fraction`` of the training FLOPs on the finished model (network and
  routers frozen, top-k labels fixed); jointly they chase routers that still move. The phase is paid from the
  same isoFLOP allowance, which is why it is off: on shakespeare at capacity 0.125 it bought 0.4 points of
  agreement (95.8% → 96.2%) for 10% fewer joint steps and 0.14 ppl (5.71 → 5.85).
- *Cost of fitting*: one model per capacity, so the default fit is three trainings; on ``shakespeare`` that is
  three times the dense recipe's training FLOPs (``capacities=0.125`` trains only the paper's default).
- *Random routing* (``router="random"``): the paper's stochastic baseline — top-k over Gaussian-random routing
  weights, which also scale the update (``x + g · f(x_sel)``, ``g ~ N(0, 1)``: the paper's update with random
  weights in place of the router's; a fixed seed per block at evaluation, so results repeat). Random routing is
  content-independent, hence causal, so it always uses top-k. ``random_scale="learned"`` keeps the router's
  learned ``r`` as the scale (v2's baseline), so only *which* tokens run differs from learned routing — but the
  model can then switch routed blocks off by driving ``r`` to 0, and on shakespeare's compute-starved recipe it
  does: that baseline trains as a 2-block model for more steps and ties learned routing (5.709 vs 5.713 ppl at
  capacity 0.125), where the paper's baseline loses (5.802).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods._routed_decode import RoutedDecoder
from dynbench.methods._token_gather import (
    gather_tokens,
    padded_positions,
    scatter_add_tokens,
    subset_attention_mask,
    topk_positions,
)
from dynbench.methods.base import DynamicModel, Method, register_method
from dynbench.models.backbone import Backbone
from dynbench.models.block import Block
from dynbench.models.training import endless, lr_at
from dynbench.tasks.base import Task, TrainConfig
from dynbench.types import Budget, StepOutput, Trace

ROUTERS = ("learned", "random")
RANDOM_SCALES = ("gaussian", "learned")
ROUTINGS = ("auto", "topk", "predictor")
WEIGHTS = ("raw", "sigmoid")
INITS = ("auto", "scratch", "dense")
RANDOM_EVAL_SEED = 1234  # evaluation-time random routing draws from this seed (+ block index) on every call


@dataclass(frozen=True)
class MixtureOfDepthsConfig:
    """Routing, training recipe and evaluation rule of Mixture-of-Depths."""

    capacities: tuple[float, ...] = (0.5, 0.25, 0.125)  # one model trained per capacity (1.0 = the dense backbone)
    route_every: int = 2  # route block i when i % route_every == route_every - 1: 2 = blocks 1, 3, … (the paper)
    router: str = "learned"  # "learned" (the paper) or "random": top-k over random scores, the paper's ablation
    random_scale: str = "gaussian"  # router=random: the update's scale — "gaussian", the random weights that chose
    # the tokens (the paper's stochastic routing), or "learned", the router's r (only which tokens run is random)
    routing: str = "auto"  # evaluation rule: "topk", "predictor" (causal) or "auto" (predictor for decoders)
    weight: str = "raw"  # update scale from the router output r: "raw" r (the paper's equation) or "sigmoid"
    router_bias: float = 1.0  # initial router bias: r ≈ 1, so a routed block starts as the plain block
    init: str = "auto"  # "scratch", "dense" (fine-tune) or "auto": scratch for text tasks trained from scratch
    steps: int = 0  # optimizer steps per capacity; 0 = set by FLOPs: isoFLOP (scratch) or finetune_fraction
    finetune_fraction: float = 0.2  # fine-tuning FLOPs per capacity ÷ the dense recipe's: a short fine-tune
    finetune_lr: float = 1e-3  # peak learning rate when fine-tuning from dense (scratch uses the dense recipe's)
    predictor_lr: float = 1e-2  # the predictors' own peak learning rate (their BCE cannot reach the network)
    predictor_ratio: float = 0.5  # predictor hidden width as a fraction of d (d → d/2 → 1 in the paper's notes)
    predictor_fraction: float = 0.0  # causal models: share of the training-FLOPs allowance spent on predictor-only
    # steps on the finished model (its top-k labels no longer move); 0 = none, the paper's joint training. On
    # shakespeare at capacity 0.125, 0.1 raised agreement 95.8% → 96.2% but cost 10% of the steps: 5.85 vs 5.71 ppl

    def __post_init__(self) -> None:
        bad = [c for c in self.capacities if not 0.0 < c < 1.0]
        if not self.capacities or bad:
            raise ValueError(
                f"MixtureOfDepthsConfig.capacities must be non-empty fractions in (0, 1), got {self.capacities}. "
                "Capacity 1.0 is always swept (the dense backbone); use e.g. capacities=0.5;0.25;0.125."
            )
        if self.route_every < 1:
            raise ValueError(f"MixtureOfDepthsConfig.route_every must be >= 1, got {self.route_every}. Use 2.")
        for name, value, allowed in (
            ("router", self.router, ROUTERS),
            ("random_scale", self.random_scale, RANDOM_SCALES),
            ("routing", self.routing, ROUTINGS),
            ("weight", self.weight, WEIGHTS),
            ("init", self.init, INITS),
        ):
            if value not in allowed:
                raise ValueError(f"MixtureOfDepthsConfig.{name} must be one of {allowed}, got {value!r}.")
        if self.steps < 0:
            raise ValueError(f"MixtureOfDepthsConfig.steps must be >= 0 (0 = automatic), got {self.steps}.")
        if not 0 < self.finetune_fraction <= 10:
            raise ValueError(
                f"MixtureOfDepthsConfig.finetune_fraction must be in (0, 10], got {self.finetune_fraction}. Use 0.2."
            )
        if not self.finetune_lr > 0:
            raise ValueError(f"MixtureOfDepthsConfig.finetune_lr must be > 0, got {self.finetune_lr}. Use 1e-3.")
        if not self.predictor_lr > 0:
            raise ValueError(f"MixtureOfDepthsConfig.predictor_lr must be > 0, got {self.predictor_lr}. Use 1e-2.")
        if not 0 <= self.predictor_fraction < 1:
            raise ValueError(
                f"MixtureOfDepthsConfig.predictor_fraction must be in [0, 1), got {self.predictor_fraction}. "
                "Use 0.1 (0 = no predictor-only phase)."
            )
        if not 0 < self.predictor_ratio <= 4:
            raise ValueError(
                f"MixtureOfDepthsConfig.predictor_ratio must be in (0, 4], got {self.predictor_ratio}. Use 0.5."
            )


def n_selected(capacity: float, tokens: int) -> int:
    """Tokens a routed block processes per sequence: ``ceil(c · T)``, at least 1, at most T.

    The ``1e-9`` keeps exact products exact: ``0.125 · 128`` is 16, not 17 after a rounding error upwards.
    """
    return min(tokens, max(1, math.ceil(capacity * tokens - 1e-9)))


def capacity_key(capacity: float) -> str:
    """Module-dict key of a capacity (no dots allowed): 0.125 → ``c0.125`` written ``c0_125``."""
    return "c" + f"{capacity:.6g}".replace(".", "_")


class Predictor(nn.Module):
    """The causal routing predictor: ``d → hidden → 1`` with SiLU; a logit > 0 means "route this token"."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, hidden)
        self.fc_out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` → ``(B, T)`` logits."""
        return self.fc_out(F.silu(self.fc_in(x))).squeeze(-1)  # (B, T)


class RoutedNet(nn.Module):
    """One trained Mixture-of-Depths model: a copy of the backbone, a router and a predictor per routed block.

    Buffers:
        train_steps: optimizer steps it was trained for (0 until fitted).
        train_flops: training FLOPs spent (3 × forward per sample × samples seen), NaN until fitted.
    """

    train_steps: Tensor
    train_flops: Tensor

    def __init__(self, backbone: Backbone, routed: Sequence[int], hidden: int) -> None:
        super().__init__()
        d = backbone.block_config.d_model
        self.net = copy.deepcopy(backbone)
        for p in self.net.parameters():
            p.requires_grad_(True)  # the copy trains even when the wrapped backbone is frozen
        self.routers = nn.ModuleDict({str(i): nn.Linear(d, 1) for i in routed})
        self.predictors = nn.ModuleDict({str(i): Predictor(d, hidden) for i in routed})
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("train_flops", torch.full((), float("nan"), dtype=torch.float64))

    def reset_controllers(self, router_bias: float, generator: torch.Generator | None = None) -> None:
        """Fresh routers (N(0, 0.02) weights, bias ``router_bias``) and predictors (``nn.Linear``'s default).

        The predictor keeps PyTorch's fan-in initialisation: from GPT-2's N(0, 0.02) it learned too slowly to follow
        the routers (79% top-k agreement on toy text where a threshold on r reaches 91%).
        """
        for router in self.routers.values():
            nn.init.normal_(router.weight, std=0.02, generator=generator)
            nn.init.constant_(router.bias, router_bias)
        for lin in [m for m in self.predictors.modules() if isinstance(m, nn.Linear)]:
            bound = lin.in_features**-0.5  # nn.Linear's default: U(±1/sqrt(fan_in)) for weights and bias
            nn.init.uniform_(lin.weight, -bound, bound, generator=generator)
            nn.init.uniform_(lin.bias, -bound, bound, generator=generator)


@dataclass
class RoutedStep:
    """What one routed block did to a batch."""

    executed: Tensor  # (B,) tokens run per sample (padded count in predictor mode)
    selected: Tensor  # (B, T) bool, tokens that really ran the block
    topk: Tensor  # (B, T) bool, top-k membership (the predictor's BCE target and its agreement reference)
    predictor_logits: Tensor | None  # (B, T) when the predictor ran


class MixtureOfDepthsModel(DynamicModel):
    """The dense backbone (budget 1.0) and one :class:`RoutedNet` per trained capacity.

    Args:
        backbone: the dense model; run as is at budget 1.0 and copied into every capacity's model.
        cfg: the method's options.

    Buffers:
        dense_train_flops: training FLOPs of the dense backbone's recipe (NaN when unknown, e.g. pretrained).
    """

    dense_train_flops: Tensor

    def __init__(self, backbone: Backbone, cfg: MixtureOfDepthsConfig) -> None:
        super().__init__(backbone)
        L = backbone.n_blocks
        self.cfg = cfg
        self.routed = [i for i in range(L) if i % cfg.route_every == cfg.route_every - 1]
        if not self.routed:
            raise ValueError(
                f"mod routes no block of this {L}-block backbone with route_every={cfg.route_every}. "
                f"Use route_every <= {L} (2 = every other block, 1 = every block)."
            )
        self.hidden = max(1, round(backbone.block_config.d_model * cfg.predictor_ratio))
        g = torch.Generator().manual_seed(0)  # wrap is deterministic; fit re-initialises from its seed
        self.variants = nn.ModuleDict()
        for c in sorted(cfg.capacities, reverse=True):
            variant = RoutedNet(backbone, self.routed, self.hidden)
            variant.reset_controllers(cfg.router_bias, g)
            self.variants[capacity_key(c)] = variant
        self.keep_first = backbone.readout.pool == "cls"  # encoders read token 0: always keep it
        self.causal = backbone.block_config.causal
        self.register_buffer("dense_train_flops", torch.full((), float("nan"), dtype=torch.float64))

    # ----------------------------------------------------------------------------------------------------------
    # Routing

    def routing_rule(self, routing: str | None = None) -> str:
        """``topk`` or ``predictor``: the evaluation rule after resolving ``auto`` and random routing."""
        rule = routing or self.cfg.routing
        if rule not in ROUTINGS:
            raise ValueError(f"mod routing must be one of {ROUTINGS}, got {rule!r}.")
        if self.cfg.router == "random":
            return "topk"  # content-independent, hence causal already; there is nothing to predict
        if rule == "auto":
            return "predictor" if self.causal else "topk"
        return rule

    def variant(self, budget: Budget) -> RoutedNet:
        """The model trained at capacity ``budget``.

        Raises:
            ValueError: no model was trained at that capacity.
        """
        key = capacity_key(budget)
        if key not in self.variants:
            trained = sorted(self.cfg.capacities, reverse=True)
            raise ValueError(
                f"mod has no model trained at capacity {budget}; trained: {trained} (and 1.0 = dense). "
                f"Sweep those budgets, or set capacities to include {budget}."
            )
        return self.variants[key]  # type: ignore[return-value]

    def scores(self, r: Tensor, block: int, training: bool) -> Tensor:
        """``(B, T)`` selection scores: the router output, or random numbers for the random baseline.

        Random scores are uniform when the learned ``r`` scales the update (only their order matters) and
        standard normal when they are the scale themselves (the paper's Gaussian routing weights).
        """
        if self.cfg.router == "learned":
            return r.detach()
        draw = torch.randn if self.cfg.random_scale == "gaussian" else torch.rand
        if training:
            return draw(r.shape, device=r.device)  # fresh per step, from the seeded global generator
        g = torch.Generator(device=r.device).manual_seed(RANDOM_EVAL_SEED + block)
        return draw(r.shape, device=r.device, generator=g)  # the same draw on every evaluation call

    @property
    def gaussian_routing(self) -> bool:
        """The paper's stochastic routing: random Gaussian weights both choose the tokens and scale the updates."""
        return self.cfg.router == "random" and self.cfg.random_scale == "gaussian"

    def update_scale(self, r: Tensor, scores: Tensor) -> Tensor:
        """``(B, T)`` the factor on each token's update: the router weight, or the Gaussian random weight."""
        if self.gaussian_routing:
            return self.router_weight(scores)
        return self.router_weight(r)

    def router_weight(self, r: Tensor) -> Tensor:
        """The factor on the block's update: ``r`` itself or ``sigmoid(r)``."""
        return r if self.cfg.weight == "raw" else torch.sigmoid(r)

    def routed_block(
        self, variant: RoutedNet, index: int, block: Block, x: Tensor, k: int, rule: str
    ) -> tuple[Tensor, RoutedStep]:
        """One routed block: choose tokens, run ``f`` on them, add ``r · f`` back.

        Args:
            variant: the capacity's model (its router and predictor for block ``index``).
            index: the block's position in the stack.
            block: the block.
            x: ``(B, T, C)`` block input.
            k: tokens per sequence under top-k.
            rule: ``topk`` or ``predictor``.
        """
        B, T, _ = x.shape
        training = variant.training  # training always routes by top-k and trains the predictor
        r = variant.routers[str(index)](x).squeeze(-1)  # (B, T) raw router outputs, on every token
        scores = self.scores(r, index, training)  # (B, T)
        scale = self.update_scale(r, scores)  # (B, T)
        if self.keep_first:
            scores = scores.clone()
            scores[:, 0] = float("inf")  # CLS always wins one of the k places
            if self.gaussian_routing:
                scale = scale.clone()
                scale[:, 0] = 1.0  # kept, not drawn: a random weight would flip its update's sign half the time
        top_idx = topk_positions(scores, k)  # (B, k) ascending
        topk = torch.zeros(B, T, dtype=torch.bool, device=x.device).scatter_(1, top_idx, True)  # (B, T)
        logits = None
        if rule == "predictor" or training:
            logits = variant.predictors[str(index)](x.detach())  # (B, T) trained on a detached input
        rope = block.cfg.rope
        if rule == "topk" or training:
            x_sel = gather_tokens(x, top_idx)  # (B, k, C) in original order
            d = block.delta(x_sel, positions=top_idx if rope else None)  # (B, k, C) causal among selected
            w = scale.gather(1, top_idx)  # (B, k)
            out = scatter_add_tokens(x, top_idx, w[..., None] * d)  # (B, T, C)
            executed = torch.full((B,), k, dtype=torch.long)
            return out, RoutedStep(executed, topk, topk, logits)
        assert logits is not None  # narrowing: predictor rule
        chosen = logits > 0  # (B, T) the causal decision
        if self.keep_first:
            chosen[:, 0] = True
        idx, valid = padded_positions(chosen)  # (B, n), (B, n)
        n = idx.shape[1]
        executed = torch.full((B,), n, dtype=torch.long)  # padding slots run too, so they are charged
        if n == 0:
            return x, RoutedStep(executed, chosen, topk, logits)
        w = scale.gather(1, idx)  # (B, n)
        x_sel = gather_tokens(x, idx)  # (B, n, C)
        if B == 1 or bool(valid.all()):  # no padding (always so at batch 1): the plain causal path, no mask
            update = w[..., None] * block.delta(x_sel, positions=idx if rope else None)  # (B, n, C)
        else:
            mask = subset_attention_mask(idx, valid, causal=self.causal)  # (B, 1, n, n)
            d = block.delta(x_sel, attn_mask=mask, positions=idx if rope else None)  # (B, n, C)
            update = torch.where(valid[..., None], w[..., None] * d, torch.zeros_like(d))  # padding adds exactly 0
        return scatter_add_tokens(x, idx, update), RoutedStep(executed, chosen, topk, logits)

    def run_variant(self, variant: RoutedNet, inputs: Tensor, capacity: float, rule: str) -> tuple[Tensor, list]:
        """Forward one capacity's model; returns logits and the :class:`RoutedStep` of each routed block."""
        net = variant.net
        x = net.embed(inputs)  # (B, T, C)
        k = n_selected(capacity, x.shape[1])
        steps: list[RoutedStep] = []
        for i, block in enumerate(net.blocks):
            if str(i) in variant.routers:
                x, step = self.routed_block(variant, i, block, x, k, rule)
                steps.append(step)
            else:
                x = block(x)  # (B, T, C)
        return net.readout(x), steps

    # ----------------------------------------------------------------------------------------------------------
    # The DynamicModel contract

    def forward(self, inputs: Tensor, *, budget: Budget, routing: str | None = None) -> StepOutput:
        """Run at capacity ``budget``: the dense backbone at 1.0, else the model trained at that capacity.

        Args:
            inputs: the task input batch.
            budget: capacity c, a trained capacity or 1.0.
            routing: override the configured evaluation rule (``topk``, ``predictor``, ``auto``).

        Returns:
            Logits and a trace: routed blocks ran ``k`` tokens over ``k`` keys (the padded count under the
            predictor rule), the others ``T``. ``extra`` holds ``capacity``, ``routed_fraction`` (tokens that
            really ran the routed blocks ÷ T, averaged over them), ``selected`` ``(B, R, T)`` and, under the
            predictor rule, ``predictor_agreement`` (share of tokens where predictor and top-k agree).
        """
        bb = self.backbone
        B = inputs.shape[0]
        T = bb.n_tokens(tuple(inputs.shape[1:]))
        if budget == 1.0:
            trace = bb.dense_trace(inputs)
            trace.extra = {
                "capacity": torch.ones(B, dtype=torch.float64),
                "routed_fraction": torch.ones(B, dtype=torch.float64),
            }
            return StepOutput(bb(inputs), trace)
        rule = self.routing_rule(routing)
        logits, steps = self.run_variant(self.variant(budget), inputs, budget, rule)
        return StepOutput(logits, self.make_trace(steps, B, T, budget, rule))

    def make_trace(self, steps: list[RoutedStep], B: int, T: int, capacity: float, rule: str) -> Trace:
        """The per-sample trace from what each routed block ran."""
        bb = self.backbone
        tokens = torch.full((B, bb.n_blocks), T, dtype=torch.long)  # (B, L)
        for i, step in zip(self.routed, steps):
            tokens[:, i] = step.executed
        selected = torch.stack([s.selected for s in steps], dim=1)  # (B, R, T) on the device: no host sync
        extra = {
            "capacity": torch.full((B,), capacity, dtype=torch.float64),
            "routed_fraction": selected.double().mean(dim=(1, 2)),
            "selected": selected,
        }
        if rule == "predictor":
            agree = torch.stack([s.selected == s.topk for s in steps], dim=1)  # (B, R, T)
            extra["predictor_agreement"] = agree.double().mean(dim=(1, 2))
        return Trace(
            block_tokens=tokens,
            block_kv=tokens.clone(),  # each selected token attends over the selected tokens only
            block_heads=torch.full((B, bb.n_blocks), bb.n_heads, dtype=torch.long),
            readout=torch.ones(B, dtype=torch.long),
            controller_flops=torch.full((B,), self.controller_flops(T, rule), dtype=torch.float64),
            extra=extra,
        )

    def controller_flops(self, tokens: int, rule: str) -> float:
        """Analytic FLOPs of the routers (all tokens, all routed blocks), plus the predictors under their rule."""
        d = self.backbone.block_config.d_model
        per_block = 2.0 * tokens * d  # Linear(d → 1)
        if rule == "predictor":
            per_block += 2.0 * tokens * (d * self.hidden + self.hidden)  # d → hidden → 1
        return per_block * len(self.routed)

    def controller_modules(self) -> list[nn.Module]:
        """Every router and predictor: their FLOPs are the routing overhead."""
        mods: list[nn.Module] = []
        for v in self.variants.values():
            mods.extend(v.routers.values())
            mods.extend(v.predictors.values())
        return mods

    def operating_modules(self, budget: Budget, routing: str | None = None) -> list[nn.Module]:
        """What one capacity reads: 1.0 the dense backbone, capacity c only that capacity's trained model.

        Of that model, the network and routers, and the predictors under the predictor rule (top-k never runs
        them). No other capacity's model is read, nor (below 1.0) the wrapped backbone's weights.

        Args:
            budget: 1.0 or a trained capacity.
            routing: the evaluation rule, as :meth:`forward` takes it (``None`` = the configured one).

        Raises:
            ValueError: a capacity with no trained model.
        """
        if budget == 1.0:
            return [self.backbone]
        v = self.variant(budget)
        mods: list[nn.Module] = [v.net, v.routers]
        if self.routing_rule(routing) == "predictor":
            mods.append(v.predictors)
        return mods

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """``routed_fraction``, the ``train_flops`` of the model that ran, and ``predictor_agreement``."""
        out = {"routed_fraction": (float(trace.extra["routed_fraction"].mean()), "fraction", False)}
        if "predictor_agreement" in trace.extra:
            out["predictor_agreement"] = (float(trace.extra["predictor_agreement"].mean()), "fraction", True)
        capacity = float(trace.extra["capacity"][0])
        flops = self.dense_train_flops if capacity == 1.0 else self.variant(capacity).train_flops
        if not torch.isnan(flops):
            out["train_flops"] = (float(flops), "flops", False)
        return out

    def decoder(self, budget: Budget, batch_size: int, max_len: int) -> RoutedDecoder:
        """A KV-cached decoder at capacity ``budget`` (1.0: the dense backbone), routing by the predictor.

        Raises:
            ValueError: random routing (no causal rule), an untrained capacity, or a non-causal backbone.
        """
        if budget == 1.0:
            return RoutedDecoder(self.backbone, {}, {}, self.router_weight, batch_size, max_len)
        if self.cfg.router == "random":
            raise ValueError("mod with router=random has no causal routing rule for decoding; use router=learned.")
        v = self.variant(budget)
        return RoutedDecoder(v.net, dict(v.routers), dict(v.predictors), self.router_weight, batch_size, max_len)


@torch.no_grad()
def generate(model: MixtureOfDepthsModel, ids: Tensor, n_new: int, *, budget: Budget) -> Tensor:
    """Greedy decoding with the KV cache: the prompt in one call, then one token per call.

    Args:
        model: a Mixture-of-Depths model around a causal GPT.
        ids: ``(B, T)`` prompt token ids.
        n_new: tokens to append.
        budget: capacity (1.0 = the dense backbone).

    Returns:
        ``(B, T + n_new)`` prompt and generated tokens.
    """
    decoder = model.decoder(budget, ids.shape[0], ids.shape[1] + n_new)
    out = [ids]
    logits = decoder(ids)  # (B, T, V)
    for step in range(n_new):
        nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        if step + 1 < n_new:
            logits = decoder(nxt)  # (B, 1, V)
    return torch.cat(out, dim=1)


def train_recipe(cfg: MixtureOfDepthsConfig, dense: TrainConfig, scratch: bool, steps: int) -> TrainConfig:
    """The recipe of one capacity: the dense recipe with more steps (scratch), or a short fine-tune."""
    if scratch:
        return TrainConfig(
            steps=steps,
            batch_size=dense.batch_size,
            lr=dense.lr,
            weight_decay=dense.weight_decay,
            warmup_steps=dense.warmup_steps,
            grad_clip=dense.grad_clip,
        )
    return TrainConfig(
        steps=steps,
        batch_size=dense.batch_size,
        lr=cfg.finetune_lr,
        weight_decay=dense.weight_decay,
        warmup_steps=min(dense.warmup_steps, steps // 10),
        grad_clip=dense.grad_clip,
    )


def trains_from_scratch(cfg: MixtureOfDepthsConfig, task: Task) -> bool:
    """``init`` resolved: ``auto`` trains from scratch when the task is text and trains its own backbone."""
    if cfg.init != "auto":
        return cfg.init == "scratch"
    return task.modality == "text" and hasattr(task.config, "train")


@register_method("mod")
class MixtureOfDepths(Method):
    """Mixture-of-Depths: expert-choice top-k token routing around every other block."""

    version = "3"
    paper = "https://arxiv.org/abs/2404.02258"
    reconstructed = False
    Config = MixtureOfDepthsConfig
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    controls = {"random": {"router": "random"}}  # the paper's stochastic routing at equal capacity
    control_only_options = ("random_scale",)
    budget_doc = "capacity c: share of tokens each routed block runs (1.0 = dense; 0.5, 0.25, 0.125 trained)"

    def fit_identity(self) -> MixtureOfDepthsConfig:
        """The config less the evaluation rule: ``routing`` changes how a trained model routes, not its training."""
        return dataclasses.replace(self.config, routing="auto")

    def wrap(self, backbone: Backbone) -> MixtureOfDepthsModel:
        """One routed copy of ``backbone`` per capacity (untrained until :meth:`fit`)."""
        return MixtureOfDepthsModel(backbone, self.config)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """1.0 (dense) and the trained capacities, descending."""
        return (1.0, *sorted(self.config.capacities, reverse=True))

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """As :meth:`Method.resolve_budgets`, and every budget must be 1.0 or a trained capacity.

        Raises:
            ValueError: a budget with no trained model.
        """
        budgets = super().resolve_budgets(override, n_blocks)
        known = {1.0, *self.config.capacities}
        missing = [b for b in budgets if b not in known]
        if missing:
            raise ValueError(
                f"mod has no model for budget(s) {missing}: it trains one model per capacity in "
                f"capacities={sorted(self.config.capacities, reverse=True)} (1.0 = dense). "
                "Add them to mod[capacities=...] or sweep only those."
            )
        return budgets

    def fit(self, model: MixtureOfDepthsModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Train one routed model per capacity: from scratch at the dense recipe's training FLOPs, or fine-tuned.

        Args:
            model: the wrapped model; every :class:`RoutedNet` in it is (re)initialised and trained.
            task: training split, loss, recipe and (for ``init="scratch"``) the fresh backbone.
            seed: seeds initialisation, routing noise and batch order.
        """
        cfg = self.config
        scratch = trains_from_scratch(cfg, task)
        dense = task.train_config
        device = next(model.backbone.parameters()).device
        shape = tuple(next(task.batches("train", batch_size=1)).inputs.shape[1:])
        dense_flops = 3.0 * model.backbone.dense_flops(shape) * dense.batch_size * dense.steps  # training ≈ 3 × fwd
        if hasattr(task.config, "train"):  # a recipe the dense backbone really was trained with
            model.dense_train_flops.fill_(dense_flops)
        allowance = dense_flops if scratch else cfg.finetune_fraction * dense_flops  # training FLOPs per capacity
        was_training = model.training
        for c in sorted(cfg.capacities, reverse=True):
            variant = model.variant(c)
            torch.manual_seed(seed)
            if scratch:  # the dense backbone's own initial weights: same seed, same builder
                variant.net.load_state_dict(task.build_backbone().state_dict())
            else:
                variant.net.load_state_dict(model.backbone.state_dict())
            variant.reset_controllers(cfg.router_bias)
            per_sample = 3.0 * self.forward_flops(model, c, shape)
            # only learned routing on decoders is ever evaluated by its predictor
            calibrates = model.causal and cfg.router == "learned"
            calib_per_step = dense.batch_size * self.calibration_flops(model, c, shape)
            calib_steps = round(cfg.predictor_fraction * (cfg.steps or allowance / calib_per_step)) if calibrates else 0
            calib_flops = calib_steps * calib_per_step
            steps = cfg.steps or max(1, round((allowance - calib_flops) / (per_sample * dense.batch_size)))
            recipe = train_recipe(cfg, dense, scratch, steps)
            self.train_variant(model, variant, c, task, recipe, seed, device)
            self.calibrate_predictors(model, variant, c, task, calib_steps, dense.batch_size, seed, device)
            variant.train_steps.fill_(steps)
            variant.train_flops.fill_(per_sample * recipe.batch_size * steps + calib_flops)
        model.train(was_training)

    @staticmethod
    def forward_flops(model: MixtureOfDepthsModel, capacity: float, shape: tuple[int, ...]) -> float:
        """Analytic forward FLOPs per sample while training at ``capacity``: top-k routing plus the predictors."""
        bb = model.backbone
        T = bb.n_tokens(shape)
        k = n_selected(capacity, T)
        tokens = torch.full((1, bb.n_blocks), T, dtype=torch.long)
        tokens[:, model.routed] = k
        trace = Trace.dense(1, bb.n_blocks, T, bb.n_heads)
        trace.block_tokens, trace.block_kv = tokens, tokens.clone()
        trace.controller_flops = torch.full((1,), model.controller_flops(T, "predictor"), dtype=torch.float64)
        return float(bb.flops(trace, shape)[0])

    @staticmethod
    def calibration_flops(model: MixtureOfDepthsModel, capacity: float, shape: tuple[int, ...]) -> float:
        """FLOPs per sample of one predictor-calibration step: the model's forward, and the predictors' backward."""
        T = model.backbone.n_tokens(shape)
        d = model.backbone.block_config.d_model
        predictor_fwd = 2.0 * T * (d * model.hidden + model.hidden) * len(model.routed)
        return MixtureOfDepths.forward_flops(model, capacity, shape) + 2.0 * predictor_fwd

    def calibrate_predictors(
        self,
        model: MixtureOfDepthsModel,
        variant: RoutedNet,
        capacity: float,
        task: Task,
        steps: int,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        """Train only the predictors on the finished model, whose top-k choices no longer move.

        During joint training a predictor chases routers that are still changing; a short phase on fixed labels
        closes most of the remaining gap to top-k. The network and routers are frozen, so nothing but the
        predictors can change; the labels are the same top-k membership the joint phase used.
        """
        if steps == 0:
            return
        pred = list(variant.predictors.parameters())
        frozen = [p for p in variant.parameters() if p.requires_grad and all(p is not q for q in pred)]
        for p in frozen:
            p.requires_grad_(False)  # the forward then builds a graph for the predictors only
        opt = torch.optim.AdamW(pred, lr=self.config.predictor_lr, weight_decay=0.0, betas=(0.9, 0.95))
        recipe = TrainConfig(steps=steps, batch_size=batch_size, lr=self.config.predictor_lr, warmup_steps=0)
        batches = endless(
            lambda epoch: task.batches("train", batch_size=batch_size, seed=seed * 1000 + 500 + epoch, shuffle=True)
        )
        model.eval()
        variant.train()  # training mode routes by top-k and runs the predictors: the labels and their logits
        variant.net.eval()  # but no dropout: the labels are the top-k choices evaluation will see
        try:
            for step in range(steps):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, recipe)
                batch = next(batches)
                _, routed = model.run_variant(variant, batch.inputs.to(device), capacity, "topk")
                bce = torch.stack(
                    [F.binary_cross_entropy_with_logits(s.predictor_logits, s.topk.float()) for s in routed]
                )
                opt.zero_grad(set_to_none=True)
                bce.mean().backward()
                torch.nn.utils.clip_grad_norm_(pred, 1.0)
                opt.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def train_variant(
        self,
        model: MixtureOfDepthsModel,
        variant: RoutedNet,
        capacity: float,
        task: Task,
        recipe: TrainConfig,
        seed: int,
        device: torch.device,
    ) -> None:
        """Train one capacity's model under top-k routing: task loss for net and routers, BCE for the predictors.

        The predictors see a detached input and have their own AdamW group, learning rate and gradient clip, so
        they cannot change the language model (not even through a shared gradient-norm clip). Both groups follow
        the recipe's warm-up + cosine schedule.
        """
        model.eval()
        variant.train()
        pred = list(variant.predictors.parameters())
        pred_ids = {id(p) for p in pred}
        main = [p for p in variant.parameters() if id(p) not in pred_ids]
        lrs = (recipe.lr, self.config.predictor_lr)
        opt = torch.optim.AdamW(
            [{"params": main, "weight_decay": recipe.weight_decay}, {"params": pred, "weight_decay": 0.0}],
            lr=recipe.lr,
            betas=(0.9, 0.95),
        )
        batches = endless(  # the dense recipe's data order
            lambda epoch: task.batches("train", batch_size=recipe.batch_size, seed=seed * 1000 + epoch, shuffle=True)
        )
        for step in range(recipe.steps):
            scale = lr_at(step, recipe) / recipe.lr
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr * scale
            batch = next(batches)
            logits, routed = model.run_variant(variant, task.augment(batch.inputs.to(device)), capacity, "topk")
            loss = task.metric.loss(logits, batch.targets.to(device))
            bce = torch.stack([F.binary_cross_entropy_with_logits(s.predictor_logits, s.topk.float()) for s in routed])
            opt.zero_grad(set_to_none=True)
            (loss + bce.mean()).backward()  # disjoint parameters: each loss reaches only its own group
            if recipe.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(main, recipe.grad_clip)
                torch.nn.utils.clip_grad_norm_(pred, recipe.grad_clip)
            opt.step()
