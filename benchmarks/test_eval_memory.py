"""Evaluation memory: a split larger than ``measure.eval_memory_mb`` streams, bounded by a batch.

An ImageNet-shaped split (float32 ``3×224×224`` images, decoded on demand, as the imagenet task's
folder split does) of 2,000 images — 1.2 GB as tensors — goes through what a run does with it: three
full passes (the dense twin's quality and FLOPs passes, one budget's quality pass) and the timing
loop's gather of 64 samples. Each mode runs in a fresh process; its peak resident memory
(``ru_maxrss``) above the process's baseline is the figure. Kept, the split is held after its first
pass; streamed (``eval_memory_mb=0``), only the batch in hand and the gathered samples are.

Run with ``pytest benchmarks/test_eval_memory.py`` (a few seconds per mode).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

N, BATCH, SHAPE = 2000, 128, (3, 224, 224)
SAMPLE_BYTES = 4 * SHAPE[0] * SHAPE[1] * SHAPE[2]

CHILD = r"""
import json, resource, sys
import numpy as np, torch
from dynbench.harness.eval_batches import EvalBatches
from dynbench.types import Batch

n, batch, keep = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
shape = (3, 224, 224)

def decode():  # deterministic "decoding": a fresh tensor per batch and pass, as JPEG decoding makes
    for start in range(0, n, batch):
        ids = torch.arange(start, min(start + batch, n))
        g = torch.Generator().manual_seed(start)
        yield Batch(torch.rand(len(ids), *shape, generator=g), ids % 1000, ids)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
eb = EvalBatches(decode, n_samples=n, batch_size=batch, device="cpu", keep_bytes=keep)
total = 0.0
for _ in range(3):
    for b in eb:
        total += float(b.inputs[:, 0, 0, 0].sum())
inputs = eb.gather([np.arange(64) * 31 % n])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"extra_bytes": peak - base, "passes_read": eb.passes, "kept": not eb.streaming}))
"""


def run_child(keep_bytes: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(N), str(BATCH), str(keep_bytes)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["kept", "streamed"])
def test_eval_memory(mode: str, benchmark) -> None:
    keep = 1 << 40 if mode == "kept" else 0
    result = benchmark.pedantic(run_child, args=(keep,), rounds=1, iterations=1)
    split_bytes = N * SAMPLE_BYTES
    benchmark.extra_info.update({**result, "split_bytes": split_bytes, "batch_bytes": BATCH * SAMPLE_BYTES})
    mib = result["extra_bytes"] / 2**20
    print(f"{mode}: peak {mib:,.0f} MiB above baseline (split {split_bytes / 2**20:,.0f} MiB)")
    if mode == "kept":
        assert result["kept"] and result["passes_read"] == 1 and result["extra_bytes"] >= split_bytes
    else:  # the target: a few batches and the gathered samples, never the split
        assert result["passes_read"] == 3 + 1 and result["extra_bytes"] < 4 * BATCH * SAMPLE_BYTES + 64 * SAMPLE_BYTES
