from __future__ import annotations

import pytest

from dynbench.hardware.base import HARDWARE
from dynbench.methods.base import METHODS, Method
from dynbench.registry import Registry, RegistryError
from dynbench.tasks.base import TASKS


def test_builtin_plugins_are_discovered():
    assert {"dense", "early_exit", "layer_skip"} <= set(METHODS.names())
    assert {"toy-vision", "toy-text", "digits"} <= set(TASKS.names())
    assert {"cpu", "cuda"} <= set(HARDWARE.names())


def test_unknown_name_suggests_and_lists():
    with pytest.raises(RegistryError) as err:
        METHODS.get("layer_skp")
    msg = str(err.value)
    assert msg.startswith("Unknown method 'layer_skp'. Did you mean: layer_skip?")
    assert "Available: " in msg and "dense" in msg


def test_registration_checks_base_class_and_conflicts():
    reg: Registry = Registry("widget", Method, "dynbench.methods", "dynbench.nothing")
    with pytest.raises(TypeError, match="must subclass"):
        reg.register("x")(int)

    @reg.register("a", aliases=["alpha"])
    class A(Method):
        def wrap(self, backbone):
            raise NotImplementedError

        def budgets(self):
            return (1.0,)

    assert reg.get("alpha") is A and A.name == "a"
    assert reg.aliases_of("a") == ["alpha"]

    class B(A):
        pass

    with pytest.raises(RegistryError, match="already taken"):
        reg.register("a")(B)
