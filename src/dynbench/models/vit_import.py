"""Pretrained timm or torchvision ViT checkpoint files → our :class:`~dynbench.models.vit.ViT`.

Sources: timm's ``VisionTransformer`` (https://github.com/huggingface/pytorch-image-models,
``timm/models/vision_transformer.py``; e.g. ``vit_small_patch16_224.augreg_in21k_ft_in1k``, whose
Hub file is ``model.safetensors``) and torchvision's ``VisionTransformer`` (https://github.com/pytorch/vision,
``torchvision/models/vision_transformer.py``; ``vit_b_16`` with ``ViT_B_16_Weights.IMAGENET1K_V1``).
A file is ``torch.save(model.state_dict())`` (``.pt``, ``.pth``, ``.bin``; also a training
checkpoint holding ``state_dict`` or ``model``) or a ``.safetensors`` file, read here without the
``safetensors`` package.

Both libraries build the original ViT (Dosovitskiy et al., https://arxiv.org/abs/2010.11929) the way
our ViT is
built: a stride-p convolution over patches, a CLS token, learned positions added to CLS + patches,
pre-norm blocks (LayerNorm ε = 1e-6, fused q/k/v projection with bias, exact-erf GELU MLP), a final
LayerNorm and a linear head on the CLS token. The mapping (``ours ← timm | torchvision``):

- ``patch_embed.weight`` ``(C, 3·p·p)`` ← ``patch_embed.proj.weight`` | ``conv_proj.weight``
  ``(C, 3, p, p)`` reshaped: our patches are flattened in (channel, row, column) order, the order of
  a convolution kernel, and the patch sequence is row-major like the convolution's output; ``.bias``
  copied.
- ``cls_token`` ← ``cls_token`` | ``class_token``; ``pos_embed`` ← ``pos_embed`` |
  ``encoder.pos_embedding``, ``(1, 1 + N, C)`` with the CLS position first.
- per block: ``attn_norm`` ← ``norm1`` | ``ln_1``; ``attn.{q,k,v}_proj`` ← the three row blocks (q,
  then k, then v; heads contiguous inside each) of ``attn.qkv`` |
  ``self_attention.in_proj_{weight,bias}``; ``attn.o_proj`` ← ``attn.proj`` |
  ``self_attention.out_proj``; ``mlp_norm`` ← ``norm2`` | ``ln_2``; ``mlp.fc_in``/``fc_out`` ←
  ``mlp.fc1``/``fc2`` | ``mlp.0``/``mlp.3`` (``mlp.linear_1``/``linear_2`` in torchvision files
  older than its MLP refactor).
- ``readout.norm`` ← ``norm`` | ``encoder.ln``; ``readout.head`` ← ``head`` | ``heads.head``.

Exact: every weight is copied unchanged (cast to float32), so the logits equal the library's up to
floating-point summation order. Not supported (a clear error, never a silent drop): the head count
(it is not stored in the file: the config must name it, the variants here do), models with layer
scale, register tokens, q/k norms, average pooling (``fc_norm``), a pre-logits layer, a different
image size (positions are not interpolated) or timm's ``.npz`` JAX files.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from dynbench.models.vit import ViT, ViTConfig

WeightFormat = Literal["timm", "torchvision"]

VIT_S16 = ViTConfig(
    image_size=224,
    patch_size=16,
    channels=3,
    n_classes=1000,
    d_model=384,
    n_layers=12,
    n_heads=6,
    mlp_ratio=4.0,
    norm_eps=1e-6,
)
"""ViT-S/16 at 224 px (timm ``vit_small_patch16_224``; 22.1 M parameters)."""
VIT_B16 = replace(VIT_S16, d_model=768, n_heads=12)
"""ViT-B/16 at 224 px (timm ``vit_base_patch16_224``, torchvision ``vit_b_16``; 86.6 M params)."""
VARIANTS: dict[str, ViTConfig] = {"vit_s16": VIT_S16, "vit_b16": VIT_B16}

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class WeightsError(ValueError):
    """A checkpoint file cannot be read, or does not hold the ViT the config describes."""


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file.

    The format: an 8-byte little-endian header length, a JSON header, the data.

    Raises:
        WeightsError: the file is not in that format.
    """
    blob = bytearray(Path(path).read_bytes())  # writable, so torch.frombuffer shares it without a warning
    n = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
    if n < 2 or 8 + n > len(blob):
        raise WeightsError(f"{path} is not a safetensors file (header length {n}, file size {len(blob)}).")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} has an unreadable safetensors header: {exc}.") from None
    if sys.byteorder != "little":
        raise WeightsError(f"safetensors files are little-endian; this machine is {sys.byteorder}-endian.")
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise WeightsError(f"{path}: tensor {name} has dtype {info.get('dtype')!r}, which is not supported here.")
        begin, end = info["data_offsets"]
        count = end - begin
        numel = 1
        for d in info["shape"]:
            numel *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if count != numel * itemsize or 8 + n + end > len(blob):
            raise WeightsError(f"{path}: tensor {name} has {count} bytes for shape {info['shape']}; file is damaged.")
        flat = torch.frombuffer(blob, dtype=dtype, count=numel, offset=8 + n + begin) if numel else torch.empty(0)
        out[name] = flat.reshape(info["shape"])
    return out


def read_weights(path: Path) -> dict[str, Tensor]:
    """The state dict in a checkpoint file: safetensors, or a torch pickle (``weights_only=True``).

    A training checkpoint's ``state_dict`` (or ``model``) entry is taken, and a ``module.`` prefix
    that every key shares (``DataParallel``) is dropped.

    Raises:
        WeightsError: the file cannot be read or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist. Fix the path (see the task's `weights` option).")
    if path.suffix == ".safetensors":
        state: object = read_safetensors(path)
    elif path.suffix == ".npz":
        raise WeightsError(
            f"{path} is a JAX .npz checkpoint, which is not read here. Load it with timm and save "
            "torch.save(model.state_dict(), 'vit.pth'), or use the timm Hub file model.safetensors."
        )
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError) for a bad file
            raise WeightsError(
                f"Cannot read {path} as a torch checkpoint ({type(exc).__name__}: {exc}). Save the model with "
                "torch.save(model.state_dict(), path), or use a .safetensors file."
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict of tensors (found {type(state).__name__}).")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def detect_format(state: dict[str, Tensor]) -> WeightFormat:
    """``timm`` or ``torchvision``, from the patch-embedding key.

    Raises:
        WeightsError: neither layout (the message lists a few keys found).
    """
    if "patch_embed.proj.weight" in state:
        return "timm"
    if "conv_proj.weight" in state:
        return "torchvision"
    sample = ", ".join(sorted(state)[:6])
    raise WeightsError(
        f"The weights are neither a timm nor a torchvision ViT (no patch_embed.proj.weight or conv_proj.weight; "
        f"keys start {sample} …). Save a timm VisionTransformer or torchvision vit_b_16 state dict."
    )


def _layers(state: dict[str, Tensor], pattern: str) -> int:
    """Blocks in the file: 1 + the largest index matched by ``pattern`` (a regex with one group)."""
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


LAYOUT_KEYS: dict[str, tuple[str, str, str, str]] = {
    "timm": ("patch_embed.proj.weight", "pos_embed", "head.weight", r"blocks\.(\d+)\."),
    "torchvision": ("conv_proj.weight", "encoder.pos_embedding", "heads.head.weight", r"encoder\.layers\.\D+(\d+)\."),
}
"""Per layout: the patch convolution, positions and head keys; a regex capturing the block index."""


def describe(state: dict[str, Tensor], fmt: WeightFormat) -> str:
    """The shape the file holds, in config terms, for error messages.

    The head count is not in the file.
    """
    conv_key, pos_key, head_key, layer_re = LAYOUT_KEYS[fmt]
    conv, pos, head = state.get(conv_key), state.get(pos_key), state.get(head_key)
    parts = [f"n_layers={_layers(state, layer_re)}"]
    if conv is not None:
        parts += [f"d_model={conv.shape[0]}", f"channels={conv.shape[1]}", f"patch_size={conv.shape[-1]}"]
        if pos is not None:
            parts.append(f"image_size={round((pos.shape[1] - 1) ** 0.5) * conv.shape[-1]}")
    if head is not None:
        parts.append(f"n_classes={head.shape[0]}")
    return ", ".join(parts)


def _timm_names(i: int) -> dict[str, str]:
    """Our parameter name → timm's, for block ``i`` (q/k/v handled separately)."""
    b = f"blocks.{i}."
    return {
        "attn_norm": b + "norm1",
        "attn.o_proj": b + "attn.proj",
        "mlp_norm": b + "norm2",
        "mlp.fc_in": b + "mlp.fc1",
        "mlp.fc_out": b + "mlp.fc2",
    }


def _torchvision_names(i: int, state: dict[str, Tensor]) -> dict[str, str]:
    """Our parameter name → torchvision's, for block ``i`` (q/k/v handled separately)."""
    b = f"encoder.layers.encoder_layer_{i}."
    legacy = f"{b}mlp.linear_1.weight" in state  # files saved before torchvision's MLPBlock became ops.MLP
    return {
        "attn_norm": b + "ln_1",
        "attn.o_proj": b + "self_attention.out_proj",
        "mlp_norm": b + "ln_2",
        "mlp.fc_in": b + ("mlp.linear_1" if legacy else "mlp.0"),
        "mlp.fc_out": b + ("mlp.linear_2" if legacy else "mlp.3"),
    }


def convert_state_dict(state: dict[str, Tensor], cfg: ViTConfig, fmt: WeightFormat | None = None) -> dict[str, Tensor]:
    """Rename and reshape a timm or torchvision ViT state dict into ours (float32).

    Args:
        state: the library's state dict.
        cfg: our model's shape (gives the layer count; shapes are checked by
            :func:`vit_from_state_dict`).
        fmt: the layout; ``None`` detects it.

    Raises:
        WeightsError: a key is missing, or the file has parameters this mapping does not know.
    """
    fmt = fmt or detect_format(state)
    src = dict(state)
    out: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        if name not in src:
            raise WeightsError(
                f"The {fmt} weights have no '{name}'; the file holds {describe(state, fmt)}, the config asks for "
                f"n_layers={cfg.n_layers}. Pick the variant (or model) that matches the file."
            )
        return src.pop(name).float()

    if fmt == "timm":
        top = {"conv": "patch_embed.proj", "cls": "cls_token", "pos": "pos_embed", "norm": "norm", "head": "head"}
        qkv = lambda i: (f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.qkv.bias")  # noqa: E731
        names = lambda i: _timm_names(i)  # noqa: E731
    else:
        top = {
            "conv": "conv_proj",
            "cls": "class_token",
            "pos": "encoder.pos_embedding",
            "norm": "encoder.ln",
            "head": "heads.head",
        }
        attn = "encoder.layers.encoder_layer_{}.self_attention."
        qkv = lambda i: (attn.format(i) + "in_proj_weight", attn.format(i) + "in_proj_bias")  # noqa: E731
        names = lambda i: _torchvision_names(i, state)  # noqa: E731
    conv = take(top["conv"] + ".weight")  # (C, channels, p, p)
    out["patch_embed.weight"] = conv.reshape(conv.shape[0], -1)  # (C, channels·p·p), (channel, row, col) order
    out["patch_embed.bias"] = take(top["conv"] + ".bias")
    out["cls_token"] = take(top["cls"])  # (1, 1, C)
    out["pos_embed"] = take(top["pos"])  # (1, 1 + N, C)
    for i in range(cfg.n_layers):
        w, b = take(qkv(i)[0]), take(qkv(i)[1])  # (3C, C), (3C,): rows q, then k, then v
        for part, wp, bp in zip(("q_proj", "k_proj", "v_proj"), w.chunk(3, dim=0), b.chunk(3, dim=0)):
            out[f"blocks.{i}.attn.{part}.weight"], out[f"blocks.{i}.attn.{part}.bias"] = wp, bp  # (C, C), (C,)
        for ours, theirs in names(i).items():
            out[f"blocks.{i}.{ours}.weight"] = take(theirs + ".weight")
            out[f"blocks.{i}.{ours}.bias"] = take(theirs + ".bias")
    for ours, theirs in (("readout.norm", top["norm"]), ("readout.head", top["head"])):
        out[f"{ours}.weight"], out[f"{ours}.bias"] = take(theirs + ".weight"), take(theirs + ".bias")
    if src:
        extra = ", ".join(sorted(src)[:8]) + (" …" if len(src) > 8 else "")
        raise WeightsError(
            f"The {fmt} weights have {len(src)} parameter(s) this conversion does not know: {extra}. The file "
            f"holds {describe(state, fmt)}; models with more layers than n_layers={cfg.n_layers}, layer scale, "
            "register tokens, q/k norms, fc_norm or a pre-logits layer are not plain ViTs and are not supported."
        )
    return out


def vit_from_state_dict(state: dict[str, Tensor], cfg: ViTConfig, fmt: WeightFormat | None = None) -> ViT:
    """Our ViT of shape ``cfg`` holding the converted weights, in eval mode.

    Raises:
        WeightsError: a key is missing or unknown, or a tensor's shape differs from ``cfg``'s.
    """
    fmt = fmt or detect_format(state)
    converted = convert_state_dict(state, cfg, fmt)
    with torch.device("meta"):  # no memory and no random init: the converted tensors become the parameters
        model = ViT(cfg)
    expected = model.state_dict()
    wrong = [
        f"{k} {tuple(converted[k].shape)} (config: {tuple(v.shape)})"
        for k, v in expected.items()
        if converted[k].shape != v.shape
    ]
    if wrong:
        raise WeightsError(
            f"The {fmt} weights do not fit the config: {'; '.join(wrong[:4])}. The file holds "
            f"{describe(state, fmt)}; the config is d_model={cfg.d_model}, patch_size={cfg.patch_size}, "
            f"image_size={cfg.image_size}, n_classes={cfg.n_classes}, mlp_ratio={cfg.mlp_ratio}. "
            "Pick the variant (or model) that matches the file."
        )
    model.load_state_dict({k: v.contiguous() for k, v in converted.items()}, strict=True, assign=True)
    return model.eval()


def vit_from_file(path: Path, cfg: ViTConfig, fmt: WeightFormat | None = None) -> ViT:
    """Read a checkpoint file and convert it (see :func:`vit_from_state_dict`)."""
    return vit_from_state_dict(read_weights(path), cfg, fmt)
