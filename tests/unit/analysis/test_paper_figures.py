"""The Papers pages' own figures: drawn from a table's rows into PNG files (no pixel checks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from dynbench.analysis.paper_figures import draw
from dynbench.analysis.paper_pages import paper_pages
from dynbench.papers.registry import load_papers

PAPERS = load_papers()


def _rows(points: list[tuple[str, str, float, dict[str, float]]], seeds=(0, 1)) -> pd.DataFrame:
    """Quick-profile rows, ``(task, label, budget, {metric: value})`` a point, jittered by seed."""
    recs = []
    for seed in seeds:
        for task, label, budget, metrics in points:
            base = dict(task=task, method=label.split("[")[0], method_label=label, budget=budget,
                        is_full_budget=budget == 1.0, seed=seed, hardware="cpu", profile="quick", limit=None,
                        run_key=f"{task}-{label}-{seed}", batch_size=1, ci_low=None, ci_high=None,
                        upper_bound=label == "oracle", unit="ppl", higher_is_better=False)  # fmt: skip
            for metric, value in metrics.items():
                jitter = 0.02 * seed if metric == "quality" else 0.0
                recs.append({**base, "metric": metric, "value": value + jitter})
    return pd.DataFrame(recs)


def _png(path: Path | None) -> Path:
    assert path is not None and path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000  # a drawn figure, not blank
    return path


def test_the_glavas_figure_draws_every_curve_the_oracles_matching_point_and_the_papers_line(tmp_path: Path):
    rows = _rows([
        *[("toy-text", label, b, {"quality": q, "mean_layers": 2 * b})
          for label, curve in (("early_exit[rule=depth]", {1.0: 3.1, 0.5: 3.6}), ("layer_skip", {1.0: 3.1, 0.5: 3.3}),
                               ("layer_skip[pattern=uniform]", {1.0: 3.1, 0.5: 3.5}))
          for b, q in curve.items()],
        *[("toy-text", "oracle", b, {"quality": q, "mean_layers": 2 * b, "matching_budget": 0.7})
          for b, q in {1.0: 3.1, 0.7: 3.1, 0.5: 3.2}.items()],
    ])  # fmt: skip
    paper = PAPERS["glavas"]
    table = dataclasses.replace(next(t for t in paper.tables if t.id == "T3"), figure="quality_layers_oracle")
    _png(draw(paper, table, "quick", rows, tmp_path / "glavas-T3.png"))
    assert draw(paper, table, "quick", rows.iloc[0:0], tmp_path / "none.png") is None  # no rows: nothing drawn


def test_the_mod_page_shows_isoflop_bars_drawn_from_the_size_sweep(tmp_path: Path):
    sizes = PAPERS["mod"].sweep_tasks("sizes", "quick")
    rows = _rows([
        (sizes[0], "dense", 1.0, {"quality": 3.15, "flops_per_sample": 868e3}),
        (sizes[0], "mod", 1.0, {"quality": 3.15, "flops_per_sample": 868e3}),
        (sizes[0], "mod", 0.25, {"quality": 3.14, "flops_per_sample": 639e3}),
        *[(task, label, b, {"quality": q, "flops_per_sample": f})
          for task, dense_q, mod_q in ((sizes[1], 3.48, 3.16), (sizes[2], 3.21, 3.11))
          for label, b, q, f in (("dense", 1.0, dense_q, 2e5), ("mod[capacities=0.125]", 1.0, dense_q, 2e5),
                                 ("mod[capacities=0.125]", 0.125, mod_q, 1.5e5))],
    ])  # fmt: skip
    section, written = paper_pages(rows, None, tmp_path, lambda text, title: f"<html>{title}</html>")
    assert section is not None and "papers/mod.html" in section
    png = _png(tmp_path / "papers" / "mod-M1.png")
    assert png in written
    assert "![mod M1: isoflop_bars](mod-M1.png)" in (tmp_path / "papers" / "mod.md").read_text(encoding="utf-8")


def test_a_figure_name_this_module_does_not_draw_is_refused(tmp_path: Path):
    paper = PAPERS["mod"]
    with pytest.raises(ValueError, match="Unknown paper figure 'pareto_flops' for table M2. Available: "):
        draw(paper, next(t for t in paper.tables if t.id == "M2"), "quick", pd.DataFrame(), tmp_path / "x.png")


def test_the_acm_learner_histogram_has_a_bar_group_per_budget(tmp_path: Path):
    shares = {0.6: (0.05, 0.25, 0.45, 0.25), 0.25: (0.5, 0.3, 0.15, 0.05)}
    rows = _rows([
        ("toy-vision", "acm", b, {f"learner_share_k{k + 1}": s for k, s in enumerate(v)} | {"mean_learners": 2.0})
        for b, v in shares.items()
    ])  # fmt: skip
    paper = PAPERS["acm"]
    table = next(t for t in paper.tables if t.id == "A2")
    assert table.figure == "learner_hist"
    _png(draw(paper, table, "quick", rows, tmp_path / "acm-A2.png"))
    no_shares = rows[~rows["metric"].str.startswith("learner_share")]
    assert draw(paper, table, "quick", no_shares, tmp_path / "none.png") is None
