"""Every registered method × toy task: the host synchronisations of one forward pass (issue 17).

Counted on the CPU by :mod:`dynbench.hardware.host_sync` as a GPU run would make them, in the steady
state (after one call: a host copy of a buffer is made once). Each method is held to a ceiling
written in blocks L; lowering one is progress, and the test says so by failing until the ceiling is
lowered with it. Every count and its reason is in ``docs/architecture.md`` § Hardware targets.
"""

from __future__ import annotations

import pytest
import torch
from fitting import TOY_TASKS, eval_batch, fitted

from dynbench.hardware.host_sync import count_host_syncs
from dynbench.methods.base import METHODS

CEILINGS = {
    # method: (syncs per call as a function of the blocks L, why)
    "dense": (lambda L: 0, "none"),
    "layer_skip": (lambda L: 0, "the kept blocks come from a host copy of the ranking"),
    # top-k routing (a fixed k) has static shapes; the causal predictor's ragged choice (text) reads
    # its largest and smallest count once per routed block (every other block)
    "mod": (lambda L: L // 2, "the predictor rule's ragged count, once per routed block"),
    "acm": (lambda L: L + 2, "one per block (each learner's matmul needs its row count) + the trace's copy"),
    # early_exit[compact_every=k]: one per compaction (tests/unit/methods/test_early_exit.py)
    "early_exit": (lambda L: (L - 1) + 1, "one per exit point (the batch is compacted) + the confidences' copy"),
    "transformer_inverse": (
        lambda L: L,
        "one per fold point (the batch is compacted; at most L - 1) + the trace's copy",
    ),
    # the bandit's per-sample contexts are read once and samples grouped by sub-network on the host
    # (its tables are host copies); the static control makes none, the random one 2 (a content hash)
    "dht": (lambda L: 1, "the samples' contexts, read once to group them by sub-network"),
    # every row's kept count (and the largest and smallest) read together once per controlled block:
    # a ragged batch runs per sample (or padded) from those counts without another read
    "token_skip": (lambda L: L, "one per controlled block: the rows' kept counts, read together"),
    "oracle": (lambda L: 29, "an upper bound, not deployable: looks samples up by content hash on the host"),
}


@pytest.mark.parametrize("task_name", TOY_TASKS)
@pytest.mark.parametrize("method_name", METHODS.names())
def test_host_syncs_per_call_stay_under_the_ceiling(toy, method_name, task_name):
    method, model, _ = fitted(toy, method_name, task_name)
    x = eval_batch(toy, task_name, 8).inputs
    L = model.backbone.n_blocks
    counts = {}
    with torch.inference_mode():
        for budget in method.resolve_budgets(None, L):
            model(x, budget=budget)  # the steady state: one-off host copies are made here
            counts[budget] = count_host_syncs(lambda b=budget: model(x, budget=b), model, x)
    if method_name not in CEILINGS:
        pytest.skip(f"{method_name}: no ceiling yet; " + "; ".join(f"{b:g}: {len(r)}" for b, r in counts.items()))
    ceiling, why = CEILINGS[method_name]
    for budget, report in counts.items():
        assert len(report) <= ceiling(L), f"budget {budget:g} ({why}):\n{report.summary()}"
