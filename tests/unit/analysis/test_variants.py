"""Quick, ``--limit`` and full runs are labelled apart in every summary and report, not averaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dynbench.analysis.report import write_report
from dynbench.analysis.tables import profile_note, separate_variants, summary_frame


def runs(*variants: tuple[str, float | None, int, float], legacy: bool = False) -> pd.DataFrame:
    """Rows of dense on one task, one run per ``(profile, limit, eval_samples, quality)``."""
    recs = []
    for i, (profile, limit, n, quality) in enumerate(variants):
        base = dict(
            run_key=f"r{i}", suite="t", task="cls", task_version="1", method="dense", method_version="1",
            method_label="dense", reconstructed=False, control_of="", control_kind="", budget=1.0,
            is_full_budget=True, seed=0, hardware="cpu", batch_size=32, n=n, ci_low=np.nan, ci_high=np.nan,
            ci_over="", suspect=False, git_sha="abc", dirty=False, dynbench_version="0", torch_version="2",
            machine="m", started_at="2026-01-01T00:00:00",
        )  # fmt: skip
        if not legacy:
            base.update(profile=profile, limit=limit, eval_samples=n)
        for metric, value, unit, hib in (("quality", quality, "top1", True), ("flops_per_sample", 1e6, "flops", False)):
            recs.append({**base, "metric": metric, "value": value, "unit": unit, "higher_is_better": hib})
    return pd.DataFrame(recs)


def test_quick_limit_and_full_runs_are_summarised_apart():
    rows = runs(("full", None, 1000, 0.90), ("quick", None, 200, 0.70), ("full", 64, 64, 0.50), ("quick", 8, 8, 0.1))
    summary = summary_frame(rows)
    got = dict(zip(summary["method_label"], summary["quality"]))
    assert got == {"dense": 0.90, "dense (quick)": 0.70, "dense (limit 64)": 0.50, "dense (quick, limit 8)": 0.1}


def test_samples_and_controls_get_the_same_labels():
    rows = runs(("quick", None, 200, 0.7), ("full", None, 1000, 0.9)).assign(control_of="dense")
    samples = pd.DataFrame({"run_key": ["r0", "r1"], "method_label": ["dense", "dense"], "score": [1.0, 0.0]})
    rows2, samples2 = separate_variants(rows, samples)
    assert set(rows2["method_label"]) == set(rows2["control_of"]) == {"dense (quick)", "dense"}
    assert list(samples2["method_label"]) == ["dense (quick)", "dense"]
    assert list(separate_variants(rows2)[0]["method_label"]) == list(rows2["method_label"])  # idempotent


def test_rows_of_one_kind_keep_their_labels():
    rows, _ = separate_variants(runs(("quick", None, 200, 0.7), ("quick", None, 200, 0.7)))
    assert set(rows["method_label"]) == {"dense"} and set(rows["variant"]) == {"quick"}


def test_rows_from_before_profiles_keep_a_smaller_run_apart():
    rows = runs(("full", None, 1000, 0.9), ("full", None, 64, 0.5), legacy=True)
    assert set(summary_frame(rows)["method_label"]) == {"dense", "dense (64 samples)"}


def test_the_note_and_the_report_header_state_the_profile(tmp_path: Path):
    rows = runs(("quick", None, 200, 0.7), ("full", 64, 64, 0.5))
    note = profile_note(rows)
    assert note.startswith("Profile: full") and "and quick (" in note and "never averaged" in note
    assert "`--limit` runs (64 samples)" in note and "cls 64/200" in note
    write_report(rows, None, tmp_path)
    index = (tmp_path / "index.md").read_text()
    assert "Profile: full" in index.split("## cls")[0]  # in the header, before the first task
    assert "dense (quick)" in index and "dense (limit 64)" in index
