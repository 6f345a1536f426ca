"""A roofline latency model per operator: each aten op's FLOPs and bytes, priced on a device.

The model for devices dynbench does not have (issue 17's modeled targets): run the forward pass once
on the CPU under :class:`OpCounter` — a ``TorchDispatchMode`` that sees every aten op as it runs, as
``FlopCounterMode`` does for FLOPs — and record per op

- FLOPs, by the same formulas as the executed-FLOP count (:mod:`dynbench.harness.flops`: matmuls,
  convolutions and attention, CPU attention included; other ops 0);
- bytes moved: the distinct storages the op reads and writes (inputs and outputs, each storage
  once), at the dtype the device would run — an upper bound on DRAM traffic, since caches may keep a
  tensor between ops; view ops (reshape, transpose, expand …) move nothing and are not counted.

:func:`modeled_seconds` then prices the ops on a :class:`DeviceSpec`: each op takes
``max(FLOPs / peak FLOP/s, bytes / bandwidth)`` (the roofline: compute- or memory-bound) plus a
fixed launch overhead, and the ops run one after another. What it leaves out, and why the goal is
"within 2× and the same ranking", not equality: kernel efficiency below peak, caches, overlap
between ops and the host's own work between launches. :func:`measured_cpu_spec` measures the CPU's
sustained matmul rate, copy bandwidth and per-op overhead, so the model can be checked against
measured CPU latency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from dynbench.hardware.base import CallTimer, cpu_model
from dynbench.harness.flops import custom_flop_formulas

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
"""Bytes per element at each modeled dtype (TF32 stores FP32)."""
CPU_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The dtypes a CPU's matmul rate can be measured at (TF32 is a GPU tensor-core format)."""


@dataclass(frozen=True)
class OpRecord:
    """One executed aten op."""

    name: str  # the aten overload, e.g. ``aten.mm.default``
    flops: int  # by the executed-FLOP formulas (0 for ops they do not count)
    elements: int  # elements of the distinct storages read and written (bytes = elements × dtype size)
    float_bytes: int  # those bytes at the dtypes the CPU ran (fp32 mostly; integer indices stay as they are)


@dataclass(frozen=True)
class DeviceSpec:
    """What the roofline needs of a device, with where each number comes from."""

    name: str
    peak_flops: Mapping[str, float]  # dtype → dense FLOP/s (no sparsity)
    bandwidth: float  # DRAM bytes/s
    launch_s: float  # fixed cost per op (kernel launch, or dispatch on a CPU)
    source: str  # datasheet or measurement the numbers come from

    def flops_per_s(self, dtype: str) -> float:
        """Peak FLOP/s at ``dtype``.

        Raises:
            ValueError: the device has no figure for ``dtype``.
        """
        if dtype not in self.peak_flops:
            raise ValueError(
                f"{self.name} has no peak FLOP/s for dtype '{dtype}'. Available: {', '.join(self.peak_flops)}."
            )
        return self.peak_flops[dtype]


_aten = torch.ops.aten
_METADATA_OPS = frozenset(
    getattr(getattr(_aten, name), overload)
    for name, overload in (
        ("is_contiguous", "default"),
        ("is_contiguous", "memory_format"),
        ("size", "default"),
        ("sym_size", "default"),
        ("stride", "default"),
        ("sym_stride", "default"),
        ("storage_offset", "default"),
        ("numel", "default"),
        ("sym_numel", "default"),
        ("dim", "default"),
    )  # fmt: skip
)
"""Ops that read a tensor's metadata only (FlopCounterMode skips the same)."""


class OpCounter(TorchDispatchMode):
    """Record every aten op run inside the ``with`` block as an :class:`OpRecord` (``self.ops``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpRecord] = []
        self.formulas: dict[Any, Callable[..., int]] = dict(flop_registry)
        self.raw = custom_flop_formulas()  # take tensors, not shapes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return NotImplemented  # sizes and strides: no kernel runs
        with self:  # a composite op (linear, matmul …) runs as the ops it is made of, as FlopCounterMode counts
            decomposed = func.decompose(*args, **kwargs)
        if decomposed is not NotImplemented:
            return decomposed
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False):
            return out  # a view moves no data
        packet = func._overloadpacket
        flops = 0
        if packet in self.raw:
            flops = int(self.raw[packet](*args, **kwargs))
        elif packet in self.formulas:
            flops = int(self.formulas[packet](*args, **kwargs, out_val=out))
        elements, nbytes = _storage_sizes([args, kwargs, out])
        self.ops.append(OpRecord(str(func), flops, elements, nbytes))
        return out


def _storage_sizes(trees: Iterable[Any]) -> tuple[int, int]:
    """Elements and bytes of the distinct storages among the tensors of ``trees``."""
    seen: set[int] = set()
    elements = nbytes = 0
    for leaf in tree_flatten(list(trees))[0]:
        if not isinstance(leaf, torch.Tensor) or leaf.device.type == "meta":
            continue
        key = leaf.untyped_storage().data_ptr() if leaf.untyped_storage().nbytes() else id(leaf)
        if key in seen:
            continue
        seen.add(key)
        elements += leaf.numel()
        nbytes += leaf.numel() * leaf.element_size()
    return elements, nbytes


def count_ops(fn: Callable[[], Any]) -> list[OpRecord]:
    """Run ``fn()`` once and return the ops it executed (under ``torch.inference_mode``)."""
    counter = OpCounter()
    with torch.inference_mode(), counter:
        fn()
    return counter.ops


def modeled_seconds(ops: Iterable[OpRecord], device: DeviceSpec, dtype: str = "fp32") -> float:
    """The roofline time of ``ops`` run one after another on ``device`` at ``dtype``.

    Bytes are elements × the dtype's size: a bf16 model moves half of an fp32 one's bytes; integer
    index tensors are counted at the same size (a small overstatement).

    Raises:
        ValueError: an unknown dtype, or one the device has no peak for.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"Unknown dtype '{dtype}'. Use one of: {', '.join(DTYPE_BYTES)}.")
    peak, size = device.flops_per_s(dtype), DTYPE_BYTES[dtype]
    return sum(max(op.flops / peak, op.elements * size / device.bandwidth) + device.launch_s for op in ops)


def measured_cpu_spec(
    threads: int | None = None, *, seconds: float = 0.5, dtypes: tuple[str, ...] = ("fp32",)
) -> DeviceSpec:
    """This CPU's sustained matmul FLOP/s per dtype, copy bandwidth and per-op cost, measured now.

    Matmul: 512×512 by 512×512 at each of ``dtypes`` (fp32, bf16 or fp16; TF32 is a GPU format)
    repeated for ``seconds``; bandwidth: copies of a 64 MiB tensor (read + write counted);
    overhead: the time per op of a tiny module stack (:func:`_op_overhead`). They are the machine's
    at that moment: measure on a quiet machine.

    Raises:
        ValueError: a dtype a CPU cannot run (``tf32``, or not a modeled dtype).
    """
    unknown = [d for d in dtypes if d not in CPU_DTYPES]
    if unknown:
        raise ValueError(f"Cannot measure a CPU's matmul rate at {unknown}. Use one of: {', '.join(CPU_DTYPES)}.")
    if threads:
        torch.set_num_threads(threads)
    rates = {}
    for name in dtypes:
        a, b = (torch.randn(512, 512, dtype=CPU_DTYPES[name]) for _ in range(2))
        rates[name] = _rate(lambda a=a, b=b: a @ b, 2 * 512**3, seconds)
    big = torch.empty(16 * 2**20)  # 64 MiB of fp32
    dst = torch.empty_like(big)
    bandwidth = _rate(lambda: dst.copy_(big), 2 * big.numel() * 4, seconds)
    n = torch.get_num_threads()
    return DeviceSpec(
        f"{cpu_model()}, {n} thread(s)",
        rates,
        bandwidth,
        _op_overhead(),
        f"measured on this machine with {n} thread(s): matmul 512³, 64 MiB copy, per-op time of a width-8 MLP",
    )


def _op_overhead(calls: int = 500) -> float:
    """Seconds per op of module code whose work is negligible: the CPU's "launch" cost.

    A stack of 4 × (Linear, GELU, LayerNorm) at width 8 on 4 tokens: the median call time ÷ the ops
    it runs. On a CPU the cost of an op in a model's forward is the dispatcher's plus the module
    call's Python, not a bare ``torch.add`` (about 5 µs against 1 µs on the 2-core VM), and it is
    what a small model's latency is made of.
    """
    gen = torch.Generator().manual_seed(0)
    layers = [m for _ in range(4) for m in (torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.LayerNorm(8))]
    net, x = torch.nn.Sequential(*layers).eval(), torch.randn(1, 4, 8, generator=gen)
    ops = len(count_ops(lambda: net(x)))
    samples = []
    with torch.inference_mode():
        for _ in range(calls):
            t0 = time.perf_counter()
            net(x)
            samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2] / ops


def _rate(fn: Callable[[], Any], work: float, seconds: float) -> float:
    """``work`` units per second of ``fn`` repeated for about ``seconds`` (after a warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 3:
        fn()
        n += 1
    return work * n / elapsed if elapsed > 0 else math.inf


class RooflineTimer(CallTimer):
    """A :class:`CallTimer` for a modeled device: each call runs on the CPU and is priced.

    The duration of a call is :func:`modeled_seconds` of the ops it executed on ``device`` at
    ``dtype`` — deterministic, so the timing loop's intervals have zero width; realized speedups
    are ratios of modeled times.
    """

    def __init__(self, device: DeviceSpec, dtype: str) -> None:
        self.device, self.dtype = device, dtype
        self._ms: list[float] = []

    def time(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` once under :class:`OpCounter` and record its modeled milliseconds."""
        self._ms.append(modeled_seconds(count_ops(fn), self.device, self.dtype) * 1e3)

    def elapsed_ms(self) -> list[float]:
        """The modeled duration of every call, in call order."""
        return list(self._ms)


@dataclass(frozen=True)
class ModeledConfig:
    """Options of a modeled target."""

    dtype: str = "fp32"  # the dtype the device would run: fp32, tf32, bf16 or fp16, as its datasheet
    # prints a peak for; bytes moved scale with it, FLOPs do not

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(
                f"Unknown dtype '{self.dtype}' for a modeled target. Use one of: {', '.join(DTYPE_BYTES)}."
            )


def modeled_problem(device: DeviceSpec, dtype: str) -> str | None:
    """Why ``device`` cannot be modeled at ``dtype`` (no datasheet peak for it), or None."""
    if dtype in device.peak_flops:
        return None
    return f"{device.name} has no peak FLOP/s for dtype '{dtype}'. Use one of: {', '.join(device.peak_flops)}."


def modeled_description(device: DeviceSpec, dtype: str) -> dict[str, Any]:
    """What each row of a modeled target records: the device, that it is modeled, its figures."""
    return {
        "device": f"{device.name} (modeled)",
        "modeled": True,
        "dtype": dtype,
        "peak_tflops": round(device.peak_flops.get(dtype, float("nan")) / 1e12, 3),
        "bandwidth_gbs": round(device.bandwidth / 1e9, 1),
        "launch_us": round(device.launch_s * 1e6, 2),
        "cpu": cpu_model(),
    }
