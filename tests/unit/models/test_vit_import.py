"""timm / torchvision ViT weights → our ViT: the key mapping is proven against an independent
reference forward pass.

The reference (:func:`reference_logits`) is written here from the two libraries' architecture
definitions with plain torch ops in float64 — a real stride-p convolution for the patches, one fused
q/k/v matrix split into heads by hand, softmax attention, erf GELU, LayerNorm ε = 1e-6, the final
norm and head on the CLS token — and shares no code with our ViT or Block. When timm or torchvision
imports, their own randomly initialised models are the reference instead (those tests skip cleanly
where they do not import, as beside this CPU torch build).

Fixtures (``tests/fixtures/vit_import/``, regenerate with
``python tests/unit/models/test_vit_import.py``): tiny random weights (image 16, patch 4, d 32, 2
blocks, 2 heads, 3 classes) in timm's key layout as a ``.safetensors`` file and in torchvision's as
a ``torch.save`` file, plus fixed inputs and the reference's logits.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dynbench.models.vit import ViTConfig
from dynbench.models.vit_import import (
    VARIANTS,
    WeightsError,
    convert_state_dict,
    detect_format,
    read_safetensors,
    read_weights,
    vit_from_file,
    vit_from_state_dict,
)

torch.set_num_threads(1)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "vit_import"
TINY = ViTConfig(image_size=16, patch_size=4, channels=3, n_classes=3, d_model=32, n_layers=2, n_heads=2, norm_eps=1e-6)
FILES = {"timm": FIXTURES / "timm_tiny.safetensors", "torchvision": FIXTURES / "torchvision_tiny.pth"}


# --------------------------------------------------------------------------------------------------
# Each library's key names, written from its model definition


def library_names(fmt: str, n_layers: int) -> dict[str, str]:
    """Role → key in the library's state dict (``{i}`` = block index)."""
    if fmt == "timm":
        names = {
            "conv": "patch_embed.proj",
            "cls": "cls_token",
            "pos": "pos_embed",
            "ln1": "blocks.{i}.norm1",
            "qkv_w": "blocks.{i}.attn.qkv.weight",
            "qkv_b": "blocks.{i}.attn.qkv.bias",
            "proj": "blocks.{i}.attn.proj",
            "ln2": "blocks.{i}.norm2",
            "fc1": "blocks.{i}.mlp.fc1",
            "fc2": "blocks.{i}.mlp.fc2",
            "norm": "norm",
            "head": "head",
        }
    else:
        layer = "encoder.layers.encoder_layer_{i}."
        names = {
            "conv": "conv_proj",
            "cls": "class_token",
            "pos": "encoder.pos_embedding",
            "ln1": layer + "ln_1",
            "qkv_w": layer + "self_attention.in_proj_weight",
            "qkv_b": layer + "self_attention.in_proj_bias",
            "proj": layer + "self_attention.out_proj",
            "ln2": layer + "ln_2",
            "fc1": layer + "mlp.0",
            "fc2": layer + "mlp.3",
            "norm": "encoder.ln",
            "head": "heads.head",
        }
    return names


def random_library_state(fmt: str, cfg: ViTConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights with the library's key names and shapes; every tensor far from 0 and 1 so
    swaps show."""
    g = torch.Generator().manual_seed(seed)
    n = library_names(fmt, cfg.n_layers)
    c, p, hidden = cfg.d_model, cfg.patch_size, int(cfg.d_model * cfg.mlp_ratio)

    def rnd(*shape: int, scale: float = 0.2, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=g)

    sd = {
        n["conv"] + ".weight": rnd(c, cfg.channels, p, p),
        n["conv"] + ".bias": rnd(c),
        n["cls"]: rnd(1, 1, c),
        n["pos"]: rnd(1, cfg.n_patches + 1, c),
        n["norm"] + ".weight": rnd(c, offset=1.0),
        n["norm"] + ".bias": rnd(c),
        n["head"] + ".weight": rnd(cfg.n_classes, c),
        n["head"] + ".bias": rnd(cfg.n_classes),
    }
    for i in range(cfg.n_layers):
        layer = {
            n["ln1"] + ".weight": rnd(c, offset=1.0),
            n["ln1"] + ".bias": rnd(c),
            n["qkv_w"]: rnd(3 * c, c),
            n["qkv_b"]: rnd(3 * c),
            n["proj"] + ".weight": rnd(c, c),
            n["proj"] + ".bias": rnd(c),
            n["ln2"] + ".weight": rnd(c, offset=1.0),
            n["ln2"] + ".bias": rnd(c),
            n["fc1"] + ".weight": rnd(hidden, c),
            n["fc1"] + ".bias": rnd(hidden),
            n["fc2"] + ".weight": rnd(c, hidden),
            n["fc2"] + ".bias": rnd(c),
        }
        sd.update({k.format(i=i): v for k, v in layer.items()})
    return sd


def reference_logits(sd: dict[str, torch.Tensor], fmt: str, images: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The library's ViT forward pass in float64, from its definition (not our code)."""
    n = library_names(fmt, 0)
    w = {k: v.double() for k, v in sd.items()}
    x = images.double()
    p = w[n["conv"] + ".weight"].shape[-1]
    tokens = F.conv2d(x, w[n["conv"] + ".weight"], w[n["conv"] + ".bias"], stride=p)  # (B, C, gh, gw)
    B, C = tokens.shape[:2]
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, C), row-major patches
    x = torch.cat([w[n["cls"]].expand(B, 1, C), tokens], dim=1) + w[n["pos"]]  # (B, 1+N, C)
    hd = C // n_heads

    def ln(t: torch.Tensor, key: str) -> torch.Tensor:
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * w[key + ".weight"] + w[key + ".bias"]

    layers = sum(1 for k in sd if k.endswith(("attn.qkv.weight", "self_attention.in_proj_weight")))
    for i in range(layers):
        key = {r: v.format(i=i) for r, v in n.items()}
        h = ln(x, key["ln1"])
        qkv = h @ w[key["qkv_w"]].T + w[key["qkv_b"]]  # (B, T, 3C): [q | k | v], heads contiguous in each
        q, k, v = (t.reshape(B, -1, n_heads, hd).transpose(1, 2) for t in qkv.split(C, dim=-1))  # (B, h, T, hd)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)  # (B, h, T, T)
        o = (att @ v).transpose(1, 2).reshape(B, -1, C)  # (B, T, C)
        x = x + o @ w[key["proj"] + ".weight"].T + w[key["proj"] + ".bias"]
        m = ln(x, key["ln2"]) @ w[key["fc1"] + ".weight"].T + w[key["fc1"] + ".bias"]
        m = 0.5 * m * (1.0 + torch.erf(m / math.sqrt(2.0)))  # exact GELU
        x = x + m @ w[key["fc2"] + ".weight"].T + w[key["fc2"] + ".bias"]
    cls = ln(x, n["norm"])[:, 0]  # (B, C)
    return cls @ w[n["head"] + ".weight"].T + w[n["head"] + ".bias"]  # (B, K)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A little-endian safetensors file (8-byte header length, JSON header, raw data), written
    without the package."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def make_fixtures(folder: Path = FIXTURES) -> None:
    """(Re)write the fixture files: the two tiny random checkpoints, fixed inputs and the reference
    logits."""
    folder.mkdir(parents=True, exist_ok=True)
    images = torch.randn(2, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(7))
    expected = {"inputs": images}
    for seed, fmt in enumerate(("timm", "torchvision")):
        sd = random_library_state(fmt, TINY, seed=100 + seed)
        if fmt == "timm":
            write_safetensors(sd, FILES[fmt])
        else:
            torch.save(sd, FILES[fmt])
        expected[fmt] = reference_logits(sd, fmt, images, TINY.n_heads).float()
    torch.save(expected, folder / "reference_logits.pt")


# --------------------------------------------------------------------------------------------------
# Fixture-based tests (always run)


@pytest.mark.parametrize("fmt", ["timm", "torchvision"])
def test_fixture_conversion_matches_the_reference_forward(fmt: str):
    expected = torch.load(FIXTURES / "reference_logits.pt", weights_only=True)
    state = read_weights(FILES[fmt])
    assert detect_format(state) == fmt
    ref = reference_logits(state, fmt, expected["inputs"], TINY.n_heads)
    torch.testing.assert_close(ref.float(), expected[fmt])  # the fixture and the reference agree with each other
    model = vit_from_file(FILES[fmt], TINY)
    with torch.no_grad():
        ours = model(expected["inputs"])  # (2, 3)
    torch.testing.assert_close(ours, expected[fmt], rtol=1e-5, atol=1e-5)
    assert ours.std() > 0.1  # the logits are far from trivial: a wrong mapping could not pass by accident


def test_swapping_q_and_k_or_transposing_patches_breaks_the_match():
    """The comparison is sensitive to exactly the mistakes a converter makes."""
    expected = torch.load(FIXTURES / "reference_logits.pt", weights_only=True)
    state = read_weights(FILES["timm"])
    bad_qkv = dict(state)
    w = state["blocks.0.attn.qkv.weight"]
    bad_qkv["blocks.0.attn.qkv.weight"] = torch.cat([w[32:64], w[:32], w[64:]])  # k rows where q should be
    bad_patch = dict(state)
    bad_patch["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].transpose(-1, -2)  # column-major
    for bad in (bad_qkv, bad_patch):
        with torch.no_grad():
            out = vit_from_state_dict(bad, TINY)(expected["inputs"])
        assert (out - expected["timm"]).abs().max() > 1e-2


def test_safetensors_reader_reads_dtypes_and_shapes(tmp_path: Path):
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "c": torch.tensor([7], dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    write_safetensors(tensors, tmp_path / "x.safetensors")
    back = read_safetensors(tmp_path / "x.safetensors")
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(WeightsError, match="not a safetensors file"):
        read_safetensors(tmp_path / "bad.safetensors")


def test_checkpoint_wrappers_prefixes_and_half_precision_are_unwrapped(tmp_path: Path):
    state = read_weights(FILES["torchvision"])
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v.half() for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    back = read_weights(tmp_path / "ckpt.pth")
    assert set(back) == set(state)
    model = vit_from_state_dict(back, TINY)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_legacy_torchvision_mlp_names_are_read():
    state = read_weights(FILES["torchvision"])
    legacy = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in state.items()}
    new = convert_state_dict(state, TINY, "torchvision")
    old = convert_state_dict(legacy, TINY, "torchvision")
    assert all(torch.equal(new[k], old[k]) for k in new)


def test_mismatches_are_errors_that_name_the_file_shape(tmp_path: Path):
    state = read_weights(FILES["timm"])
    with pytest.raises(WeightsError, match=r"d_model=32.*Pick the variant"):
        vit_from_state_dict(state, replace(TINY, d_model=64))
    with pytest.raises(WeightsError, match=r"no 'blocks.2.attn.qkv.weight'.*n_layers=2"):
        vit_from_state_dict(state, replace(TINY, n_layers=3))
    extra = {**state, "blocks.0.ls1.gamma": torch.ones(32)}  # layer scale: not a plain ViT
    with pytest.raises(WeightsError, match=r"does not know: blocks.0.ls1.gamma.*layer scale"):
        vit_from_state_dict(extra, TINY)
    with pytest.raises(WeightsError, match="neither a timm nor a torchvision ViT"):
        detect_format({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(WeightsError, match="does not exist"):
        read_weights(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="Cannot read"):
        read_weights(tmp_path / "junk.pth")


@pytest.mark.parametrize(
    ("name", "fmt", "params"), [("vit_s16", "timm", 22_050_664), ("vit_b16", "torchvision", 86_567_656)]
)
def test_full_size_variants_load_weights_of_the_library_shapes(name: str, fmt: str, params: int):
    """Real-size random weights in each layout load into the variant; parameter counts match the
    libraries'."""
    cfg = VARIANTS[name]
    state = random_library_state(fmt, cfg, seed=0)
    assert sum(t.numel() for t in state.values()) == params  # timm's and torchvision's published counts
    model = vit_from_state_dict(state, cfg, fmt)
    assert sum(p.numel() for p in model.parameters()) == params
    assert (cfg.n_heads, cfg.norm_eps, cfg.mlp_ratio) == ({"vit_s16": 6, "vit_b16": 12}[name], 1e-6, 4.0)


def test_full_size_vit_s16_forward_matches_the_reference_in_float64():
    """At 224 px with 6 heads of 64: the head split and 196-patch order hold at the real size, to
    1e-9."""
    cfg = VARIANTS["vit_s16"]
    state = random_library_state("timm", cfg, seed=1)
    state = {k: v * 0.1 if k.endswith("qkv.weight") else v for k, v in state.items()}  # attention not saturated
    model = vit_from_state_dict(state, cfg).double()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ours = model(x)  # (1, 1000)
    torch.testing.assert_close(ours, reference_logits(state, "timm", x, cfg.n_heads), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Library-based tests (skip where the library does not import)


def _import_or_skip(name: str):
    try:
        return __import__(name)
    except Exception as exc:  # ImportError, or torchvision's operator registration failing beside this torch
        pytest.skip(f"{name} does not import here ({type(exc).__name__}: {exc}); the fixture tests cover the mapping")


def test_against_a_random_timm_model():
    timm = _import_or_skip("timm")
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))  # away from the zero/one initialisations
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(vit_from_state_dict(ref.state_dict(), TINY)(x), ref(x), rtol=1e-5, atol=1e-5)


def test_against_a_random_torchvision_model():
    _import_or_skip("torchvision")
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128)
    ref.heads.head = torch.nn.Linear(32, 3)
    ref.eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(vit_from_state_dict(ref.state_dict(), TINY)(x), ref(x), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    make_fixtures()
    print(f"wrote {', '.join(p.name for p in sorted(FIXTURES.iterdir()))} in {FIXTURES}")
