"""Choose between method configurations on the validation split, never on the evaluation split.

Each candidate (a plugin spec, e.g. ``mod[capacities=0.125,predictor_fraction=0.1]``) is fitted as
``bench run`` fits it (the cached fit when there is one; the evaluation split sealed), then scored
on the task's *validation* split at each of its budgets. Every candidate after the first is compared
with the first (the current default) at equal mean FLOPs per sample on the same validation samples,
with the paired interval and better / worse / tie verdict of
``dynbench.analysis.controls.compare_at_equal_flops`` (a t-interval over seeds with two or more).

A fit that itself reads the validation split (a calibration, a ranking, a controller trained there)
would be scored on data it has seen: give such a candidate an option that moves that reading to the
training split (``tinv[fit_split=train]``), or the comparison favours it.

    python scripts/select_on_validation.py --task shakespeare --seeds 0,1,2
        'mod[capacities=0.125]' 'mod[capacities=0.125,predictor_fraction=0.1]'
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from dynbench.analysis.controls import compare_at_equal_flops
from dynbench.analysis.tables import summary_frame
from dynbench.cache_dirs import model_cache_dir
from dynbench.config import ConfigError, PluginSpec, RunSpec, parse_plugin
from dynbench.harness import measure
from dynbench.harness.fit_cache import fitted_model
from dynbench.harness.planning import plan_suite


def score(spec: PluginSpec, task: str, seed: int, extra: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Rows and per-sample records of one candidate on the validation split.

    The rows hold quality, FLOPs ratio and method extras.
    """
    plan = plan_suite([RunSpec(task=parse_plugin(task), method=spec, seed=seed)])[0]
    cache = model_cache_dir()
    backbone = plan.task.backbone(seed, cache_dir=cache)
    model = fitted_model(plan, backbone, cache)
    split = plan.task.validation_split
    batches = list(plan.task.batches(split, batch_size=128))
    dense = measure.quality_pass(model, plan.method.full_budget, batches, plan.task)  # the full budget: dense FLOPs
    rows, samples = [], []
    base = {"task": plan.spec.task.name, "hardware": "validation", "method": spec.name, "method_label": spec.label,
            "reconstructed": False, "seed": seed, "batch_size": 128, "run_key": f"{spec.label}-{seed}"}  # fmt: skip
    with torch.inference_mode():
        for budget in plan.budgets:
            q = measure.quality_pass(model, budget, batches, plan.task)
            n = len(q.scores)
            metric = plan.task.metric
            found = {"quality": (metric.aggregate(q.scores), metric.spec.unit, metric.spec.higher_is_better),
                     "flops_per_sample": (float(q.analytic_flops.mean()), "flops", False),
                     "flops_ratio": (float(q.analytic_flops.mean() / dense.analytic_flops.mean()), "ratio", False),
                     **model.trace_metrics(q.trace), **extra}  # fmt: skip
            for name, (value, unit, hib) in found.items():
                rows.append({**base, "budget": budget, "metric": name, "value": value, "unit": unit,
                             "higher_is_better": hib, "n": n})  # fmt: skip
            samples += [{**base, "budget": budget, "sample_id": int(i), "score": float(s), "flops": float(f)}
                        for i, s, f in zip(q.sample_ids, q.scores, q.analytic_flops)]  # fmt: skip
    return rows, samples


def main(argv: list[str] | None = None) -> int:
    """Score every candidate on the validation split and compare each with the first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", nargs="+", help="plugin specs; the first is the default the others challenge")
    parser.add_argument("--task", required=True, help="the task whose validation split scores the candidates")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (3 for an interval over seeds)")
    args = parser.parse_args(argv)
    try:
        specs = [parse_plugin(c) for c in args.candidates]
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows, samples = [], []
    for spec in specs:
        for seed in seeds:
            print(f"fitting and scoring {spec.label} (seed {seed}) on the validation split …", flush=True)
            r, s = score(spec, args.task, seed, {})
            rows += r
            samples += s
    frame, per_sample = pd.DataFrame(rows), pd.DataFrame(samples)
    summary = summary_frame(frame.assign(git_sha="", dirty=False))
    task = str(frame["task"].iloc[0])
    shown = ["method_label", "budget", "quality", "quality_ci_low", "quality_ci_high", "flops_ratio", "n_seeds"]
    print(summary[summary["task"] == task][shown].to_string(index=False))
    extras = sorted(set(frame["metric"]) - {"quality", "flops_per_sample", "flops_ratio"})
    if extras:
        means = frame[frame["metric"].isin(extras)].groupby(["method_label", "budget", "metric"])["value"].mean()
        print(means.unstack("metric").to_string())
    for spec in specs[1:]:
        table = compare_at_equal_flops(per_sample, summary, task, spec.label, specs[0].label)
        print(f"\n{spec.label} vs {specs[0].label} on the validation split (Δ > 0: the challenger is better):")
        print(table[["budget", "flops_ratio", "quality", "control_quality", "delta", "ci_low", "ci_high", "ci_over",
                     "verdict"]].to_string(index=False))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
