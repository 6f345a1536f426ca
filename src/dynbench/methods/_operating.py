"""Parts of a backbone, the building blocks of ``DynamicModel.operating_modules``.

An operating point that skips blocks statically (layer_skip at 0.5, a static exit after k blocks)
reads only part of the backbone, but the backbone's embedding tensors (a ViT's ``cls_token`` and
``pos_embed``) are its own parameters, not a submodule that could be listed. :class:`TensorSet`
names such loose tensors as a module, :func:`backbone_parts` lists a backbone as embedding + chosen
blocks + readout, and :func:`exit_parts` an exit head with the readout it borrows.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from dynbench.methods._exit_heads import SharedExit
from dynbench.models.backbone import Backbone


class TensorSet(nn.Module):
    """A module holding given tensors themselves (not copies), so module lists can name loose ones.

    Only for counting and inspecting: it is never registered in a model, so it adds nothing to a
    state dict.

    Args:
        tensors: parameters stay parameters, anything else is held as a (non-persistent) buffer.
    """

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        super().__init__()
        for i, t in enumerate(tensors):
            if isinstance(t, nn.Parameter):
                self.register_parameter(f"t{i}", t)
            else:
                self.register_buffer(f"t{i}", t, persistent=False)


def backbone_parts(backbone: Backbone, blocks: Iterable[int], *, readout: bool = True) -> list[nn.Module]:
    """The parts of ``backbone`` a forward pass through ``blocks`` reads.

    Args:
        backbone: the dense model.
        blocks: indices of the blocks that run.
        readout: whether the backbone's readout runs (an exit head reads its own head instead).

    Returns:
        The embedding (the backbone's own tensors and every submodule but ``blocks`` and
        ``readout``), the chosen blocks, and the readout when it runs.
    """
    own = TensorSet([*backbone.parameters(recurse=False), *backbone.buffers(recurse=False)])
    embedding = [m for name, m in backbone.named_children() if name not in ("blocks", "readout")]
    chosen = [backbone.blocks[i] for i in sorted(set(blocks))]
    return [own, *embedding, *chosen, *([backbone.readout] if readout else [])]


def exit_parts(head: nn.Module) -> list[nn.Module]:
    """An exit head, and the backbone readout it applies when held outside its own module tree.

    A ``SharedExit`` (and a ``TunedExit``) of :mod:`dynbench.methods._exit_heads` applies the
    backbone's readout without owning it, so the head alone names none of the readout's weights.
    """
    return [head, head.readout] if isinstance(head, SharedExit) else [head]
