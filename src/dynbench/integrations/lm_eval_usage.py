"""What the ``dynbench`` lm-eval model spent: FLOPs, tokens, blocks and time per lm-eval task.

:class:`~dynbench.integrations.lm_eval.DynbenchLM` answers lm-eval's requests; this module keeps the
account. Its :class:`UsageLedger` takes every forward pass (its trace's FLOPs, its inputs' tokens
and blocks) and every request (which lm-eval task and document it belongs to), and times each
forward pass with the hardware target's own call timer — the one the suite's latency rows use
(:mod:`dynbench.harness.timing`): ``time.perf_counter_ns`` on a CPU, CUDA events read with one
synchronisation at the end on a GPU.

Latency, per lm-eval task:

- ``forward_ms``: the model's forward passes; a pass that ran inputs of several requests (a batch,
  ``batch_size`` > 1) is shared equally among its inputs. Tokenizing, log-softmax over the scored
  positions and lm-eval's own work are outside it: this is the model's time.
- ``ms_per_sample`` = ``forward_ms`` ÷ documents (lm-eval's samples: a multiple-choice question
  with all its choices, a whole perplexity document with all its windows); ``ms_per_request`` ÷
  lm-eval requests; ``ms_per_input`` ÷ model inputs (windows, sequences, generation steps).
- ``median_call_ms``: the median duration of the forward passes that ran this task's inputs — the
  latency of one call at this ``batch_size``; with ``batch_size=1`` (the default), the batch-1
  latency that ``bench run`` reports as ``latency_ms``.

The model runs one untimed warm-up pass when it is built, so one-time costs (allocator, kernel
selection, thread pools, a GPU's libraries) are in no request's time. The times are wall time on a
machine that may be busy: compare them between runs on the same idle machine, and use ``bench run``
(warm-up per execution path, interleaved dense calls, repeated timing) for latency claims.

With ``measured_flops=true`` every pass also runs under ``FlopCounterMode``, whose overhead the
times then include (the summary says so). The summary goes into lm-eval's results under
``config.dynbench`` and is logged as a table (:func:`format_summary`) when lm-eval finishes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
from torch import Tensor

from dynbench.hardware.base import CallTimer
from dynbench.types import Trace

T = TypeVar("T")

FLOPS_DOC = "analytic executed FLOPs from each trace; 1 multiply-add = 2 FLOPs; matmuls and attention"
"""How the FLOPs in the summary are counted (the convention of :mod:`dynbench.harness.flops`)."""


@dataclass
class Usage:
    """Compute and time spent on one lm-eval task's requests."""

    requests: int = 0  # lm-eval requests answered (Instances: one per choice, per document to roll, …)
    sequences: int = 0  # model inputs run: rolling windows, (context + choice) sequences, generation steps
    tokens_processed: int = 0  # input tokens fed through the model
    tokens_scored: int = 0  # continuation tokens whose log-probability was returned
    tokens_generated: int = 0  # tokens produced by generate_until
    flops: float = 0.0  # analytic executed FLOPs (Backbone.flops of each trace)
    dense_flops: float = 0.0  # the dense backbone's FLOPs on the same inputs
    controller_flops: float = 0.0  # the part of `flops` spent deciding (exit heads, routers)
    layers: int = 0  # blocks executed, summed over sequences
    measured_flops: float = 0.0  # FlopCounterMode's count (only with measured_flops=true)
    forward_ms: float = 0.0  # forward-pass time; a batch's time shared equally among its inputs

    def add(self, other: Usage) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self, measured: bool, samples: int, call_ms: Sequence[float]) -> dict[str, Any]:
        """The counts plus derived FLOPs ratios and latencies (``None`` where nothing was counted).

        Args:
            measured: keep ``measured_flops`` (only counted with ``measured_flops=true``).
            samples: lm-eval documents these requests came from.
            call_ms: durations of the forward passes that ran these requests' inputs.
        """
        out: dict[str, Any] = asdict(self)
        if not measured:
            out.pop("measured_flops")
        tokens_out = self.tokens_scored + self.tokens_generated
        out["flops_ratio"] = self.flops / self.dense_flops if self.dense_flops else None
        out["flops_per_token"] = self.flops / tokens_out if tokens_out else None
        out["mean_layers"] = self.layers / self.sequences if self.sequences else None
        out["samples"] = samples
        out["forward_calls"] = len(call_ms)
        out["ms_per_sample"] = self.forward_ms / samples if samples else None
        out["ms_per_request"] = self.forward_ms / self.requests if self.requests else None
        out["ms_per_input"] = self.forward_ms / self.sequences if self.sequences else None
        out["median_call_ms"] = float(np.median(call_ms)) if len(call_ms) else None
        return out


class UsageLedger:
    """Per-lm-eval-task :class:`Usage`, documents seen and timed forward passes.

    Args:
        timer: the hardware target's call timer (read once, when a summary is made).
        measured: whether forward passes also run under ``FlopCounterMode``.
    """

    def __init__(self, timer: CallTimer, measured: bool) -> None:
        self.timer = timer
        self.measured = measured
        self.usage: dict[str, Usage] = defaultdict(Usage)
        self.docs: dict[str, set[Any]] = defaultdict(set)  # lm-eval task → doc ids seen
        self.calls: list[list[str]] = []  # lm-eval task of each input of each timed call, in call order

    def count_requests(self, requests: Sequence[Any]) -> None:
        """Count lm-eval requests (``Instance`` objects) and their documents per lm-eval task."""
        for r in requests:
            name = request_task(r)
            self.usage[name].requests += 1
            self.docs[name].add(getattr(r, "doc_id", None))

    def timed(self, fn: Callable[[], T], names: Sequence[str]) -> T:
        """Run one forward pass ``fn`` under the timer; ``names``: each input's lm-eval task."""
        out: list[T] = []
        self.timer.time(lambda: out.append(fn()))
        self.calls.append(list(names))
        return out[0]

    def add_forward(
        self,
        names: Sequence[str],
        seq_len: int,
        trace: Trace,
        flops: Tensor,
        dense_flops: float,
        measured: float | None,
    ) -> None:
        """Record one forward pass's compute.

        Args:
            names: the lm-eval task of each input (row).
            seq_len: tokens per input.
            trace: the pass's trace, on the CPU.
            flops: ``(B,)`` analytic executed FLOPs per row.
            dense_flops: the dense backbone's FLOPs for one row of this length.
            measured: FlopCounterMode's count for the whole pass, or ``None``; shared among the rows
                in proportion to their analytic counts.
        """
        total = float(flops.sum())
        layers = trace.layers_executed.tolist()
        for b, name in enumerate(names):
            u = self.usage[name]
            u.sequences += 1
            u.tokens_processed += seq_len
            u.flops += float(flops[b])
            u.dense_flops += dense_flops
            u.controller_flops += float(trace.controller_flops[b])
            u.layers += int(layers[b])
            if measured is not None and total:
                u.measured_flops += measured * float(flops[b]) / total

    def task_times(self, durations: Sequence[float]) -> dict[str, list[float]]:
        """Share each timed call's duration among its inputs' tasks (into ``forward_ms``).

        Args:
            durations: every timed call's duration (ms), in call order.

        Returns:
            lm-eval task → durations of the calls that ran its inputs.
        """
        per_task: dict[str, list[float]] = defaultdict(list)
        for u in self.usage.values():
            u.forward_ms = 0.0
        for ms, names in zip(durations, self.calls):
            for name in names:
                self.usage[name].forward_ms += ms / len(names)
            for name in dict.fromkeys(names):
                per_task[name].append(ms)
        return per_task

    def summary(self) -> dict[str, Any]:
        """``{"total": …, "by_task": {task: …}}``: :meth:`Usage.as_dict` of everything so far."""
        all_calls = self.timer.elapsed_ms()
        per_task = self.task_times(all_calls)
        total = Usage()
        for u in self.usage.values():
            total.add(u)
        by_task = {
            name: u.as_dict(self.measured, len(self.docs[name]), per_task.get(name, []))
            for name, u in sorted(self.usage.items())
        }
        samples = sum(len(d) for d in self.docs.values())
        return {"total": total.as_dict(self.measured, samples, all_calls), "by_task": by_task}

    def latency_doc(self, batch_size: int) -> str:
        """How the summary's times were taken, for the summary itself."""
        doc = (
            f"wall time of the model's forward passes (the hardware target's call timer), batch_size {batch_size}: "
            "a pass's time is shared equally among its inputs; ms_per_sample = forward_ms / lm-eval documents; "
            "median_call_ms = median pass"
        )
        return doc + ("; includes FlopCounterMode's overhead (measured_flops=true)" if self.measured else "")


def request_task(request: Any) -> str:
    """The lm-eval task a request belongs to (``(none)`` for requests built by hand)."""
    return getattr(request, "task_name", None) or "(none)"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a text table: one row per lm-eval task and a total, FLOPs beside latency."""
    from dynbench.analysis.tables import format_flops

    head = f"dynbench FLOPs and latency — {summary['method']} on {summary['task']}, budget {summary['budget']:g} "
    head += f"({summary['budget_meaning']}), max_length {summary['max_length']}, {summary['hardware']}"
    cols = (
        "task", "samples", "inputs", "tokens in", "tokens out", "FLOPs", "dense FLOPs", "ratio",
        "FLOPs/token out", "layers", "ms/sample", "ms/request", "median call ms",
    )  # fmt: skip
    rows = [cols]
    for name, u in [*summary["by_task"].items(), ("total", summary["total"])]:
        per_token = u["flops_per_token"]
        rows.append(
            (
                name,
                str(u["samples"]),
                str(u["sequences"]),
                str(u["tokens_processed"]),
                str(u["tokens_scored"] + u["tokens_generated"]),
                format_flops(u["flops"]),
                format_flops(u["dense_flops"]),
                _fixed(u["flops_ratio"], 3),
                "-" if per_token is None else format_flops(per_token),
                _fixed(u["mean_layers"], 2),
                _fixed(u["ms_per_sample"], 2),
                _fixed(u["ms_per_request"], 2),
                _fixed(u["median_call_ms"], 2),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join([head, *lines])


def _fixed(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"
