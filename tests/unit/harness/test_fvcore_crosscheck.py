"""Dense FLOPs counted three ways agree: dynbench's formulas, ``FlopCounterMode``, and fvcore.

fvcore (``fvcore.nn.FlopCountAnalysis``, the counter the design card names) is independent of the
other two: it traces the model with ``torch.jit.trace`` and applies its own per-op formulas. Each
task's backbone is built untrained (random weights: FLOPs do not depend on them) and counted on a
batch of 2 samples.

How the three are compared, per op family, with no tolerance (each is an integer count over the
same shapes, so they agree exactly or something is wrong):

- Units: fvcore counts one fused multiply-add as one "flop"; dynbench and
  ``torch.utils.flop_counter`` count it as 2. fvcore's numbers are multiplied by 2.
- Linear layers (patch/frame embeddings, q/k/v/o projections, MLPs, the head): fvcore's ``linear``
  handle against ``FlopCounterMode``'s ``aten.addmm``/``aten.mm`` and the analytic count minus
  attention. Biases are not counted by any of the three.
- Attention (``QKᵀ`` and ``softmax·V``, ``2·T·S·(h·d_head)`` multiply-adds per block and sample,
  causal or not): fvcore 0.1.5 predates ``F.scaled_dot_product_attention`` and has no handle for it
  (it reports ``aten::scaled_dot_product_attention`` as unsupported and counts it as 0). So a second
  fvcore run replaces that one function by the textbook ``softmax(QKᵀ·scale)·V``, whose outputs are
  checked to equal the model's, and counts its two ``aten::matmul``s.
- Norms: fvcore counts ``aten::layer_norm`` as 5 per normalised value (its own "rough estimate");
  dynbench's convention (``src/dynbench/harness/flops.py``) counts norms as 0. The test checks that
  this is the only extra and that it is 5 × the values the LayerNorms saw.
- Everything else fvcore skips (:data:`ZERO_BY_CONVENTION`, reported by ``unsupported_ops()``) is
  elementwise or a lookup, 0 in dynbench's convention too: residual adds, GELU/SiLU, RMSNorm,
  rotary multiplies, embedding gathers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dynbench.harness.flops import flop_counter
from dynbench.models.audio import AudioEncoder
from dynbench.models.backbone import Backbone
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.vit import ViT
from dynbench.tasks.base import TASKS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # fvcore.nn calls torch.jit.script on import (torch >= 2.10)
    fvcore_nn = pytest.importorskip("fvcore.nn", reason="fvcore is in the dev extra: pip install -e '.[dev]'")

BATCH = 2  # samples per counted call: per-sample formulas must scale with the batch
LINEAR_OPS = {"aten.addmm", "aten.mm"}  # what F.linear becomes under FlopCounterMode (with and without bias)
ZERO_BY_CONVENTION = {
    "aten::add",  # residual connections, learned positions
    "aten::mul",  # GELU's inner products as traced, rotary embeddings
    "aten::sub",  # rotary embeddings: x1·cos - x2·sin
    "aten::gelu",
    "aten::silu",  # SwiGLU's gate
    "aten::rms_norm",  # Llama-style norms (fvcore only knows layer_norm, group_norm, batch_norm)
    "aten::embedding",  # token embedding: a gather
    "aten::sin",  # rotary tables (built on the first call at each length, then cached)
    "aten::cos",
    "aten::pow",  # rotary frequencies θ^(-2i/d)
    "aten::reciprocal",
    "aten::div",
    "aten::softmax",  # in the attention substitute
    "aten::tril",  # the causal mask in the attention substitute
    "aten::repeat_interleave",  # grouped-query k/v in the attention substitute: a copy
}
"""Ops fvcore reports as unsupported that count 0 in dynbench's convention (no matmul in them)."""

LLAMA_SHAPED = GPTConfig(  # SmolLM2's kind of block (GQA 3:1, RoPE, SwiGLU, RMSNorm, no bias, tied head), small
    vocab_size=64,
    block_size=32,
    d_model=48,
    n_layers=2,
    n_heads=6,
    n_kv_heads=2,
    mlp_hidden=128,
    norm="rmsnorm",
    mlp="swiglu",
    bias=False,
    rope=True,
    learned_positions=False,
    tie_embeddings=True,
)


def example_inputs(backbone: Backbone) -> Tensor:
    """Random inputs of the shape the backbone takes, a batch of BATCH (full-length for a GPT)."""
    cfg: Any = backbone.config  # type: ignore[attr-defined]
    if isinstance(backbone, ViT):
        return torch.randn(BATCH, cfg.channels, cfg.image_size, cfg.image_size)
    if isinstance(backbone, AudioEncoder):
        return torch.randn(BATCH, cfg.n_frames, cfg.n_mels)
    if isinstance(backbone, GPT):
        return torch.randint(cfg.vocab_size, (BATCH, cfg.block_size))
    raise TypeError(f"no example input for {type(backbone).__name__}; add one to example_inputs")


def sdpa_as_matmuls(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` written as two matmuls, which fvcore can count."""
    if enable_gqa:  # each group of query heads reads one k/v head
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)  # (B, h, S, d)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)  # (B, h, S, d)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (scale or 1 / math.sqrt(q.shape[-1]))  # (B, h, T, S)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()  # (T, S)
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.matmul(scores.softmax(dim=-1), v)  # (B, h, T, d)


def fvcore_counts(model: nn.Module, x: Tensor) -> tuple[dict[str, int], dict[str, int]]:
    """fvcore's multiply-adds by operator, and the ops it skipped (with how often it met them)."""
    analysis = fvcore_nn.FlopCountAnalysis(model, (x,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)  # returned below instead
    return dict(analysis.by_operator()), dict(analysis.unsupported_ops())


def layer_norm_values(model: nn.Module, x: Tensor) -> int:
    """How many values the model's LayerNorms normalise in one forward pass."""
    seen: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel()))
        for m in model.modules()
        if isinstance(m, nn.LayerNorm)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sum(seen)


def task_backbone(name: str) -> Callable[[], Backbone]:
    return lambda: TASKS.get(name)().build_backbone()


CASES = [
    pytest.param(task_backbone("toy-vision"), id="toy-vision"),
    pytest.param(task_backbone("toy-text"), id="toy-text"),
    pytest.param(task_backbone("digits"), id="digits"),
    pytest.param(task_backbone("fashion-mnist"), id="fashion-mnist (vision default)"),
    pytest.param(task_backbone("spoken-digits"), id="spoken-digits (the speech encoder)"),
    pytest.param(task_backbone("shakespeare"), id="shakespeare (text default)"),
    pytest.param(task_backbone("speech-commands"), id="speech-commands"),
    pytest.param(lambda: GPT(LLAMA_SHAPED), id="llama-shaped GPT (smollm2's block, small)"),
    pytest.param(task_backbone("imagenet"), id="imagenet ViT-B/16", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("build", CASES)
def test_dense_flops_agree_with_fvcore_and_flop_counter_mode_per_op_family(
    build: Callable[[], Backbone], monkeypatch: pytest.MonkeyPatch
):
    torch.manual_seed(0)
    model = build().eval()
    x = example_inputs(model)
    sample_shape = tuple(x.shape[1:])

    # dynbench's formulas, split into attention (stated here) and the linear layers (the rest)
    cfg = model.block_config
    tokens = model.n_tokens(sample_shape)
    analytic_total = BATCH * model.dense_flops(sample_shape)
    analytic_attention = BATCH * model.n_blocks * 2 * (2 * tokens * tokens * cfg.n_heads * cfg.head_dim)
    analytic_linear = analytic_total - analytic_attention

    # torch's FlopCounterMode, as the harness runs it (with the CPU attention formula added)
    with flop_counter() as counter, torch.no_grad():
        reference = model(x)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    mode_linear = sum(n for op, n in by_op.items() if op in LINEAR_OPS)
    mode_attention = sum(n for op, n in by_op.items() if "scaled_dot_product" in op)
    assert set(by_op) - LINEAR_OPS == {op for op in by_op if "scaled_dot_product" in op}, by_op

    # fvcore as is: linear layers and norms; attention skipped
    macs, skipped = fvcore_counts(model, x)
    assert set(macs) <= {"linear", "layer_norm"}, macs
    assert set(skipped) <= ZERO_BY_CONVENTION | {"aten::scaled_dot_product_attention"}, skipped
    assert 2 * macs["linear"] == mode_linear == analytic_linear
    assert macs.get("layer_norm", 0) == 5 * layer_norm_values(model, x)  # counted by fvcore only

    # fvcore with attention written as matmuls: the same outputs, and its matmuls are the attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_as_matmuls)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)
    macs_math, skipped_math = fvcore_counts(model, x)
    assert set(skipped_math) <= ZERO_BY_CONVENTION, skipped_math
    assert 2 * macs_math["matmul"] == mode_attention == analytic_attention
    assert 2 * macs_math["linear"] == analytic_linear
