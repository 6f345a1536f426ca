"""Summaries of result rows: one line per operating point, and a readable markdown table per task.

:func:`summary_frame` is the single place where seeds are averaged and batch sizes are chosen, so
the plots and the tables of a report always show the same numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from dynbench.analysis.pareto import pareto_front
from dynbench.stats import seed_interval

logger = logging.getLogger(__name__)

__all__ = [
    "SUMMARY_COLUMNS",
    "display_label",
    "format_flops",
    "format_sig",
    "interval_note",
    "pareto_mask",
    "profile_note",
    "quality_formats",
    "quality_scale",
    "separate_variants",
    "summary_frame",
    "synthetic_tasks",
    "upper_bound_mask",
    "task_markdown",
    "with_interval",
]

# One summary line per operating point; ``reconstructed`` is part of the key so numbers re-derived
# from a paper are never averaged with numbers measured here.
KEYS: tuple[str, ...] = ("task", "hardware", "method", "method_label", "reconstructed", "budget")
_REQUIRED = (
    "task", "hardware", "method", "method_label", "budget", "seed",
    "batch_size", "metric", "value", "unit", "higher_is_better",
)  # fmt: skip
# Measured once per budget at the evaluation batch size, identical on every hardware target.
_HARDWARE_FREE = ("quality", "quality_delta", "flops_per_sample", "flops_ratio", "mean_layers")
# Read at the latency batch size (batch 1 by default: the per-request serving cost).
_AT_LATENCY_BATCH = ("latency_ms", "speedup_realized", "realization", "controller_ms", "peak_mem_bytes")
_METRIC_COLUMNS = (*_HARDWARE_FREE, *_AT_LATENCY_BATCH, "throughput")
# Metrics whose summary carries a 95% interval: `<metric>_ci_low`, `_ci_high` and `_ci_over`.
INTERVAL_METRICS: tuple[str, ...] = (
    "quality", "quality_delta", "flops_ratio", "latency_ms", "speedup_realized", "realization", "throughput",
    "peak_mem_bytes",
)  # fmt: skip
SUMMARY_COLUMNS: tuple[str, ...] = (
    "task", "hardware", "method", "method_label", "display_label", "reconstructed", "upper_bound", "budget",
    "quality", "quality_std", "quality_unit", "quality_higher_is_better", "quality_delta",
    "flops_per_sample", "flops_per_sample_std", "flops_ratio",
    "latency_ms", "latency_ms_std", "speedup_realized", "realization", "controller_ms",
    "throughput", "throughput_std", "throughput_batch_size",
    "peak_mem_bytes", "peak_mem_bytes_std", "mean_layers", "n_seeds", "latency_batch_size", "suspect", "reference",
    "control_of", "control_kind",
    *(f"{m}_ci_{end}" for m in INTERVAL_METRICS for end in ("low", "high", "over")),
)  # fmt: skip
# Accuracy-like units stored as fractions in [0, 1] and shown as percentages.
_PERCENT_UNITS = frozenset({"top1", "top5", "acc", "accuracy"})
_MISSING = "–"
_MIB = float(2**20)


def display_label(method: str, method_label: str, reconstructed: bool, upper_bound: bool = False) -> str:
    """The legend/table label of an operating point's method.

    Args:
        method: registry name.
        method_label: label chosen by the harness, e.g. ``layer_skip(pattern=uniform)``.
        reconstructed: whether the method is a reconstruction (its paper leaves the mechanism open).
        upper_bound: whether the method saw the evaluation labels (the rows' ``upper_bound``
            column).

    Returns:
        ``method_label`` with `` (upper bound)`` and/or `` (reconstructed)`` appended.
    """
    label = str(method_label)
    if upper_bound:
        label += " (upper bound)"
    if reconstructed:
        label += " (reconstructed)"
    return label


def _variant(profile: Any, limit: Any) -> str:
    """``""`` for a full run on the whole split, else e.g. ``quick``, ``limit 64``."""
    parts = []
    if isinstance(profile, str) and profile and profile != "full":
        parts.append(profile)
    if limit is not None and not (isinstance(limit, float) and math.isnan(limit)):
        parts.append(f"limit {int(limit)}")
    return ", ".join(parts)


def _legacy_samples(rows: pd.DataFrame) -> pd.Series:
    """Per row, ``N samples`` where a run measured fewer samples than its task's other runs.

    For rows without a ``limit`` column (written before it existed): a ``--limit`` run among them
    is still kept apart.
    """
    quality = rows[rows["metric"] == "quality"]
    if quality.empty or "n" not in quality.columns or "run_key" not in rows.columns:
        return pd.Series("", index=rows.index)
    per_run = quality.groupby("run_key")["n"].max()
    task_max = quality.groupby("task")["n"].max()
    run_task = quality.groupby("run_key")["task"].first()
    short = {k: f"{int(n)} samples" for k, n in per_run.items() if n < task_max[run_task[k]]}
    return rows["run_key"].map(lambda key: short.get(key, ""))


def separate_variants(
    rows: pd.DataFrame, samples: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Label quick, ``--limit`` and full runs apart, so no mean or front mixes them.

    When the rows hold runs of more than one kind, appends `` (quick)``, `` (limit 64)`` or
    `` (quick, limit 64)`` to ``method_label`` (and to a control run's ``control_of``, so controls
    pair within their kind) of every run that is not a full run on the whole evaluation split, in
    the rows and in the samples of the same runs. Every summary keys on ``method_label``, so a
    sampled run can never be averaged into a full run's mean. Rows of one kind keep their labels
    (the header says which: :func:`profile_note`). The kind is kept in a ``variant`` column either
    way. Rows written before profiles existed are full runs; those among them with fewer evaluation
    samples than their task's others are ``N samples``. Rows that already have a ``variant`` column
    are returned as they are.

    Returns:
        ``(rows, samples)`` relabelled (``samples`` ``None`` when given ``None``).
    """
    if "variant" in rows.columns or rows.empty:
        return rows, samples
    profile = rows["profile"] if "profile" in rows.columns else pd.Series("full", index=rows.index)
    if "limit" in rows.columns:
        variant = pd.Series([_variant(p, n) for p, n in zip(profile, rows["limit"])], index=rows.index)
    else:
        legacy = _legacy_samples(rows)
        variant = pd.Series([_variant(p, None) for p in profile], index=rows.index)
        variant = variant.where(legacy == "", (variant + ", ").where(variant != "", "") + legacy)

    if variant.nunique() <= 1:  # one kind of run: nothing to keep apart
        return rows.assign(variant=variant), samples

    def suffixed(labels: pd.Series, which: pd.Series) -> pd.Series:
        tail = which.map(lambda v: f" ({v})" if v else "")
        return labels.astype(str).where(labels.astype(str) == "", labels.astype(str) + tail)

    out = rows.assign(variant=variant, method_label=suffixed(rows["method_label"], variant))
    if "control_of" in out.columns:
        out["control_of"] = suffixed(out["control_of"].fillna(""), variant)
    if samples is not None and not samples.empty and {"run_key", "method_label"} <= set(samples.columns):
        by_run = variant.groupby(rows["run_key"]).first() if "run_key" in rows.columns else pd.Series(dtype=str)
        which = samples["run_key"].map(lambda key: by_run.get(key, ""))
        samples = samples.assign(variant=which, method_label=suffixed(samples["method_label"], which))
    return out, samples


def profile_note(rows: pd.DataFrame) -> str:
    """What the rows were measured under: the profile(s), ``--limit`` runs, evaluation samples.

    One sentence for the report's header and the terminal summary, e.g. "Profile: quick (shorter
    fits and backbone training, fewer budgets, a sample of the evaluation split, lighter timing;
    `--profile full` runs the plugins' own recipes). Evaluation samples per run: fashion-mnist
    2,000, shakespeare 128."
    """
    if rows.empty:
        return ""
    profiles = sorted({str(p) for p in rows["profile"].dropna()}) if "profile" in rows.columns else []
    profiles = profiles or ["full"]
    what = {
        "quick": "quick (shorter fits and backbone training, fewer budgets, a sample of the evaluation split, "
        "lighter timing; `--profile full` runs the plugins' own recipes)",
        "full": "full (the plugins' own recipes)",
    }
    text = f"Profile: {' and '.join(what.get(p, p) for p in profiles)}."
    if len(profiles) > 1:
        text += " Runs of different profiles are labelled apart, never averaged together."
    limits = sorted({int(v) for v in rows["limit"].dropna()}) if "limit" in rows.columns else []
    if limits:
        text += f" `--limit` runs ({', '.join(map(str, limits))} samples) are labelled apart."
    if "eval_samples" in rows.columns and rows["eval_samples"].notna().any():
        counts = rows.dropna(subset=["eval_samples"]).groupby("task")["eval_samples"].unique()
        per_task = [f"{t} {'/'.join(f'{int(n):,}' for n in sorted(ns))}" for t, ns in counts.items()]
        text += f" Evaluation samples per run: {', '.join(per_task)}."
    return text


def quality_scale(unit: str, values: Iterable[float]) -> tuple[float, str]:
    """How to show a quality metric: a multiplier and the axis/column label.

    Args:
        unit: the task's quality unit (``top1``, ``ppl`` ...).
        values: the quality values that will be shown.

    Returns:
        ``(100.0, "top1 (%)")`` for accuracy-like units whose values are fractions, else
        ``(1.0, unit)``.
    """
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    if str(unit).lower() in _PERCENT_UNITS and arr.size and np.all(np.abs(arr) <= 1.0):
        return 100.0, f"{unit} (%)"
    return 1.0, str(unit)


def format_sig(value: float | None, digits: int = 3) -> str:
    """Format a number with ``digits`` significant digits and no exponent.

    For example ``12.3``, ``0.0123``, ``1230``.
    """
    if value is None or not math.isfinite(float(value)):
        return _MISSING
    if value == 0:
        return "0"
    rounded = float(f"{float(value):.{digits}g}")
    decimals = digits - 1 - math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{max(decimals, 0)}f}"


def format_flops(value: float | None) -> str:
    """Format a FLOP count as people read it: 3 significant digits, an SI prefix, a space.

    ``35.6 G``, ``812 M``, ``1.20 T``, ``257 k``, ``512``. The one format for FLOPs wherever a
    person reads them: the report's tables and plot axes (:mod:`dynbench.analysis.plots`) and the
    terminal summary (``cli/display.py``). Rounding comes first, so ``999.7e6`` reads ``1.00 G``.
    """
    if value is None or not math.isfinite(float(value)):
        return _MISSING
    rounded = float(f"{float(value):.3g}")
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(rounded) >= scale:
            return f"{format_sig(rounded / scale)} {prefix}"
    return format_sig(rounded)


def pareto_mask(frame: pd.DataFrame, x_metric: str = "flops_per_sample") -> np.ndarray:
    """Mark the Pareto-optimal rows of a summary frame on quality vs ``x_metric``.

    Upper-bound methods (``oracle``) and rows with a missing coordinate are never on the front.

    Args:
        frame: rows of :func:`summary_frame` for one task (and one hardware when ``x_metric``
            depends on it).
        x_metric: the cost column, lower is better.

    Returns:
        Boolean array aligned with ``frame``'s rows.

    Raises:
        ValueError: if the rows disagree on whether higher quality is better.
    """
    x = frame[x_metric].to_numpy(dtype=float)
    y = frame["quality"].to_numpy(dtype=float)
    eligible = np.isfinite(x) & np.isfinite(y) & ~upper_bound_mask(frame)
    mask = np.zeros(len(frame), dtype=bool)
    if not eligible.any():
        return mask
    directions = {bool(v) for v in frame.loc[eligible, "quality_higher_is_better"].dropna()}
    if len(directions) != 1:
        raise ValueError(
            f"Cannot rank quality: rows give higher_is_better={sorted(directions)}; "
            "compute the front per task, whose quality rows all share one direction."
        )
    mask[eligible] = pareto_front(x[eligible], y[eligible], y_higher_is_better=directions.pop())
    return mask


def as_bool(value: Any) -> bool:
    """Read a flag that may arrive as bool, number or string (CSV round trips)."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes", "y"}
    if value is None or pd.isna(value):
        return False
    return bool(value)


def synthetic_tasks(rows: pd.DataFrame) -> set[str]:
    """Tasks whose rows say ``synthetic_data``: their inputs were generated, not recorded."""
    if "synthetic_data" not in rows.columns:
        return set()
    return {str(t) for t, flag in zip(rows["task"], rows["synthetic_data"]) if as_bool(flag)}


def upper_bound_mask(frame: pd.DataFrame) -> np.ndarray:
    """Which rows are upper bounds: not deployable, drawn dashed, off every Pareto front.

    The rows' own ``upper_bound`` flag says so; the harness sets it for methods that see the
    evaluation labels.
    """
    if "upper_bound" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame["upper_bound"].map(as_bool).to_numpy(dtype=bool)


def _validate_rows(rows: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in _REQUIRED if c not in rows.columns]
    if missing:
        raise ValueError(
            f"Result rows lack columns {missing} (have {list(rows.columns)}); "
            "pass rows produced by the harness (see dynbench.types.ROW_COLUMNS)."
        )
    flags = rows["reconstructed"] if "reconstructed" in rows.columns else pd.Series(False, index=rows.index)
    return rows.assign(reconstructed=flags.map(as_bool).astype(bool), upper_bound=upper_bound_mask(rows))


def _attach(out: pd.DataFrame, sub: pd.DataFrame, keys: list[str], metrics: tuple[str, ...]) -> pd.DataFrame:
    """Merge the mean over seeds, its std and its 95% interval for each of ``metrics`` onto ``out``.

    The metrics' rows are in ``sub``. The interval: with one seed, the row's own (a bootstrap over
    samples or timed calls, or ``exact``); with two or more seeds, a t-interval over the per-seed
    values (:func:`dynbench.stats.seed_interval`). Metrics without rows become NaN columns, so
    callers can rely on every column existing.
    """
    columns = [name for metric in metrics for name in (metric, f"{metric}_std")]
    intervals = [f"{m}_ci_{end}" for m in metrics if m in INTERVAL_METRICS for end in ("low", "high", "over")]
    sub = sub[sub["metric"].isin(metrics)]
    if sub.empty:
        return out.assign(**dict.fromkeys(columns + intervals, np.nan))
    sub = sub.assign(**{c: sub[c] if c in sub.columns else np.nan for c in ("ci_low", "ci_high")})
    sub = sub.assign(ci_over=sub["ci_over"].fillna("") if "ci_over" in sub.columns else "")
    # Average repeats within a seed first so every seed weighs the same.
    per_seed = sub.groupby([*keys, "metric", "seed"], dropna=False).agg(
        value=("value", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"), ci_over=("ci_over", "first")
    )
    stats = per_seed.groupby(level=[*keys, "metric"], dropna=False).apply(_seed_summary).unstack("metric")
    stats.columns = [f"{metric}{suffix}" for suffix, metric in stats.columns]
    stats = stats.reindex(columns=columns + intervals)
    return out.merge(stats.reset_index(), on=keys, how="left")


def _seed_summary(group: pd.DataFrame) -> pd.Series:
    """Mean, std and 95% interval of one operating point's metric over its seeds."""
    values = group["value"].to_numpy(dtype=float)
    if len(values) == 1:
        low, high, over = group["ci_low"].iloc[0], group["ci_high"].iloc[0], group["ci_over"].iloc[0] or ""
    else:
        ci = seed_interval(values)
        low, high, over = ci.low, ci.high, f"{ci.n} seeds"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return pd.Series(
        {"": float(np.mean(values)), "_std": std, "_ci_low": low, "_ci_high": high, "_ci_over": over}, dtype=object
    )


def _first_hardware(sub: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Keep one hardware target's rows per key, so hardware-free metrics are not double counted."""
    if sub.empty:
        return sub
    first = sub.groupby(keys, dropna=False)["hardware"].transform("min")
    return sub[sub["hardware"] == first]


def _attach_throughput(out: pd.DataFrame, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Throughput at the largest batch size measured per (task, hardware): the saturated regime."""
    sub = rows[rows["metric"] == "throughput"]
    if sub.empty:
        return _attach(out, sub, keys, ("throughput",)).assign(throughput_batch_size=np.nan)
    sub = sub[sub["batch_size"] == sub.groupby(["task", "hardware"])["batch_size"].transform("max")]
    batch = sub.groupby(["task", "hardware"])["batch_size"].first().rename("throughput_batch_size")
    out = _attach(out, sub, keys, ("throughput",))
    return out.merge(batch.reset_index(), on=["task", "hardware"], how="left")


def _attach_quality_spec(out: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Add the quality unit and direction of each task, read from its quality rows."""
    units: dict[str, str] = {}
    directions: dict[str, bool] = {}
    for task, grp in rows[rows["metric"] == "quality"].groupby("task"):
        found = sorted({str(u) for u in grp["unit"]})
        signs = {as_bool(v) for v in grp["higher_is_better"]}
        if len(signs) > 1:
            raise ValueError(
                f"Task {task!r} has quality rows with higher_is_better both True and False; "
                "re-run the task so every quality row carries the task's QualitySpec."
            )
        if len(found) > 1:
            logger.warning("Task %r reports quality in several units %s; labelling with %r.", task, found, found[0])
        units[str(task)] = found[0]
        directions[str(task)] = signs.pop()
    return out.assign(
        quality_unit=out["task"].map(units).astype(object),
        quality_higher_is_better=out["task"].map(directions).astype(object),
    )


def summary_frame(rows: pd.DataFrame, *, latency_batch_size: int = 1) -> pd.DataFrame:
    """Collapse tidy result rows into one line per operating point.

    Quality, FLOPs, FLOPs ratio and mean layers are hardware-independent and taken from one hardware
    target (the alphabetically first that has them). Latency, realized speedup and peak memory are
    read at ``latency_batch_size``; throughput at the largest batch size measured on that task and
    hardware. Every number is a mean over seeds; ``*_std`` columns hold the standard deviation
    across seeds (NaN with one seed), and ``<metric>_ci_low/_ci_high/_ci_over`` its 95% interval
    (:data:`INTERVAL_METRICS`: over seeds with two or more, else the row's own over samples or timed
    calls). ``suspect`` is True where a timing row of the point was flagged (a realization that
    stayed above 1.1 after a re-measure). Metrics that were not measured give NaN columns, never
    missing ones.

    Args:
        rows: result rows with the columns of ``dynbench.types.ROW_COLUMNS``.
        latency_batch_size: batch size at which latency, realized speedup and memory are reported.

    Returns:
        DataFrame with :data:`SUMMARY_COLUMNS`, one row per (task, hardware, method_label, budget),
        sorted by task, hardware, method (dense first, upper bounds last) and budget descending.

    Raises:
        ValueError: if columns are missing, ``latency_batch_size`` is not positive, or a task's
            quality rows disagree on their direction.
    """
    if latency_batch_size < 1:
        raise ValueError(f"latency_batch_size must be >= 1, got {latency_batch_size}; batch 1 is the usual choice.")
    rows = _validate_rows(rows)
    if rows.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    rows, _ = separate_variants(rows)
    keys = list(KEYS)
    free_keys = [k for k in keys if k != "hardware"]
    out = rows.groupby(keys, dropna=False)["seed"].nunique().rename("n_seeds").reset_index()
    free = _first_hardware(rows[rows["metric"].isin(_HARDWARE_FREE)], [*free_keys, "metric"])
    out = _attach(out, free, free_keys, _HARDWARE_FREE)
    out = _attach(out, rows[rows["batch_size"] == latency_batch_size], keys, _AT_LATENCY_BATCH)
    out = _attach_throughput(out, rows, keys)
    out = _attach_quality_spec(out, rows)
    reference = rows["reference"] if "reference" in rows.columns else pd.Series("dense backbone", index=rows.index)
    networks = reference.fillna("dense backbone").groupby([rows[k] for k in keys], dropna=False).first()
    out = out.merge(networks.rename("reference").reset_index(), on=keys, how="left")
    for column in ("control_of", "control_kind"):  # which learned configuration a control run controls
        values = rows[column].fillna("").astype(str) if column in rows.columns else pd.Series("", index=rows.index)
        first = values.groupby([rows[k] for k in keys], dropna=False).first().rename(column)
        out = out.merge(first.reset_index(), on=keys, how="left")
        out[column] = out[column].fillna("")
    flagged = rows["suspect"].map(as_bool) if "suspect" in rows.columns else pd.Series(False, index=rows.index)
    suspect = (
        flagged[rows["batch_size"] == latency_batch_size]
        .groupby([rows[k] for k in keys], dropna=False)
        .any()
        .rename("suspect")
    )
    out = out.merge(suspect.reset_index(), on=keys, how="left")
    out["suspect"] = out["suspect"].map(as_bool).astype(bool)
    upper = rows.groupby("method")["upper_bound"].any()
    out = out.assign(latency_batch_size=latency_batch_size, upper_bound=out["method"].map(upper).astype(bool))
    out = out.assign(
        display_label=[
            display_label(m, lab, r, u)
            for m, lab, r, u in zip(out["method"], out["method_label"], out["reconstructed"], out["upper_bound"])
        ],
    )
    out[list(_METRIC_COLUMNS)] = out[list(_METRIC_COLUMNS)].astype(float)
    rank = np.where(out["method"] == "dense", 0, np.where(out["upper_bound"], 2, 1))
    order = ["task", "hardware", "_rank", "method", "method_label", "reconstructed", "budget"]
    out = out.assign(_rank=rank).sort_values(order, ascending=[True] * 6 + [False], kind="stable")
    return out.reset_index(drop=True)[list(SUMMARY_COLUMNS)]


def quality_formats(factor: float) -> tuple[Callable[[float], str], Callable[[float], str]]:
    """Formatters of a quality and a quality difference, scaled by :func:`quality_scale`'s factor.

    Percentages get 2 decimals (a difference in points, signed); other units 4 significant digits (a
    difference 3).
    """
    if factor != 1.0:
        return (lambda v: f"{v * factor:.2f}"), (lambda v: f"{v * factor:+.2f}")
    return (lambda v: format_sig(v, 4)), (lambda v: f"{'+' if v > 0 else ''}{format_sig(v, 3)}")


def with_interval(
    row: pd.Series, metric: str, fmt: Callable[[float], str], bound_fmt: Callable[[float], str] | None = None
) -> str:
    """``value [low, high]`` when the summary row has a 95% interval for ``metric``, else the value.

    An ``exact`` interval (a deterministic measurement), or one of zero width (the same value on
    every seed), prints as the value alone.
    """
    value = row.get(metric, math.nan)
    if value is None or not math.isfinite(float(value)):
        return _MISSING
    low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
    exact = str(row.get(f"{metric}_ci_over", "")) == "exact"
    if exact or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)) or low == high:
        return fmt(float(value))
    bound = bound_fmt or fmt
    return f"{fmt(float(value))} [{bound(float(low))}, {bound(float(high))}]"


def _column_specs(section: pd.DataFrame) -> list[tuple[str, str, Callable[[pd.Series], str]]]:
    """(summary column, markdown header, cell formatter) for every metric column of a task table."""
    unit = section["quality_unit"].dropna()
    factor, quality_label = quality_scale(unit.iloc[0] if len(unit) else "quality", section["quality"])
    higher = section["quality_higher_is_better"].dropna()
    arrow = "" if higher.empty else (" ↑" if bool(higher.iloc[0]) else " ↓")
    quality_fmt, delta_fmt = quality_formats(factor)
    lat_bs = int(section["latency_batch_size"].iloc[0])
    thr_bs = section["throughput_batch_size"].dropna()
    thr_header = f"throughput b{int(thr_bs.iloc[0])} (samples/s)" if len(thr_bs) else "throughput (samples/s)"
    times: Callable[[float], str] = lambda v: f"{v:.2f}×"  # noqa: E731
    flagged = lambda r, text: f"{text} ⚠" if bool(r.get("suspect", False)) and text != _MISSING else text  # noqa: E731
    return [
        ("quality", quality_label + arrow, lambda r: with_interval(r, "quality", quality_fmt)),
        ("quality_delta", "Δ vs dense", lambda r: with_interval(r, "quality_delta", delta_fmt)),
        ("flops_per_sample", "FLOPs/sample", lambda r: format_flops(r["flops_per_sample"])),
        ("flops_ratio", "FLOPs ratio", lambda r: with_interval(r, "flops_ratio", format_sig)),
        ("mean_layers", "mean layers", lambda r: format_sig(r["mean_layers"])),
        ("latency_ms", f"latency b{lat_bs} (ms)", lambda r: with_interval(r, "latency_ms", format_sig)),
        (
            "speedup_realized",
            f"speedup b{lat_bs}",
            lambda r: flagged(r, with_interval(r, "speedup_realized", times, lambda v: f"{v:.2f}")),
        ),
        ("realization", f"realization b{lat_bs}", lambda r: flagged(r, with_interval(r, "realization", format_sig))),
        ("controller_ms", f"controller b{lat_bs} (ms)", lambda r: format_sig(r["controller_ms"])),
        ("throughput", thr_header, lambda r: with_interval(r, "throughput", format_sig)),
        (
            "peak_mem_bytes",
            f"peak mem b{lat_bs} (MiB)",
            lambda r: with_interval(r, "peak_mem_bytes", lambda v: format_sig(v / _MIB)),
        ),
    ]


def interval_note(section: pd.DataFrame) -> str:
    """What the brackets of a summary table mean, for the seeds present."""
    seeds = sorted({int(n) for n in section["n_seeds"]})
    note = "`[low, high]` = 95% interval: "
    if max(seeds) >= 2:
        note += "over seeds (Student t of per-seed values) for points with 2 or more seeds"
        note += " — with 2 seeds it spans 12.7 standard errors — " if 2 in seeds else "; "
        if min(seeds) == 1:
            note += "for single-seed points, "
    if min(seeds) == 1:
        note += (
            "a bootstrap over the evaluation samples (quality, Δ vs dense paired with dense on the same samples, "
            "FLOPs ratio) or over the timed calls (latency, speedup and realization paired call by call with dense, "
            "throughput); it holds one backbone and fit fixed, so it shows sample and timing noise, not seed noise"
        )
    return note.rstrip("; —") + "."


def _hardware_markdown(section: pd.DataFrame, hardware: str) -> str:
    """One markdown table (plus notes) for a task's operating points on one hardware target."""
    specs = _column_specs(section)
    shown = [spec for spec in specs if section[spec[0]].notna().any()]
    # no controller column means no method here has controller modules, not a measurement left out
    missing = [  # no controller / Δ column: no controller modules, or only dense here — nothing left out
        h for column, h, _ in specs
        if not section[column].notna().any() and column not in ("controller_ms", "quality_delta")
    ]  # fmt: skip
    front = pareto_mask(section, "flops_per_sample")
    headers = ["method", "budget", *[header for _, header, _ in shown], "seeds", "Pareto"]
    lines = [
        f"### Hardware: {hardware}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---", "---:", *["---:"] * len(shown), "---:", ":---:"]) + "|",
    ]
    for on_front, (_, row) in zip(front, section.iterrows()):
        cells = [str(row["display_label"]).replace("|", "\\|"), f"{row['budget']:.3g}"]
        cells += [fmt(row) for _, _, fmt in shown]
        cells += [str(int(row["n_seeds"])), "*" if on_front else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    notes = ["`*` = Pareto-optimal on quality vs FLOPs per sample across all methods (upper bounds excluded)."]
    notes.append(interval_note(section))
    own = sorted({str(r) for r in section["reference"].dropna()} - {"dense backbone"})
    if own:
        notes.append(
            "Δ vs dense, speedups and realization compare each method with the dense twin its rows name; for "
            + ", ".join(f"`{n}`" for n in own)
            + " that is not the task's dense backbone (its fit fine-tunes the backbone), so read its Δ against its "
            "own network and compare its quality with dense's row directly."
        )
    if section["suspect"].any():
        notes.append(
            "⚠ = a realization above 1.1 (more time saved than FLOPs) that persisted after a re-measure: the timing "
            "is suspect (a load spike, or different paths timed than counted), not a result."
        )
    if section["controller_ms"].notna().any():
        notes.append(
            "`controller` = time per call inside the method's decision modules (routers, gates, exit heads, "
            "policies), from a separate hooked pass; it is part of the latency, shown apart."
        )
    if missing:
        notes.append(f"Not measured on {hardware}: " + ", ".join(missing) + ".")
    return "\n".join(lines + [" ".join(notes)])


def task_markdown(rows: pd.DataFrame, task: str, *, latency_batch_size: int = 1) -> str:
    """Markdown tables of one task's results, one section per hardware target.

    FLOPs read as :func:`format_flops` writes them (``35.6 G``), times are in ms and memory in MiB
    with 3 significant digits, accuracy-like quality is a percentage, speedups read ``1.23×``. The
    Pareto column marks with ``*`` the budgets on the quality-vs-FLOPs front. Columns of metrics
    that were not measured are dropped and listed in a note under the table.

    Args:
        rows: result rows (all tasks or just this one).
        task: task name to tabulate.
        latency_batch_size: batch size at which latency, speedup and memory are shown.

    Returns:
        Markdown text with ``### Hardware: <name>`` headings.

    Raises:
        ValueError: if there are no rows for ``task``.
    """
    rows = _validate_rows(rows)
    summary = summary_frame(rows[rows["task"] == task], latency_batch_size=latency_batch_size)
    if summary.empty:
        present = sorted({str(t) for t in rows["task"]})
        raise ValueError(f"No result rows for task {task!r}; tasks present: {present}. Pick one of those.")
    sections = [
        _hardware_markdown(section.reset_index(drop=True), str(hardware))
        for hardware, section in summary.groupby("hardware", sort=False)
    ]
    return "\n\n".join(sections) + "\n"
