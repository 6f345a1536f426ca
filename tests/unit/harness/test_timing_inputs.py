"""Timing inputs are gathered from the eval batches without a copy of the whole split."""

from __future__ import annotations

import numpy as np
import torch

from dynbench.harness.measure import _EvalInputs, timing_inputs
from dynbench.types import Batch


def batches(sizes: list[int]) -> list[Batch]:
    out, start = [], 0
    for n in sizes:
        ids = torch.arange(start, start + n)
        out.append(Batch(inputs=torch.randn(n, 3, 5), targets=ids % 2, sample_ids=ids))
        start += n
    return out


def test_take_equals_indexing_the_concatenated_split():
    bs = batches([4, 4, 3])
    whole = torch.cat([b.inputs for b in bs])
    idx = np.array([10, 0, 3, 4, 7, 8, 3])
    torch.testing.assert_close(_EvalInputs(bs).take(idx), whole[torch.from_numpy(idx)], rtol=0, atol=0)
    assert len(_EvalInputs(bs)) == 11


def test_batch_n_inputs_cycle_through_consecutive_samples():
    bs = batches([4, 4, 3])
    whole = torch.cat([b.inputs for b in bs])
    ti = timing_inputs(None, bs, batch_size=8, limit=64)  # type: ignore[arg-type]  # batch N reads no trace
    assert [m.tolist() for m in ti.members] == [list(range(8)), [8, 9, 10, 0, 1, 2, 3, 4]]
    for inputs, members in zip(ti.inputs, ti.members):
        torch.testing.assert_close(inputs, whole[torch.from_numpy(members)], rtol=0, atol=0)
