"""Peak memory: tensor memory and, as a second figure, the process footprint.

Tensor memory comes from the target (profiler events on CPU, the allocator on CUDA); the footprint
is the peak resident set of the process.

``peak_mem_bytes`` = bytes of the parameters and buffers the operating point reads (its operating
modules, :meth:`~dynbench.methods.base.DynamicModel.operating_modules`) + the input batch + the
transient peak the forward pass allocated on top: what a deployment of that one operating point
needs. The same definition holds on every target, so methods compare fairly (a method with extra
heads pays for their weights; a method that keeps one trained model per budget pays for one of
them). For a dynamic model the peak depends on the path, so it is the maximum over several inputs,
the costliest paths first. ``resident_bytes`` = bytes of the whole model, every budget's state
included: what the benchmark process holds to sweep all operating points.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dynbench.hardware.base import HardwareTarget


@dataclass(frozen=True)
class MemoryStats:
    """Memory of one model at one batch size."""

    peak_bytes: int  # operating weights + inputs + transient peak
    transient_bytes: int  # the forward pass's own peak allocation
    process_peak_bytes: int | None  # peak resident set of the process while running the inputs
    weight_bytes: int  # parameters and buffers of the operating modules
    resident_bytes: int  # parameters and buffers of the whole model, every budget's state included


def modules_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of every distinct parameter and buffer storage of ``modules`` together.

    A storage reached from two modules (a tied head, a readout shared by exit heads, a submodule
    listed with its parent) counts once.
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def module_bytes(module: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer storage of ``module``."""
    return modules_bytes([module])


def reset_process_peak() -> bool:
    """Reset the kernel's peak RSS (Linux ``/proc/self/clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def process_peak() -> int:
    """Peak resident set of this process in bytes (VmHWM on Linux, else ``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def measure_memory(
    model: nn.Module,
    run: Callable[[int], Any],
    inputs: Sequence[Tensor],
    order: Sequence[int],
    target: HardwareTarget,
    operating: Sequence[nn.Module] | None = None,
) -> MemoryStats:
    """Peak memory of ``run(i)`` over the inputs at ``order`` (costliest first).

    Args:
        model: the whole model: its weights are ``resident_bytes``.
        run: ``run(i)`` executes one forward pass on ``inputs[i]``.
        inputs: the input batches (their bytes count toward the peak).
        order: which inputs to measure.
        target: reads the transient tensor peak.
        operating: the modules ``run`` reads, whose weights count toward the peak; ``None`` = all of
            ``model``.
    """
    resident = module_bytes(model)
    weights = resident if operating is None else modules_bytes(operating)
    peak = transient = 0
    for i in order:
        t = target.tensor_peak(lambda i=i: run(i))
        transient = max(transient, t)
        peak = max(peak, weights + inputs[i].element_size() * inputs[i].nelement() + t)
    proc = None
    if reset_process_peak():
        for i in order:
            run(i)
        proc = process_peak()
    return MemoryStats(
        peak_bytes=peak,
        transient_bytes=transient,
        process_peak_bytes=proc,
        weight_bytes=weights,
        resident_bytes=resident,
    )
