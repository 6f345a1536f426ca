"""Mixture-of-Depths on CPU: does capacity 0.125 turn saved FLOPs into saved time?

Prefill and decode are each measured against the dense model.

Run with ``pytest benchmarks/test_mod_realization.py --benchmark-only -s`` (pytest-benchmark). Not
part of the test suite's pass/fail: each test records numbers in ``benchmark.extra_info`` and prints
one summary line.

Backbone: a GPT with d=256, 4 blocks (blocks 1 and 3 routed), 4 heads, MLP 1024, 256-token
vocabulary, random weights (time does not depend on their values), capacity 0.125, one torch thread.
The predictors are calibrated so that each routes the capacity's share of prompt tokens, as a
trained predictor does.

- ``test_prefill``: the full-sequence forward of ``T=128`` tokens (what the harness times), top-k
  routing and predictor routing, batch 1 and 32.
- ``test_decode``: the KV-cached decoder (:func:`dynbench.methods.mixture_of_depths.generate`'s
  path): a 64-token prompt, then 32 tokens one at a time; per-token decode time = (prompt + 32 steps
  − prompt alone) / 32, as optimum-benchmark separates prefill from decode.

MoD and dense are timed interleaved on the same inputs (``harness.timing.time_interleaved``); FLOPs
are counted by ``FlopCounterMode`` on the same calls. ``realization`` = realized speedup ÷
theoretical speedup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from dynbench.config import MeasureConfig
from dynbench.hardware.cpu import CPU
from dynbench.harness.flops import count_flops
from dynbench.harness.timing import time_interleaved
from dynbench.methods.mixture_of_depths import MixtureOfDepths, MixtureOfDepthsConfig, MixtureOfDepthsModel
from dynbench.models.gpt import GPT, GPTConfig

D_MODEL, N_LAYERS, VOCAB, SEQ = 256, 4, 256, 128
CAPACITY = 0.125
PROMPT, NEW = 64, 32
N_INPUTS = 4  # distinct inputs the timing loop cycles through
TIMING = MeasureConfig(min_iters=8, min_time_s=1.0, max_time_s=30.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def calibrate_predictors(model: MixtureOfDepthsModel, ids: torch.Tensor, capacity: float) -> None:
    """Shift each predictor's output bias so it routes ``capacity`` of the tokens of ``ids``."""
    v = model.variant(capacity)
    v.train()  # training mode runs every predictor alongside top-k (dropout is 0)
    with torch.no_grad():
        _, steps = model.run_variant(v, ids, capacity, "topk")
        for block, step in zip(model.routed, steps):
            threshold = torch.quantile(step.predictor_logits.flatten().float(), 1.0 - capacity)
            v.predictors[str(block)].fc_out.bias -= threshold
    v.eval()


@pytest.fixture(scope="module")
def model() -> MixtureOfDepthsModel:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=VOCAB, block_size=SEQ, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=4)).eval()
    mod = MixtureOfDepths(MixtureOfDepthsConfig(capacities=(CAPACITY,))).wrap(gpt).eval()
    calibrate_predictors(mod, torch.randint(VOCAB, (64, SEQ)), CAPACITY)
    return mod


def token_batches(batch: int, length: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    return [torch.randint(VOCAB, (batch, length), generator=g) for _ in range(N_INPUTS)]


def compare(calls: dict[str, Callable[[int], object]]) -> dict[str, float]:
    """Median milliseconds per call, interleaved, after one warm-up call of each on every input."""
    with torch.inference_mode():
        stats = time_interleaved(calls, N_INPUTS, list(range(N_INPUTS)), CPU(), TIMING)
    return {name: s.median_ms for name, s in stats.items()}


def counted(fn: Callable[[], object], model: MixtureOfDepthsModel) -> int:
    return count_flops(fn, model).total


def record(benchmark, what: str, batch: int, dense_ms: float, mod_ms: float, dense_f: float, mod_f: float) -> None:
    realized, theoretical = dense_ms / mod_ms, dense_f / mod_f
    info = {
        "batch": batch,
        "dense_ms": dense_ms,
        "mod_ms": mod_ms,
        "dense_flops": dense_f,
        "mod_flops": mod_f,
        "speedup_realized": realized,
        "speedup_theoretical": theoretical,
        "realization": realized / theoretical,
    }
    benchmark.extra_info.update(info)
    print(
        f"\n{what} batch {batch}: dense {dense_ms:.2f} ms, mod {mod_ms:.2f} ms → realized {realized:.2f}x, "
        f"theoretical {theoretical:.2f}x, realization {realized / theoretical:.2f}"
    )


@pytest.mark.parametrize("routing", ["topk", "predictor"])
@pytest.mark.parametrize("batch", [1, 32])
def test_prefill(benchmark, model: MixtureOfDepthsModel, batch: int, routing: str) -> None:
    """Full-sequence forward at capacity 0.125 against the dense backbone."""
    xs = token_batches(batch, SEQ)
    ms = compare(
        {
            "dense": lambda i: model(xs[i], budget=1.0),
            "mod": lambda i: model(xs[i], budget=CAPACITY, routing=routing),
        }
    )
    dense_f = sum(counted(lambda x=x: model(x, budget=1.0), model) for x in xs)
    mod_f = sum(counted(lambda x=x: model(x, budget=CAPACITY, routing=routing), model) for x in xs)
    record(benchmark, f"prefill ({routing})", batch, ms["dense"], ms["mod"], dense_f, mod_f)
    benchmark.extra_info["tokens_per_s_dense"] = batch * SEQ * 1000 / ms["dense"]
    benchmark.extra_info["tokens_per_s_mod"] = batch * SEQ * 1000 / ms["mod"]
    with torch.inference_mode():
        benchmark(lambda: model(xs[0], budget=CAPACITY, routing=routing))


def decode(model: MixtureOfDepthsModel, prompt: torch.Tensor, budget: float, new: int) -> None:
    """The prompt in one call, then ``new`` greedy tokens one call each."""
    dec = model.decoder(budget, prompt.shape[0], PROMPT + NEW)
    logits = dec(prompt)  # (B, P, V)
    for _ in range(new):
        logits = dec(logits[:, -1:].argmax(dim=-1))  # (B, 1, V)


@pytest.mark.parametrize("batch", [1, 32])
def test_decode(benchmark, model: MixtureOfDepthsModel, batch: int) -> None:
    """Per-token KV-cached decode at capacity 0.125 (predictor routing) vs the dense decoder."""
    prompts = token_batches(batch, PROMPT)
    ms = compare(
        {
            f"{name}_{new}": lambda i, b=budget, n=new: decode(model, prompts[i], b, n)
            for name, budget in (("dense", 1.0), ("mod", CAPACITY))
            for new in (0, NEW)
        }
    )
    per_token = {name: (ms[f"{name}_{NEW}"] - ms[f"{name}_0"]) / NEW for name in ("dense", "mod")}
    flops = {
        name: sum(
            counted(lambda p=p, b=budget: decode(model, p, b, NEW), model)
            - counted(lambda p=p, b=budget: decode(model, p, b, 0), model)
            for p in prompts
        )
        for name, budget in (("dense", 1.0), ("mod", CAPACITY))
    }
    record(benchmark, "decode per token", batch, per_token["dense"], per_token["mod"], flops["dense"], flops["mod"])
    benchmark.extra_info["prefill_ms_dense"] = ms["dense_0"]
    benchmark.extra_info["prefill_ms_mod"] = ms["mod_0"]
    benchmark.extra_info["tokens_per_s_dense"] = batch * 1000 / per_token["dense"]
    benchmark.extra_info["tokens_per_s_mod"] = batch * 1000 / per_token["mod"]
    with torch.inference_mode():
        benchmark(lambda: decode(model, prompts[0], CAPACITY, NEW))
