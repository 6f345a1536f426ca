"""token_skip's padded batching (``token_skip[batching=padded]``) against its per-sample path.

A ragged batch (samples keeping different token counts) runs one sample at a time by default; the
padded path runs it at once, padded to the largest count. It must give the per-sample outputs and
kept fractions, charge exactly the padded tokens it ran (counted FLOPs = the trace's), and read the
host once per block (every row's kept count), not once per sample.
"""

from __future__ import annotations

import pytest
import torch
from fitting import TOY_TASKS, eval_batch, fitted, method_with

from dynbench.hardware.host_sync import count_host_syncs
from dynbench.harness.flops import count_flops


@pytest.mark.parametrize("task_name", TOY_TASKS)
def test_padded_batching_equals_the_per_sample_path_and_charges_its_padding(toy, task_name):
    method, model, _ = fitted(toy, "token_skip", task_name)
    x = eval_batch(toy, task_name, 8).inputs
    L = model.backbone.n_blocks
    ragged = 0
    with torch.inference_mode():
        for budget in [b for b in method.resolve_budgets(None, L) if b < 1.0]:
            model.batching = "per_sample"
            exact = model(x, budget=budget)
            model.batching = "padded"
            try:
                padded = model(x, budget=budget)
                counted = count_flops(lambda b=budget: model(x, budget=b), model)
                syncs = count_host_syncs(lambda b=budget: model(x, budget=b), model, x)
            finally:
                model.batching = "per_sample"
            torch.testing.assert_close(padded.logits, exact.logits, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(padded.trace.extra["executed_fraction"], exact.trace.extra["executed_fraction"])
            # every sample is charged the batch's largest count of each block: padding runs
            largest = exact.trace.block_tokens.max(dim=0).values  # (L,)
            assert torch.equal(padded.trace.block_tokens, largest.expand_as(exact.trace.block_tokens))
            ragged += int((padded.trace.block_tokens > exact.trace.block_tokens).any())
            analytic = model.backbone.flops(padded.trace, tuple(x.shape[1:])).sum()
            assert counted.total == pytest.approx(float(analytic), rel=1e-9)
            assert len(syncs) <= L, syncs.summary()  # per block: the rows' counts with the largest and smallest
    assert ragged, "no budget gave a ragged batch: the padded path was not exercised"


def test_the_batching_option_shares_the_fit():
    assert method_with("token_skip", {"batching": "padded"}).fit_identity() == method_with("token_skip").fit_identity()
    with pytest.raises(ValueError, match="batching"):
        method_with("token_skip", {"batching": "bucketed"})
