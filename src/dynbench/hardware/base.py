"""The hardware-target contract: where time and memory are measured.

A target owns everything device-specific about measurement — moving data, synchronising, timing
calls and reading the tensor-memory peak — so the harness never branches on the device. One file,
one class, one decorator (``@register_hardware("cpu")``); third-party targets register through the
``dynbench.hardware`` entry-point group.
"""

from __future__ import annotations

import dataclasses
import platform
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch

from dynbench.registry import Registry
from dynbench.types import NoOptions

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,  # stored as fp32; CUDA matmuls and convolutions round to TF32 inside
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""A target's ``dtype`` option → the dtype models and floating inputs are cast to."""

DtypeName = Literal["fp32", "tf32", "bf16", "fp16"]


def options_label(name: str, config: Any, defaults: Any) -> str:
    """``name`` or ``name[key=value,...]`` listing the options that differ from their defaults.

    The hardware column and the run key carry this label, so two dtypes (or thread counts) of one
    device never share a run or a row.
    """
    changed = [
        f"{f.name}={getattr(config, f.name)}"
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(defaults, f.name)
    ]
    return f"{name}[{','.join(changed)}]" if changed else name


def cpu_model() -> str:
    """The host processor's model name (/proc/cpuinfo on Linux).

    Used as the CPU target's device and in provenance.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CallTimer(ABC):
    """Times many calls, reading the clocks as late as the device allows.

    ``time(fn)`` runs one call and returns a handle; ``elapsed_ms()`` (called once, after the loop)
    returns every call's duration. This lets a GPU target record events without synchronising inside
    the loop.
    """

    @abstractmethod
    def time(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` once and record its duration."""

    @abstractmethod
    def elapsed_ms(self) -> list[float]:
        """Durations of every timed call, in milliseconds, in call order."""


class HardwareTarget(ABC):
    """A device on which models are timed and their memory read.

    Class variables:
        name: registry key, set by ``@register_hardware``.
        Config: frozen dataclass of options (threads, device index …).
        modeled: True for a device dynbench does not have: models run on the CPU, and its timer
            prices each call by a model (:mod:`dynbench.hardware.roofline`) instead of reading a
            clock; rows say ``modeled``.
        checked_against: for a modeled target, the measured target whose rows check the model
            and a piece of the device name those rows must carry (``("cuda", "H100")``; ``""``:
            any), so a report sets modeled beside measured latency; ``None`` for measured targets.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    modeled: ClassVar[bool] = False
    checked_against: ClassVar[tuple[str, str] | None] = None

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The torch device models and inputs go to."""

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why this target cannot run here, or ``None`` when it can."""

    def setup(self) -> None:  # noqa: B027 — optional hook
        """Apply the target's settings (threads, …) before measuring."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until queued work on the device has finished."""

    @abstractmethod
    def timer(self) -> CallTimer:
        """A fresh call timer for this device."""

    @abstractmethod
    def tensor_peak(self, fn: Callable[[], Any]) -> int:
        """Run ``fn`` once; peak tensor memory (bytes) it allocated above the level at its start."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts recorded with every row measured here (device name, threads, driver …)."""

    @property
    def label(self) -> str:
        """The value of the ``hardware`` column: the registry name, or name plus options."""
        return self.name

    @property
    def dtype_name(self) -> str:
        """The ``dtype`` option (``fp32`` for a target without one): the rows' ``dtype`` column."""
        return getattr(self.config, "dtype", "fp32")

    @property
    def torch_dtype(self) -> torch.dtype:
        """What the harness casts the fitted model and floating inputs to before measuring.

        Fits always run at fp32 (their cache is shared by every dtype); the cast is the
        deployment step. A modeled target keeps fp32 on the host: its dtype prices the calls only.
        """
        return torch.float32 if self.modeled else TORCH_DTYPES[self.dtype_name]

    def cast(self, module: torch.nn.Module) -> torch.nn.Module:
        """Cast ``module``'s fp32 parameters and buffers to :attr:`torch_dtype`, in place.

        Only fp32 tensors move: float64 bookkeeping (budgets, calibration tables) and integer
        buffers keep their precision, as a deployed bf16 model would keep them on the host.
        """
        dtype = self.torch_dtype
        if dtype == torch.float32:
            return module
        return module._apply(lambda t: t.to(dtype) if t.dtype == torch.float32 else t)


HARDWARE: Registry[type[HardwareTarget]] = Registry(
    "hardware target", HardwareTarget, "dynbench.hardware", "dynbench.hardware"
)
register_hardware = HARDWARE.register
