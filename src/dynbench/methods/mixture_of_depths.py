"""Mixture-of-Depths: per routed block, only the top-k tokens of each sequence are processed.

Paper: Raposo et al., "Mixture-of-Depths: Dynamically allocating compute in transformer-based
language models", https://arxiv.org/abs/2404.02258. There is no official code; two unofficial ones
(astramind-ai/Mixture-of-depths, sramshetty/mixture-of-depths) were read to avoid their bugs: a
strict ``>`` against the k-th score (k−1 tokens), the residual scaled by ``r``, the first k
positions gathered instead of the top-k, truncated rotary positions, one router shared by all
blocks, and a Python loop over samples.

Mechanism: in every other block a router ``Linear(d → 1)`` weighs each token by ``r``; only the
``k = ceil(c · T)`` tokens with the largest ``r`` run the block, as ``x + r · f(x_sel)`` (attention
among them, then the MLP), and the others pass unchanged. A causal predictor per routed block
(``d → d/2 → 1``, BCE on top-k membership) replaces top-k at decoding (``routing="predictor"``).

What we changed / reconstructed (the paper leaves these open, or the contract needs them):
- capacity 1.0 runs the dense backbone itself (with every token selected there is nothing to route);
  each capacity below 1.0 is its own trained model, as in the paper, all kept in the state dict;
- the router weight is used raw (``weight="raw"``, the paper's equation; ``"sigmoid"`` is optional),
  its bias starting at 1 (the paper's router is "typically without bias"): a routed block starts as
  the plain block;
- top-k selects exactly k tokens (``torch.topk``), in their original order, with the causal mask of
  their original positions for decoders; ``routing="auto"`` uses the predictor for decoders (top-k
  would let routing peek at future tokens) and top-k for encoders;
- text tasks that train their backbone from scratch train MoD from scratch, from the dense
  backbone's initial weights and data order, for the dense recipe's training FLOPs (isoFLOP:
  training ≈ 3 × forward FLOPs, routers and predictors included); other tasks fine-tune from the
  dense weights for ``finetune_fraction`` of them;
- encoders whose readout reads token 0 always keep the CLS token; it counts toward k;
- the predictor rule pads a batch to its largest count, and the trace charges the padding; a
  KV-cached decoder (:func:`generate`) writes no keys or values at a block a token skips;
- optional predictor calibration (``predictor_fraction``, off as in the paper): predictor-only steps
  on the finished model, paid from the same isoFLOP allowance;
- random routing (``router="random"``, the paper's stochastic baseline): top-k over Gaussian weights
  that also scale the update, with a fixed seed per block at evaluation; ``random_scale="learned"``
  keeps the router's ``r`` as the scale instead, so only which tokens run is random.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
from dynbench.models.training import ParamGroup, TrainConfig, endless, fit_loop, unit_warmup_cosine
from dynbench.tasks.base import Task
from dynbench.types import Batch, Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range, choice_message

Routing = Literal["auto", "topk", "predictor"]
"""The evaluation rule: top-k, the causal predictor, or ``auto`` (the predictor for decoders)."""
RANDOM_EVAL_SEED = 1234  # evaluation-time random routing draws from this seed (+ block index) on every call


@dataclass(frozen=True)
class MixtureOfDepthsConfig:
    """Routing, training recipe and evaluation rule of Mixture-of-Depths."""

    capacities: tuple[float, ...] = (0.5, 0.25, 0.125)  # one model trained per capacity (1.0 = the dense backbone)
    route_every: int = 2  # route block i when i % route_every == route_every - 1: 2 = blocks 1, 3, … (the paper)
    # "learned" (the paper) or "random": top-k over random scores, the paper's stochastic-routing
    # baseline
    router: Literal["learned", "random"] = "learned"
    # router=random: the update's scale — "gaussian", the random weights that chose the tokens (the
    # paper's stochastic routing), or "learned", the router's r (then only which tokens run is
    # random)
    random_scale: Literal["gaussian", "learned"] = "gaussian"
    routing: Routing = "auto"  # evaluation rule: "topk", "predictor" (causal) or "auto" (predictor for decoders)
    weight: Literal["raw", "sigmoid"] = "raw"  # update scale: the router output r (the paper) or sigmoid(r)
    router_bias: float = 1.0  # initial router bias: r ≈ 1, so a routed block starts as the plain block
    # "scratch", "dense" (fine-tune) or "auto": scratch for text tasks that train their backbone
    # from scratch
    init: Literal["auto", "scratch", "dense"] = "auto"
    steps: int = 0  # optimizer steps per capacity; 0 = set by FLOPs: isoFLOP (scratch) or finetune_fraction
    finetune_fraction: float = 0.2  # fine-tuning FLOPs per capacity ÷ the dense recipe's: a short fine-tune
    finetune_lr: float = 1e-3  # peak learning rate when fine-tuning from dense (scratch uses the dense recipe's)
    predictor_lr: float = 1e-2  # the predictors' own peak learning rate (their BCE cannot reach the network)
    predictor_ratio: float = 0.5  # predictor hidden width as a fraction of d (d → d/2 → 1 in the paper's notes)
    # causal models: share of the training-FLOPs allowance spent on predictor-only steps on the
    # finished model (its top-k labels no longer move); 0 = none, the paper's joint training
    predictor_fraction: float = 0.0

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "router": "Use learned (the paper) or random (its stochastic-routing baseline).",
                "random_scale": "Use gaussian (the paper's random weights) or learned (the router's r).",
                "routing": "Use auto, topk or predictor.",
                "weight": "Use raw (the paper's r) or sigmoid.",
                "init": "Use auto, scratch or dense.",
            },
        )
        if not self.capacities:
            raise ValueError(
                "MixtureOfDepthsConfig.capacities must be non-empty fractions in (0, 1), got (). "
                "Capacity 1.0 is always swept (the dense backbone); use e.g. capacities=0.5;0.25;0.125."
            )
        for c in self.capacities:
            check_range(
                "MixtureOfDepthsConfig.capacities",
                c,
                0,
                1,
                low_open=True,
                high_open=True,
                advice="Capacity 1.0 is always swept (the dense backbone); use e.g. capacities=0.5;0.25;0.125.",
            )
        check_range("MixtureOfDepthsConfig.route_every", self.route_every, 1, advice="Use 2.")
        check_range("MixtureOfDepthsConfig.steps", self.steps, 0, advice="Use 0 (automatic).")
        check_range(
            "MixtureOfDepthsConfig.finetune_fraction", self.finetune_fraction, 0, 10, low_open=True, advice="Use 0.2."
        )
        check_range("MixtureOfDepthsConfig.finetune_lr", self.finetune_lr, 0, low_open=True, advice="Use 1e-3.")
        check_range("MixtureOfDepthsConfig.predictor_lr", self.predictor_lr, 0, low_open=True, advice="Use 1e-2.")
        check_range(
            "MixtureOfDepthsConfig.predictor_fraction",
            self.predictor_fraction,
            0,
            1,
            high_open=True,
            advice="Use 0.1 (0 = no predictor-only phase).",
        )
        check_range(
            "MixtureOfDepthsConfig.predictor_ratio", self.predictor_ratio, 0, 4, low_open=True, advice="Use 0.5."
        )


def n_selected(capacity: float, tokens: int) -> int:
    """Tokens a routed block processes per sequence: ``ceil(c · T)``, at least 1, at most T.

    The ``1e-9`` keeps exact products exact: ``0.125 · 128`` is 16, not 17 after a rounding error
    upwards.
    """
    return min(tokens, max(1, math.ceil(capacity * tokens - 1e-9)))


def capacity_key(capacity: float) -> str:
    """Module-dict key of a capacity (no dots allowed): 0.125 → ``c0.125`` written ``c0_125``."""
    return "c" + f"{capacity:.6g}".replace(".", "_")


class Predictor(nn.Module):
    """The causal routing predictor: ``d → hidden → 1`` with SiLU; logit > 0 = "route it"."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, hidden)
        self.fc_out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` → ``(B, T)`` logits."""
        return self.fc_out(F.silu(self.fc_in(x))).squeeze(-1)  # (B, T)


class RoutedNet(nn.Module):
    """One trained MoD model: a copy of the backbone, a router and a predictor per routed block.

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
        """Fresh routers (N(0, 0.02) weights, bias ``router_bias``) and predictors (nn.Linear's).

        The predictor keeps PyTorch's fan-in initialisation: from GPT-2's N(0, 0.02) it learned too
        slowly to follow the routers (79% top-k agreement on toy text where a threshold on r reaches
        91%).
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
        dense_train_flops: training FLOPs of the dense backbone's recipe (NaN when unknown, e.g.
            pretrained).
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

    # ----------------------------------------------------------------------------------------------
    # Routing

    def routing_rule(self, routing: Routing | None = None) -> str:
        """``topk`` or ``predictor``: the evaluation rule, ``auto`` and random routing resolved."""
        rule = routing or self.cfg.routing
        if rule not in typing.get_args(Routing):
            raise ValueError(choice_message("mod routing", rule, typing.get_args(Routing)))
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
        """``(B, T)`` selection scores: the router output, or random numbers (random baseline).

        Random scores are uniform when the learned ``r`` scales the update (only their order
        matters) and standard normal when they are the scale themselves (the paper's Gaussian
        routing weights).
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
        """The paper's stochastic routing: Gaussian weights choose tokens and scale updates."""
        return self.cfg.router == "random" and self.cfg.random_scale == "gaussian"

    def update_scale(self, r: Tensor, scores: Tensor) -> Tensor:
        """``(B, T)`` the factor on each token's update: the router weight or the Gaussian one."""
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
        idx, valid, ragged, _ = padded_positions(chosen)  # (B, n), (B, n), whether any slot is padding
        n = idx.shape[1]
        executed = torch.full((B,), n, dtype=torch.long)  # padding slots run too, so they are charged
        if n == 0:
            return x, RoutedStep(executed, chosen, topk, logits)
        w = scale.gather(1, idx)  # (B, n)
        x_sel = gather_tokens(x, idx)  # (B, n, C)
        if not ragged:  # no padding (always so at batch 1): the plain causal path, no mask
            update = w[..., None] * block.delta(x_sel, positions=idx if rope else None)  # (B, n, C)
        else:
            mask = subset_attention_mask(idx, valid, causal=self.causal)  # (B, 1, n, n)
            d = block.delta(x_sel, attn_mask=mask, positions=idx if rope else None)  # (B, n, C)
            update = torch.where(valid[..., None], w[..., None] * d, torch.zeros_like(d))  # padding adds exactly 0
        return scatter_add_tokens(x, idx, update), RoutedStep(executed, chosen, topk, logits)

    def run_variant(self, variant: RoutedNet, inputs: Tensor, capacity: float, rule: str) -> tuple[Tensor, list]:
        """Forward one capacity's model: logits and the :class:`RoutedStep` of each routed block."""
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

    # ----------------------------------------------------------------------------------------------
    # The DynamicModel contract

    def forward(self, inputs: Tensor, *, budget: Budget, routing: Routing | None = None) -> StepOutput:
        """Run at capacity ``budget``: the dense backbone at 1.0, else the model trained at it.

        Args:
            inputs: the task input batch.
            budget: capacity c, a trained capacity or 1.0.
            routing: override the configured evaluation rule (``topk``, ``predictor``, ``auto``).

        Returns:
            Logits and a trace: routed blocks ran ``k`` tokens over ``k`` keys (the padded count
            under the predictor rule), the others ``T``. ``extra`` holds ``capacity``,
            ``routed_fraction`` (tokens that really ran the routed blocks ÷ T, averaged over them),
            ``selected`` ``(B, R, T)`` and, under the predictor rule, ``predictor_agreement`` (share
            of tokens where predictor and top-k agree).
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
        """Analytic FLOPs of routers (all tokens, routed blocks) and predictors under their rule."""
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

    def operating_modules(self, budget: Budget, routing: Routing | None = None) -> list[nn.Module]:
        """What one capacity reads: 1.0 the dense backbone, capacity c only its own trained model.

        Of that model, the network and routers, and the predictors under the predictor rule (top-k
        never runs them). No other capacity's model is read, nor (below 1.0) the wrapped backbone's
        weights.

        Args:
            budget: 1.0 or a trained capacity.
            routing: the evaluation rule, as :meth:`forward` takes it (``None`` = the configured
                one).

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
        """``routed_fraction``, ``train_flops`` of the model that ran, ``predictor_agreement``."""
        out = {"routed_fraction": (float(trace.extra["routed_fraction"].mean()), "fraction", False)}
        if "predictor_agreement" in trace.extra:
            out["predictor_agreement"] = (float(trace.extra["predictor_agreement"].mean()), "fraction", True)
        capacity = float(trace.extra["capacity"][0])
        flops = self.dense_train_flops if capacity == 1.0 else self.variant(capacity).train_flops
        if not torch.isnan(flops):
            out["train_flops"] = (float(flops), "flops", False)
        return out

    def decoder(self, budget: Budget, batch_size: int, max_len: int) -> RoutedDecoder:
        """A KV-cached decoder at capacity ``budget`` (1.0: dense backbone), routing by predictor.

        Raises:
            ValueError: random routing (no causal rule), an untrained capacity, or a non-causal
                backbone.
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
    """One capacity's recipe: the dense recipe with more steps (scratch), or a short fine-tune."""
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
    """``init`` resolved: ``auto`` trains from scratch for text tasks that train their backbone."""
    if cfg.init != "auto":
        return cfg.init == "scratch"
    return task.modality == "text" and hasattr(task.config, "train")


@register_method("mod")
class MixtureOfDepths(Method):
    """Mixture-of-Depths: expert-choice top-k token routing around every other block."""

    version = "3"
    paper = "https://arxiv.org/abs/2404.02258"
    extra_metrics = ("routed_fraction", "predictor_agreement", "train_flops")
    reconstructed = False
    Config = MixtureOfDepthsConfig
    # quick profile: one trained capacity, the middle of the default range, instead of three (each
    # is a model trained from scratch at the dense recipe's FLOPs — 134 s of a quick suite's 16 min
    # with two — or a fine-tune, here at half of finetune_fraction)
    quick_options = {"capacities": (0.25,), "finetune_fraction": 0.1}
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    controls = {"random": {"router": "random"}}  # the paper's stochastic routing at equal capacity
    control_only_options = ("random_scale",)
    budget_doc = "capacity c: share of tokens each routed block runs (1.0 = dense; 0.5, 0.25, 0.125 trained)"

    def fit_identity(self) -> MixtureOfDepthsConfig:
        """The config less ``routing``: it changes how a trained model routes, not its training."""
        return dataclasses.replace(self.config, routing="auto")

    def wrap(self, backbone: Backbone) -> MixtureOfDepthsModel:
        """One routed copy of ``backbone`` per capacity (untrained until :meth:`fit`)."""
        return MixtureOfDepthsModel(backbone, self.config)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """1.0 (dense) and the trained capacities, descending."""
        return (1.0, *sorted(self.config.capacities, reverse=True))

    def shape_problems(self, task: Task) -> list[str]:
        """``route_every`` must route at least one of ``task``'s blocks (as :meth:`wrap` checks)."""
        L, every = task.n_blocks(), self.config.route_every
        if every <= L:
            return []
        return [
            f"mod routes no block of its {L}-block backbone with route_every={every}. "
            f"Use route_every <= {L} (2 = every other block, 1 = every block)."
        ]

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
        """Train a routed model per capacity: from scratch at the dense training FLOPs, or tuned.

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
            if scratch:  # the dense backbone's own initial weights: same seed, same builder, built on the host
                with torch.device("cpu"):  # as the backbone was (train_backbone), whatever device the fit runs on
                    initial = task.build_backbone().state_dict()
                variant.net.load_state_dict(initial)
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
        """Analytic forward FLOPs per sample training at ``capacity``: top-k and predictors."""
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
        """FLOPs per sample of a predictor-calibration step: forward, and predictors' backward."""
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

        During joint training a predictor chases routers that are still changing; a short phase on
        fixed labels closes most of the remaining gap to top-k. The network and routers are frozen,
        so nothing but the predictors can change; the labels are the same top-k membership the joint
        phase used.
        """
        if steps == 0:
            return
        pred = list(variant.predictors.parameters())
        frozen = [p for p in variant.parameters() if p.requires_grad and all(p is not q for q in pred)]
        for p in frozen:
            p.requires_grad_(False)  # the forward then builds a graph for the predictors only
        recipe = TrainConfig(
            steps=steps, batch_size=batch_size, lr=self.config.predictor_lr, weight_decay=0.0, warmup_steps=0
        )
        batches = endless(
            lambda epoch: task.batches("train", batch_size=batch_size, seed=seed * 1000 + 500 + epoch, shuffle=True)
        )

        def step_loss(batch: Batch) -> Tensor:
            _, routed = model.run_variant(variant, batch.inputs.to(device), capacity, "topk")
            bce = torch.stack([F.binary_cross_entropy_with_logits(s.predictor_logits, s.topk.float()) for s in routed])
            return bce.mean()

        model.eval()
        variant.train()  # training mode routes by top-k and runs the predictors: the labels and their logits
        variant.net.eval()  # but no dropout: the labels are the top-k choices evaluation will see
        try:
            fit_loop(pred, step_loss, batches, recipe)
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
        """Train one capacity's model by top-k: task loss for net and routers, BCE for predictors.

        The predictors see a detached input and have their own AdamW group, learning rate and
        gradient clip, so they cannot change the language model (not even through a shared
        gradient-norm clip). Both groups follow the recipe's warm-up + cosine schedule.
        """
        model.eval()
        variant.train()
        pred = list(variant.predictors.parameters())
        pred_ids = {id(p) for p in pred}
        main = [p for p in variant.parameters() if id(p) not in pred_ids]
        groups = [  # lr_scale is each group's own peak: the schedule is the recipe's divided by its peak
            ParamGroup(main, lr_scale=recipe.lr, weight_decay=recipe.weight_decay),
            ParamGroup(pred, lr_scale=self.config.predictor_lr, weight_decay=0.0),
        ]
        batches = endless(  # the dense recipe's data order
            lambda epoch: task.batches("train", batch_size=recipe.batch_size, seed=seed * 1000 + epoch, shuffle=True)
        )

        def step_loss(batch: Batch) -> Tensor:
            logits, routed = model.run_variant(variant, task.augment(batch.inputs.to(device)), capacity, "topk")
            loss = task.metric.loss(logits, batch.targets.to(device))
            bce = torch.stack([F.binary_cross_entropy_with_logits(s.predictor_logits, s.topk.float()) for s in routed])
            return loss + bce.mean()  # disjoint parameters: each loss reaches only its own group

        fit_loop(groups, step_loss, batches, recipe, schedule=unit_warmup_cosine(recipe), clip="per_group")
