"""Host synchronisations a forward pass would make on a GPU, found by running it on the CPU.

On CUDA the host queues kernels and runs ahead of the device; any op whose *result* the host needs
before it can continue — a tensor's value read into Python (``.item()``, ``bool(t)``, ``.tolist()``,
``.numpy()``), a copy to host memory (``.cpu()``), or an op whose output shape depends on the data
(``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``, ``bincount``,
``repeat_interleave`` without ``output_size``) — stalls the host until the GPU catches up, and
then the GPU idles while the host launches the next kernels. Issue 17 asks for forward passes
without them; this module makes that checkable where no GPU is.

:class:`HostSyncCounter` runs a call under a ``TorchDispatchMode`` and follows which tensors live on
the device: the model's parameters and buffers and the call's inputs, then every output of an op
that read a device tensor. A factory op's output (``torch.zeros``, ``torch.full``) starts as a host
tensor — at the dispatch level ``device=x.device`` and no device look the same on a CPU — and
becomes a device tensor once an op mixes it with one (``zeros(...).scatter_add_(1, idx, src)``), so
a pure host bookkeeping tensor is never counted and a factory tensor read back untouched is missed.
Each sync is recorded with what caused it:

- a value read into Python: ``.item()``, ``bool(t)`` (``if t:``), ``int(t)``, ``float(t)``, an index
  (``range(t)``), or ``aten._local_scalar_dense`` reached another way;
- an op with a data-dependent output shape on a device tensor (the list above; boolean-mask
  ``index`` and ``index_put``);
- ``.tolist()``, ``.numpy()``, ``.cpu()`` and ``.to("cpu")`` of a device tensor.

The Python-level reads are patched on ``torch.Tensor`` while counting (on a CPU, and under
``torch.inference_mode``, they do not reach a dispatch mode).

What it cannot see: syncs inside a custom kernel, ``torch.cuda.synchronize`` calls, pinned-memory
and stream subtleties; what it may over-count: a device tensor copied to the host once at the very
end of the forward pass (a trace), which a GPU run pays once, not per block.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten

DATA_DEPENDENT_SHAPE = {
    aten.nonzero,
    aten.argwhere,
    aten.masked_select,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.bincount,
}
"""Ops whose output size depends on the values: the host reads it before allocating the output."""

_REPEAT_INTERLEAVE = aten.repeat_interleave
_MASK_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
_HOST_READS = ("tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__")
"""Tensor methods that read a value into host memory: patched while counting (under
``torch.inference_mode`` a scalar read does not reach a dispatch mode; on a CPU none of these
do)."""


@dataclass(frozen=True)
class HostSync:
    """One synchronisation: what caused it and where in dynbench it was asked for."""

    cause: str  # e.g. "aten.nonzero", ".tolist()", "aten._local_scalar_dense (.item()/bool())"
    where: str  # the innermost dynbench source line that led to it ("file.py:123 in function")


@dataclass
class HostSyncReport:
    """The syncs of one counted call."""

    syncs: list[HostSync] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.syncs)

    def by_site(self) -> Counter[tuple[str, str]]:
        """``(cause, where) → count``: the places to fix (``most_common`` orders them)."""
        return Counter((s.cause, s.where) for s in self.syncs)

    def summary(self) -> str:
        """One line per site: ``count × cause at where``."""
        return "\n".join(f"{n} × {cause} at {where}" for (cause, where), n in self.by_site().most_common())


def _caller() -> str:
    """The innermost stack frame inside the dynbench package (not this module, not torch)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if "/dynbench/" in path and not path.endswith("/host_sync.py"):
            return f"{path.rsplit('/dynbench/', 1)[1]}:{frame.lineno} in {frame.name}"
    return "outside dynbench"


class HostSyncCounter(TorchDispatchMode):
    """Count the host synchronisations of the calls made inside ``with counter.watch(...)``.

    :meth:`watch` marks a module's parameters and buffers and the inputs as device tensors;
    ``report`` collects the syncs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_device: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.report = HostSyncReport()
        self.reading = False  # inside a patched host read: its own scalar op is that read, not a second sync

    def mark(self, *trees: Any) -> None:
        """Mark every tensor in ``trees`` as living on the device."""
        for leaf in tree_flatten(list(trees))[0]:
            if isinstance(leaf, torch.Tensor):
                self.on_device[leaf] = True

    def is_device(self, t: Any) -> bool:
        """Whether ``t`` is a tensor the counter follows as a device tensor."""
        return isinstance(t, torch.Tensor) and t in self.on_device

    def record(self, cause: str) -> None:
        """Add one sync with the dynbench line that caused it."""
        self.report.syncs.append(HostSync(cause, _caller()))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        leaves = tree_flatten([args, kwargs])[0]
        reads_device = any(self.is_device(t) for t in leaves)
        packet = func._overloadpacket
        if reads_device:
            if packet is aten._local_scalar_dense and not self.reading:
                self.record("aten._local_scalar_dense (.item(), bool(t), int(t))")
            elif packet in DATA_DEPENDENT_SHAPE:
                self.record(f"aten.{packet.__name__} (data-dependent output size)")
            elif packet is _REPEAT_INTERLEAVE and kwargs.get("output_size") is None:
                self.record("aten.repeat_interleave without output_size")
            elif packet in _MASK_INDEXING and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(args[1:2])[0]
            ):
                self.record(f"aten.{packet.__name__} with a boolean mask (nonzero inside)")
        out = func(*args, **kwargs)
        if reads_device:
            self.mark(out)
        return out

    @contextlib.contextmanager
    def watch(self, module: torch.nn.Module | None = None, *inputs: Any) -> Iterator[HostSyncReport]:
        """Count inside the block; ``module``'s tensors and ``inputs`` start as device tensors."""
        if module is not None:
            self.mark(list(module.parameters()), list(module.buffers()))
        self.mark(inputs)
        originals = {name: getattr(torch.Tensor, name) for name in (*_HOST_READS, "to")}
        own = {name: torch.Tensor.__dict__[name] for name in originals if name in torch.Tensor.__dict__}

        def host_read(name: str) -> Callable[..., Any]:
            def read(t: torch.Tensor, *a: Any, **k: Any) -> Any:
                if self.reading or not self.is_device(t):
                    return originals[name](t, *a, **k)
                self.record(f".{name}()" if not name.startswith("__") else f"{name[2:-2]}(t)")
                self.reading = True
                try:
                    return originals[name](t, *a, **k)
                finally:
                    self.reading = False

            return read

        def to(t: torch.Tensor, *a: Any, **k: Any) -> Any:
            target = k.get("device", a[0] if a and isinstance(a[0], (str, torch.device)) else None)
            if target is not None and torch.device(target).type == "cpu" and self.is_device(t):
                self.record('.to("cpu")')
            return originals["to"](t, *a, **k)

        try:
            for name in _HOST_READS:
                setattr(torch.Tensor, name, host_read(name))
            torch.Tensor.to = to  # type: ignore[method-assign]
            with self:
                yield self.report
        finally:  # put back exactly what was there: torch.Tensor's own methods, or none (inherited)
            for name in originals:
                if name in own:
                    setattr(torch.Tensor, name, own[name])
                else:
                    delattr(torch.Tensor, name)


def count_host_syncs(fn: Callable[[], Any], module: torch.nn.Module | None = None, *inputs: Any) -> HostSyncReport:
    """Run ``fn()`` once and return the host synchronisations it would make on a GPU."""
    counter = HostSyncCounter()
    with counter.watch(module, *inputs) as report:
        fn()
    return report
