"""Latency and throughput: interleaved timing of a method against dense on real inputs.

Protocol (DESIGN §4): real eval inputs, not one repeated tensor; a warm-up that visits every execution path;
timed calls until both a minimum count and a minimum time are met; the target's own timer (perf counter on
CPU, CUDA events with one synchronisation at the end on GPU); median, p90 and IQR over the calls. Dense and
the method alternate call by call (A B, B A, …) on the same input, so slow drift of the machine hits both
equally and ``speedup_realized`` is a ratio from one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from dynbench.config import MeasureConfig
from dynbench.hardware.base import HardwareTarget


@dataclass(frozen=True)
class TimingStats:
    """Distribution of one model's call durations."""

    median_ms: float  # median call time
    p90_ms: float  # 90th percentile
    iqr_ms: float  # interquartile range (p75 - p25)
    mean_ms: float  # mean, for reference
    n: int  # timed calls

    @classmethod
    def of(cls, durations_ms: Sequence[float]) -> TimingStats:
        """Summarise durations."""
        d = np.asarray(durations_ms, dtype=np.float64)
        q25, q50, q75, q90 = np.percentile(d, [25, 50, 75, 90])
        return cls(float(q50), float(q90), float(q75 - q25), float(d.mean()), int(d.size))


def timed_enough(n: int, elapsed_s: float, cfg: MeasureConfig) -> bool:
    """The stopping rule of a timed loop: ``min_iters`` calls and ``min_time_s`` seconds, or ``max_time_s`` and one."""
    return (n >= cfg.min_iters and elapsed_s >= cfg.min_time_s) or (elapsed_s >= cfg.max_time_s and n >= 1)


def time_interleaved(
    calls: Mapping[str, Callable[[int], Any]],
    n_inputs: int,
    warmup: Sequence[int],
    target: HardwareTarget,
    cfg: MeasureConfig,
) -> dict[str, TimingStats]:
    """Time every callable in ``calls`` on the same inputs, alternating their order call by call.

    Args:
        calls: name → ``fn(i)`` that runs one forward pass on input ``i``.
        n_inputs: inputs are ``0 … n_inputs-1``; the timed loop cycles through them.
        warmup: input indices run (by every callable) before timing — one per execution path and more.
        target: supplies the timer and synchronisation.
        cfg: ``min_iters``, ``min_time_s`` and ``max_time_s``.

    Returns:
        name → timing statistics.
    """
    names = list(calls)
    for i in warmup:
        for name in names:
            calls[name](i)
    target.synchronize()
    timers = {name: target.timer() for name in names}
    t0 = time.perf_counter()
    n = 0
    while True:
        if timed_enough(n, time.perf_counter() - t0, cfg):
            break
        i = n % n_inputs
        order = names if n % 2 == 0 else names[::-1]
        for name in order:
            timers[name].time(lambda name=name, i=i: calls[name](i))
        n += 1
    target.synchronize()
    return {name: TimingStats.of(timers[name].elapsed_ms()) for name in names}


@dataclass(frozen=True)
class ControllerTiming:
    """Wall time spent inside a model's controller modules (routers, gates, exit heads, policies)."""

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
    """Time the controller modules' share of each call, in a pass of its own.

    Forward hooks read the clock when the outermost controller module is entered and left (a controller called
    inside another counts once); on a GPU they synchronise first, which slows the call, so this pass never feeds
    the latency rows, only the split of a call's time into controller and the rest. The loop runs under the same
    ``min_iters`` / ``min_time_s`` / ``max_time_s`` rule as the timing loop; inputs are warm already.

    Args:
        controllers: the model's :meth:`~dynbench.methods.base.DynamicModel.controller_modules`.
        call: ``fn(i)`` that runs the model once on input ``i``.
        n_inputs: inputs are ``0 … n_inputs-1``, cycled.
        target: supplies synchronisation.
        cfg: the loop's limits.

    Returns:
        The timing, or ``None`` when the model has no controller modules.
    """
    modules = list({id(m): m for m in controllers}.values())  # a module listed twice is hooked once
    if not modules:
        return None
    depth, entered, spent = 0, 0, 0

    def enter(module: nn.Module, args: Any) -> None:
        nonlocal depth, entered
        if depth == 0:
            target.synchronize()
            entered = time.perf_counter_ns()
        depth += 1

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal depth, spent
        depth -= 1
        if depth == 0:
            target.synchronize()
            spent += time.perf_counter_ns() - entered

    handles = [h for m in modules for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    inside, whole = [], []
    try:
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
    finally:
        for h in handles:
            h.remove()
    share = sum(inside) / sum(whole) if sum(whole) else 0.0
    return ControllerTiming(float(np.median(inside)) / 1e6, float(share), len(whole))
