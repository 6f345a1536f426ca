"""The host-sync counter: each kind of sync is found, host-only work is not, the patches go away."""

from __future__ import annotations

import pytest
import torch

from dynbench.hardware.host_sync import count_host_syncs
from dynbench.methods._host_copy import HostCopy
from dynbench.methods._row_partition import partition_rows


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_every_kind_of_sync_on_a_device_tensor_is_counted_once(mode) -> None:
    x = torch.randn(6)

    def forward() -> None:
        n = (x > 0).sum()
        int(n), n.item(), bool(n > 1), float(x[0])  # four scalar reads
        x[x > 0]  # a boolean mask: nonzero inside
        x.nonzero(), torch.unique(x), torch.bincount((x > 0).long())  # data-dependent sizes
        x.tolist(), x.cpu(), x.to("cpu"), x.numpy()  # copies to the host

    with mode():
        report = count_host_syncs(forward, None, x)
    causes = [s.cause for s in report.syncs]
    assert len(report) == 12, report.summary()
    assert {"int(t)", ".item()", "bool(t)", "float(t)", ".tolist()", ".cpu()", '.to("cpu")', ".numpy()"} <= set(causes)
    assert sum("data-dependent" in c for c in causes) == 3 and sum("boolean mask" in c for c in causes) == 1
    assert all(s.where == "outside dynbench" for s in report.syncs)


def test_host_tensors_and_static_shape_ops_are_not_syncs() -> None:
    x = torch.randn(4, 3)
    w = torch.nn.Linear(3, 2)

    def forward() -> None:
        y = w(x)  # (4, 2) on the device
        order = torch.argsort(y[:, 0], stable=True)
        y.index_select(0, order[:2]), torch.zeros(3).scatter_add_(0, order[:3] % 3, torch.ones(3))
        host = torch.arange(5)  # made without reading a device tensor: host bookkeeping
        host.tolist(), int(host.sum())

    with torch.inference_mode():
        assert len(count_host_syncs(forward, w, x)) == 0


def test_syncs_name_the_dynbench_line_and_the_patches_are_undone() -> None:
    from dynbench.methods.layer_skip import LayerSkip, LayerSkipConfig
    from dynbench.models.gpt import GPT, GPTConfig

    model = LayerSkip(LayerSkipConfig()).wrap(GPT(GPTConfig(vocab_size=16, block_size=8, d_model=8, n_layers=4)))
    model.ranking.copy_(torch.tensor([3, 1, 0, 2]))
    x = torch.randint(16, (2, 8))
    with torch.inference_mode():
        first = count_host_syncs(lambda: model(x, budget=0.5), model, x)
        again = count_host_syncs(lambda: model(x, budget=0.5), model, x)
    assert [s.cause for s in first.syncs] == [".tolist()"] and "methods/_host_copy.py" in first.syncs[
        0
    ].where  # the ranking read once
    assert len(again) == 0  # the ranking's host copy is kept until the buffer changes
    model.ranking.copy_(torch.tensor([0, 1, 2, 3]))
    with torch.inference_mode():
        assert len(count_host_syncs(lambda: model(x, budget=0.5), model, x)) == 1
    assert "tolist" not in torch.Tensor.__dict__ and "item" not in torch.Tensor.__dict__  # inherited again


def test_a_host_copy_reads_its_buffer_once_per_change() -> None:
    module = torch.nn.Module()
    module.register_buffer("ranking", torch.tensor([2, 0, 1]))
    copy = HostCopy()
    assert copy(module.ranking) == [2, 0, 1]
    assert len(count_host_syncs(lambda: copy(module.ranking), module)) == 0  # unchanged: no read
    module.ranking[0] = 1  # in place (a fit, a loaded state dict): read again
    assert copy(module.ranking) == [1, 0, 1]
    module.ranking = torch.tensor([0, 1, 2])  # replaced (a move to another device): read again
    assert copy(module.ranking) == [0, 1, 2]
    assert HostCopy()(torch.tensor(True)) is True  # a 0-d buffer gives a Python scalar


def test_rows_are_partitioned_in_batch_order_with_one_read() -> None:
    mask = torch.tensor([False, True, False, True, True, False])
    assert [t.tolist() for t in partition_rows(mask)[:2]] == [[1, 3, 4], [0, 2, 5]]
    report = count_host_syncs(lambda: partition_rows(mask), None, mask)
    assert len(report) == 1 and partition_rows(mask).n == 3
    assert partition_rows(torch.zeros(4, dtype=torch.bool)) is None  # nothing selected: no sort
