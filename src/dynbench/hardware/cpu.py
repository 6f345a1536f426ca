"""CPU target: ``time.perf_counter_ns`` per call, tensor peak from torch profiler memory events.

``tracemalloc`` cannot see torch's allocations; the profiler's ``[memory]`` events can. Their signed
sizes, summed in time order, give a deterministic peak of tensor memory above what was allocated
before the region.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dynbench.hardware.base import CallTimer, HardwareTarget, cpu_model, options_label, register_hardware
from dynbench.validation import check_range


@dataclass(frozen=True)
class CPUConfig:
    """CPU options."""

    threads: int = 0  # intra-op threads for torch; 0 keeps torch's default (usually the physical cores)
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # what the fitted model and inputs are cast to for
    # measuring (fits stay fp32); fp32 is what every CPU result before this option used. No tf32:
    # CPUs have none

    def __post_init__(self) -> None:
        check_range("CPUConfig.threads", self.threads, 0, advice="Use 0 for torch's default.")


class PerfCounterTimer(CallTimer):
    """Host wall time per call; on a CPU the call has finished when it returns."""

    def __init__(self) -> None:
        self._ns: list[int] = []

    def time(self, fn: Callable[[], Any]) -> None:
        """Run and time one call."""
        t0 = time.perf_counter_ns()
        fn()
        self._ns.append(time.perf_counter_ns() - t0)

    def elapsed_ms(self) -> list[float]:
        """Durations in milliseconds."""
        return [ns / 1e6 for ns in self._ns]


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs each start/stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profiler_tensor_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of CPU tensor memory allocated by ``fn`` above the level at its start."""
    from torch.profiler import ProfilerActivity, profile

    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if str(e.device_type()).endswith("CPU"):
            level += e.nbytes()
            peak = max(peak, level)
    return peak


@register_hardware("cpu")
class CPU(HardwareTarget):
    """The host CPU."""

    Config = CPUConfig

    @property
    def device(self) -> torch.device:
        """``cpu``."""
        return torch.device("cpu")

    def unavailable_reason(self) -> str | None:
        """A CPU is always there."""
        return None

    def setup(self) -> None:
        """Set torch's intra-op threads when configured."""
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    def synchronize(self) -> None:
        """Nothing is queued on a CPU."""

    def timer(self) -> PerfCounterTimer:
        """A perf-counter timer."""
        return PerfCounterTimer()

    def tensor_peak(self, fn: Callable[[], Any]) -> int:
        """Peak from the profiler's memory events."""
        return profiler_tensor_peak(fn)

    def describe(self) -> dict[str, Any]:
        """CPU model, cores, the threads torch uses and the dtype measured at."""
        return {
            "device": cpu_model(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "dtype": self.config.dtype,
        }

    @property
    def label(self) -> str:
        """``cpu``, or with its non-default options: ``cpu[threads=2,dtype=bf16]``."""
        return options_label("cpu", self.config, CPUConfig())
