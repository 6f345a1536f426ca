"""Executed-FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``.

The counter intercepts aten ops as they run, so it counts exactly what a dynamic model executed —
including ops whose only use is a branch decision (exit heads, routers), which trace-based counters
prune. Two gaps are filled
here: PyTorch registers no formula for the CPU attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward) and would count attention on
CPU as 0.

Convention: 1 multiply-add = 2 FLOPs; only matmuls, convolutions and attention are counted (norms,
activations, softmax and adds are not); causal attention counts the full score matrix, as PyTorch's
CUDA formulas do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_sdpa_flop(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(tuple(query.shape), tuple(key.shape), tuple(value.shape))


def _cpu_sdpa_backward_flop(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(tuple(grad_out.shape), tuple(query.shape), tuple(key.shape), tuple(value.shape))


def custom_flop_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas PyTorch lacks (CPU attention, its backward, our custom ops); they take tensors."""
    from dynbench.methods._learner_kernels import learner_flops  # registers dynbench::acm_learners

    mapping: dict[Any, Callable[..., int]] = {torch.ops.dynbench.acm_learners: learner_flops}
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flop
    return mapping


def flop_counter() -> FlopCounterMode:
    """A quiet ``FlopCounterMode`` that also counts CPU attention."""
    # get_raw: the formulas receive tensors, not shapes, so they work on every torch version we
    # support.
    mapping = {op: _raw(fn) for op, fn in custom_flop_formulas().items()}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _raw(fn: Callable[..., int]) -> Callable[..., int]:
    fn._get_raw = True  # type: ignore[attr-defined]  # tells FlopCounterMode to pass tensors, not shapes
    return fn


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one counted call.

    Attributes:
        total: every counted FLOP.
        controller: the part spent inside the model's controller modules (exit heads, routers, gates
            …).
        output: what the counted call returned.
    """

    total: int
    controller: int
    output: Any = field(default=None, compare=False, repr=False)


def count_flops(fn: Callable[[], Any], root: nn.Module, controllers: Iterable[nn.Module] = ()) -> FlopCount:
    """Run ``fn()`` under the counter and split out the FLOPs spent in ``controllers``.

    Args:
        fn: the call to count (typically ``lambda: model(x, budget=b)``).
        root: the outermost module ``fn`` calls, used to name the controller modules the way the
            counter does.
        controllers: submodules of ``root`` whose FLOPs are reported on their own.
    """
    names = {id(m): n for n, m in root.named_modules()}
    prefix = type(root).__name__
    keys = [f"{prefix}.{names[id(m)]}" for m in controllers if id(m) in names]
    with flop_counter() as counter, torch.no_grad():
        output = fn()
    by_module = counter.get_flop_counts()
    controller = sum(sum(by_module.get(k, {}).values()) for k in keys)
    return FlopCount(total=int(counter.get_total_flops()), controller=int(controller), output=output)
