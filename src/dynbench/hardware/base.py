"""The hardware-target contract: where time and memory are measured.

A target owns everything device-specific about measurement — moving data, synchronising, timing
calls and reading the tensor-memory peak — so the harness never branches on the device. One file,
one class, one decorator (``@register_hardware("cpu")``); third-party targets register through the
``dynbench.hardware`` entry-point group.
"""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from dynbench.registry import Registry
from dynbench.types import NoOptions


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
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    modeled: ClassVar[bool] = False

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


HARDWARE: Registry[type[HardwareTarget]] = Registry(
    "hardware target", HardwareTarget, "dynbench.hardware", "dynbench.hardware"
)
register_hardware = HARDWARE.register
