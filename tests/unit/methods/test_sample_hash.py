from __future__ import annotations

import numpy as np
import torch

from dynbench.methods._sample_hash import input_hashes, sample_generators, sample_uniforms

IMAGES = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2) / 7
TOKENS = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])


def test_the_oracle_reads_this_hash() -> None:
    from dynbench.methods import oracle

    assert oracle.input_hashes is input_hashes


def test_the_oracles_hash_is_unchanged() -> None:
    """Values pinned from the oracle's own ``input_hashes`` before it moved here: its cached matches
    stay valid."""
    assert input_hashes(IMAGES).tolist() == [-5821527536369699544, 912639359089212989, 2667754998617108968]
    assert input_hashes(TOKENS).tolist() == [-107578706617542074, -4360595814520777945]
    pixels = torch.tensor([[0, 255], [7, 7]], dtype=torch.uint8)
    assert input_hashes(pixels).tolist() == [-7011136910214590020, -989528909442994101]
    assert input_hashes(torch.zeros(2, 0)).tolist() == [2428923798315969296] * 2  # empty samples hash too


def test_draws_are_deterministic_and_in_the_unit_interval() -> None:
    x = torch.randn(64, 3, 5, generator=torch.Generator().manual_seed(0))
    u = sample_uniforms(x, seed=0)
    assert u.dtype == torch.float64 and u.shape == (64,)
    assert bool(((u >= 0) & (u < 1)).all()) and len(set(u.tolist())) == 64
    assert torch.equal(u, sample_uniforms(x.clone(), seed=0))
    again = [g.permutation(8) for g in sample_generators(x, seed=3)]
    assert all(np.array_equal(a, g.permutation(8)) for a, g in zip(again, sample_generators(x, seed=3)))


def test_draws_do_not_depend_on_the_batch() -> None:
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    whole = sample_uniforms(x, seed=5)
    assert torch.equal(sample_uniforms(x[7:9], seed=5), whole[7:9])
    assert torch.equal(sample_uniforms(x.flip(0), seed=5), whole.flip(0))
    assert torch.equal(input_hashes(x[3:4]), input_hashes(x)[3:4])


def test_draws_depend_on_content_dtype_shape_and_seed() -> None:
    x = torch.zeros(1, 6)
    changed = x.clone()
    changed[0, 5] = 1e-6
    base = float(sample_uniforms(x, seed=0)[0])
    assert float(sample_uniforms(changed, seed=0)[0]) != base  # one element differs
    assert float(sample_uniforms(x.reshape(1, 2, 3), seed=0)[0]) != base  # same bytes, other shape
    assert float(sample_uniforms(x.int(), seed=0)[0]) != base  # same bytes (zeros), other dtype
    assert float(sample_uniforms(x, seed=1)[0]) != base  # another seed draws independently
    assert float(sample_uniforms(x.bfloat16(), seed=0)[0]) >= 0  # dtypes numpy lacks hash through their bytes
