"""A new method with a random control under a new option name is one file: nothing else learns its
name.

The method below lives in a temporary package the way a third-party plugin would. It declares its
random control on its class (``controls``); the harness records the relation on the control's rows
and the report pairs the two in its "Learned vs static vs random" section without any table in
``analysis/`` or ``harness/`` naming it.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from dynbench.api import RunOptions, run_suite, write_report
from dynbench.config import MeasureConfig, PluginSpec, SuiteSpec, parse_plugin_list
from dynbench.methods.base import METHODS

pytestmark = pytest.mark.slow

PLUGIN = '''
"""Keep the last k blocks, or (chooser=dice) k blocks drawn at random: a test plugin with a random control."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from dynbench.methods.base import DynamicModel, Method, no_controller_flops, register_method
from dynbench.types import Budget, StepOutput, Trace
from dynbench.validation import check_choices


@dataclass(frozen=True)
class TailBlocksConfig:
    """Which blocks run at a budget."""

    chooser: Literal["tail", "dice"] = "tail"  # tail: the last k blocks; dice: k random blocks (the control)

    def __post_init__(self) -> None:
        check_choices(self)


class TailBlocksModel(DynamicModel):
    """The backbone running k = round(budget · L) of its blocks."""

    def __init__(self, backbone, chooser: str) -> None:
        super().__init__(backbone)
        self.chooser = chooser

    def blocks_at(self, budget: Budget) -> list[int]:
        """The blocks run at ``budget``, ascending."""
        L = self.backbone.n_blocks
        k = max(1, round(budget * L))
        if self.chooser == "tail":
            return list(range(L - k, L))
        return sorted(np.random.default_rng(int(budget * 1000)).choice(L, size=k, replace=False).tolist())

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run the chosen blocks, then the readout."""
        bb = self.backbone
        kept = self.blocks_at(budget)
        x = bb.embed(inputs)  # (B, T, C)
        for i in kept:
            x = bb.blocks[i](x)  # (B, T, C)
        B, L = x.shape[0], bb.n_blocks
        run = torch.zeros(L, dtype=torch.long)
        run[kept] = 1
        run = run.expand(B, L)  # (B, L)
        tokens = bb.n_tokens(tuple(inputs.shape[1:]))
        trace = Trace(block_tokens=run * tokens, block_kv=run * tokens, block_heads=run * bb.n_heads,
                      readout=torch.ones(B, dtype=torch.long), controller_flops=no_controller_flops(B))
        return StepOutput(bb.readout(x), trace)


@register_method("tail_blocks")
class TailBlocks(Method):
    """Test plugin: the last k blocks, with k random blocks as its random control."""

    Config = TailBlocksConfig
    controls = {"random": {"chooser": "dice"}}
    budget_doc = "fraction of blocks"

    def wrap(self, backbone) -> TailBlocksModel:
        """Wrap the backbone."""
        return TailBlocksModel(backbone, self.config.chooser)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """Every block count."""
        return tuple(k / n_blocks for k in range(n_blocks, 0, -1))
'''


@pytest.fixture
def tail_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pkg = tmp_path / "third_party"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tail_blocks.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("third_party.tail_blocks")  # registers itself, as an entry point would
    yield
    METHODS._items.pop("tail_blocks", None)
    sys.modules.pop("third_party.tail_blocks", None)
    sys.modules.pop("third_party", None)


def test_a_new_methods_random_control_reaches_the_report(tail_blocks, tmp_path: Path) -> None:
    suite = SuiteSpec(
        methods=parse_plugin_list("dense,tail_blocks,tail_blocks[chooser=dice]"),
        tasks=(PluginSpec("toy-vision"),),
        batch_sizes=(1,),
        limit=64,
        measure=MeasureConfig(timing=False, memory=False),
    )
    out = tmp_path / "res"
    run_suite(suite, RunOptions(out=out, cache_dir=tmp_path / "cache"))
    rows = pd.concat([pd.read_json(p, lines=True) for p in (out / "runs").glob("*.jsonl")])
    control = rows[rows["method_label"] == "tail_blocks[chooser=dice]"]
    assert set(control["control_of"]) == {"tail_blocks"} and set(control["control_kind"]) == {"random"}
    assert set(rows.loc[rows["method_label"] != "tail_blocks[chooser=dice]", "control_of"].fillna("")) == {""}
    write_report(out, tmp_path / "report")
    index = (tmp_path / "report" / "index.md").read_text()
    assert "### Learned vs static vs random" in index
    assert "**tail_blocks** vs **tail_blocks[chooser=dice]** (random control)" in index
