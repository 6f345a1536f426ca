"""NVIDIA Jetson AGX Orin (64 GB, MAXN); a **modeled** target.

dynbench has none, so each call is priced, not timed.

Models run on the host CPU (quality and executed FLOPs are the CPU's, exactly); the timing loop's
durations come from the roofline model of :mod:`dynbench.hardware.roofline` with this device's
figures: Ampere, 2,048 CUDA cores and 64 tensor cores at 1.3 GHz: FP32 5.33 TFLOP/s [D], FP16/BF16
tensor 42.6 TFLOP/s dense [D] (NVIDIA prints only sparse INT8, 171 TOPS for the GPU); LPDDR5 at
204.8 GB/s [S]. Sources, as read for dynbench (``docs/hardware-datasheets.md`` tags each figure:
[V~] the vendor document exists and secondary copies agree, [D] derived as cores × 2 × clock, [S]
secondary only): https://www.nvidia.com/en-us/autonomous-machines/embedded-systems/jetson-orin/.
Launch cost: 4 µs per op, an assumption between NVIDIA's 3.8 µs back-to-back launches on a V100
(developer.nvidia.com/blog/cuda-graphs/, 2019) and the 5 µs often quoted for an empty kernel.

What the model leaves out (kernel efficiency below peak, caches, overlap, the host's work between
launches) is why its goal is "within 2× and the same ranking of methods", checked on the CPU where
latency can be measured (``docs/architecture.md`` § Hardware targets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dynbench.hardware.base import HardwareTarget, register_hardware
from dynbench.hardware.cpu import profiler_tensor_peak
from dynbench.hardware.roofline import (
    DeviceSpec,
    ModeledConfig,
    RooflineTimer,
    modeled_description,
    modeled_problem,
)

SPEC = DeviceSpec(
    name="NVIDIA Jetson AGX Orin 64 GB (MAXN)",
    peak_flops={"fp32": 5.33e12, "fp16": 42.6e12, "bf16": 42.6e12},
    bandwidth=204.8e9,
    launch_s=4e-6,
    source="NVIDIA Jetson Orin page; FP32/FP16 derived from cores x clock",
)


@register_hardware("jetson-agx-orin")
class JetsonAGXOrin(HardwareTarget):
    """Jetson AGX Orin 64 GB (MAXN), modeled from its datasheet; ``[dtype=…]`` for another dtype."""

    Config = ModeledConfig
    modeled = True
    spec = SPEC

    @property
    def device(self) -> torch.device:
        """``cpu``: the model runs on the host; only its time is the device's."""
        return torch.device("cpu")

    def unavailable_reason(self) -> str | None:
        """None unless the device has no peak for the configured dtype (nothing to measure)."""
        return modeled_problem(self.spec, self.config.dtype)

    def synchronize(self) -> None:
        """Nothing is queued: every call runs synchronously on the CPU."""

    def timer(self) -> RooflineTimer:
        """Prices each call on this device (:class:`~dynbench.hardware.roofline.RooflineTimer`)."""
        return RooflineTimer(self.spec, self.config.dtype)

    def tensor_peak(self, fn: Callable[[], Any]) -> int:
        """The CPU run's tensor peak: the same allocations the device would make at fp32."""
        return profiler_tensor_peak(fn)

    def describe(self) -> dict[str, Any]:
        """The device, that it is modeled, the figures used and the host that ran the model."""
        return modeled_description(self.spec, self.config.dtype)

    @property
    def label(self) -> str:
        """``jetson-agx-orin`` or ``jetson-agx-orin[dtype=bf16]``."""
        return self.name if self.config.dtype == "fp32" else f"{self.name}[dtype={self.config.dtype}]"
