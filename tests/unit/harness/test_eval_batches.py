"""The eval split is kept when it fits, streamed when it does not; both read the same batches."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from dynbench.harness.eval_batches import EvalBatches
from dynbench.harness.measure import timing_inputs
from dynbench.models.training import NonFiniteError
from dynbench.types import Batch


class Split:
    """A deterministic split of ``n`` samples whose batches are made on demand and counted."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.data = torch.randn(n, 3, 5, generator=torch.Generator().manual_seed(0))  # (N, 3, 5)
        self.batch_size = batch_size
        self.calls = 0
        self.alive: list[weakref.ref] = []  # every input tensor handed out

    def batches(self):
        self.calls += 1
        for start in range(0, len(self.data), self.batch_size):
            ids = torch.arange(start, min(start + self.batch_size, len(self.data)))
            inputs = self.data[ids].clone()  # a fresh tensor per pass, as a decoding task makes
            self.alive.append(weakref.ref(inputs))
            yield Batch(inputs, ids % 2, ids)

    def live(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self.alive)


def stream(split: Split, keep_bytes: int) -> EvalBatches:
    n = len(split.data)
    return EvalBatches(split.batches, n_samples=n, batch_size=split.batch_size, device="cpu", keep_bytes=keep_bytes)


def test_a_split_that_fits_is_read_once_and_kept():
    split = Split(11, 4)
    eb = stream(split, keep_bytes=1 << 20)
    first = [b.inputs for b in eb]
    assert not eb.streaming and len(eb) == 3
    again = [b.inputs for b in eb]
    assert split.calls == 1 and all(a is b for a, b in zip(first, again))


def test_a_split_larger_than_the_budget_streams_one_batch_at_a_time():
    split = Split(40, 4)
    eb = stream(split, keep_bytes=3 * 4 * 15 * 4)  # three batches' inputs: less than the split
    most = 0
    for _ in range(2):
        for _b in eb:
            most = max(most, split.live())
    assert eb.streaming and split.calls == 2 and eb.passes == 2
    assert most <= 2  # the batch in hand and the one being made, never the split
    del _b  # the loop's last batch
    assert split.live() == 0


def test_kept_and_streamed_passes_yield_identical_batches():
    kept, streamed = stream(Split(11, 4), 1 << 20), stream(Split(11, 4), 0)
    for _ in range(2):
        for a, b in zip(kept, streamed, strict=True):
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.sample_ids, b.sample_ids)


@pytest.mark.parametrize("keep_bytes", [0, 1 << 20])
def test_gather_copies_the_chosen_samples_in_one_pass(keep_bytes):
    split = Split(11, 4)
    eb = stream(split, keep_bytes)
    sets = [np.array([10, 0, 3]), np.array([4, 7, 8, 3])]
    got = eb.gather(sets)
    for tensor, idx in zip(got, sets):
        torch.testing.assert_close(tensor, split.data[torch.from_numpy(idx)], rtol=0, atol=0)
    assert split.calls == 1
    assert eb.gather([np.array([0])])[0].shape == (1, 3, 5)
    with pytest.raises(IndexError, match="out of range"):
        eb.gather([np.array([11])])


def test_gather_stops_at_the_last_sample_needed():
    split = Split(40, 4)
    eb = stream(split, 0)
    eb.gather([np.array([1, 5])])
    assert len(split.alive) == 2  # batches 0 and 1 were made, no more


def test_indexing_reads_up_to_the_batch():
    split = Split(11, 4)
    eb = stream(split, 0)
    assert torch.equal(eb[2].inputs, split.data[8:]) and torch.equal(eb[-1].inputs, split.data[8:])
    with pytest.raises(IndexError):
        eb[3]


def test_a_task_that_yields_other_counts_than_it_declares_is_named():
    split = Split(11, 4)
    eb = EvalBatches(split.batches, n_samples=12, batch_size=4, device="cpu", keep_bytes=0)
    with pytest.raises(RuntimeError, match=r"batch 2 has 3 samples, expected 4.*disagrees with its n_samples"):
        list(eb)


def test_batch_n_inputs_cycle_through_consecutive_samples():
    split = Split(11, 4)
    ti = timing_inputs(None, stream(split, 0), batch_size=8, limit=64)  # type: ignore[arg-type]  # reads no trace
    assert [m.tolist() for m in ti.members] == [list(range(8)), [8, 9, 10, 0, 1, 2, 3, 4]]
    for inputs, members in zip(ti.inputs, ti.members):
        torch.testing.assert_close(inputs, split.data[torch.from_numpy(members)], rtol=0, atol=0)


def test_nan_or_inf_evaluation_inputs_stop_the_pass_naming_the_samples():
    split = Split(11, 4)
    split.data[5, 0, 0] = float("nan")
    split.data[9, 1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match=r"Evaluation batch 1 holds NaN or Inf inputs \(sample ids \[5\]\)"):
        list(stream(split, 1 << 20))
