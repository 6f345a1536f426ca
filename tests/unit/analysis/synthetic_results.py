"""Synthetic result folders for the compare and history tests: complete rows, via the store."""

from __future__ import annotations

from pathlib import Path

from dynbench.harness.store import ResultStore
from dynbench.types import ROW_COLUMNS

MACHINE = "vm | Linux | AMD EPYC x2"


def row(run_key: str, metric: str, value: float, **kw) -> dict:
    """A complete result row (every ROW_COLUMN) of toy-text × layer_skip at budget 0.5, batch 1."""
    base = {c: None for c in ROW_COLUMNS}
    base.update(
        run_key=run_key, suite="t", task="toy-text", task_version="1", synthetic_data=True, method="layer_skip",
        method_version="1", method_label="layer_skip", reconstructed=False, reference="dense backbone",
        control_of="", control_kind="", seed=0, hardware="cpu", profile="quick", git_sha="a" * 40, dirty=False,
        machine=MACHINE, budget=0.5, is_full_budget=False, batch_size=1, metric=metric, value=value, unit="",
        higher_is_better=False, n=100, ci_low=None, ci_high=None, ci_over="", suspect=False,
    )  # fmt: skip
    base.update(kw)
    return base


def rows_of(flops: float = 1e6, quality: float = 3.0, latency: tuple = (1.0, 0.98, 1.02), speedup=(1.8, 1.7, 1.9)):
    key = "toy-text__layer_skip__s0"
    return [
        row(key, "flops_per_sample", flops),
        row(key, "mean_layers", 1.0),
        row(key, "quality", quality, unit="ppl"),
        row(key, "latency_ms", latency[0], ci_low=latency[1], ci_high=latency[2]),
        row(key, "speedup_realized", speedup[0], ci_low=speedup[1], ci_high=speedup[2], higher_is_better=True),
        row(key, "latency_ms_iqr", 0.1),
    ]


def folder(path: Path, rows: list[dict]) -> Path:
    store = ResultStore(path)
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["run_key"], []).append(r)
    for key, rs in by_key.items():
        store.write(key, rs, [])
    return path
