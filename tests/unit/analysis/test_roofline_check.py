"""The roofline check: modeled rows set beside the measured rows of the device they model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dynbench.analysis.roofline_check import CheckPair, check_markdown, check_pairs, concordance, roofline_check

CPU = "vm | Linux | device=AMD EPYC, cores=2"
H100 = "gpu-box | device=NVIDIA H100 80GB HBM3"
A100 = "gpu-box | device=NVIDIA A100-SXM4-80GB"


def rows(points: list[tuple], *, hardware: str, modeled: bool, machine: str, dtype: str = "fp32") -> list[dict]:
    """Latency and speedup rows of ``(method, budget, seed, latency_ms, speedup)``, batch 1."""
    out = []
    for method, budget, seed, latency, speedup in points:
        base = dict(task="toy-text", method_label=method, budget=budget, batch_size=1, seed=seed,
                    hardware=hardware, modeled=modeled, machine=machine, dtype=dtype)  # fmt: skip
        out += [{**base, "metric": "latency_ms", "value": latency}, {**base, "metric": "speedup_realized",
                                                                     "value": speedup}]  # fmt: skip
    return out


MEASURED = [("dense", 1.0, 0, 10.0, 1.0), ("dense", 1.0, 1, 12.0, 1.0), ("layer_skip", 0.5, 0, 4.0, 1.7),
            ("layer_skip", 0.5, 1, 4.0, 1.9), ("mod", 0.25, 0, 9.0, 1.1)]  # fmt: skip
MODELED = [("dense", 1.0, 0, 5.0, 1.0), ("dense", 1.0, 1, 5.0, 1.0), ("layer_skip", 0.5, 0, 2.5, 2.0),
           ("layer_skip", 0.5, 1, 2.5, 2.0), ("mod", 0.25, 0, 1.0, 5.0), ("mod", 0.25, 1, 1.0, 5.0)]  # fmt: skip


def frame(*parts: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r for p in parts for r in p])


def test_a_modeled_target_is_paired_with_measured_rows_of_its_device_and_dtype() -> None:
    table = frame(
        rows(MODELED, hardware="cpu-roofline", modeled=True, machine=CPU),
        rows(MEASURED, hardware="cpu", modeled=False, machine=CPU),
        rows(MEASURED, hardware="cpu[dtype=bf16]", modeled=False, machine=CPU, dtype="bf16"),  # another dtype
        rows(MODELED, hardware="h100", modeled=True, machine="host | device=NVIDIA H100 SXM5 80 GB (modeled)"),
        rows(MEASURED, hardware="cuda", modeled=False, machine=H100),
        rows(MEASURED, hardware="cuda[device=1]", modeled=False, machine=A100),  # another GPU
        rows(MODELED, hardware="jetson-agx-xavier", modeled=True, machine="x (modeled)"),  # nothing checks it here
        rows(MODELED, hardware="gone-device", modeled=True, machine="x"),  # no longer registered: skipped
    )
    assert check_pairs(table) == [CheckPair("cpu-roofline", "cpu", "fp32"), CheckPair("h100", "cuda", "fp32")]
    assert check_pairs(table.drop(columns="machine")) == []


def test_the_check_matches_runs_and_averages_over_the_seeds_both_have() -> None:
    table = frame(
        rows(MODELED, hardware="cpu-roofline", modeled=True, machine=CPU),
        rows(MEASURED, hardware="cpu", modeled=False, machine=CPU),
    )
    check = roofline_check(table, CheckPair("cpu-roofline", "cpu", "fp32")).set_index("method_label")
    assert check.loc["dense", "seeds"] == 2 and check.loc["mod", "seeds"] == 1  # mod's seed 1 was not measured
    assert check.loc["dense", "measured_ms"] == 11.0 and check.loc["dense", "ratio"] == pytest.approx(5 / 11)
    assert check.loc["layer_skip", "speedup_measured"] == pytest.approx(1.8)
    assert list(check["within"]) == [False, True, False]  # ratios 5/11, 2.5/4, 1/9
    assert check.loc["mod", "ratio"] == pytest.approx(1 / 9)


def test_concordance_counts_pairs_ordered_alike_and_leaves_ties_out() -> None:
    assert concordance(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == (2, 3)
    assert concordance(np.array([1.0, 1.0, 2.0]), np.array([0.5, 0.7, 3.0])) == (2, 2)  # the tie is no pair


def test_the_report_section_says_how_many_points_are_within_2x_and_how_methods_rank() -> None:
    within = [(m, b, s, lat * 1.5, sp) for m, b, s, lat, sp in MEASURED]  # modeled = 1.5 × measured
    table = frame(
        rows(within, hardware="cpu-roofline", modeled=True, machine=CPU),
        rows(MEASURED, hardware="cpu", modeled=False, machine=CPU),
    )
    text = check_markdown(table, "toy-text")
    assert text is not None and "#### `cpu-roofline` vs `cpu` (fp32), batch 1" in text
    assert "3 of 3 operating points modeled within 2× of measured latency (modeled ÷ measured 1.50–1.50)" in text
    assert "measured: layer_skip > mod > dense; modeled: layer_skip > mod > dense (the same order)" in text
    assert "| dense | 1 | 2 | 11 | 16.5 | 1.50 | 1 | 1 |" in text
    off = frame(rows(MODELED, hardware="cpu-roofline", modeled=True, machine=CPU),
                rows(MEASURED, hardware="cpu", modeled=False, machine=CPU))  # fmt: skip
    text = check_markdown(off, "toy-text")
    assert "1 of 3 operating points" in text and "| 0.11 (outside 2×) |" in text
    assert "modeled: mod > layer_skip > dense (a different order)" in text
    assert check_markdown(frame(rows(MEASURED, hardware="cpu", modeled=False, machine=CPU)), "toy-text") is None
