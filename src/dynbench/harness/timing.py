"""Latency and throughput: interleaved timing of a method against dense on real inputs.

Protocol (docs/architecture.md, "A run"): real eval inputs, not one repeated tensor; a warm-up that
visits every execution path; timed calls until both a minimum count and a minimum time are met; the
target's own timer (perf counter on CPU, CUDA events with one synchronisation at the end on GPU);
median, p90 and IQR over the calls. Dense and the method alternate call by call (A B, B A, …) on the
same input, so slow drift of the machine hits both equally and ``speedup_realized`` is a ratio from
one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from dynbench.config import MeasureConfig
from dynbench.hardware.base import HardwareTarget
from dynbench.methods.base import ControllerClock, controller_clock


@dataclass(frozen=True)
class TimingStats:
    """Distribution of one model's call durations, with every call kept.

    Intervals and comparisons need the calls.
    """

    median_ms: float  # median call time: the batch-1 latency a request sees
    p90_ms: float  # 90th percentile
    iqr_ms: float  # interquartile range (p75 - p25)
    mean_ms: float  # mean call time: what throughput and speedups are made of (FLOPs are means too)
    n: int  # timed calls
    durations_ms: tuple[float, ...] = ()  # every timed call, in call order
    inputs: tuple[int, ...] = ()  # the input index of each timed call

    @classmethod
    def of(cls, durations_ms: Sequence[float], inputs: Sequence[int] = ()) -> TimingStats:
        """Summarise durations (and keep them)."""
        d = np.asarray(durations_ms, dtype=np.float64)
        q25, q50, q75, q90 = np.percentile(d, [25, 50, 75, 90])
        return cls(
            float(q50), float(q90), float(q75 - q25), float(d.mean()), int(d.size),
            tuple(float(x) for x in d), tuple(int(i) for i in inputs),
        )  # fmt: skip


def timed_enough(n: int, elapsed_s: float, cfg: MeasureConfig) -> bool:
    """The stopping rule of a timed loop.

    Stop after ``min_iters`` calls and ``min_time_s`` seconds, or after ``max_time_s`` seconds and
    one call.
    """
    return (n >= cfg.min_iters and elapsed_s >= cfg.min_time_s) or (elapsed_s >= cfg.max_time_s and n >= 1)


def time_interleaved(
    calls: Mapping[str, Callable[[int], Any]],
    n_inputs: int,
    warmup: Sequence[int],
    target: HardwareTarget,
    cfg: MeasureConfig,
    *,
    timed: Sequence[int] | None = None,
) -> dict[str, TimingStats]:
    """Time every callable in ``calls`` on the same inputs, alternating their order call by call.

    Args:
        calls: name → ``fn(i)`` that runs one forward pass on input ``i``.
        n_inputs: inputs are ``0 … n_inputs-1``.
        warmup: input indices run (by every callable) before timing — one per execution path and
            more.
        target: supplies the timer and synchronisation.
        cfg: ``min_iters``, ``min_time_s`` and ``max_time_s``.
        timed: the input indices the timed loop cycles through, in order (default: all of them).
            Warm-up-only inputs (one per rare execution path) stay out of it, so the timed calls are
            a plain sample.

    Returns:
        name → timing statistics, each call's duration and input index kept.
    """
    cycle = list(range(n_inputs)) if timed is None else list(timed)
    if not cycle:
        raise ValueError("time_interleaved got no inputs to time; pass n_inputs >= 1 or a non-empty `timed`.")
    names = list(calls)
    for i in warmup:
        for name in names:
            calls[name](i)
    target.synchronize()
    timers = {name: target.timer() for name in names}
    t0 = time.perf_counter()
    n = 0
    called: list[int] = []
    while True:
        if timed_enough(n, time.perf_counter() - t0, cfg):
            break
        i = cycle[n % len(cycle)]
        order = names if n % 2 == 0 else names[::-1]
        for name in order:
            timers[name].time(lambda name=name, i=i: calls[name](i))
        called.append(i)
        n += 1
    target.synchronize()
    return {name: TimingStats.of(timers[name].elapsed_ms(), called) for name in names}


@dataclass(frozen=True)
class ControllerTiming:
    """Wall time spent inside a model's controller: its controller modules and controller spans."""

    median_ms: float  # controller time per call, median over the calls
    share: float  # controller time ÷ the model's whole call time, summed over the calls
    n: int  # calls


def time_controllers(
    controllers: Sequence[nn.Module],
    call: Callable[[int], Any],
    n_inputs: int,
    target: HardwareTarget,
    cfg: MeasureConfig,
) -> ControllerTiming | None:
    """Time the controller's share of each call, in a pass of its own.

    The clock is read when the outermost piece of controller work is entered and left. Controller
    work is an eager call of a controller module (forward pre/post hooks) or a
    :meth:`~dynbench.methods.base.DynamicModel.controller_span` (how a method marks a traced,
    compiled or CUDA-graph controller stage, which fires no hooks); both share one nesting depth, so
    a controller inside another, a module inside a span or a span inside a module, counts once. On a
    GPU the clock reads synchronise first, which slows the call, so this pass never feeds the
    latency rows, only the split of a call's time into controller and the rest. The loop runs under
    the same ``min_iters`` / ``min_time_s`` / ``max_time_s`` rule as the timing loop; inputs are
    warm already. Hooks and the span clock are removed afterwards, also on an exception.

    Args:
        controllers: the model's :meth:`~dynbench.methods.base.DynamicModel.controller_modules`.
        call: ``fn(i)`` that runs the model once on input ``i``.
        n_inputs: inputs are ``0 … n_inputs-1``, cycled.
        target: supplies synchronisation.
        cfg: the loop's limits.

    Returns:
        The timing, or ``None`` when the model has no controller: no controller modules, and no span
        entered in the first call (which is then the only call made).
    """
    modules = list({id(m): m for m in controllers}.values())  # a module listed twice is hooked once
    depth, entered, spent, spans = 0, 0, 0, 0

    def enter() -> None:
        nonlocal depth, entered
        if depth == 0:
            target.synchronize()
            entered = time.perf_counter_ns()
        depth += 1

    def leave() -> None:
        nonlocal depth, spent
        depth -= 1
        if depth == 0:
            target.synchronize()
            spent += time.perf_counter_ns() - entered

    def enter_span() -> None:
        nonlocal spans
        spans += 1
        enter()

    def enter_module(module: nn.Module, args: Any) -> None:
        enter()

    def leave_module(module: nn.Module, args: Any, output: Any) -> None:
        leave()

    inside: list[int] = []
    whole: list[int] = []
    with ExitStack() as cleanup:  # unwinds hooks and the span clock however the loop ends
        for m in modules:
            cleanup.callback(m.register_forward_pre_hook(enter_module).remove)
            cleanup.callback(m.register_forward_hook(leave_module).remove)
        cleanup.enter_context(controller_clock(ControllerClock(enter_span, leave)))
        t0 = time.perf_counter()
        while True:
            n = len(whole)
            if timed_enough(n, time.perf_counter() - t0, cfg):
                break
            depth, spent = 0, 0
            target.synchronize()
            start = time.perf_counter_ns()
            call(n % n_inputs)
            target.synchronize()
            whole.append(time.perf_counter_ns() - start)
            inside.append(spent)
            if not modules and spans == 0:  # nothing hooked and no span marked: the model has no controller
                return None
    share = sum(inside) / sum(whole) if sum(whole) else 0.0
    return ControllerTiming(float(np.median(inside)) / 1e6, float(share), len(whole))
