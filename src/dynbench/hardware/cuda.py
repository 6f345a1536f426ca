"""CUDA target: CUDA events per call with one synchronisation at the end, allocator peak for memory.

Events are recorded on the current stream around each call and read only after the whole loop, so
the timing itself adds no host-device synchronisation (asynchronous gains such as CUDA graphs stay
visible). A method that synchronises on its own (``.item()`` to decide an exit) pays for it, and
wall time shows it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dynbench.hardware.base import CallTimer, DtypeName, HardwareTarget, options_label, register_hardware
from dynbench.validation import check_range


@dataclass(frozen=True)
class CUDAConfig:
    """CUDA options."""

    index: int = 0  # which visible GPU (cuda:index)
    dtype: DtypeName = "fp32"  # what the fitted model and inputs are cast to for measuring (fits stay
    # fp32); tf32 keeps fp32 storage and lets matmuls and convolutions use TF32 tensor cores

    def __post_init__(self) -> None:
        check_range("CUDAConfig.index", self.index, 0, advice="Use 0 for the first visible GPU.")


class CUDAEventTimer(CallTimer):
    """CUDA events around each call; one ``synchronize`` when the durations are read."""

    def __init__(self) -> None:
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def time(self, fn: Callable[[], Any]) -> None:
        """Record start/end events around one call (no synchronisation)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        self._events.append((start, end))

    def elapsed_ms(self) -> list[float]:
        """Synchronise once, then read every event pair."""
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in self._events]


@register_hardware("cuda")
class CUDA(HardwareTarget):
    """An NVIDIA GPU through torch.cuda."""

    Config = CUDAConfig

    @property
    def device(self) -> torch.device:
        """``cuda:index``."""
        return torch.device("cuda", self.config.index)

    def unavailable_reason(self) -> str | None:
        """No CUDA build, or no such GPU."""
        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False (CPU-only torch build or no GPU visible)"
        if self.config.index >= torch.cuda.device_count():
            return f"cuda:{self.config.index} requested but only {torch.cuda.device_count()} GPU(s) visible"
        return None

    def setup(self) -> None:
        """Make the target GPU current; allow TF32 matmuls exactly when the dtype is tf32."""
        torch.cuda.set_device(self.device)
        tf32 = self.config.dtype == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    def synchronize(self) -> None:
        """Wait for the GPU."""
        torch.cuda.synchronize(self.device)

    def timer(self) -> CUDAEventTimer:
        """An event timer."""
        return CUDAEventTimer()

    def tensor_peak(self, fn: Callable[[], Any]) -> int:
        """``reset_peak_memory_stats`` → run → ``max_memory_allocated``.

        What was allocated before the run is subtracted.
        """
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - before

    def describe(self) -> dict[str, Any]:
        """GPU name, memory, CUDA and driver-visible facts."""
        props = torch.cuda.get_device_properties(self.device)
        return {
            "device": props.name,
            "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "dtype": self.config.dtype,
        }

    @property
    def label(self) -> str:
        """``cuda:index``, with ``[dtype=…]`` when not fp32 (``cuda:0[dtype=bf16]``)."""
        return options_label(f"cuda:{self.config.index}", dataclasses.replace(self.config, index=0), CUDAConfig())
