"""The evaluation split of a run, as batches that every measurement pass reads again.

A run reads its evaluation samples many times: the dense twin's quality and FLOPs passes, then a
quality and a FLOPs pass per budget, then the samples its timing and memory loops run. Holding the
whole split between passes is fastest for a small split and impossible for a large one (ImageNet's
50,000 validation images are ~30 GB as float32 tensors). :class:`EvalBatches` does both:

- a split whose batches fit in ``keep_bytes`` is kept after its first complete pass (each later
  pass reads the same tensors: images are decoded once);
- a larger split streams: each pass asks the task for its batches again, so at most one batch is
  alive at a time, and the timing and memory loops copy out only the samples they run
  (:meth:`EvalBatches.gather`).

Both give the same batches in the same order — the task's ``batches`` is deterministic for a fixed
seed — so results do not depend on which one a run used (tests/unit/harness/test_eval_batches.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import overload

import numpy as np
import torch
from torch import Tensor

from dynbench.models.training import NonFiniteError
from dynbench.types import Batch


class EvalBatches(Sequence[Batch]):
    """The evaluation batches of one run, in a fixed order; re-iterable, kept or streamed.

    Args:
        make: a fresh iterator over the split's batches, in the run's order (called once per pass
            while the split streams).
        n_samples: samples the iterator yields in all (the split's size, capped by the limit).
        batch_size: samples per batch (the last batch may be shorter).
        device: where each batch is moved as it is read.
        keep_bytes: the split is kept in memory after its first full pass when its batches take at
            most this many bytes (inputs and targets); ``0`` always streams.
    """

    def __init__(
        self,
        make: Callable[[], Iterator[Batch]],
        *,
        n_samples: int,
        batch_size: int,
        device: torch.device | str,
        keep_bytes: int,
    ) -> None:
        self._make = make
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype: torch.dtype | None = None  # floating inputs cast to this (:meth:`cast`); None keeps them
        self.keep_bytes = keep_bytes
        self._kept: list[Batch] | None = None
        self._may_keep = keep_bytes > 0  # False once a pass found the split larger than keep_bytes
        self.passes = 0  # passes that asked the task for its batches (kept passes read no data)

    @classmethod
    def in_memory(cls, batches: Sequence[Batch]) -> EvalBatches:
        """Batches a caller already holds, kept as they are (tests; scripts that made their own)."""
        held = list(batches)
        device = held[0].inputs.device if held else torch.device("cpu")
        size = len(held[0]) if held else 1
        out = cls(lambda: iter(held), n_samples=sum(len(b) for b in held), batch_size=size, device=device, keep_bytes=0)
        out._kept = held
        return out

    def cast(self, dtype: torch.dtype) -> None:
        """From now on yield floating-point inputs as ``dtype`` (kept batches are converted once).

        The harness fits (evaluation-label fits included) at fp32 and casts for measuring.
        """
        self.dtype = dtype
        if self._kept is not None:
            self._kept = [b.to(self.device, dtype) for b in self._kept]

    @property
    def streaming(self) -> bool:
        """Whether passes read the task again (True until a split that fits is kept)."""
        return self._kept is None

    def __len__(self) -> int:
        """Number of batches."""
        return -(-self.n_samples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self._kept is not None:
            yield from self._kept
            return
        self.passes += 1
        kept: list[Batch] = []
        size, seen = 0, 0
        for k, batch in enumerate(self._make()):
            b = batch.to(self.device, self.dtype)
            expected = min(self.batch_size, self.n_samples - seen)
            if len(b) != expected:
                raise RuntimeError(
                    f"Evaluation batch {k} has {len(b)} samples, expected {expected} ({self.n_samples} samples "
                    f"in batches of {self.batch_size}): the task's batches() disagrees with its n_samples(). "
                    "Fix the task so both count the same samples."
                )
            _check_finite(b, k)
            seen += len(b)
            if self._may_keep:
                size += _nbytes(b)
                if size <= self.keep_bytes:
                    kept.append(b)
                else:  # too large to keep: this pass and every later one stream
                    self._may_keep, kept = False, []
            yield b
        if seen != self.n_samples:
            raise RuntimeError(
                f"The evaluation split yielded {seen} samples, expected {self.n_samples}: the task's batches() "
                "disagrees with its n_samples(). Fix the task so both count the same samples."
            )
        if self._may_keep:
            self._kept = kept

    @overload
    def __getitem__(self, index: int) -> Batch: ...

    @overload
    def __getitem__(self, index: slice) -> list[Batch]: ...

    def __getitem__(self, index: int | slice) -> Batch | list[Batch]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = index + len(self) if index < 0 else index
        if not 0 <= i < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        for k, batch in enumerate(self):
            if k == i:
                return batch
        raise IndexError(f"batch {index} of {len(self)}")  # unreachable: __iter__ checks the count

    def gather(self, index_sets: Sequence[np.ndarray]) -> list[Tensor]:
        """The inputs at eval-order indices, one stacked tensor per index set, in one pass.

        Only the chosen samples are copied (each a clone, so no batch stays alive through a view):
        the timing loops' inputs cost memory in proportion to the samples they run, not the split.
        The pass stops at the last sample needed.
        """
        wanted = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in index_sets]))
        if wanted.size and not 0 <= wanted[0] <= wanted[-1] < self.n_samples:
            raise IndexError(f"sample index out of range 0..{self.n_samples - 1}: {wanted[0]}..{wanted[-1]}")
        found: dict[int, Tensor] = {}
        start = 0
        for batch in self if wanted.size else ():
            lo, hi = np.searchsorted(wanted, [start, start + len(batch)])
            for j in wanted[lo:hi].tolist():
                found[j] = batch.inputs[j - start].clone()
            start += len(batch)
            if len(found) == wanted.size:
                break
        return [torch.stack([found[int(j)] for j in s]) for s in index_sets]


def _check_finite(batch: Batch, k: int) -> None:
    """Refuse NaN/Inf evaluation inputs: their scores would be noise reported as a result."""
    x = batch.inputs
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(len(batch), -1))).any(dim=1).cpu()  # (B,) samples with a NaN/Inf
        ids = batch.sample_ids[bad].tolist()
        raise NonFiniteError(
            f"Evaluation batch {k} holds NaN or Inf inputs (sample ids {ids[:5]}{' …' if len(ids) > 5 else ''}): "
            "the task's evaluation data is broken. Fix or re-prepare the data set (bench data verify)."
        )


def _nbytes(batch: Batch) -> int:
    """Bytes of a batch's inputs and targets."""
    return sum(t.element_size() * t.nelement() for t in (batch.inputs, batch.targets))
