"""NVIDIA H100 SXM5 80 GB; a **modeled** target.

dynbench has none, so each call is priced, not timed.

Models run on the host CPU (quality and executed FLOPs are the CPU's, exactly); the timing loop's
durations come from the roofline model of :mod:`dynbench.hardware.roofline` with this device's
figures: FP32 67, TF32 494.7, BF16 and FP16 989.4 TFLOP/s dense (NVIDIA prints the sparse figures,
twice these); HBM3 at 3,350 GB/s [V~]. Sources, as read for dynbench
(``docs/hardware-datasheets.md`` tags each figure: [V~] the vendor document exists and secondary
copies agree, [D] derived as cores × 2 × clock, [S] secondary only):
https://www.nvidia.com/en-us/data-center/h100/ and
https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper. Launch cost: 4 µs per op, an
assumption between NVIDIA's 3.8 µs back-to-back launches on a V100
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
    name="NVIDIA H100 SXM5 80 GB",
    peak_flops={"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    bandwidth=3350e9,
    launch_s=4e-6,
    source="NVIDIA H100 product page and Hopper whitepaper; dense = half the printed sparse figures",
)


@register_hardware("h100")
class H100(HardwareTarget):
    """NVIDIA H100 SXM5 80 GB, modeled from its datasheet (``h100[dtype=…]`` for another dtype)."""

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
        """``h100`` or ``h100[dtype=bf16]``."""
        return self.name if self.config.dtype == "fp32" else f"{self.name}[dtype={self.config.dtype}]"
