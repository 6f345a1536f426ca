"""Our numbers for a paper's tables and claims, read from stored rows only (nothing is recomputed).

A paper's runs are those of one of its suites in a results folder: :func:`suite_rows` picks the full
suite when its runs are there (its tasks at the full profile), else the quick one, and keeps only
that profile's rows (quick and full numbers are never mixed). Then:

- :func:`metric_point`: a row metric of a method at a budget — the mean over seeds with a Student-t
  interval over seeds when two or more ran, else the row's own interval (over samples or timed
  calls) when it has one, else none (one number alone gives no verdict);
- :func:`vs_dense`: the % change of a metric against the dense model of the same seed (FLOPs
  through the ``flops_ratio`` rows, which carry a paired interval);
- :func:`paired_points`: Δ quality against another method at equal mean FLOPs, per budget below the
  full one (:func:`dynbench.analysis.controls.compare_at_equal_flops`); points outside the other
  curve's range are not measured;
- :func:`isoflop_point`: over a sweep of model sizes (the role's task and the sweep's), how many
  times fewer forward FLOPs per sample the cheapest MoD at least as good as the best dense model
  takes — the paper's "equal performance, faster step" read in FLOPs (rule in its docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dynbench.analysis.controls import compare_at_equal_flops
from dynbench.analysis.tables import summary_frame
from dynbench.papers.registry import Measure, Paper
from dynbench.stats import seed_interval


@dataclass(frozen=True)
class Measured:
    """Our value of a measure: the mean, its 95% interval (``None``: none), seeds, budget."""

    value: float
    low: float | None
    high: float | None
    seeds: int
    over: str  # "3 seeds", "samples", "calls" or "" (no interval)
    budget: float
    where: str = ""  # what the point is of when a claim reads several runs (isoflop: the MoD's task and label)


def suite_rows(paper: Paper, rows: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """``(suite name, rows of that suite's tasks at its profile)``: full when its runs are there.

    Of two runs of one configuration (task, method label, seed, hardware) under different run keys
    — a suite, method or task whose definition changed between them — only the newest is read
    (:func:`newest_runs`): the table must not count one configuration twice.
    """
    if rows.empty or not {"task", "profile"} <= set(rows.columns):  # rows from elsewhere: no paper suite
        return "quick", rows.iloc[0:0]
    for name in ("full", "quick"):
        suite = paper.suites[name]
        tasks = paper.suite_tasks(name)
        mine = rows[rows["task"].isin(tasks) & (rows["profile"] == suite.profile)]
        if suite.limit is not None and "limit" in mine.columns:
            mine = mine[mine["limit"] == suite.limit]
        if not mine.empty:
            return name, newest_runs(mine)
    return "quick", rows.iloc[0:0]


def newest_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` less those of runs superseded by a newer run of the same configuration.

    A configuration is (task, method label, seed, hardware); its runs differ by run key, and the one
    started last is kept. Rows without those columns are returned as they are.
    """
    config = ["task", "method_label", "seed", "hardware"]
    if not {*config, "run_key", "started_at"} <= set(rows.columns):
        return rows
    runs = rows[[*config, "run_key", "started_at"]].drop_duplicates("run_key")
    newest = runs.sort_values("started_at", kind="stable").groupby(config, dropna=False).tail(1)["run_key"]
    return rows[rows["run_key"].isin(set(newest))]


def on_hardware(rows: pd.DataFrame, hardware: str) -> pd.DataFrame:
    """Rows of runs on ``hardware`` (a target name, any options); "" = rows of the measured targets.

    A modeled device's latency is a model's output, not a clock's: a claim or table reads it only
    when it names that device, and then reads nothing else.
    """
    if "hardware" not in rows.columns:
        return rows
    if not hardware:
        return rows[~rows["modeled"].fillna(False).astype(bool)] if "modeled" in rows.columns else rows
    labels = rows["hardware"].astype(str)
    return rows[(labels == hardware) | labels.str.startswith(f"{hardware}[")]


def _budget(frame: pd.DataFrame, budget: str) -> float | None:
    """The budget a measure names: a number, or ``lowest`` (the lowest below the full budget)."""
    budgets = sorted(frame["budget"].unique())
    if budget == "lowest":
        below = [b for b in budgets if not frame.loc[frame["budget"] == b, "is_full_budget"].astype(bool).any()]
        return float(below[0]) if below else None
    value = float(budget)
    close = [b for b in budgets if math.isclose(b, value, rel_tol=1e-9, abs_tol=1e-12)]
    return float(close[0]) if close else None


def _one_per_seed(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per seed of ``metric``: the first hardware target, the smallest batch size."""
    rows = frame[frame["metric"] == metric].sort_values(["seed", "hardware", "batch_size"])
    return rows.groupby("seed", as_index=False).first()


def _aggregate(per_seed: pd.DataFrame, budget: float) -> Measured | None:
    if per_seed.empty:
        return None
    values = per_seed["value"].to_numpy(dtype=float)
    if len(values) >= 2:
        ci = seed_interval(values)
        return Measured(float(values.mean()), ci.low, ci.high, len(values), f"{len(values)} seeds", budget)
    row = per_seed.iloc[0]
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return Measured(float(values[0]), None, None, 1, "", budget)
    return Measured(float(values[0]), float(low), float(high), 1, str(row.get("ci_over") or "samples"), budget)


def metric_point(rows: pd.DataFrame, task: str, label: str, budget: str, metric: str) -> Measured | None:
    """``metric`` of ``label`` at ``budget`` on ``task``; ``None`` when the runs do not hold it."""
    frame = rows[(rows["task"] == task) & (rows["method_label"] == label)]
    if frame.empty:
        return None
    b = _budget(frame, budget)
    if b is None:
        return None
    return _aggregate(_one_per_seed(frame[np.isclose(frame["budget"], b)], metric), b)


def vs_dense(rows: pd.DataFrame, task: str, label: str, budget: str, metric: str) -> Measured | None:
    """% change of ``metric`` against dense (same seed); FLOPs via the paired ``flops_ratio``."""
    if metric == "flops_per_sample":
        point = metric_point(rows, task, label, budget, "flops_ratio")
        return None if point is None else _scaled(point)
    frame = rows[(rows["task"] == task) & (rows["method_label"] == label)]
    dense = rows[(rows["task"] == task) & (rows["method"] == "dense")]
    if frame.empty or dense.empty:
        return None
    b = _budget(frame, budget)
    if b is None:
        return None
    mine = _one_per_seed(frame[np.isclose(frame["budget"], b)], metric).set_index("seed")["value"]
    base = _one_per_seed(dense, metric).set_index("seed")["value"]
    seeds = sorted(set(mine.index) & set(base.index))
    if not seeds:
        return None
    changes = np.array([100.0 * (mine[s] / base[s] - 1.0) for s in seeds], dtype=float)
    if len(changes) >= 2:
        ci = seed_interval(changes)
        return Measured(float(changes.mean()), ci.low, ci.high, len(changes), f"{len(changes)} seeds", b)
    return Measured(float(changes[0]), None, None, 1, "", b)


def _scaled(point: Measured) -> Measured:
    """A ratio as a % change: (r − 1) × 100, interval likewise."""
    low = None if point.low is None else 100.0 * (point.low - 1.0)
    high = None if point.high is None else 100.0 * (point.high - 1.0)
    return Measured(100.0 * (point.value - 1.0), low, high, point.seeds, point.over, point.budget)


def paired_points(
    rows: pd.DataFrame, samples: pd.DataFrame, task: str, label: str, against: str, budget: str
) -> list[Measured]:
    """Δ quality (positive = ``label`` better) against ``against`` at equal FLOPs, per budget."""
    frame = rows[rows["task"] == task]
    if frame.empty or samples.empty:
        return []
    table = compare_at_equal_flops(samples, summary_frame(frame), task, label, against)
    table = table[table["verdict"] != "not comparable"]  # outside the other curve's range: not measured there
    if budget != "all":
        b = _budget(frame[frame["method_label"] == label], budget)
        table = table[np.isclose(table["budget"], b)] if b is not None else table.iloc[0:0]
    return [
        Measured(float(r.delta), _finite(r.ci_low), _finite(r.ci_high), int(r.seeds), str(r.ci_over), float(r.budget))
        for r in table.itertuples()
    ]


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _quality_better(rows: pd.DataFrame) -> bool:
    """Whether higher quality is better, as the rows' ``quality`` say (perplexity: no)."""
    q = rows[rows["metric"] == "quality"]
    return bool(q["higher_is_better"].iloc[0]) if not q.empty and "higher_is_better" in q.columns else True


def isoflop_point(
    rows: pd.DataFrame, tasks: tuple[str, ...], mod_labels: tuple[str, ...], dense: str
) -> Measured | None:
    """The isoFLOP "equal performance, faster step" ratio over a sweep of model sizes.

    The rule, stated once (``None`` = no point: not measured):

    1. the best dense model: of ``dense``'s runs on ``tasks`` (one per model size), the best mean
       quality over seeds;
    2. the MoD points that count: every budget below the full one of every label in
       ``mod_labels``, on a size whose dense model takes at most the best dense's forward FLOPs
       per sample (every size sees the same training tokens and each MoD trains for its dense
       twin's FLOPs, so those MoD models cost no more training than the best dense one), whose
       mean quality is at least as good as the worse end of the best dense's 95% interval (its
       mean when it has none);
    3. of those, the one with the fewest forward FLOPs per sample; our value is the best dense's
       forward FLOPs ÷ its FLOPs, with the interval of the two FLOPs means' intervals (none when
       either has none). No MoD point counts → ``None``.

    Args:
        rows: one suite's rows.
        tasks: the sweep's task labels (model sizes).
        mod_labels: the MoD method labels.
        dense: the dense method's label.
    """
    higher = _quality_better(rows)
    sign = 1.0 if higher else -1.0
    sizes = []
    for task in tasks:
        q = metric_point(rows, task, dense, "1.0", "quality")
        f = metric_point(rows, task, dense, "1.0", "flops_per_sample")
        if q is not None and f is not None:
            sizes.append((task, q, f))
    if not sizes:
        return None
    _, best_q, best_f = max(sizes, key=lambda s: sign * s[1].value)
    worst_end = best_q.value if best_q.low is None else (best_q.low if higher else best_q.high)
    candidates = []
    for task, _, f in sizes:
        if f.value > best_f.value * (1 + 1e-9):
            continue  # a larger model than the best dense: more training FLOPs, not isoFLOP against it
        for label in mod_labels:
            frame = rows[
                (rows["task"] == task) & (rows["method_label"] == label) & ~rows["is_full_budget"].astype(bool)
            ]
            for budget in sorted(frame["budget"].unique()):
                mq = metric_point(rows, task, label, repr(float(budget)), "quality")
                mf = metric_point(rows, task, label, repr(float(budget)), "flops_per_sample")
                if mq is not None and mf is not None and sign * (mq.value - worst_end) >= 0:
                    candidates.append((mf, f"{label} on {task}"))
    if not candidates:
        return None
    mf, where = min(candidates, key=lambda c: c[0].value)
    low = best_f.low / mf.high if best_f.low is not None and mf.high is not None and mf.high > 0 else None
    high = best_f.high / mf.low if best_f.high is not None and mf.low is not None and mf.low > 0 else None
    if low is None or high is None:
        low = high = None
    return Measured(best_f.value / mf.value, low, high, min(best_f.seeds, mf.seeds), mf.over, mf.budget, where)


def task_params(label: str) -> int:
    """Parameters of the backbone a task label builds (counted from its config, not measured).

    Raises:
        ValueError: the label's options do not fit the task's config (with the problems).
    """
    from dynbench.config import build_dataclass, parse_plugin
    from dynbench.tasks.base import TASKS

    spec = parse_plugin(label)
    cls = TASKS.get(spec.name)
    config, problems = build_dataclass(cls.Config, spec.options_dict(), f"task {label!r}")
    if config is None:
        raise ValueError(f"Cannot build task {label!r}: {'; '.join(problems)}. Fix the task options in the paper file.")
    return sum(p.numel() for p in cls(config).build_backbone().parameters())


def measure(paper: Paper, measure_: Measure, suite: str, rows: pd.DataFrame, samples: pd.DataFrame) -> list[Measured]:
    """Every point of ``measure_`` in the stored rows (empty: not measured)."""
    if measure_.kind == "missing":
        return []
    task = paper.task(measure_.task, suite)
    rows = on_hardware(rows, measure_.hardware)
    if not samples.empty and "run_key" in samples.columns and "run_key" in rows.columns:
        samples = samples[samples["run_key"].isin(set(rows["run_key"]))]
    if measure_.kind == "paired":
        return paired_points(rows, samples, task, measure_.method, measure_.against, measure_.budget)
    if measure_.kind == "isoflop":
        sweep = paper.sweeps[measure_.sweep]
        mods = tuple(dict.fromkeys(m for m in (measure_.method, *sweep.methods) if m != measure_.against))
        point = isoflop_point(rows, paper.sweep_tasks(measure_.sweep, suite), mods, measure_.against)
        return [] if point is None else [point]
    read = metric_point if measure_.kind == "metric" else vs_dense
    point = read(rows, task, measure_.method, measure_.budget, measure_.metric)
    return [] if point is None else [point]
