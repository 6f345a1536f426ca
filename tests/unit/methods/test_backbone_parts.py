"""``operating_modules`` of the methods that skip parts of the backbone statically, on unfitted tiny
models.

The registry-wide sufficiency check (fitted methods and their controls on the toy tasks) is in
``tests/contract/test_operating_modules.py``; here are the options it does not sweep and the byte
counts.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dynbench.harness.memory import module_bytes, modules_bytes
from dynbench.methods._operating import TensorSet, backbone_parts
from dynbench.methods.base import DynamicModel
from dynbench.methods.early_exit import EarlyExit, EarlyExitConfig
from dynbench.methods.layer_skip import LayerSkip, LayerSkipConfig
from dynbench.models.audio import AudioConfig, AudioEncoder
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.vit import ViT, ViTConfig


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(image_size=8, patch_size=2, n_classes=4, d_model=32, n_layers=4, n_heads=2)).eval()


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=16, block_size=24, d_model=32, n_layers=4, n_heads=4)).eval()


def tiny_audio() -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(AudioConfig(n_mels=8, n_frames=16, stack=4, d_model=16, n_layers=2, n_heads=2)).eval()


def inputs(backbone: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(backbone, GPT):
        return torch.randint(16, (3, 24), generator=g)
    return torch.randn(3, 1, 8, 8, generator=g)


def assert_sufficient(model: DynamicModel, budget: float, x: torch.Tensor) -> int:
    """Every floating tensor outside ``budget``'s operating modules NaN → the same logits. Returns
    how many were."""
    poisoned = copy.deepcopy(model)
    operating = poisoned.operating_modules(budget)
    kept = {t.untyped_storage().data_ptr() for m in operating for t in [*m.parameters(), *m.buffers()]}
    n = 0
    with torch.no_grad():
        for t in [*poisoned.parameters(), *poisoned.buffers()]:
            if t.is_floating_point() and t.untyped_storage().data_ptr() not in kept:
                t.fill_(math.nan)
                n += 1
        assert torch.equal(poisoned(x, budget=budget).logits, model(x, budget=budget).logits), f"budget {budget}"
    return n


@pytest.mark.parametrize("make", [tiny_vit, tiny_gpt, tiny_audio])
def test_backbone_parts_of_every_block_are_the_whole_backbone(make) -> None:
    bb = make()
    L = bb.n_blocks
    assert modules_bytes(backbone_parts(bb, range(L))) == module_bytes(bb)
    without = modules_bytes(backbone_parts(bb, range(L - 1), readout=False))
    assert without == module_bytes(bb) - module_bytes(bb.blocks[L - 1]) - module_bytes(bb.readout)


def test_tensor_set_holds_the_tensors_themselves_and_adds_no_state() -> None:
    w, b = nn.Parameter(torch.ones(3)), torch.zeros(2)
    s = TensorSet([w, b])
    assert next(s.parameters()) is w and next(s.buffers()) is b
    assert s.state_dict().keys() == {"t0"} and modules_bytes([s, s]) == 5 * 4  # counted once


@pytest.mark.parametrize("make", [tiny_vit, tiny_gpt])
def test_layer_skip_holds_only_the_kept_blocks(make) -> None:
    bb = make()
    model = LayerSkip(LayerSkipConfig(pattern="uniform")).wrap(bb).eval()
    x = inputs(bb)
    block = module_bytes(bb.blocks[0])
    sizes = []
    for budget in (1.0, 0.75, 0.5, 0.25):
        kept = model.kept_blocks(budget)
        sizes.append(modules_bytes(model.operating_modules(budget)))
        skipped = (bb.n_blocks - len(kept)) * block
        assert sizes[-1] == module_bytes(model) - skipped - model.importance.nbytes  # importance: fitting state
        assert_sufficient(model, budget, x)
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


@pytest.mark.parametrize("heads", ["copy", "shared", "tuned"])
@pytest.mark.parametrize("make", [tiny_vit, tiny_gpt])
def test_static_exit_holds_its_blocks_and_its_one_head(make, heads: str) -> None:
    bb = make()
    model = EarlyExit(EarlyExitConfig(rule="depth", heads=heads)).wrap(bb).eval()
    x = inputs(bb)
    L = bb.n_blocks
    for k in range(1, L + 1):
        budget = k / L
        poisoned = assert_sufficient(model, budget, x)
        assert poisoned > 0 or (k == L and heads != "copy")  # below L the later blocks at least
        head = [] if k == L else [model.exit_heads[k - 1]]
        # the shared and tuned exits apply the backbone's readout; a copied head replaces it
        readout = k == L or heads != "copy"
        expected = modules_bytes([*backbone_parts(bb, range(k), readout=readout), *head])
        assert modules_bytes(model.operating_modules(budget)) == expected
    confidence = EarlyExit(EarlyExitConfig(heads=heads)).wrap(bb).eval()
    assert confidence.operating_modules(0.5) == [confidence]  # any sample may leave at any exit
