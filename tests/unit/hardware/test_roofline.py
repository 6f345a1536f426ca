from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynbench.hardware.roofline import DeviceSpec, OpRecord, count_ops, measured_cpu_spec, modeled_seconds
from dynbench.harness.flops import count_flops
from dynbench.models.gpt import GPT, GPTConfig

DEVICE = DeviceSpec("toy", {"fp32": 1e12, "bf16": 4e12}, bandwidth=1e11, launch_s=1e-6, source="made up for the test")


def test_a_linear_layer_is_one_op_with_its_analytic_flops_and_bytes() -> None:
    lin, x = torch.nn.Linear(64, 32), torch.randn(8, 64)
    [op] = count_ops(lambda: lin(x))
    assert op.flops == 2 * 8 * 64 * 32
    assert op.elements == 8 * 64 + 64 * 32 + 32 + 8 * 32  # input, weight, bias, output: each storage once
    assert op.float_bytes == 4 * op.elements


def test_views_move_nothing_and_in_place_ops_count_their_storage_once() -> None:
    x = torch.randn(4, 8)
    assert count_ops(lambda: x.view(8, 4).transpose(0, 1).expand(2, 4, 8)) == []
    [op] = count_ops(lambda: x.add_(1.0))
    assert op.elements == 32 and op.flops == 0  # read and written in place: one storage


def test_cpu_attention_is_counted_by_the_executed_flop_formula() -> None:
    q = k = v = torch.randn(2, 4, 16, 8)
    ops = count_ops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert sum(o.flops for o in ops) == 2 * (2 * 2 * 4 * 16 * 16 * 8)  # QKᵀ and PV, the full score matrix


def test_the_op_flops_of_a_model_equal_the_executed_flop_count() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=32, block_size=16, d_model=32, n_layers=2, n_heads=2)).eval()
    ids = torch.randint(32, (3, 16))
    assert sum(o.flops for o in count_ops(lambda: gpt(ids))) == count_flops(lambda: gpt(ids), gpt).total


def test_each_op_is_priced_by_its_roof_plus_a_launch() -> None:
    compute = OpRecord("mm", flops=10**9, elements=10, float_bytes=40)  # 1 ms of compute, 0.4 ns of memory
    memory = OpRecord("copy", flops=0, elements=25 * 10**6, float_bytes=10**8)  # 1 ms at 4 B/element
    assert modeled_seconds([compute], DEVICE) == pytest.approx(1e-3 + 1e-6)
    assert modeled_seconds([memory], DEVICE) == pytest.approx(1e-3 + 1e-6)
    assert modeled_seconds([compute, memory], DEVICE, "bf16") == pytest.approx(0.25e-3 + 0.5e-3 + 2e-6)


def test_unknown_or_missing_dtypes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"Unknown dtype 'int4'. Use one of: fp32, tf32, bf16, fp16"):
        modeled_seconds([], DEVICE, "int4")
    with pytest.raises(ValueError, match=r"toy has no peak FLOP/s for dtype 'fp16'. Available: fp32, bf16"):
        modeled_seconds([OpRecord("mm", 1, 1, 4)], DEVICE, "fp16")


def test_the_cpu_spec_is_measured_not_assumed() -> None:
    spec = measured_cpu_spec(seconds=0.02, dtypes=("fp32", "bf16"))
    assert set(spec.peak_flops) == {"fp32", "bf16"} and min(spec.peak_flops.values()) > 1e8
    assert spec.bandwidth > 1e8 and 0 < spec.launch_s < 1e-3 and "measured" in spec.source
    with pytest.raises(ValueError, match=r"Cannot measure a CPU's matmul rate at \['tf32'\]. Use one of: fp32, bf16"):
        measured_cpu_spec(seconds=0.02, dtypes=("tf32",))
