"""Transformer^-1: a predictor and an RL policy choose each input's depth among precompiled paths.

Paper: Ji et al., "Transformer^-1: Input-Adaptive Computation for Resource-Constrained Deployment",
https://arxiv.org/abs/2501.16394. We know it only from its abstract (and one secondary summary), so
everything below its three named ideas is our reconstruction (``reconstructed = True``).

Mechanism: a gradient-boosted-tree *complexity predictor* reads cheap features of the input and
predicts the minimal sufficient depth; the sample runs to that depth, then a small recurrent
*policy* trained with PPO says continue or stop at each later *fold point*. The blocks between two
fold points form one segment, prepared once as a static graph; samples that stop leave the batch, so
execution is grouped by path.

What we reconstructed or changed:

- Backbone at any depth: the backbone stays frozen (so the full budget is exactly dense) and an exit
  head per block is trained with early_exit's heads and loop (copies of the readout; shared readout
  for LM-sized heads). The exit heads train on ``train``, as early_exit's do.
- Fold points: every depth when L <= 8, else ``n_paths`` (default 4) depths ``round(k·L/n)``, e.g.
  {8, 15, 23, 30} for L = 30. Block 0 is always its own segment: the predictor reads its output.
  With ``compiled=True`` a segment runs as a ``torch.jit.trace`` graph on CPU and as one captured
  CUDA graph per batch shape on CUDA (:mod:`dynbench.methods._static_paths`).
- Predictor (:mod:`dynbench.methods._tree_ensemble`): scikit-learn's
  ``HistGradientBoostingClassifier`` (a LightGBM stand-in) on the embedding's statistics, input
  entropy, block 0's pooled output and block 0's exit-head confidence. Label: the smallest fold
  point whose prediction equals the full model's (classification) or whose per-sequence
  cross-entropy is within ``text_tolerance`` nats of the full model's (token outputs). The trees
  live in buffers and run as tensor ops. Traversal is comparisons and additions, which the FLOP
  convention (matmuls and attention) counts as 0, so ``predictor_ops_per_sample`` reports
  ``n_trees · (depth + 1)`` instead; the block-0 exit head it reads is a matmul, counted in
  ``controller_flops``.
- Policy (:mod:`dynbench.methods._stop_policy`): a GRU cell reads a projection of the detached,
  normalised pooled hidden state, the fold point's exit-head confidence (top-1 probability, margin,
  entropy: our addition; the head is a matmul, counted, and for pooled outputs it is the output when
  the sample stops), the one-hot predicted bucket, k/(K-1) and a "past the bucket" flag. Its
  continue logit is ``a(h) − g(λ)·softplus(c(h))`` with ``g(λ) = log(1 + λ/λ_floor)``: the price λ
  enters only there, so one policy serves every budget and a higher price can only stop a sample
  earlier (depth and FLOPs fall monotonically with the budget).
- Reward: −λ·(FLOPs of the next segment / dense FLOPs) per continue, and at the stop +1[correct]
  (classification) or −(CE − CE of the full model) (token outputs: the per-sample shift lowers
  variance and leaves the optimal policy unchanged). PPO (:mod:`dynbench.methods._ppo`): clip 0.2,
  GAE λ = 0.95, γ = 1, λ drawn per episode from the default budget grid, at least
  ``rollout_episodes`` episodes per rollout (a small fit set is tiled, each copy with fresh prices).
- Fit samples: the task's held-out validation split by default (``fit_split="val"`` means
  ``task.validation_split``, never an evaluation split): on the backbone's own training data the
  shallow exits are right far more often than on unseen inputs, so predictor and policy would learn
  to stop too early. The policy trains on every fit sample with an out-of-sample predicted bucket,
  as at deployment (2-fold cross-fitting); the deployed trees see all of them.
- Decisions are per sample (a sequence exits as a whole, as in early_exit). The policy can only move
  a stop later than the predicted bucket; ``policy_moved`` reports how often it does.
- Budget b ∈ [0, 1]: λ = λ_max·(1 − b)², so the default grid spans λ = 0.0009 … 0.25. At b = 1
  (λ = 0) nothing stops (the output is the dense backbone's), but the controller still runs, so the
  full budget shows its overhead, as early_exit's heads do.
- ``policy="random"``: each sample gets a random fold depth with the mean depth the learned policy
  had on the fit samples at that budget. The draw comes from the sample's content hash and the fit
  seed (:mod:`dynbench.methods._sample_hash`), so it does not depend on the batch or the budget.
- ``policy="static"``: the control of fixed depth. At each default budget every sample stops at ONE
  fold point: of the fold points whose FLOPs per sample do not exceed the learned policy's mean
  FLOPs on the task's validation split at that budget, the one of best validation quality (none
  fits: the shallowest). Chosen in ``fit`` on the validation split, never the evaluation split;
  between default budgets the FLOPs cap is interpolated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods import _exit_heads, _sample_hash, _static_control
from dynbench.methods._exit_heads import HEAD_TRAINING, build_exit_heads, exit_kind, train_exit_heads
from dynbench.methods._host_copy import HostCopy
from dynbench.methods._operating import TensorSet, backbone_parts, exit_parts
from dynbench.methods._ppo import PPOConfig, StoppingEpisodes, first_stop, train_stopping_policy
from dynbench.methods._row_partition import partition_rows
from dynbench.methods._sample_hash import sample_uniforms
from dynbench.methods._static_control import best_fixed_config
from dynbench.methods._static_paths import (
    CudaGraphSegment,
    GraphCache,
    Segment,
    Stage,
    graphs_allowed,
    run_stage,
    trace_segment,
)
from dynbench.methods._stop_policy import PRICE_FLOOR, StopPolicy, confidence_stats, price
from dynbench.methods._tree_ensemble import TreeEnsemble
from dynbench.methods.base import DynamicModel, Method, freeze, register_method
from dynbench.models.backbone import Backbone
from dynbench.models.block import block_flops
from dynbench.tasks.base import Split, Task
from dynbench.types import Budget, StepOutput, Trace
from dynbench.validation import check_choices, check_range

Policy = Literal["learned", "static", "random"]
"""``learned``: predictor + PPO policy; ``static`` / ``random``: the controls (module docstring)."""
ALL_DEPTHS_UP_TO = 8
"""With ``n_paths=0``: every depth is a fold point for backbones up to this deep, else 4."""
ENTROPY_BINS = 16
"""Histogram bins of the input-entropy feature for real-valued inputs (images, spectrograms)."""
CHOICE_ADVICE = {
    "policy": "Use 'learned' (the method), 'static' (the best fixed depth at matched FLOPs) or 'random' "
    "(random depths).",
    "fit_split": "Use 'val' (held-out data, the default) or 'train'.",
    "heads": "tinv trains head copies or shares the readout; early_exit's tuned exits are not offered.",
}
"""The sentence each choice field's error message ends with."""


@dataclass(frozen=True)
class TransformerInverseConfig:
    """Paths, predictor, policy and training recipe; defaults take seconds on the toy tasks."""

    policy: Policy = "learned"  # "learned": predictor + PPO policy; "static": the best fixed depth at the learned
    # mean FLOPs (chosen on validation data); "random": random depth at the learned mean depth
    compiled: bool = False  # run segments as traced graphs (CPU) / captured CUDA graphs (CUDA) instead of eagerly
    n_paths: int = 0  # fold points (depths a sample can stop at); 0 = every depth for L <= 8, else 4
    lambda_max: float = 1.0  # compute price at budget 0: stopping one whole model earlier is worth 1 correct answer
    text_tolerance: float = 0.05  # nats per token: a depth is "sufficient" for a sequence within this of full CE
    feature_tokens: int = 16  # token outputs: positions block 0's exit head reads for the predictor's features
    fit_split: Literal["val", "train"] = "val"  # where the predictor and policy learn: "val" means
    # task.validation_split (held-out: on the backbone's training split its shallow exits are right
    # far more often than on unseen inputs), or "train"
    fit_samples: int = 4096  # samples of fit_split the predictor and policy see (half each)
    fit_flops: float = 4e11  # cap on the dense FLOPs of collecting them: fewer samples for big models
    collect_batch: int = 128  # batch size while collecting hidden states and exit outputs (no grad)
    gbdt_iterations: int = 50  # boosting rounds: trees per class; ~50 is plenty for a few thousand samples
    gbdt_leaves: int = 15  # leaves per tree (sklearn's default is 31; smaller trees = cheaper traversal)
    gbdt_depth: int = 6  # maximum tree depth: bounds the traversal to 6 comparisons per tree
    proj_dim: int = 4  # width of the projected hidden state the policy reads: narrow, so that PPO reads the
    # exit-head confidence rather than memorising a small fit set's hard samples
    # (docs/architecture.md)
    hidden: int = 32  # GRU width of the policy
    exit_steps: int = 300  # exit-head training steps (early_exit's default)
    exit_batch_size: int = 64  # exit-head training batch size
    heads: Literal["auto", "copy", "shared"] = "auto"  # exit heads as in early_exit: "copy", "shared" or
    # "auto" (shared for LM-sized heads)
    rollout_episodes: int = 2048  # episodes per PPO rollout at least: a smaller fit set is tiled, each copy
    # with fresh prices, so PPO takes enough gradient steps on a small validation split
    ppo: PPOConfig = field(default_factory=PPOConfig)  # PPO recipe (clip 0.2, GAE 0.95, γ = 1)

    def __post_init__(self) -> None:
        check_choices(self, CHOICE_ADVICE)
        name = type(self).__name__
        check_range(f"{name}.n_paths", self.n_paths, 0, advice="Use 0 (auto) or e.g. 4.")
        check_range(f"{name}.lambda_max", self.lambda_max, 0, low_open=True, advice="Use e.g. 1.0.")
        check_range(f"{name}.text_tolerance", self.text_tolerance, 0, advice="Use e.g. 0.05.")
        check_range(f"{name}.fit_flops", self.fit_flops, 0, low_open=True, advice="Use e.g. 4e11.")
        for field_name in (
            "feature_tokens",
            "fit_samples",
            "collect_batch",
            "gbdt_iterations",
            "gbdt_depth",
            "proj_dim",
            "hidden",
            "exit_batch_size",
            "rollout_episodes",
        ):
            check_range(f"{name}.{field_name}", getattr(self, field_name), 1)
        check_range(f"{name}.gbdt_leaves", self.gbdt_leaves, 2, advice="Use 15.")
        check_range(f"{name}.exit_steps", self.exit_steps, 0, advice="Use 300.")


def fold_depths(n_blocks: int, n_paths: int) -> list[int]:
    """Depths a sample can stop at, ascending, the full depth last.

    ``n_paths=0``: every depth up to ``ALL_DEPTHS_UP_TO`` blocks, else 4. Otherwise ``round(k·L/n)``
    (halves up) for ``k = 1 … n``, at least 1, deduplicated (so fewer when ``n > L``).
    """
    L = n_blocks
    n = n_paths if n_paths > 0 else (L if L <= ALL_DEPTHS_UP_TO else 4)
    n = min(n, L)
    return sorted({max(1, (2 * k * L + n) // (2 * n)) for k in range(1, n + 1)})


def input_entropy(inputs: Tensor) -> Tensor:
    """``(B,)`` entropy (nats) of each sample's token histogram (integers) or 16-bin values."""
    B = inputs.shape[0]
    flat = inputs.reshape(B, -1)  # (B, P)
    P = flat.shape[1]
    if flat.dtype.is_floating_point:
        v = flat.float()
        lo, hi = v.amin(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)  # (B, 1)
        bins = ((v - lo) / (hi - lo).clamp_min(1e-12) * ENTROPY_BINS).long().clamp(0, ENTROPY_BINS - 1)  # (B, P)
        counts = torch.zeros(B, ENTROPY_BINS, device=v.device).scatter_add_(1, bins, torch.ones_like(v))
    else:
        s = flat.sort(dim=1).values  # (B, P)
        new = torch.ones_like(s, dtype=torch.bool)
        new[:, 1:] = s[:, 1:] != s[:, :-1]
        group = new.long().cumsum(dim=1) - 1  # (B, P) id of each distinct value
        counts = torch.zeros(B, P, device=s.device).scatter_add_(1, group, torch.ones(B, P, device=s.device))
    p = counts / P  # (B, bins)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)  # (B,)


def per_sample_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """``(B,)`` cross-entropy per sample; token outputs ``(B, T, V)`` average over positions."""
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), targets, reduction="none")
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none").mean(dim=1)


class TransformerInverseModel(DynamicModel):
    """The frozen backbone with exit heads, a tree predictor, a stop policy and a path executor.

    Args:
        backbone: the dense model (frozen by the fit).
        depths: fold points, ascending, the last equal to the backbone's depth.
        shared: exit heads share the backbone's readout (early_exit's ``SharedExit``).
        policy: ``"learned"``, ``"static"`` or ``"random"``.
        compiled: run segments as prepared graphs.
        lambda_max: compute price at budget 0.
        budgets: the default budgets (the grid the policy trains on and the random baseline is
            calibrated at).
        proj_dim, hidden: policy widths.
        feature_tokens: token outputs: positions block 0's exit head reads for the features.

    Buffers:
        fitted: ``()`` bool.
        calib_budgets / calib_depth: ``(n_budgets,)`` the learned policy's mean depth on the fit
            samples at each default budget.
        random_seed: ``()`` long, the fit seed the random control's per-sample draws mix in.
        static_quality / static_cost: ``(K,)`` float64 validation quality (higher is better) and
            FLOPs per sample of stopping every sample at each fold point.
        static_cap: ``(n_budgets,)`` the learned policy's mean FLOPs per sample on the validation
            split.
        static_path: ``(n_budgets,)`` long, the static control's fold-point index at each default
            budget (see the module docstring).
    """

    fitted: Tensor
    calib_budgets: Tensor
    calib_depth: Tensor
    random_seed: Tensor
    static_quality: Tensor
    static_cost: Tensor
    static_cap: Tensor
    static_path: Tensor

    def __init__(
        self,
        backbone: Backbone,
        *,
        depths: list[int],
        shared: bool,
        policy: Policy,
        compiled: bool,
        lambda_max: float,
        budgets: Sequence[Budget],
        proj_dim: int,
        hidden: int,
        feature_tokens: int,
    ) -> None:
        super().__init__(backbone)
        self.depths = depths
        self.bounds = sorted({1, *depths})  # segment ends: block 0 alone (the predictor reads it), then fold points
        self.shared = shared
        self.policy_kind = policy
        self.compiled = compiled
        self.lambda_max = lambda_max
        self.feature_tokens = feature_tokens
        self.exit_heads = build_exit_heads(backbone, "shared" if shared else "copy")  # blocks 0 … L-2
        self.predictor = TreeEnsemble()
        floor = PRICE_FLOOR * lambda_max
        self.policy = StopPolicy(backbone.block_config.d_model, len(depths), proj_dim, hidden, floor)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._host_fitted = HostCopy()  # read once per change: a GPU forward pass must not stop for it
        self.register_buffer("calib_budgets", torch.tensor(list(budgets), dtype=torch.float64))
        self.register_buffer("calib_depth", torch.full((len(budgets),), float("nan"), dtype=torch.float64))
        self.register_buffer("random_seed", torch.zeros((), dtype=torch.long))
        K, nan = len(depths), float("nan")
        self.register_buffer("static_quality", torch.full((K,), nan, dtype=torch.float64))
        self.register_buffer("static_cost", torch.full((K,), nan, dtype=torch.float64))
        self.register_buffer("static_cap", torch.full((len(budgets),), nan, dtype=torch.float64))
        self.register_buffer("static_path", torch.full((len(budgets),), K - 1, dtype=torch.long))  # unfitted: full
        self._graphs = GraphCache()

    def controller_modules(self) -> list[nn.Module]:
        """Predictor, policy and exit heads: everything that is not the backbone."""
        return [self.predictor, self.policy, *self.exit_heads]

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """What forward at ``budget`` reads under the configured policy.

        Learned: every block, the predictor, the policy less its critic (training only), block 0's
        exit head and the exit heads of the fold points. Random: every block and the fold points'
        exit heads (a sample may stop at any of them) and the calibration. Static: its one path
        (blocks and exit head, the readout on the last path). The random and static policies run the
        backbone alone at the full budget. Exit heads after a block that is no fold point are never
        read.
        """
        bb = self.backbone
        L, K = bb.n_blocks, len(self.depths)
        folds = [d - 1 for d in self.depths[:-1]]  # exit heads a stop at a fold point reads
        if self.policy_kind == "learned" and K > 1:
            policy = [self.policy.proj, self.policy.w_ih, self.policy.w_hh, self.policy.actor]
            mods = [*backbone_parts(bb, range(L)), self.predictor, *policy, TensorSet([self.fitted])]
            heads = sorted({0, *folds})
        elif budget >= 1.0 or K == 1:
            return [*backbone_parts(bb, range(L)), TensorSet([self.fitted])]
        elif self.policy_kind == "static":
            depth = self.depths[self.static_index(budget)]
            state = [self.static_path, self.calib_budgets, self.static_quality, self.static_cost, self.static_cap]
            mods = [*backbone_parts(bb, range(depth), readout=depth == L), TensorSet([self.fitted, *state])]
            heads = [] if depth == L else [depth - 1]
        else:
            calibration = [self.fitted, self.calib_budgets, self.calib_depth, self.random_seed]
            mods = [*backbone_parts(bb, range(L)), TensorSet(calibration)]
            heads = folds
        return mods + [part for i in heads for part in exit_parts(self.exit_heads[i])]

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """How often the policy moved a stop past the bucket, the predicted depth, predictor ops."""
        ex = trace.extra
        return {
            "policy_moved": (float(ex["policy_moved"].double().mean()), "fraction", False),
            "predicted_depth": (float(ex["predicted_depth"].double().mean()), "layers", False),
            "predictor_ops_per_sample": (float(ex["predictor_ops"].double().mean()), "ops", False),
        }

    def _apply(self, fn: Any, recurse: bool = True) -> TransformerInverseModel:
        self._graphs.clear()  # moved or cast: graphs are prepared again for the new device / dtype
        return super()._apply(fn, recurse)

    # ---- execution -------------------------------------------------------------------------------

    def run_blocks(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Run blocks ``start … stop-1`` on ``(A, T, C)`` by segment (graphs when compiled)."""
        ends = [b for b in self.bounds if start < b <= stop]
        for end in ends:
            x = self._segment(start, end, x)
            start = end
        return x

    def _segment(self, start: int, end: int, x: Tensor) -> Tensor:
        blocks = list(self.backbone.blocks)[start:end]
        if not self.compiled or not graphs_allowed():
            for block in blocks:
                x = block(x)  # (A, T, C)
            return x
        key: tuple = (start, end, x.device, x.dtype, tuple(x.shape[1:]))
        if x.device.type == "cuda":
            key = (*key, x.shape[0])  # a CUDA graph is captured for one batch shape
        graph = self._graphs.get(key)
        if graph is None:
            segment = Segment(blocks)
            if x.device.type == "cuda":
                graph = CudaGraphSegment(segment, x)
            else:
                graph = trace_segment(segment, x)
            self._graphs[key] = graph
        return graph(x)

    def start_stage(self, inputs: Tensor, embedded: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
        """Features and predictor on block 0's output ``first`` → (buckets ``(B,)``, head 0 logits).

        Block 0 itself is backbone work and runs before, as a segment: a stage is controller work
        only, so its call is the controller time (:meth:`_stage`).
        """
        feats, head0 = self.features(inputs, embedded, first)
        return self.predictor(feats), head0  # the tree runs on the model's device: (B,) buckets there

    def step_stage(
        self, x: Tensor, start: Tensor, h: Tensor, k: int, lam: float, probe: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decision at fold point ``k``: the exit head's probe (unless given), then the policy.

        Returns:
            The new policy state ``(A, H)``, the continue logit ``(A,)`` and the probe's logits.
        """
        if probe is None:
            head = self.exit_heads[self.depths[k] - 1]
            picks = self.feature_positions(x.shape[1])
            probe = head(x) if picks is None else head(x[:, picks.to(x.device)])  # (A, K) or (A, S, V)
        h, go = self.policy(self.pool(x), confidence_stats(probe), start, k, h, lam)  # (A, H), (A,)
        return h, go, probe

    def _stage(self, key: str | tuple, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Run a controller stage: traced once per key and shape when compiled on CPU, else eager.

        The call runs in a controller span, traced or eager: a traced stage fires no module hooks,
        and the span makes both paths time the same work (features, confidence statistics and
        pooling included), so eager and compiled controller times compare. Tracing a new graph stays
        outside the span.
        """
        name, *consts = key if isinstance(key, tuple) else (key,)
        device = args[0].device
        if not self.compiled or not graphs_allowed() or device.type != "cpu":
            with self.controller_span():
                return run_stage(self, name, tuple(consts), args)  # CUDA: the controller stays eager (few ops)
        full_key = (key, device, args[0].dtype, tuple(args[0].shape[1:]))
        graph = self._graphs.get(full_key)
        if graph is None:
            graph = trace_segment(Stage(self, name, *consts), args)
            self._graphs[full_key] = graph
        with self.controller_span():
            return graph(*args)

    def pool(self, x: Tensor) -> Tensor:
        """``(A, T, C)`` → ``(A, C)``: the CLS token for pooled readouts, else the position mean."""
        return x[:, 0] if self.backbone.readout.pool == "cls" else x.mean(dim=1)

    def feature_positions(self, T: int) -> Tensor | None:
        """Token outputs: ``(S,)`` evenly spaced positions block 0's head reads; else ``None``."""
        if self.backbone.readout.pool != "none":
            return None
        S = min(self.feature_tokens, T)
        return torch.arange(1, S + 1) * T // S - 1

    def features(self, inputs: Tensor, embedded: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
        """The predictor's features ``(B, F)`` float64 and block 0's exit-head logits (a matmul).

        Features: mean/std of the embedding's token norms, its overall mean/std, input entropy;
        block 0's pooled output, mean/std of its token norms and of the update's norms; the head's
        mean top-1 probability, margin over the runner-up and entropy.
        """
        en = embedded.float().norm(dim=-1)  # (B, T)
        fn = first.float().norm(dim=-1)  # (B, T)
        upd = (first.float() - embedded.float()).norm(dim=-1)  # (B, T)
        picks = self.feature_positions(first.shape[1])
        head = self.exit_heads[0]
        logits = head(first) if picks is None else head(first[:, picks.to(first.device)])  # (B, K) or (B, S, V)
        e = embedded.float().flatten(1)
        stats = [
            en.mean(1), en.std(1, correction=0), e.mean(1), e.std(1, correction=0), input_entropy(inputs),
            fn.mean(1), fn.std(1, correction=0), upd.mean(1), upd.std(1, correction=0),
        ]  # fmt: skip
        parts = [self.pool(first).float(), torch.stack(stats, dim=1), confidence_stats(logits)]
        feats = torch.cat(parts, dim=1)  # (B, C + 12)
        return feats.double(), logits

    def path_index(self, budget: Budget, inputs: Tensor) -> Tensor:
        """Fixed-depth policies: ``(B,)`` fold-point index per sample, known before any block runs.

        ``"static"``: every sample the same index, :meth:`static_index`. ``"random"``: a random
        index per sample (drawn from its content hash and ``random_seed``) with the learned policy's
        mean depth at ``budget``.
        """
        if self.policy_kind == "static":
            return torch.full((inputs.shape[0],), self.static_index(budget), dtype=torch.long)
        lo_first = self.calib_budgets.flip(0).cpu().numpy(), self.calib_depth.flip(0).cpu().numpy()
        target = float(np.interp(budget, *lo_first))  # mean depth to match
        D = torch.tensor(self.depths, dtype=torch.float64)
        j = int(torch.searchsorted(D, torch.tensor([target], dtype=torch.float64), right=True)[0]) - 1
        if j < 0:
            return torch.zeros(inputs.shape[0], dtype=torch.long)
        if j >= len(self.depths) - 1:
            return torch.full((inputs.shape[0],), len(self.depths) - 1, dtype=torch.long)
        p_up = (target - D[j]) / (D[j + 1] - D[j])  # chance of the deeper neighbour, so the mean is the target
        draws = sample_uniforms(inputs, int(self.random_seed))  # (B,) the same at every budget
        return torch.where(draws < p_up, j + 1, j).long()

    def static_index(self, budget: Budget) -> int:
        """The static control's fold-point index at ``budget``.

        At a default budget the index fitted there; between them the same rule at a FLOPs cap
        interpolated between the default budgets (the nearest one's outside them); the full budget
        runs every block.
        """
        if budget >= 1.0:
            return len(self.depths) - 1
        hit = (self.calib_budgets - budget).abs() < 1e-9  # (n_budgets,)
        if bool(hit.any()):
            return int(self.static_path[hit][0])
        lo_first = self.calib_budgets.flip(0).cpu().numpy(), self.static_cap.flip(0).cpu().numpy()
        return best_fixed_config(self.static_quality, self.static_cost, float(np.interp(budget, *lo_first)))

    def path_flops(self, inputs_shape: tuple[int, ...]) -> Tensor:
        """``(K,)`` float64 FLOPs per sample of stopping at each fold point, known before any block.

        As the static and random policies run: no predictor, no policy steps; the exit head counts
        as controller.
        """
        K = len(self.depths)
        at = torch.arange(K)  # (K,) one row per fold point
        none = torch.zeros(K, dtype=torch.long)
        tokens = self.backbone.n_tokens(inputs_shape)
        trace = self._trace(at, at, none, none, torch.zeros(K, dtype=torch.bool), tokens, False)
        return self.backbone.flops(trace, inputs_shape)

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Predictor → start bucket, segments up to it, then the policy at each later fold point.

        Raises:
            ValueError: ``budget`` outside ``[0, 1]``, or the model has not been fitted.
        """
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"transformer_inverse budget must lie in [0, 1], got {budget}.")
        if not self._host_fitted(self.fitted):
            raise ValueError(
                "transformer_inverse has no fitted predictor/policy yet. Call TransformerInverse.fit(model, task, "
                "seed=...) or load a fitted state_dict."
            )
        bb = self.backbone
        K = len(self.depths)
        x = bb.embed(inputs)  # (B, T, C)
        B, dev = x.shape[0], x.device
        tokens = bb.n_tokens(tuple(inputs.shape[1:]))
        learned = self.policy_kind == "learned" and K > 1
        full = budget >= 1.0
        lam = price(budget, self.lambda_max)
        reached = 0
        steps = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) policy steps per sample
        head0: Tensor | None = None
        if learned:
            first = self.run_blocks(x, 0, 1)  # (B, T, C) block 0, the predictor's input: backbone, not controller
            start, head0 = self._stage("start", (inputs, x, first))  # (B,) buckets, block 0's head
            x, reached = first, 1
            h = torch.zeros(B, self.policy.hidden, device=dev, dtype=self.policy.proj.weight.dtype)  # (A, H)
        else:  # static or random baseline (or a single path): the depth is known before any block runs
            target = torch.full((B,), K - 1, dtype=torch.long) if full or K == 1 else self.path_index(budget, inputs)
            start = target.to(dev)
        active = torch.arange(B, device=dev)  # (A,) batch positions still running
        stop_at = torch.full((B,), K - 1, dtype=torch.long, device=dev)  # (B,) fold-point index each stopped at
        reused = torch.zeros(B, dtype=torch.bool, device=dev)  # (B,) output = the logits the policy probed
        probes = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) exit heads run for the policy (not head 0)
        picks = self.feature_positions(x.shape[1])  # token outputs: the positions a probe reads
        logits: Tensor | None = None
        for k, depth in enumerate(self.depths):
            x = self.run_blocks(x, reached, depth)  # (A, T, C)
            reached = depth
            if k == K - 1:
                out = bb.readout(x)  # (A, K) or (A, T, V)
                logits = out if logits is None else logits.index_copy_(0, active, out)
                break
            if learned:
                mine = start[active]
                if depth == 1:  # block 0's head already ran for the features: the policy reads it
                    h, go, probe = self._stage(("step", k, lam), (x, mine, h, head0[active]))
                else:
                    h, go, probe = self._stage(("probe+step", k, lam), (x, mine, h))  # (A, H), (A,), probe
                    probes[active] += 1
                steps[active] += 1
                stop = (mine <= k) & (go <= 0) & (not full)  # (A,)
            else:
                stop = start[active] == k
            split = partition_rows(stop)  # one host sync per fold point
            if split is None:
                continue
            taken, rest, n_stop = split  # (E,), (A',)
            gone = active.index_select(0, taken)  # (E,)
            if learned and picks is None:
                out = probe.index_select(0, taken)  # the probe read exactly what the output reads (the CLS token)
                reused.index_fill_(0, gone, True)
            else:
                out = self.exit_heads[depth - 1](x.index_select(0, taken))  # (E, K) or (E, T, V)
            if logits is None:
                logits = out.new_empty((B, *out.shape[1:]))
            logits.index_copy_(0, gone, out)
            stop_at.index_fill_(0, gone, k)
            if n_stop == len(active):
                break
            active, x = active.index_select(0, rest), x.index_select(0, rest)  # (A',), (A', T, C)
            if learned:
                h = h.index_select(0, rest)  # (A', H)
        assert logits is not None  # narrowing only: the last fold point always produces the survivors' output
        # one copy to the host for the trace, not one per tensor
        stop_at, start, steps, probes, reused = torch.stack(
            [stop_at, start if start.device == dev else start.to(dev), steps, probes, reused.long()]
        ).cpu()
        return StepOutput(logits, self._trace(stop_at, start, steps, probes, reused.bool(), tokens, learned))

    def _trace(
        self,
        stop_at: Tensor,
        start: Tensor,
        steps: Tensor,
        probes: Tensor,
        reused: Tensor,
        tokens: int,
        learned: bool,
    ) -> Trace:
        bb = self.backbone
        L = bb.n_blocks
        D = torch.tensor(self.depths)
        depth = D[stop_at]  # (B,)
        ran = torch.arange(L)[None, :] < depth[:, None]  # (B, L)
        exited = depth < L
        ctrl = steps.double() * self.policy.step_flops()  # (B,)
        ctrl = ctrl + (exited & ~reused).double() * bb.readout.flops(tokens)  # exit head on the stopping samples
        picks = self.feature_positions(tokens)
        probe_flops = bb.readout.flops(tokens if picks is None else len(picks))  # one exit head on S positions
        ctrl = ctrl + probes.double() * probe_flops  # heads the policy read
        if learned:
            ctrl = ctrl + probe_flops  # block 0's head, for the features (and the policy at depth 1)
        predicted = D[start.clamp(max=len(self.depths) - 1)]
        return Trace(
            block_tokens=ran.long() * tokens,
            block_kv=ran.long() * tokens,
            block_heads=ran.long() * bb.n_heads,
            readout=(~exited).long(),
            controller_flops=ctrl,
            exit_layer=depth - 1,
            extra={
                "predicted_depth": predicted,
                "policy_moved": depth != predicted if learned else torch.zeros_like(exited),
                "predictor_ops": torch.full(
                    depth.shape, self.predictor.ops_per_sample() if learned else 0.0, dtype=torch.float64
                ),
            },
        )


@dataclass
class FitData:
    """What the fit collects once per training sample (no grad).

    Attributes:
        features: ``(N, F)`` float64 predictor features.
        pooled: ``(N, K, C)`` pooled hidden state at every fold point.
        correct: ``(N, K)`` 1/0 (or per-token accuracy) of the output at every fold point.
        ce: ``(N, K)`` cross-entropy of that output.
        agree: ``(N, K)`` bool, classification: the output's argmax equals the full model's.
        conf: ``(N, K, 3)`` the policy's confidence statistics of the output (on the probed
            positions).
    """

    features: Tensor
    pooled: Tensor
    correct: Tensor
    ce: Tensor
    agree: Tensor
    conf: Tensor


@torch.no_grad()
def collect(model: TransformerInverseModel, task: Task, *, split: Split, n: int, batch_size: int, seed: int) -> FitData:
    """Run ``n`` shuffled samples of ``split`` through every fold point's output."""
    bb, device = model.backbone, next(model.backbone.parameters()).device
    L = bb.n_blocks
    parts: dict[str, list[Tensor]] = {k: [] for k in ("features", "pooled", "correct", "ce", "agree", "conf")}
    for batch in task.batches(split, batch_size=batch_size, seed=seed, shuffle=True, limit=n):
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        x0 = bb.embed(inputs)  # (B, T, C)
        x = bb.blocks[0](x0)  # (B, T, C)
        parts["features"].append(model.features(inputs, x0, x)[0].cpu())
        reached, pooled, correct, ce, argmax, conf = 1, [], [], [], [], []
        picks = model.feature_positions(x.shape[1])
        for depth in model.depths:
            for block in list(bb.blocks)[reached:depth]:
                x = block(x)
            reached = depth
            out = bb.readout(x) if depth == L else model.exit_heads[depth - 1](x)  # (B, K) or (B, T, V)
            pooled.append(model.pool(x).float().cpu())
            correct.append(task.metric.correct(out, targets).double().cpu())
            ce.append(per_sample_ce(out, targets).double().cpu())
            argmax.append(out.argmax(dim=-1).cpu())
            conf.append(confidence_stats(out if picks is None else out[:, picks.to(device)]).cpu())  # as probed
        parts["pooled"].append(torch.stack(pooled, dim=1))
        parts["correct"].append(torch.stack(correct, dim=1))
        parts["ce"].append(torch.stack(ce, dim=1))
        parts["conf"].append(torch.stack(conf, dim=1))
        preds = torch.stack(argmax, dim=1)  # (B, K) or (B, K, T)
        same = preds == preds[:, -1:]
        parts["agree"].append(same if same.dim() == 2 else same.all(dim=2))
    return FitData(**{k: torch.cat(v) for k, v in parts.items()})


def sufficient_bucket(data: FitData, *, text: bool, tolerance: float) -> Tensor:
    """``(N,)`` the smallest fold-point index as good as the full model's (the predictor's label).

    Classification: the argmax equals the full model's. Token outputs: per-sequence cross-entropy
    within ``tolerance`` of the full model's. The last fold point always qualifies.
    """
    ok = data.ce <= data.ce[:, -1:] + tolerance if text else data.agree.clone()  # (N, K)
    ok[:, -1] = True
    return ok.long().argmax(dim=1)  # first True


@register_method("transformer_inverse", aliases=("tinv",))
class TransformerInverse(Method):
    """Reconstructed Transformer^-1: GBDT predictor + PPO stop policy over precompiled paths."""

    version = "4"  # what each version changed: docs/architecture.md
    shared_parts = (_exit_heads, _sample_hash, _static_control)
    paper = "https://arxiv.org/abs/2501.16394"
    extra_metrics = ("policy_moved", "predicted_depth", "predictor_ops_per_sample")
    reconstructed = True
    Config = TransformerInverseConfig
    # quick profile: a third of the exit-head steps, PPO rounds and boosting rounds, a quarter of
    # the fit samples and half the episodes per rollout; 4 budgets of 6
    quick_options = {
        "exit_steps": 100,
        "fit_samples": 1024,
        "rollout_episodes": 1024,
        "gbdt_iterations": 20,
        "ppo.iterations": 12,
    }
    quick_budgets = 4
    controls = {"static": {"policy": "static"}, "random": {"policy": "random"}}  # matched mean FLOPs, see the doc
    budget_range = (0.0, 1.0)
    full_budget = 1.0
    budget_doc = "b ∈ [0, 1]: compute price λ = λ_max·(1 − b)²; 1.0 = dense (nothing stops) … 0.5"

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """Six operating points, the full budget first; denser near 1, where quality moves most."""
        return (1.0, 0.97, 0.93, 0.85, 0.7, 0.5)

    def fit_identity(self) -> TransformerInverseConfig:
        """The config less ``policy`` and ``compiled``: the fit reads neither, so all share one fit.

        The fit chooses the static control's paths whatever ``policy`` is, so the cached fit serves
        all three; ``compiled`` only changes how the fitted paths execute (the contract tests check
        they agree).
        """
        return dataclasses.replace(self.config, policy="learned", compiled=False)

    def wrap(self, backbone: Backbone) -> TransformerInverseModel:
        """Exit heads after every block, an empty predictor and an untrained policy."""
        cfg = self.config
        L = backbone.n_blocks
        if L == 0:
            raise ValueError("transformer_inverse needs a backbone with at least one block, got 0 blocks.")
        return TransformerInverseModel(
            backbone,
            depths=fold_depths(L, cfg.n_paths),
            shared=exit_kind(cfg.heads, backbone.readout) != "copy",  # tinv shares the large heads early_exit tunes
            policy=cfg.policy,
            compiled=cfg.compiled,
            lambda_max=cfg.lambda_max,
            budgets=self.budgets(L),
            proj_dim=cfg.proj_dim,
            hidden=cfg.hidden,
            feature_tokens=cfg.feature_tokens,
        )

    def fit(self, model: TransformerInverseModel, task: Task, *, seed: int) -> None:  # type: ignore[override]
        """Exit heads (early_exit's loop), then fold-point outputs, the predictor and the policy.

        Last, whatever ``policy`` says, the static control's paths are chosen on the validation
        split.

        Raises:
            ValueError: the training split has fewer than 4 samples, or the validation split is
                empty.
        """
        cfg = self.config
        torch.manual_seed(seed)
        freeze(model.backbone)
        model.random_seed.fill_(seed)
        was_training = model.training
        model.eval()
        if not model.shared and len(model.exit_heads) > 0:
            recipe = dataclasses.replace(HEAD_TRAINING, steps=cfg.exit_steps, batch_size=cfg.exit_batch_size)
            train_exit_heads(model.backbone, model.exit_heads, task, recipe, seed=seed)  # early_exit's loop
        model.eval()
        K = len(model.depths)
        if K > 1:
            self._fit_controller(model, task, seed)
        model.fitted.fill_(True)
        if K > 1:  # one path: static is that path (the buffer's default)
            self._fit_static(model, task, seed)
        model.train(was_training)

    def _fit_controller(self, model: TransformerInverseModel, task: Task, seed: int) -> None:
        cfg = self.config
        bb = model.backbone
        split = task.validation_split if cfg.fit_split == "val" else "train"  # "val" names the role: imagenet's
        # validation split is minival, its "val" the evaluation split
        shape = tuple(next(task.batches(split, batch_size=1)).inputs.shape[1:])
        dense = bb.dense_flops(shape)
        n = min(cfg.fit_samples, task.n_samples(split), max(4, int(cfg.fit_flops // dense)))
        if n < 4:
            raise ValueError(
                f"transformer_inverse needs >= 4 fit samples, split {split!r} of task '{task.name}' has {n}."
            )
        data = collect(model, task, split=split, n=n, batch_size=cfg.collect_batch, seed=seed)  # on the host
        device = next(bb.parameters()).device
        controller = (model.predictor, model.policy)  # small: fitted on the host from the host statistics
        for part in controller:
            part.cpu()
        self._fit_controller_on_host(model, data, dense, shape, seed)
        for part in controller:
            part.to(device)

    def _fit_controller_on_host(
        self, model: TransformerInverseModel, data: FitData, dense: float, shape: tuple[int, ...], seed: int
    ) -> None:
        """Fit the tree predictor and the stopping policy from ``data``, both on the host."""
        cfg = self.config
        bb = model.backbone
        text = bb.readout.pool == "none"
        labels = sufficient_bucket(data, text=text, tolerance=cfg.text_tolerance)  # (N,)
        boosting = {"iterations": cfg.gbdt_iterations, "leaves": cfg.gbdt_leaves, "depth": cfg.gbdt_depth}
        # the policy learns from the buckets it will get at deployment, which are out-of-sample
        start = model.predictor.cross_fitted_predictions(data.features, labels, **boosting, seed=seed)  # (N,)
        model.predictor.fit(data.features, labels, **boosting, seed=seed)  # the deployed trees see every sample
        D = model.depths
        tokens = bb.n_tokens(shape)
        one = torch.tensor(tokens)
        per_block = float(block_flops(bb.block_config, one, one, torch.tensor(bb.n_heads))) / dense
        seg = torch.tensor([(D[k + 1] - D[k]) * per_block for k in range(len(D) - 1)] + [0.0])  # (K,)
        quality = -(data.ce - data.ce[:, -1:]) if text else data.correct  # (N, K)
        lams = torch.tensor([price(b, cfg.lambda_max) for b in self.budgets(bb.n_blocks) if b < 1.0])
        pooled, conf = data.pooled, data.conf
        N = len(labels)
        reps = -(-cfg.rollout_episodes // N)  # tiles of the fit samples per rollout
        tiled = torch.arange(N).repeat(reps)  # (E,) every sample equally often
        observed = {"pooled": pooled[tiled], "conf": conf[tiled]}  # tiled once; only the prices change per rollout
        base = StoppingEpisodes(quality.float()[tiled], torch.zeros(len(tiled), len(D)), start[tiled], observed)

        def make_episodes(gen: torch.Generator) -> StoppingEpisodes:
            lam = lams[torch.randint(len(lams), (len(tiled),), generator=gen)]  # (E,) one price per episode
            return StoppingEpisodes(base.quality, lam[:, None] * seg[None, :], base.first, {**observed, "lam": lam})

        def policy_fn(ep: StoppingEpisodes) -> tuple[Tensor, Tensor]:
            return model.policy.unroll(ep.context["pooled"], ep.context["conf"], ep.first, ep.context["lam"])

        torch.manual_seed(seed)  # the policy starts from the same weights whatever ran before wrap()
        for layer in model.policy.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        params = list(model.policy.parameters())
        for p in params:
            p.requires_grad_(True)
        model.policy.train()
        with torch.enable_grad():
            train_stopping_policy(policy_fn, params, make_episodes, cfg.ppo, seed=seed)
        model.policy.eval()
        with torch.no_grad():  # calibrate the random baseline: the learned policy's mean depth per default budget
            depth_of = torch.tensor(D, dtype=torch.float64)
            for i, b in enumerate(model.calib_budgets.tolist()):
                lam = torch.full((N,), price(b, cfg.lambda_max))
                logits, _ = model.policy.unroll(pooled, conf, start, lam)  # (N_B, K)
                go_on = (logits > 0) | (b >= 1.0)
                model.calib_depth[i] = depth_of[first_stop(go_on, start)].mean()

    def _fit_static(self, model: TransformerInverseModel, task: Task, seed: int) -> None:
        """Choose the static control's fold point per default budget on the validation split.

        Raises:
            ValueError: the validation split is empty.
        """
        cfg = self.config
        bb = model.backbone
        split = task.validation_split
        available = task.n_samples(split)
        if available == 0:
            raise ValueError(
                f"transformer_inverse chooses its static control on the validation split '{split}', which is empty "
                f"for task '{task.name}'. Give the task validation samples."
            )
        shape = tuple(next(task.batches(split, batch_size=1)).inputs.shape[1:])
        n = min(cfg.fit_samples, available, max(4, int(cfg.fit_flops // bb.dense_flops(shape))))
        budgets = model.calib_budgets.tolist()
        scores, learned = validation_costs(
            model, task, split=split, n=n, batch_size=cfg.collect_batch, seed=seed, budgets=budgets
        )  # (N, K), (n_budgets,)
        metric = task.metric
        sign = 1.0 if metric.spec.higher_is_better else -1.0
        per_point = [sign * metric.aggregate(scores[:, k].numpy()) for k in range(scores.shape[1])]
        quality = torch.tensor(per_point, device=model.static_quality.device)
        model.static_quality.copy_(quality)
        model.static_cost.copy_(model.path_flops(shape))
        model.static_cap.copy_(learned)
        for i, b in enumerate(budgets):
            full = b >= 1.0  # the full budget reproduces dense: the last path, whatever the validation says
            pick = len(model.depths) - 1 if full else best_fixed_config(quality, model.static_cost, float(learned[i]))
            model.static_path[i] = pick


@torch.no_grad()
def validation_costs(
    model: TransformerInverseModel,
    task: Task,
    *,
    split: Split,
    n: int,
    batch_size: int,
    seed: int,
    budgets: Sequence[Budget],
) -> tuple[Tensor, Tensor]:
    """What the static control is chosen from: per-fold-point sample scores, the learned FLOPs.

    Args:
        model: the fitted model (any ``policy_kind``: the learned policy runs here).
        task: supplies ``split`` and the metric.
        split: the validation split's name.
        n: samples to use (a seeded shuffle of ``split``).
        batch_size: samples per forward.
        seed: the shuffle's seed.
        budgets: where to measure the learned policy.

    Returns:
        ``(N, K)`` float64 metric scores of stopping every sample at each fold point, and
        ``(len(budgets),)`` float64 mean FLOPs per sample of the learned policy at each budget
        (controller included).
    """
    bb, device = model.backbone, next(model.backbone.parameters()).device
    L = bb.n_blocks
    scores: list[Tensor] = []
    flops = torch.zeros(len(budgets), dtype=torch.float64, device="cpu")  # summed from traces, host tensors
    seen = 0
    kind, model.policy_kind = model.policy_kind, "learned"  # the cap is the learned policy's compute
    try:
        for batch in task.batches(split, batch_size=batch_size, seed=seed, shuffle=True, limit=n):
            inputs, targets = batch.inputs.to(device), batch.targets.to(device)
            shape = tuple(inputs.shape[1:])
            x, reached, per_point = bb.embed(inputs), 0, []  # (B, T, C)
            for depth in model.depths:
                for block in list(bb.blocks)[reached:depth]:
                    x = block(x)  # (B, T, C)
                reached = depth
                out = bb.readout(x) if depth == L else model.exit_heads[depth - 1](x)  # what a stop there outputs
                per_point.append(task.metric.score(out, targets).double().cpu())  # (B,)
            scores.append(torch.stack(per_point, dim=1))  # (B, K)
            for i, b in enumerate(budgets):
                flops[i] += bb.flops(model(inputs, budget=b).trace, shape).sum()
            seen += len(inputs)
    finally:
        model.policy_kind = kind
    return torch.cat(scores), flops / max(seen, 1)
