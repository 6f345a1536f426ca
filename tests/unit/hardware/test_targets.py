from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynbench.cli import main
from dynbench.hardware.base import HARDWARE
from dynbench.hardware.cpu import CPU, CPUConfig


def test_cpu_threads_are_settable_and_recorded():
    before = torch.get_num_threads()
    try:
        target = CPU(CPUConfig(threads=1))
        target.setup()
        assert torch.get_num_threads() == 1
        assert target.describe()["threads"] == 1 and target.label == "cpu[threads=1]"
    finally:
        torch.set_num_threads(before)
    assert CPU().label == "cpu"
    with pytest.raises(ValueError, match="threads must be >= 0"):
        CPUConfig(threads=-1)


def test_cpu_timer_measures_each_call():
    timer = CPU().timer()
    for _ in range(3):
        timer.time(lambda: sum(range(10_000)))
    times = timer.elapsed_ms()
    assert len(times) == 3 and all(t > 0 for t in times)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_unavailable_is_a_clear_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert HARDWARE.get("cuda")().unavailable_reason() is not None
    code = main(
        ["run", "--methods", "dense", "--tasks", "toy-text", "--hardware", "cuda", "--out", str(tmp_path / "r")]
    )
    assert code == 2
    assert "Hardware target 'cuda' is not available here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.gpu
def test_cuda_events_and_allocator_peak():
    target = HARDWARE.get("cuda")()
    target.setup()
    timer = target.timer()
    x = torch.randn(1024, 1024, device=target.device)
    for _ in range(3):
        timer.time(lambda: x @ x)
    assert all(t > 0 for t in timer.elapsed_ms())
    peak = target.tensor_peak(lambda: torch.empty(256, 1024, device=target.device))
    assert peak >= 256 * 1024 * 4


@pytest.mark.gpu
@pytest.mark.slow
def test_cli_run_on_cuda(tmp_path: Path):
    args = [
        "run",
        "--methods",
        "dense,early_exit",
        "--tasks",
        "toy-vision",
        "--hardware",
        "cuda",
        "--limit",
        "16",
        "--out",
        str(tmp_path / "r"),
        "--executor",
        "inline",
        "--set",
        "measure.min_time_s=0.05",
    ]
    assert main(args) == 0
    assert len(list((tmp_path / "r" / "runs").glob("*.jsonl"))) == 2
