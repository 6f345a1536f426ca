"""Batch compaction without boolean masks: the rows a mask selects, then the others, in batch order.

Transformer^-1 drops the samples that stop from the batch (early exit reads its rows' exits whole
instead, to group them by exit). Boolean-mask indexing (``x[mask]``) reads the mask's count on the
host for every tensor it indexes (a ``nonzero``, a GPU stall each); reading the count once and
splitting a stable sort of the mask into two index tensors of known sizes costs one read, and
``index_select`` with them none.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class RowPartition(NamedTuple):
    """``taken`` ``(E,)`` and ``rest`` ``(A - E,)`` row indices, each in batch order; ``n`` = E."""

    taken: Tensor
    rest: Tensor
    n: int


def partition_rows(mask: Tensor) -> RowPartition | None:
    """Split the rows of ``mask`` ``(A,)`` bool into the selected and the rest: one host read.

    ``None`` when no row is selected: nothing to split, and no sort runs (most blocks of a batch).
    """
    n = int(mask.sum())  # the one host sync: the split needs the count
    if n == 0:
        return None
    order = torch.argsort((~mask).to(torch.uint8), stable=True)  # (A,) selected first, each side in order
    return RowPartition(order[:n], order[n:], n)
