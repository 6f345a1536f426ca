from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynbench.cli import main
from dynbench.config import build_dataclass
from dynbench.hardware.base import HARDWARE
from dynbench.hardware.roofline import count_ops, modeled_seconds

MODELED = ("jetson-agx-xavier", "jetson-agx-orin", "a100", "h100", "h200")


def target(name: str, **options):
    cls = HARDWARE.get(name)
    config, errors = build_dataclass(cls.Config, options, f"hardware '{name}'")
    assert not errors
    return cls(config)


@pytest.mark.parametrize("name", MODELED)
def test_a_modeled_target_prices_each_call_by_its_datasheet(name: str) -> None:
    t = target(name)
    assert t.modeled and t.unavailable_reason() is None and t.device.type == "cpu"
    lin, x = torch.nn.Linear(256, 256), torch.randn(32, 256)
    timer = t.timer()
    for _ in range(3):
        timer.time(lambda: lin(x))
    expected = modeled_seconds(count_ops(lambda: lin(x)), t.spec) * 1e3
    assert timer.elapsed_ms() == pytest.approx([expected] * 3)  # deterministic: priced, not timed
    info = t.describe()
    assert info["modeled"] is True and "(modeled)" in info["device"] and info["peak_tflops"] > 0


def test_faster_devices_price_the_same_call_lower() -> None:
    lin, x = torch.nn.Linear(1024, 1024), torch.randn(256, 1024)
    ms = {}
    for name in MODELED:
        timer = target(name).timer()
        timer.time(lambda: lin(x))
        ms[name] = timer.elapsed_ms()[0]
    assert ms["jetson-agx-xavier"] > ms["jetson-agx-orin"] > ms["a100"] > ms["h100"] >= ms["h200"]  # H200: the
    # H100's compute with more bandwidth, so only memory-bound ops are faster


def test_cpu_roofline_prices_calls_by_this_cpus_measured_figures() -> None:
    t = target("cpu-roofline", dtype="bf16")
    assert t.modeled and t.unavailable_reason() is None and t.checked_against == ("cpu", "")
    spec = t.device_spec()
    assert spec is t.device_spec()  # measured once per process
    assert set(spec.peak_flops) == {"fp32", "bf16"} and "measured on this machine" in spec.source
    lin, x = torch.nn.Linear(256, 256), torch.randn(32, 256)
    timer = t.timer()
    timer.time(lambda: lin(x))
    assert timer.elapsed_ms() == pytest.approx([modeled_seconds(count_ops(lambda: lin(x)), spec, "bf16") * 1e3])
    assert t.label == "cpu-roofline[dtype=bf16]" and t.describe()["device"].endswith("thread(s) (modeled)")
    reason = target("cpu-roofline", dtype="tf32").unavailable_reason()
    assert reason == "A CPU has no 'tf32' matmul to measure. Use one of: fp32, bf16, fp16."


def test_each_datasheet_device_is_checked_by_cuda_rows_of_its_own_gpu() -> None:
    pieces = {name: HARDWARE.get(name).checked_against for name in MODELED}
    assert pieces == {"jetson-agx-xavier": ("cuda", "Xavier"), "jetson-agx-orin": ("cuda", "Orin"),
                      "a100": ("cuda", "A100"), "h100": ("cuda", "H100"), "h200": ("cuda", "H200")}  # fmt: skip
    assert HARDWARE.get("cpu").checked_against is None and HARDWARE.get("cuda").checked_against is None


def test_a_dtype_is_in_the_label_and_one_the_datasheet_lacks_is_unavailable() -> None:
    assert target("h100", dtype="bf16").label == "h100[dtype=bf16]" and target("h100").label == "h100"
    reason = target("jetson-agx-xavier", dtype="bf16").unavailable_reason()
    assert reason is not None and "no peak FLOP/s for dtype 'bf16'" in reason and "fp16" in reason
    _, errors = build_dataclass(HARDWARE.get("a100").Config, {"dtype": "int3"}, "hardware 'a100'")
    assert errors == ["hardware 'a100': Unknown dtype 'int3' for a modeled target. Use one of: fp32, tf32, bf16, fp16."]


def test_a_run_on_a_modeled_target_writes_complete_rows_that_say_so(tmp_path: Path) -> None:
    out = tmp_path / "R"
    args = ["run", "--methods", "dense,layer_skip", "--tasks", "toy-vision", "--hardware", "a100", "--limit", "16",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--executor", "inline"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for f in (out / "runs").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {r["hardware"] for r in rows} == {"a100"} and {r["modeled"] for r in rows} == {True}
    latency = [r for r in rows if r["metric"] == "latency_ms"]
    assert latency and all(r["value"] > 0 and r["ci_low"] == r["ci_high"] == r["value"] for r in latency)
    assert not [r for r in rows if r["metric"] == "controller_ms"]  # no clock to split a modeled call by
    assert all("NVIDIA A100" in r["machine"] for r in rows)


def test_bench_ls_hardware_marks_the_modeled_targets(capsys) -> None:
    assert main(["ls", "hardware"]) == 0
    out = capsys.readouterr().out
    assert out.count("modeled (priced, not timed)") == len(MODELED) + 1  # and cpu-roofline
    assert "cuda (H100)" in out and "cuda (Xavier)" in out


def test_the_report_sets_cpu_roofline_beside_the_measured_cpu(tmp_path: Path) -> None:
    out = tmp_path / "R"
    args = ["run", "--methods", "dense,layer_skip", "--tasks", "toy-vision", "--hardware", "cpu,cpu-roofline",
            "--limit", "16", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--executor", "inline"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for f in (out / "runs").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert {(r["hardware"], r["modeled"]) for r in rows} == {("cpu", False), ("cpu-roofline", True)}
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    index = (tmp_path / "report" / "index.md").read_text()
    section = index.split("### Roofline model vs measured", 1)[1]
    for batch in (1, 32):
        assert f"#### `cpu-roofline` vs `cpu` (fp32), batch {batch}" in section
    assert "operating points modeled within 2× of measured latency" in section and "| layer_skip | 0.5 | 1 |" in section


def test_a_gpu_name_finds_its_datasheet_twin() -> None:
    from dynbench.hardware.modeled import twin_of

    assert twin_of("NVIDIA H100 80GB HBM3") == "h100" and twin_of("NVIDIA H200") == "h200"
    assert twin_of("NVIDIA A100-SXM4-80GB") == "a100" and twin_of("Tesla T4") is None
