"""Peak memory: tensor memory and, as a second figure, the process footprint.

Tensor memory comes from the target (profiler events on CPU, the allocator on CUDA); the footprint is the peak
resident set of the process.

``peak_mem_bytes`` = bytes of the model's parameters and buffers + the input batch + the transient peak the
forward pass allocated on top. The same definition holds on every target, so methods compare fairly (a method
with extra heads pays for their weights). For a dynamic model the peak depends on the path, so it is the
maximum over several inputs, the costliest paths first.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dynbench.hardware.base import HardwareTarget


@dataclass(frozen=True)
class MemoryStats:
    """Memory of one model at one batch size."""

    peak_bytes: int  # weights + inputs + transient peak
    transient_bytes: int  # the forward pass's own peak allocation
    process_peak_bytes: int | None  # peak resident set of the process while running the inputs


def module_bytes(module: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer storage of ``module``."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def reset_process_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ``/proc/self/clear_refs``); False where unsupported."""
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
) -> MemoryStats:
    """Peak memory of ``run(i)`` over the inputs at ``order`` (costliest first).

    Args:
        model: the model whose weights count as resident.
        run: ``run(i)`` executes one forward pass on ``inputs[i]``.
        inputs: the input batches (their bytes count as resident).
        order: which inputs to measure.
        target: reads the transient tensor peak.
    """
    weights = module_bytes(model)
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
    return MemoryStats(peak_bytes=peak, transient_bytes=transient, process_peak_bytes=proc)
