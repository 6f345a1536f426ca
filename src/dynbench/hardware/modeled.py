"""Modeled targets: devices dynbench does not have, each call priced by the roofline, not timed.

``jetson-agx-xavier``, ``jetson-agx-orin``, ``a100``, ``h100`` and ``h200`` (``[dtype=bf16]`` etc.
where the datasheet prints a peak), and ``cpu-roofline``: this machine's CPU priced by the same
model from figures measured on it, the check of the model against ``cpu``. Models run on the host
CPU — quality and executed FLOPs are the CPU run's, exactly — and the timing loop's durations come
from :mod:`dynbench.hardware.roofline` with the device's figures below, so the harness's paired
speedups and rows are its own. Rows say ``modeled``; ``bench ls hardware`` marks these targets.

One class serves the six devices (they differ in data only); each is registered under its name
with its :class:`DeviceSpec`. The figures, as read for dynbench (``docs/hardware-datasheets.md``
tags each: [V~] the vendor document exists and secondary copies agree, [D] derived as 2 × cores ×
clock, [S] secondary only):

- Jetson AGX Xavier 32 GB, MAXN — Volta, 512 CUDA cores and 64 tensor cores at 1,377 MHz: FP32 1.41
  TFLOP/s [D], FP16 tensor 11.3 TFLOP/s dense [D] (NVIDIA prints "11 TFLOPS"), no TF32/BF16;
  LPDDR4x at 136.5 GB/s [S/D]. https://developer.nvidia.com/embedded/jetson-agx-xavier-developer-kit
- Jetson AGX Orin 64 GB, MAXN — Ampere, 2,048 CUDA cores, 64 tensor cores at 1.3 GHz: FP32 5.33
  TFLOP/s [D], FP16/BF16 tensor 42.6 TFLOP/s dense [D] (NVIDIA prints only sparse INT8); LPDDR5 at
  204.8 GB/s [S]. https://www.nvidia.com/en-us/autonomous-machines/embedded-systems/jetson-orin/
- A100 SXM4 80 GB — FP32 19.5, TF32 156, BF16 and FP16 312 TFLOP/s dense; HBM2e at 2,039 GB/s [V~].
  https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
- H100 SXM5 80 GB — FP32 67, TF32 494.7, BF16 and FP16 989.4 TFLOP/s dense (NVIDIA prints the sparse
  figures, twice these); HBM3 at 3,350 GB/s [V~]. https://www.nvidia.com/en-us/data-center/h100/
- H200 SXM 141 GB — the H100's compute (FP32 67, TF32 494.7, BF16 and FP16 989.4 dense) with HBM3e
  at 4,800 GB/s [S/D]. https://www.nvidia.com/en-us/data-center/h200/
- ``cpu-roofline`` — the host: matmul FLOP/s per dtype, copy bandwidth and the cost of a tiny op,
  measured once per process when the target is first used
  (:func:`~dynbench.hardware.roofline.measured_cpu_spec`, about 0.5 s a figure).

Launch cost: 4 µs per op for the five GPUs, an assumption between NVIDIA's 3.8 µs back-to-back
launches on a V100 (https://developer.nvidia.com/blog/cuda-graphs/, 2019) and the 5 µs often quoted
for an empty kernel. What the model leaves out (kernel efficiency below peak, caches, overlap, the
host's work between launches) is why its goal is "within 2× and the same ranking of methods": each
modeled target names the measured rows that check it (``checked_against``: ``cpu-roofline`` the
``cpu`` rows, ``h100`` the ``cuda`` rows measured on an H100 …), and the report sets the two side by
side (:mod:`dynbench.analysis.roofline_check`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from dynbench.hardware.base import HardwareTarget, options_label, register_hardware
from dynbench.hardware.cpu import profiler_tensor_peak
from dynbench.hardware.roofline import (
    CPU_DTYPES,
    DeviceSpec,
    ModeledConfig,
    RooflineTimer,
    measured_cpu_spec,
    modeled_description,
    modeled_problem,
)

LAUNCH_S = 4e-6  # per op: an assumption (module docstring)
DEVICES: dict[str, DeviceSpec] = {
    "jetson-agx-xavier": DeviceSpec(
        "NVIDIA Jetson AGX Xavier 32 GB (MAXN)", {"fp32": 1.41e12, "fp16": 11.3e12}, 136.5e9, LAUNCH_S,
        "NVIDIA Jetson AGX Xavier module and dev-kit pages; FP32/FP16 derived from cores x clock",
    ),
    "jetson-agx-orin": DeviceSpec(
        "NVIDIA Jetson AGX Orin 64 GB (MAXN)", {"fp32": 5.33e12, "fp16": 42.6e12, "bf16": 42.6e12}, 204.8e9,
        LAUNCH_S, "NVIDIA Jetson Orin page; FP32/FP16 derived from cores x clock",
    ),
    "a100": DeviceSpec(
        "NVIDIA A100 SXM4 80 GB", {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}, 2039e9,
        LAUNCH_S, "NVIDIA A100 datasheet (r4)",
    ),
    "h100": DeviceSpec(
        "NVIDIA H100 SXM5 80 GB", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}, 3350e9,
        LAUNCH_S, "NVIDIA H100 page and Hopper whitepaper; dense = half the printed sparse figures",
    ),
    "h200": DeviceSpec(
        "NVIDIA H200 SXM 141 GB", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}, 4800e9,
        LAUNCH_S, "NVIDIA H200 page; dense = half the printed sparse figures",
    ),
}  # fmt: skip
"""Each modeled datasheet device's figures, by target name."""
CHECKED_AGAINST = {
    "jetson-agx-xavier": ("cuda", "Xavier"),
    "jetson-agx-orin": ("cuda", "Orin"),
    "a100": ("cuda", "A100"),
    "h100": ("cuda", "H100"),
    "h200": ("cuda", "H200"),
}
"""The measured rows that check each device's model: ``cuda`` rows whose device name has it."""


def twin_of(gpu_name: str) -> str | None:
    """The datasheet target that models this GPU (``NVIDIA H100 PCIe``: ``h100``), or None."""
    return next((name for name, (_, piece) in CHECKED_AGAINST.items() if piece in gpu_name), None)


@functools.cache
def host_cpu_spec(dtype: str, threads: int) -> DeviceSpec:
    """This CPU's figures at fp32 and ``dtype`` on ``threads`` threads, measured once a process."""
    return measured_cpu_spec(threads, dtypes=tuple(dict.fromkeys(("fp32", dtype))))


class ModeledTarget(HardwareTarget):
    """A device priced by the roofline: ``<name>`` or ``<name>[dtype=…]``, registered per device."""

    Config = ModeledConfig
    modeled = True
    spec: ClassVar[DeviceSpec | None]  # None: this machine's CPU, measured at first use (``cpu-roofline``)

    def device_spec(self) -> DeviceSpec:
        """The figures calls are priced by: the datasheet's, or the host CPU's as measured now."""
        return self.spec or host_cpu_spec(self.config.dtype, torch.get_num_threads())

    @property
    def device(self) -> torch.device:
        """``cpu``: the model runs on the host; only its time is the device's."""
        return torch.device("cpu")

    def unavailable_reason(self) -> str | None:
        """None unless the device has no peak for the configured dtype (nothing to price by)."""
        if self.spec is None:  # the host: measurable at any dtype a CPU runs
            if self.config.dtype in CPU_DTYPES:
                return None
            return f"A CPU has no '{self.config.dtype}' matmul to measure. Use one of: {', '.join(CPU_DTYPES)}."
        return modeled_problem(self.spec, self.config.dtype)

    def synchronize(self) -> None:
        """Nothing is queued: every call runs synchronously on the CPU."""

    def timer(self) -> RooflineTimer:
        """Prices each call on this device (:class:`~dynbench.hardware.roofline.RooflineTimer`)."""
        return RooflineTimer(self.device_spec(), self.config.dtype)

    def tensor_peak(self, fn: Callable[[], Any]) -> int:
        """The CPU run's tensor peak: the allocations the device would make at fp32."""
        return profiler_tensor_peak(fn)

    def describe(self) -> dict[str, Any]:
        """The device, that it is modeled, the figures used and the host that ran the model."""
        return modeled_description(self.device_spec(), self.config.dtype)

    @property
    def label(self) -> str:
        """The target's name, with ``[dtype=…]`` when not fp32."""
        return options_label(self.name, self.config, ModeledConfig())


def _register(name: str, spec: DeviceSpec | None, checked_against: tuple[str, str]) -> None:
    cls = type(
        f"Modeled_{name.replace('-', '_')}", (ModeledTarget,), {"spec": spec, "checked_against": checked_against}
    )
    register_hardware(name)(cls)


for _name, _spec in DEVICES.items():  # one registered class per device: they differ in data only
    _register(_name, _spec, CHECKED_AGAINST[_name])
_register("cpu-roofline", None, ("cpu", ""))
