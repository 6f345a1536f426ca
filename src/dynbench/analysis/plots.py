"""Report figures: quality-vs-cost Pareto plots and per-sample compute histograms.

Figures are built with :class:`matplotlib.figure.Figure` directly instead of pyplot: that needs no
GUI backend (headless CI works without ``matplotlib.use("Agg")`` changing the backend of the
caller's process) and leaves no figures behind in pyplot's registry when many plots are drawn in a
loop.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.container import Container
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dynbench.analysis.tables import (
    display_label,
    format_flops,
    pareto_mask,
    quality_scale,
    upper_bound_mask,
)

logger = logging.getLogger(__name__)

__all__ = ["X_METRICS", "compute_histogram", "pareto_plot"]

# x metric -> (axis label, title phrase, multiplier from the summary's unit to the plotted unit).
X_METRICS: dict[str, tuple[str, str, float]] = {
    "flops_per_sample": ("FLOPs per sample", "FLOPs per sample", 1.0),
    "latency_ms": ("batch-{bs} latency (ms)", "batch-{bs} latency", 1.0),
    "peak_mem_bytes": ("peak memory (MiB)", "peak memory", 1.0 / 2**20),
    "mean_layers": ("executed layers per sample (mean)", "executed layers", 1.0),
}
# Measured once per operating point, the same on every hardware target.
_HARDWARE_FREE_X = frozenset({"flops_per_sample", "mean_layers"})
PLOT_RC = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9.5,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
}
PLOT_DPI = 150
# Above this max/min ratio a linear axis squeezes the cheap operating points together.
_LOG_RATIO = 20.0
PLOT_MARKERS = "osD^vPXhp<>"


def _plot_points(summary_df: pd.DataFrame, task: str, x_metric: str, hardware: str | None) -> pd.DataFrame:
    """The summary rows that give one point each on a quality-vs-``x_metric`` plot."""
    if x_metric not in X_METRICS:
        raise ValueError(f"Cannot plot quality vs {x_metric!r}; choose x_metric from {sorted(X_METRICS)}.")
    data = summary_df[summary_df["task"] == task]
    if hardware is not None:
        data = data[data["hardware"] == hardware]
    elif x_metric not in _HARDWARE_FREE_X and data["hardware"].nunique() > 1:
        raise ValueError(
            f"{x_metric} depends on the hardware and task {task!r} has several "
            f"({sorted(data['hardware'].unique())}); pass hardware=<one of them>."
        )
    else:
        # FLOPs, layers and quality are the same on every hardware: keep one copy of each operating
        # point.
        data = data.drop_duplicates(["method", "method_label", "reconstructed", "budget"])
    finite = np.isfinite(data[x_metric].to_numpy(dtype=float)) & np.isfinite(data["quality"].to_numpy(dtype=float))
    data = data[finite].reset_index(drop=True)
    if data.empty:
        where = f" on {hardware!r}" if hardware is not None else ""
        raise ValueError(
            f"No operating point of task {task!r}{where} has both quality and {x_metric}; "
            "measure that metric (or skip this plot)."
        )
    return data


def _errors(group: pd.DataFrame, metric: str, scale: float) -> np.ndarray | None:
    """``(2, n)`` error bars from the summary's 95% interval of ``metric``.

    None when there is none to show.
    """
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in group.columns or high not in group.columns:
        return None
    value = group[metric].to_numpy(dtype=float)
    below = np.nan_to_num(value - group[low].to_numpy(dtype=float), nan=0.0).clip(min=0.0)
    above = np.nan_to_num(group[high].to_numpy(dtype=float) - value, nan=0.0).clip(min=0.0)
    err = np.vstack([below, above]) * scale
    return err if (err > 0).any() else None


def _xy(group: pd.DataFrame, x_metric: str, x_scale: float, y_scale: float) -> tuple[np.ndarray, np.ndarray]:
    x = group[x_metric].to_numpy(dtype=float) * x_scale
    return x, group["quality"].to_numpy(dtype=float) * y_scale


def _draw_dense(ax: Axes, data: pd.DataFrame, x_metric: str, x_scale: float, y_scale: float) -> list[Artist]:
    """The dense reference point(s) as a black star labelled "dense"."""
    handles: list[Artist] = []
    dense = data[data["method"] == "dense"]
    for label in dense["display_label"].unique():
        grp = dense[dense["display_label"] == label]
        x, y = _xy(grp, x_metric, x_scale, y_scale)
        xerr, yerr = _errors(grp, x_metric, x_scale), _errors(grp, "quality", y_scale)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor="black", capsize=3, zorder=5)
        (star,) = ax.plot(x, y, ls="none", marker="*", ms=18, color="black", label=label, zorder=6)
        handles.append(star)
        for xi, yi in zip(x, y):
            ax.annotate("dense", (xi, yi), xytext=(8, -14), textcoords="offset points", fontsize=9)
    return handles


def _draw_methods(
    ax: Axes, data: pd.DataFrame, x_metric: str, x_scale: float, y_scale: float
) -> list[Artist | Container]:
    """One line per method label over its budgets, each point annotated with its budget."""
    handles: list[Artist | Container] = []
    colors = mpl.colormaps["tab10"]
    dynamic = data[data["method"] != "dense"]
    for i, label in enumerate(dynamic["display_label"].unique()):
        grp = dynamic[dynamic["display_label"] == label].sort_values("budget")
        x, y = _xy(grp, x_metric, x_scale, y_scale)
        color = colors(i % colors.N)
        upper = bool(upper_bound_mask(grp).any())
        container = ax.errorbar(
            x, y, xerr=_errors(grp, x_metric, x_scale), yerr=_errors(grp, "quality", y_scale),
            color=color, marker=PLOT_MARKERS[i % len(PLOT_MARKERS)], ms=6, lw=1.8, ls="--" if upper else "-",
            capsize=3, label=label, zorder=3,
        )  # fmt: skip
        # The container (line + error bars) carries the label; its inner line is "_nolegend_".
        handles.append(container)
        for xi, yi, budget in zip(x, y, grp["budget"]):
            ax.annotate(f"{budget:.3g}", (xi, yi), xytext=(5, 5), textcoords="offset points", fontsize=9, color=color)
    return handles


def _draw_front(ax: Axes, data: pd.DataFrame, x_metric: str, x_scale: float, y_scale: float) -> list[Artist]:
    """Grey staircase through Pareto-optimal points of all (deployable) methods, points ringed."""
    mask = pareto_mask(data, x_metric)
    if not mask.any():
        return []
    front = data[mask].sort_values(x_metric)
    x, y = _xy(front, x_metric, x_scale, y_scale)
    # "post" steps: with cost x_i one can reach quality y_i until the next front point becomes
    # affordable.
    ax.step(x, y, where="post", color="0.6", linewidth=3, alpha=0.6, zorder=1)
    ax.scatter(x, y, s=190, facecolors="none", edgecolors="0.35", linewidths=1.2, zorder=4)
    proxy = Line2D(
        [],
        [],
        color="0.6",
        linewidth=3,
        alpha=0.6,
        marker="o",
        markersize=12,
        markerfacecolor="none",
        markeredgecolor="0.35",
        label="Pareto front",
    )
    return [proxy]


def _scale_x(ax: Axes, x: np.ndarray, x_metric: str) -> None:
    """Log x when the points span more than ``_LOG_RATIO``; FLOPs ticks read as in the tables."""
    log = bool(np.all(x > 0) and x.max() / x.min() > _LOG_RATIO)
    if log:
        ax.set_xscale("log")
        # 1-2-5 ticks keep a readable number of labels over one to a few decades.
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if x_metric == "flops_per_sample":
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: format_flops(v)))
    elif log:
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def scale_y(ax: Axes, y: np.ndarray) -> None:
    """Log quality axis when the values span more than ``_LOG_RATIO``.

    Perplexities of a broken model span decades.
    """
    if np.all(y > 0) and y.max() / y.min() > _LOG_RATIO:
        ax.set_yscale("log")


def pareto_plot(
    summary_df: pd.DataFrame,
    task: str,
    x_metric: str,
    *,
    hardware: str | None,
    out_path: Path | str,
) -> Path:
    """Plot quality vs a cost for every method of a task and mark the Pareto front across methods.

    One line per method label over its budgets (each point annotated with its budget), upper bounds
    dashed, dense as a black star, the front of all deployable points as a grey staircase with
    ringed points. Error bars show the standard deviation across seeds when there are several.

    Args:
        summary_df: output of :func:`dynbench.analysis.tables.summary_frame`.
        task: task to plot.
        x_metric: ``flops_per_sample``, ``latency_ms``, ``peak_mem_bytes`` or ``mean_layers``.
        hardware: hardware target whose rows to use; ``None`` for hardware-independent FLOPs or
            layers.
        out_path: PNG file to write (parent directories are created).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``x_metric`` is unknown, or no point has both quality and ``x_metric``.
    """
    data = _plot_points(summary_df, task, x_metric, hardware)
    out = Path(out_path)
    y_scale, quality_label = quality_scale(str(data["quality_unit"].iloc[0]), data["quality"])
    better = "↑ better" if bool(data["quality_higher_is_better"].iloc[0]) else "↓ better"
    axis_label, title_phrase, x_scale = X_METRICS[x_metric]
    batch = int(data["latency_batch_size"].iloc[0])
    title = f"{task}: quality vs {title_phrase.format(bs=batch)}" + (f" ({hardware})" if hardware else "")
    with mpl.rc_context(PLOT_RC):
        fig = Figure(figsize=(9.5, 5.5), dpi=PLOT_DPI, layout="constrained")
        ax = fig.add_subplot()
        front = _draw_front(ax, data, x_metric, x_scale, y_scale)
        handles = [
            *_draw_dense(ax, data, x_metric, x_scale, y_scale),
            *_draw_methods(ax, data, x_metric, x_scale, y_scale),
            *front,
        ]
        _scale_x(ax, data[x_metric].to_numpy(dtype=float) * x_scale, x_metric)
        scale_y(ax, data["quality"].to_numpy(dtype=float) * y_scale)
        ax.margins(x=0.08, y=0.1)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel(axis_label.format(bs=batch))
        ax.set_ylabel(f"{quality_label}  ({better})")
        ax.set_title(title)
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    logger.debug("wrote %s", out)
    return out


def _common_bins(flops: np.ndarray, n_bins: int = 40) -> np.ndarray:
    """Bin edges shared by every panel, log-spaced when the FLOPs span more than ``_LOG_RATIO``."""
    lo, hi = float(flops.min()), float(flops.max())
    if lo == hi:
        # A single value (e.g. dense only): give it a visible bin instead of a zero-width range.
        pad = abs(lo) * 0.05 or 0.5
        return np.linspace(lo - pad, hi + pad, n_bins + 1)
    if lo > 0 and hi / lo > _LOG_RATIO:
        return np.geomspace(lo, hi, n_bins + 1)
    return np.linspace(lo, hi, n_bins + 1)


def compute_histogram(
    samples_df: pd.DataFrame, task: str, out_path: Path | str, *, upper_bounds: Collection[str] = ()
) -> Path:
    """Histogram of per-sample executed FLOPs: one panel per method, its budgets overlaid.

    Each budget is a step histogram normalised to the fraction of its samples (seeds pooled), so
    budgets with different sample counts compare; all panels share one x range.

    Args:
        samples_df: per-sample records with at least ``task, method, method_label, budget, flops``
            (``reconstructed`` is honoured when present).
        task: task to plot.
        out_path: PNG file to write (parent directories are created).
        upper_bounds: method names whose rows say ``upper_bound`` (labelled so and drawn last).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if columns are missing or the task has no sample with a finite FLOP count.
    """
    needed = ["task", "method", "method_label", "budget", "flops"]
    missing = [c for c in needed if c not in samples_df.columns]
    if missing:
        raise ValueError(f"Per-sample records lack columns {missing}; pass the harness's samples table.")
    data = samples_df[(samples_df["task"] == task) & np.isfinite(samples_df["flops"].to_numpy(dtype=float))]
    if data.empty:
        raise ValueError(f"No per-sample FLOPs for task {task!r}; run with per-sample records enabled.")
    flags = data["reconstructed"] if "reconstructed" in data.columns else pd.Series(False, index=data.index)
    upper = data["method"].isin(set(upper_bounds))
    labels = [
        display_label(m, lab, bool(r), bool(u))
        for m, lab, r, u in zip(data["method"], data["method_label"], flags, upper)
    ]
    rank = np.where(data["method"] == "dense", 0, np.where(upper, 2, 1))
    data = data.assign(_label=labels, _rank=rank).sort_values(["_rank", "_label"], kind="stable")
    order = list(dict.fromkeys(data["_label"]))
    bins = _common_bins(data["flops"].to_numpy(dtype=float))
    out = Path(out_path)
    with mpl.rc_context(PLOT_RC):
        fig = Figure(figsize=(9.5, 1.2 + 1.8 * len(order)), dpi=PLOT_DPI, layout="constrained")
        axes = fig.subplots(len(order), 1, sharex=True, squeeze=False)[:, 0]
        for ax, label in zip(axes, order):
            _histogram_panel(ax, data[data["_label"] == label], bins, label)
        _scale_x(axes[-1], bins, "flops_per_sample")  # same log rule as the bins
        axes[-1].set_xlabel("executed FLOPs per sample")
        fig.suptitle(f"{task}: per-sample executed compute")
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    logger.debug("wrote %s", out)
    return out


def _histogram_panel(ax: Axes, group: pd.DataFrame, bins: np.ndarray, label: str) -> None:
    """Overlaid step histograms of one method's budgets, highest budget darkest."""
    budgets = sorted(group["budget"].unique(), reverse=True)
    colors = mpl.colormaps["viridis"](np.linspace(0.0, 0.85, max(len(budgets), 1)))
    for color, budget in zip(colors, budgets):
        flops = group.loc[group["budget"] == budget, "flops"].to_numpy(dtype=float)
        weights = np.full(flops.shape, 1.0 / flops.size)
        ax.hist(
            flops,
            bins=bins,
            weights=weights,
            histtype="step",
            linewidth=1.8,
            color=color,
            label=f"budget {budget:.3g} (mean {format_flops(flops.mean())})",
        )
    ax.set_title(label, loc="left", fontsize=10)
    ax.set_ylabel("fraction")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
