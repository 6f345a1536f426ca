"""The ``dtype`` option of the CPU and CUDA targets: label, run key, rows, the cast, its limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynbench.cli import main
from dynbench.config import build_dataclass
from dynbench.hardware.cpu import CPU, CPUConfig
from dynbench.hardware.cuda import CUDA, CUDAConfig
from dynbench.types import Batch


def test_the_dtype_is_in_the_label_only_when_not_the_default() -> None:
    assert CPU().label == "cpu" and CPU().torch_dtype == torch.float32
    assert CPU(CPUConfig(dtype="bf16")).label == "cpu[dtype=bf16]"
    assert CPU(CPUConfig(threads=2, dtype="fp16")).label == "cpu[threads=2,dtype=fp16]"
    assert CPU(CPUConfig(threads=2)).label == "cpu[threads=2]"
    assert CUDA().label == "cuda:0" and CUDA(CUDAConfig(index=1, dtype="bf16")).label == "cuda:1[dtype=bf16]"
    assert CUDA(CUDAConfig(dtype="tf32")).torch_dtype == torch.float32  # TF32 stores fp32


def test_an_unknown_or_cpu_less_dtype_is_refused_with_the_choices() -> None:
    _, errors = build_dataclass(CPUConfig, {"dtype": "bf61"}, "hardware 'cpu'")
    assert errors and "bf61" in errors[0] and "bf16" in errors[0]
    _, errors = build_dataclass(CPUConfig, {"dtype": "tf32"}, "hardware 'cpu'")
    assert errors and "tf32" in errors[0]  # CPUs have no TF32


def test_the_cast_moves_fp32_tensors_only() -> None:
    module = torch.nn.Linear(4, 3)
    module.register_buffer("budgets", torch.tensor([0.9, 0.3], dtype=torch.float64))
    module.register_buffer("ids", torch.arange(3))
    CPU(CPUConfig(dtype="bf16")).cast(module)
    assert module.weight.dtype == torch.bfloat16 and module.bias.dtype == torch.bfloat16
    assert module.budgets.dtype == torch.float64 and module.budgets[0].item() == 0.9  # bookkeeping keeps its precision
    assert module.ids.dtype == torch.long
    batch = Batch(torch.ones(2, 4), torch.tensor([0, 1]), torch.arange(2)).to("cpu", torch.bfloat16)
    assert batch.inputs.dtype == torch.bfloat16 and batch.targets.dtype == torch.long
    tokens = Batch(torch.ones(2, 4, dtype=torch.long), torch.tensor([0, 1]), torch.arange(2)).to("cpu", torch.float16)
    assert tokens.inputs.dtype == torch.long  # token ids are never cast


def _rows(out: Path) -> dict[str, list[dict]]:
    files = sorted((out / "runs").glob("*.jsonl"))
    return {f.name: [json.loads(line) for line in f.read_text().splitlines()] for f in files}


def _metric(rows: list[dict], metric: str, budget: float = 1.0) -> float:
    return next(r["value"] for r in rows if r["metric"] == metric and r["budget"] == budget)


def test_a_bf16_run_is_its_own_run_with_the_same_flops_and_less_memory(tmp_path: Path) -> None:
    base = ["run", "--methods", "dense,layer_skip", "--tasks", "toy-vision", "--limit", "16", "--batch-sizes", "1"]
    base += ["--executor", "inline", "--out", str(tmp_path / "R"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--hardware", "cpu,cpu[dtype=bf16]"]) == 0
    runs = _rows(tmp_path / "R")
    assert len(runs) == 4  # two methods × two dtypes: the dtype is part of the run key
    by = {(rows[0]["method"], rows[0]["hardware"]): rows for rows in runs.values()}
    for method in ("dense", "layer_skip"):
        fp32, bf16 = by[(method, "cpu")], by[(method, "cpu[dtype=bf16]")]
        assert {r["dtype"] for r in fp32} == {"fp32"} and {r["dtype"] for r in bf16} == {"bf16"}
        assert "dtype=bf16" in bf16[0]["machine"]
        for budget in {r["budget"] for r in fp32 if r["metric"] == "flops_per_sample"}:
            assert _metric(bf16, "flops_per_sample", budget) == _metric(fp32, "flops_per_sample", budget)
    # half-width weights and activations: the operating point's memory falls
    assert _metric(by[("dense", "cpu[dtype=bf16]")], "peak_mem_bytes") < _metric(by[("dense", "cpu")], "peak_mem_bytes")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_cuda_dtype_run_without_a_gpu_is_a_usage_error(tmp_path: Path) -> None:
    code = main(["run", "--methods", "dense", "--tasks", "toy-text", "--hardware", "cuda[dtype=bf16]"])
    assert code == 2
