"""Realization of every method with a static or priced operating point, on each device (issue 17).

realization = realized speedup ÷ theoretical speedup, realized = dense ms ÷ method ms (means of
interleaved calls over the same inputs, the harness's own timer: CUDA events on a GPU,
perf_counter on the CPU) and theoretical = dense FLOPs ÷ method FLOPs (``FlopCounterMode`` on the
same calls, controllers included, summed over the inputs: means, so a method whose cost differs by
input is compared like with like; medians would not be). Random weights: time does not depend
on their values, only on what runs, so each method's decisions are *priced* to spend its budget on
the inputs, as a fitted model's would:

- ``layer_skip[pattern=uniform]`` at 0.5 and ``early_exit[rule=depth]`` at 0.5 (static: half the
  blocks, no fit);
- ``early_exit_conf``: the confidence rule, its threshold τ bisected on the inputs so that about
  half of dense's FLOPs run (untrained exit heads: their confidences differ by sample all the same);
  ``early_exit_compact`` the same with ``compact_every`` = a third of the blocks (at least 2), the
  batch compacted every few blocks instead of after each;
- ``mod`` at capacity 0.125, top-k routing (the prefill path; k is fixed);
- ``acm`` at β 0.25, its learner price bisected on the inputs
  (:func:`~dynbench.methods.acm.set_price`); on CUDA also ``acm_triton``, the same with its
  learners in Triton kernels (``acm[kernel=triton]``: no host sync per block);
- ``token_skip`` at 0.5, its logit bias bisected on the inputs
  (:func:`~dynbench.methods.token_skip.calibrate`); ``token_skip_padded`` the same with
  ``batching="padded"`` (a ragged batch in one padded pass per block, the padding charged);
- ``dht_static``: ``dht[policy=static]`` at its 0.6 table, set to half the head units of every
  block (DHT's head-granular sub-network path);
- ``tinv_static``: ``tinv[policy=static]`` at 0.5, set to stop at the fold point nearest half the
  blocks (its segment path and exit head).

The learned controllers of ``dht`` (bandits) and ``tinv`` (a tree predictor and a PPO policy) need
fits; their static controls run the same execution paths, which is what this table prices. The
``oracle`` is left out: an upper bound on quality that looks each input up by a hash of its content,
bookkeeping no deployable controller would pay, so its speed is not a claim about any method.

Sizes: on CUDA the issue's — a GPT with d = 1,024, 12 blocks, 1,024 tokens (prefill), and ViT-B/16
at 224 px — in fp32 and bf16 at batch 1 and 32 (the ViT at 64, the batch of the issue's ViT row);
on the CPU reduced ones — d = 256, 4 blocks, 128 tokens, and a d = 256 ViT on 32 px (65 tokens) —
in fp32 and bf16 at batch 1 and 32, torch's default threads (the CPU target's default). A dtype is
applied as a run applies the target's ``dtype`` option: operating points priced at fp32, then the
target's cast (fp32 tensors only) and the floating inputs cast. Run with
``pytest benchmarks/test_gpu_realization.py --benchmark-only``; the table prints at the end.
Nothing passes or fails on a speed; a method whose path fails on a device or dtype shows the error.

The last column checks the roofline model (:mod:`dynbench.hardware.roofline`) on the same calls:
modeled ÷ measured latency of dense and of the method, priced on this CPU's measured figures
(``cpu-roofline``'s) or, on a GPU with a datasheet target (A100, H100, H200), on its datasheet's.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterator

import pytest
import torch

from dynbench.config import MeasureConfig
from dynbench.hardware.base import HardwareTarget
from dynbench.hardware.cpu import CPU, CPUConfig
from dynbench.hardware.modeled import DEVICES, host_cpu_spec, twin_of
from dynbench.hardware.roofline import DeviceSpec, count_ops, modeled_seconds
from dynbench.harness.flops import count_flops
from dynbench.harness.timing import time_interleaved
from dynbench.methods.acm import ACM, ACMConfig, set_price
from dynbench.methods.base import DynamicModel, Method
from dynbench.methods.dht import DHT, DHTConfig
from dynbench.methods.early_exit import EarlyExit, EarlyExitConfig
from dynbench.methods.layer_skip import LayerSkip, LayerSkipConfig
from dynbench.methods.mixture_of_depths import MixtureOfDepths, MixtureOfDepthsConfig
from dynbench.methods.token_skip import TokenSkip, TokenSkipConfig, calibrate
from dynbench.methods.transformer_inverse import TransformerInverse, TransformerInverseConfig
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.vit import ViT, ViTConfig

TIMING = MeasureConfig(min_iters=10, min_time_s=0.5, max_time_s=10.0)
N_INPUTS = 4
RESULTS: list[dict] = []


@dataclasses.dataclass(frozen=True)
class Size:
    """One backbone shape of the table."""

    name: str
    kind: str  # "gpt" or "vit"
    d_model: int
    n_layers: int
    n_heads: int
    tokens: int  # GPT: sequence length; ViT: image side in pixels
    patch: int = 16


CPU_SIZES = (Size("GPT d=256 L=4 T=128", "gpt", 256, 4, 4, 128), Size("ViT d=256 L=4 32px", "vit", 256, 4, 8, 32, 4))
CUDA_SIZES = (
    Size("GPT d=1024 L=12 T=1024", "gpt", 1024, 12, 16, 1024),
    Size("ViT-B/16 224px", "vit", 768, 12, 12, 224),
)


def backbone(size: Size) -> torch.nn.Module:
    torch.manual_seed(0)
    if size.kind == "gpt":
        cfg = GPTConfig(vocab_size=256, block_size=size.tokens, d_model=size.d_model, n_layers=size.n_layers,
                        n_heads=size.n_heads)  # fmt: skip
        return GPT(cfg).eval()
    cfg = ViTConfig(image_size=size.tokens, patch_size=size.patch, channels=3, n_classes=1000, d_model=size.d_model,
                    n_layers=size.n_layers, n_heads=size.n_heads)  # fmt: skip
    return ViT(cfg).eval()


def inputs(size: Size, batch: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    if size.kind == "gpt":
        return [torch.randint(256, (batch, size.tokens), generator=g).to(device) for _ in range(N_INPUTS)]
    return [torch.randn(batch, 3, size.tokens, size.tokens, generator=g).to(device) for _ in range(N_INPUTS)]


def priced(name: str, net: torch.nn.Module, calib: torch.Tensor) -> tuple[DynamicModel, float]:
    """``(model, budget)``: the method around ``net``, its decisions priced on ``calib``."""
    method: Method
    if name == "layer_skip":
        method, budget = LayerSkip(LayerSkipConfig(pattern="uniform")), 0.5
    elif name == "early_exit":
        method, budget = EarlyExit(EarlyExitConfig(rule="depth")), 0.5
    elif name in ("early_exit_conf", "early_exit_compact"):
        every = max(2, net.n_blocks // 3) if name == "early_exit_compact" else 1  # type: ignore[operator]
        method, budget = EarlyExit(EarlyExitConfig(compact_every=every)), 0.5  # budget: τ, set below
    elif name == "mod":
        method, budget = MixtureOfDepths(MixtureOfDepthsConfig(capacities=(0.125,), routing="topk")), 0.125
    elif name in ("acm", "acm_triton"):
        method, budget = ACM(ACMConfig(targets=(0.25,), kernel="triton" if name == "acm_triton" else "torch")), 0.25
    elif name == "dht_static":
        method, budget = DHT(DHTConfig(policy="static")), 0.6
    elif name == "tinv_static":
        method, budget = TransformerInverse(TransformerInverseConfig(policy="static")), 0.5
    else:  # token_skip, token_skip_padded
        batching = "padded" if name == "token_skip_padded" else "per_sample"
        method, budget = TokenSkip(TokenSkipConfig(targets=(0.5,), batching=batching)), 0.5
    model = method.wrap(net).eval()
    with torch.inference_mode():
        if name in ("acm", "acm_triton"):
            set_price(model, budget, calib)  # type: ignore[arg-type]
        elif name in ("early_exit_conf", "early_exit_compact"):
            budget = threshold_for_half(model, calib)
        elif name in ("token_skip", "token_skip_padded"):
            bias, _ = calibrate(model, calib, budget, steps=12)  # type: ignore[arg-type]
            model.bias[0] = bias  # type: ignore[index]
        elif name == "dht_static":  # half the head units of every block
            k, U, L = model.table_index(budget), model.n_units, model.backbone.n_blocks  # type: ignore[attr-defined]
            half = max(1, U // 2)
            model.static_arm[k] = (L - 1) * U + (half - 1)  # type: ignore[index]  # arm = (depth − 1)·U + (u − 1)
            model.static_units[k] = torch.arange(U) < half  # type: ignore[index]
            model.fitted.fill_(True)  # type: ignore[union-attr]
        elif name == "tinv_static":  # stop at the fold point nearest half the blocks
            depths, L = model.depths, model.backbone.n_blocks  # type: ignore[attr-defined]
            k = [abs(b - budget) < 1e-9 for b in model.calib_budgets.tolist()].index(True)  # type: ignore[union-attr]
            model.static_path[k] = min(range(len(depths)), key=lambda i: abs(depths[i] - L / 2))  # type: ignore[index]
            model.fitted.fill_(True)  # type: ignore[union-attr]
    return model, budget


def threshold_for_half(model: DynamicModel, calib: torch.Tensor, steps: int = 14) -> float:
    """The confidence threshold τ at which ``model`` runs nearest half of dense's FLOPs."""
    dense = count_flops(lambda: model(calib, budget=1.0), model).total
    low, high, tried = 0.0, 1.0, []
    for _ in range(steps):  # a higher τ: fewer rows leave early, more FLOPs
        tau = (low + high) / 2
        share = count_flops(lambda t=tau: model(calib, budget=t), model, model.controller_modules()).total / dense
        tried.append((abs(share - 0.5), tau))
        low, high = (low, tau) if share > 0.5 else (tau, high)
    return min(tried)[1]


METHODS = ("layer_skip", "early_exit", "early_exit_conf", "early_exit_compact", "mod", "acm", "token_skip",
           "token_skip_padded", "dht_static", "tinv_static")  # fmt: skip
GPU_ONLY = ("acm_triton",)  # ACM's learners as Triton kernels (acm[kernel=triton]): CUDA only


def cases() -> Iterator:
    for device in ("cpu", "cuda"):
        sizes = CPU_SIZES if device == "cpu" else CUDA_SIZES
        dtypes = ("fp32", "bf16")
        for size in sizes:
            for dtype in dtypes:
                for batch in (1, 64 if device == "cuda" and size.kind == "vit" else 32):
                    for name in METHODS + (GPU_ONLY if device == "cuda" else ()):
                        marks = [pytest.mark.gpu] if device == "cuda" else []
                        yield pytest.param(device, size, dtype, batch, name, marks=marks,
                                           id=f"{device}-{size.name}-{dtype}-b{batch}-{name}")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def table(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print every measured row as one Markdown table when the module ends (even if captured)."""
    yield
    if not RESULTS:
        return
    lines = ["", "| device | size | dtype | batch | method@budget | dense ms | method ms | realized | theoretical | "
             "realization | modeled ÷ measured, dense / method |", "|---" * 11 + "|"]  # fmt: skip
    for r in RESULTS:
        head = f"| {r['device']} | {r['size']} | {r['dtype']} | {r['batch']} | {r['method']} |"
        if "error" in r:
            lines.append(f"{head} error: {r['error']} | | | | | |")
            continue
        model = (
            "no model for this device"
            if r["model_dense"] is None
            else f"{r['model_dense']:.2f} / {r['model_method']:.2f}"
        )
        lines.append(f"{head} {r['dense_ms']:.3f} | {r['method_ms']:.3f} | {r['realized']:.2f}× | "
                     f"{r['theoretical']:.2f}× | {r['realization']:.2f} | {model} |")  # fmt: skip
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines))


def roofline_for(device: str, dtype: str) -> DeviceSpec | None:
    """The roofline's figures for this device: the CPU's as measured, a GPU's datasheet, or None."""
    if device == "cpu":
        return host_cpu_spec(dtype, torch.get_num_threads())
    twin = twin_of(torch.cuda.get_device_name())
    return None if twin is None else DEVICES[twin]


def modeled_ms(call: Callable[[], object], spec: DeviceSpec | None, dtype: str) -> float | None:
    """The roofline's milliseconds for one call, or None without a model of the device."""
    return None if spec is None else modeled_seconds(count_ops(call), spec, dtype) * 1e3


def target_for(device: str, dtype: str = "fp32") -> HardwareTarget:
    """The harness's target for ``device`` at ``dtype``: its timer and its cast (fp32 tensors)."""
    if device == "cuda":
        from dynbench.hardware.cuda import CUDA, CUDAConfig

        return CUDA(CUDAConfig(dtype=dtype))
    return CPU(CPUConfig(dtype=dtype))


@pytest.mark.parametrize(("device", "size", "dtype", "batch", "name"), list(cases()))
def test_realization(benchmark, device: str, size: Size, dtype: str, batch: int, name: str) -> None:
    """One method at its priced budget against the dense backbone on the same inputs."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    dev = torch.device(device)
    row = {"device": device, "size": size.name, "dtype": dtype, "batch": batch}
    net = backbone(size)
    target = target_for(device, dtype)
    xs = [x.to(target.torch_dtype) if x.is_floating_point() else x for x in inputs(size, batch, dev)]
    try:
        model, budget = priced(name, net, inputs(size, 8, torch.device("cpu"))[0])  # priced at fp32, as fits run
        model = target.cast(model.to(dev))
        row["method"] = f"{name}@{budget:g}"
        calls: dict[str, Callable[[int], object]] = {
            "dense": lambda i: model(xs[i], budget=1.0),
            "method": lambda i, b=budget: model(xs[i], budget=b),
        }
        with torch.inference_mode():
            stats = time_interleaved(calls, N_INPUTS, list(range(N_INPUTS)), target, TIMING)
            dense_f = sum(count_flops(lambda x=x: model(x, budget=1.0), model).total for x in xs)
            method_f = sum(
                count_flops(lambda x=x, b=budget: model(x, budget=b), model, model.controller_modules()).total
                for x in xs
            )
            spec = roofline_for(device, dtype)
            modeled = {
                k: [modeled_ms(lambda i=i, c=c: c(i), spec, dtype) for i in range(N_INPUTS)] for k, c in calls.items()
            }
    except Exception as exc:  # noqa: BLE001 — a path that fails on a device or dtype is a table row, not a crash
        RESULTS.append({**row, "method": name, "error": f"{type(exc).__name__}: {str(exc)[:80]}"})
        pytest.skip(f"{name} on {device}/{dtype}: {exc}")
    dense_ms, method_ms = stats["dense"].mean_ms, stats["method"].mean_ms  # means: FLOPs are sums over the inputs
    realized, theoretical = dense_ms / method_ms, dense_f / method_f
    model_dense = model_method = None
    if spec is not None:  # means over the inputs, as the measured times are
        model_dense = statistics.mean(modeled["dense"]) / dense_ms  # type: ignore[arg-type]
        model_method = statistics.mean(modeled["method"]) / method_ms  # type: ignore[arg-type]
    result = {**row, "dense_ms": dense_ms, "method_ms": method_ms, "realized": realized, "theoretical": theoretical,
              "realization": realized / theoretical, "model_dense": model_dense,
              "model_method": model_method}  # fmt: skip
    RESULTS.append(result)
    benchmark.extra_info.update(result)
    with torch.inference_mode():
        benchmark.pedantic(lambda: model(xs[0], budget=budget), rounds=3, iterations=1)
