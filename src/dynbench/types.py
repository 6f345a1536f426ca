"""Values crossing module boundaries: batches, traces, model outputs, measurements and result rows.

Everything here is plain data. Shapes use B = batch, T = tokens, L = blocks, C = channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

Budget = float
"""A method's compute knob at one operating point (capacity, threshold, fraction of layers ...)."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a plugin that has none."""


@dataclass
class Batch:
    """One batch of task data.

    Methods only ever see ``inputs``; ``targets`` are for the task's loss and quality.

    Attributes:
        inputs: model input, e.g. ``(B, N, P)`` image patches or ``(B, T)`` token ids.
        targets: ``(B,)`` class labels or ``(B, T)`` next-token ids.
        sample_ids: ``(B,)`` stable ids of the samples within their split, so per-sample files join
            across runs.
    """

    inputs: Tensor
    targets: Tensor
    sample_ids: Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Return the batch on ``device``; floating-point inputs cast to ``dtype`` when given.

        Token ids and labels keep their integer dtypes; a float target (a regression target)
        stays as it is, so the metric reads it at full precision.
        """
        inputs = self.inputs.to(device)
        if dtype is not None and inputs.is_floating_point():
            inputs = inputs.to(dtype)
        return Batch(inputs, self.targets.to(device), self.sample_ids)

    def select(self, index: Tensor) -> Batch:
        """Return the samples at ``index`` (a 1-D index tensor)."""
        return Batch(self.inputs[index], self.targets[index], self.sample_ids[index.cpu()])


@dataclass
class Trace:
    """What actually ran, per sample. The analytic FLOP count is a function of this record alone.

    Attributes:
        block_tokens: ``(B, L)`` query tokens each block processed for each sample; 0 means the
            block was skipped.
        block_kv: ``(B, L)`` keys each of those tokens attended over (equal to ``block_tokens`` for
            self-attention over the processed tokens).
        block_heads: ``(B, L)`` attention heads executed in each block.
        readout: ``(B,)`` 1 where the backbone's own readout (final norm + head) ran, 0 where a
            method's head produced the output instead (e.g. an early exit).
        controller_flops: ``(B,)`` analytic FLOPs of the method's decision-making (exit heads,
            routers, gates, policies), already included in nothing else.
        exit_layer: ``(B,)`` index of the last block that ran, or ``None`` when the method has no
            notion of exit.
        extra: method-specific per-sample tensors ``(B, ...)``; the 1-D ones are kept in the samples
            file.
        block_mlp_units: ``(B, L)`` MLP hidden units executed in each block, summed over the block's
            tokens (``tokens × mlp_hidden`` for a dense MLP), for methods that run part of an MLP's
            width per token (ACM learners); ``None`` = every processed token ran the whole MLP.
    """

    block_tokens: Tensor
    block_kv: Tensor
    block_heads: Tensor
    readout: Tensor
    controller_flops: Tensor
    exit_layer: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    block_mlp_units: Tensor | None = None

    @classmethod
    def dense(cls, batch_size: int, n_blocks: int, tokens: int, heads: int) -> Trace:
        """The trace of a full dense forward pass: every block on every token with every head."""
        full = torch.full((batch_size, n_blocks), tokens, dtype=torch.long)
        return cls(
            block_tokens=full,
            block_kv=full.clone(),
            block_heads=torch.full((batch_size, n_blocks), heads, dtype=torch.long),
            readout=torch.ones(batch_size, dtype=torch.long),
            controller_flops=torch.zeros(batch_size, dtype=torch.float64),
        )

    @property
    def layers_executed(self) -> Tensor:
        """``(B,)`` number of blocks that ran on at least one token."""
        return (self.block_tokens > 0).sum(dim=1)

    @staticmethod
    def cat(traces: list[Trace]) -> Trace:
        """Concatenate traces of consecutive batches along the sample axis."""
        first = traces[0]
        out: dict[str, Any] = {}
        for f in fields(Trace):
            vals = [getattr(t, f.name) for t in traces]
            if f.name == "extra":
                out["extra"] = {k: torch.cat([v[k] for v in vals]) for k in first.extra}
            elif vals[0] is None:
                out[f.name] = None
            else:
                out[f.name] = torch.cat(vals)
        return Trace(**out)

    def to_cpu(self) -> Trace:
        """The trace with every tensor on the CPU."""
        return self.map(lambda t: t.cpu())

    def map(self, fn: Callable[[Tensor], Tensor]) -> Trace:
        """Apply ``fn`` to every tensor of the trace."""
        return Trace(
            block_tokens=fn(self.block_tokens),
            block_kv=fn(self.block_kv),
            block_heads=fn(self.block_heads),
            readout=fn(self.readout),
            controller_flops=fn(self.controller_flops),
            exit_layer=None if self.exit_layer is None else fn(self.exit_layer),
            extra={k: fn(v) for k, v in self.extra.items()},
            block_mlp_units=None if self.block_mlp_units is None else fn(self.block_mlp_units),
        )

    def select(self, index: Tensor) -> Trace:
        """Return the trace rows at ``index``."""
        return self.map(lambda t: t[index])


@dataclass
class StepOutput:
    """What a dynamic model returns: the logits and the per-sample trace of what ran.

    Attributes:
        logits: ``(B, K)`` class logits or ``(B, T, V)`` token logits.
        trace: per-sample record of executed compute.
    """

    logits: Tensor
    trace: Trace


@dataclass(frozen=True)
class QualitySpec:
    """How a task scores itself.

    Attributes:
        unit: name of the primary metric, used as the ``unit`` of ``quality`` rows (``top1``,
            ``ppl``).
        higher_is_better: direction, read by Pareto code (never guessed).
    """

    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Measurement:
    """One measured number before it becomes a row.

    Attributes:
        metric: a name from :data:`METRICS` or a method/task-specific extra.
        value: the number.
        unit: unit of ``value``.
        higher_is_better: direction of ``metric``.
        n: how many observations stand behind ``value`` (samples, timed calls).
        batch_size: batch size the number was measured at.
    """

    metric: str
    value: float
    unit: str
    higher_is_better: bool
    n: int
    batch_size: int


# The fixed metric vocabulary (README § Result schema): name -> (unit, higher_is_better).
# ``quality`` takes its unit and direction from the task.
METRICS: Mapping[str, tuple[str, bool]] = {
    "flops_per_sample": ("flops", False),
    "controller_flops_per_sample": ("flops", False),
    "flops_ratio": ("ratio", False),
    "latency_ms": ("ms", False),
    "latency_ms_p90": ("ms", False),
    "latency_ms_iqr": ("ms", False),
    "throughput": ("samples/s", True),
    "peak_mem_bytes": ("bytes", False),  # the operating point's weights + inputs + transient peak
    "transient_mem_bytes": ("bytes", False),
    "resident_bytes": ("bytes", False),  # weights of the whole dynamic model, every budget's state included
    "process_peak_bytes": ("bytes", False),
    "speedup_theoretical": ("x", True),
    "speedup_realized": ("x", True),  # mean time(dense) / mean time(method) over interleaved call pairs
    "realization": ("ratio", True),
    "controller_ms": ("ms", False),  # per call, inside the controller modules (a separate, hooked pass)
    "controller_share": ("ratio", False),  # controller time ÷ the method's call time
    "mean_layers": ("layers", False),
    "flops_count_gap": ("ratio", False),
}

# Columns of every result row, in order (README § Result schema).
ROW_COLUMNS: tuple[str, ...] = (
    "run_key",
    "suite",
    "task",
    "task_version",
    "synthetic_data",  # the task's inputs are generated (synthesized speech, toy data), not recorded
    "method",
    "method_version",
    "method_label",
    "reconstructed",
    "reference",  # the dense twin's network: "dense backbone", or e.g. "dht's fine-tuned backbone"
    "control_of",  # for a control run, the label of the learned configuration it controls ("" otherwise)
    "control_kind",  # which control it is ("static", "random", ...: a key of the method's `controls`), or ""
    "budget",
    "is_full_budget",
    "seed",
    "hardware",
    "dtype",  # what the model ran (or, modeled, was priced) at: fp32, tf32, bf16, fp16 (the target's dtype option)
    "modeled",  # the hardware target is a model of a device dynbench does not have: latency is priced, not timed
    "profile",  # "quick" (the plugins' quick options, a sample of the eval split) or "full" (their own recipes)
    "limit",  # the user's --limit (null = none): a smoke run, never averaged with the others
    "eval_samples",  # evaluation samples the run measured (the whole split, the profile's sample or the limit)
    "batch_size",
    "metric",
    "value",
    "unit",
    "higher_is_better",
    "n",
    "ci_low",  # 95% interval of `value` (NaN when none applies), see dynbench.stats
    "ci_high",
    "ci_over",  # what the interval is over: samples, calls, seeds, exact ("" when there is none)
    "suspect",  # True when the measurement broke physics even after a re-measure (realization > 1.1)
    "git_sha",
    "dirty",
    "dynbench_version",
    "torch_version",
    "machine",
    "started_at",
)
