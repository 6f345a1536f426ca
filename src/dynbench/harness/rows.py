"""The rows of a run: one long-format row per (budget, batch size, metric), with the run's identity.

Every measurement pass (:mod:`dynbench.harness.measure`) makes its rows through one
:class:`RowMaker`, so the shared columns (run key, method and task versions, provenance) are written
in one place.
"""

from __future__ import annotations

import math
from typing import Any

from dynbench.config import PluginSpec
from dynbench.harness.planning import RunPlan
from dynbench.harness.provenance import collect
from dynbench.stats import Interval
from dynbench.types import METRICS


def control_columns(plan: RunPlan) -> dict[str, str]:
    """``control_of`` (the learned configuration's label) and ``control_kind`` for a control run.

    The method's class declares its controls (``Method.controls``); recording the relation on the
    rows keeps ``analysis/`` free of method names and lets a report pair runs without importing the
    plugins.
    """
    spec = plan.spec.method
    twin = plan.method.learned_twin(spec.options_dict())
    if twin is None:
        return {"control_of": "", "control_kind": ""}
    return {"control_of": PluginSpec.make(spec.name, twin[0]).label, "control_kind": twin[1]}


class RowMaker:
    """Stamps the shared columns (run identity, profile, provenance) onto every row of one run.

    Args:
        plan: the run.
        started_at: when it started.
        eval_samples: evaluation samples it measures; ``None`` = the spec's cap
            (``RunSpec.eval_limit``).
    """

    def __init__(self, plan: RunPlan, started_at: str, eval_samples: int | None = None) -> None:
        prov = collect()
        info = ", ".join(f"{k}={v}" for k, v in plan.hardware.describe().items())
        m = plan.method
        self.plan = plan
        self.base = {
            "run_key": plan.run_key,
            "suite": plan.spec.suite,
            # the task's label (its name, or name[options]): two configurations of one task (model
            # sizes) stay apart in every table; a task without options keeps its bare name
            "task": plan.spec.task.label,
            "task_version": plan.task.version,
            "synthetic_data": plan.task.synthetic,
            "method": m.name,
            "method_version": m.version,
            "method_label": plan.spec.method.label,
            "reconstructed": m.reconstructed,
            "upper_bound": m.sees_eval_labels,  # fitted on the evaluation labels: not deployable
            # the network of the dense twin that Δ vs dense and the speedups compare with
            "reference": "dense backbone" if m.reference_network == "dense" else f"{m.name}'s {m.reference_network}",
            **control_columns(plan),
            "seed": plan.spec.seed,
            "hardware": plan.hardware.label,
            "dtype": plan.hardware.dtype_name,
            "modeled": plan.hardware.modeled,
            # reports keep quick, full and --limit runs apart (never one mean over them)
            "profile": plan.spec.profile,
            "limit": plan.spec.limit,
            "eval_samples": plan.spec.eval_limit if eval_samples is None else int(eval_samples),
            "git_sha": prov.git_sha,
            "dirty": prov.dirty,
            "dynbench_version": prov.dynbench_version,
            "torch_version": prov.torch_version,
            "machine": f"{prov.machine} | {info}",
            "started_at": started_at,
        }

    def __call__(
        self,
        budget: float,
        batch_size: int,
        metric: str,
        value: float,
        n: int,
        *,
        ci: Interval | None = None,
        suspect: bool = False,
        **kw: Any,
    ) -> dict:
        """One row; ``unit`` and ``higher_is_better`` come from :data:`METRICS` unless given.

        Args:
            budget: the operating point.
            batch_size: the batch size it was measured at.
            metric: the metric's name.
            value: the measured value.
            n: observations behind it.
            ci: its 95% interval (``ci_low``, ``ci_high``, ``ci_over``); none = NaN ends and an
                empty ``ci_over``.
            suspect: the measurement broke physics even after a re-measure (a realization above
                the limit).
            **kw: ``unit`` and ``higher_is_better`` for metrics outside :data:`METRICS`.
        """
        unit, hib = METRICS.get(metric, (kw.get("unit", ""), kw.get("higher_is_better", False)))
        return {
            **self.base,
            "budget": float(budget),
            "is_full_budget": float(budget) == float(self.plan.method.full_budget),
            "batch_size": int(batch_size),
            "metric": metric,
            "value": float(value),
            "unit": kw.get("unit", unit),
            "higher_is_better": bool(kw.get("higher_is_better", hib)),
            "n": int(n),
            "ci_low": math.nan if ci is None else float(ci.low),
            "ci_high": math.nan if ci is None else float(ci.high),
            "ci_over": "" if ci is None else ci.over,
            "suspect": bool(suspect),
        }
