"""Which learned configuration a control run controls, from each method's declared ``controls``."""

from __future__ import annotations

import pytest

from dynbench.config import PluginSpec, parse_plugin
from dynbench.methods.base import METHODS


def twin(label: str) -> tuple[str, str] | None:
    spec = parse_plugin(label)
    found = METHODS.get(spec.name).learned_twin(spec.options_dict())
    return None if found is None else (PluginSpec.make(spec.name, found[0]).label, found[1])


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("tinv[policy=random]", ("tinv", "random")),
        ("tinv[policy=static]", ("tinv", "static")),
        ("dht[policy=static]", ("dht", "static")),
        ("early_exit[rule=depth]", ("early_exit", "static")),
        ("mod[capacities=0.5,router=random]", ("mod[capacities=0.5]", "random")),
        # random_scale configures the control only: the learned twin has none
        ("mod[capacities=0.5,random_scale=learned,router=random]", ("mod[capacities=0.5]", "random")),
        ("tinv", None),
        ("acm[init=random]", None),  # not a control: acm declares none
        ("dense", None),
    ],
)
def test_a_control_names_its_learned_twin(label: str, expected: tuple[str, str] | None) -> None:
    assert twin(label) == expected


def test_every_declared_control_maps_back_to_its_method() -> None:
    for name in METHODS.names():
        cls = METHODS.get(name)
        for kind, options in cls.controls.items():
            assert cls.learned_twin(dict(options)) == ({}, kind), (name, kind)
