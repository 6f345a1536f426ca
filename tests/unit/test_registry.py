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
    assert msg.startswith("Unknown method 'layer_skp'. Did you mean: layer_skip")  # the closest first
    assert "Available: " in msg and "dense" in msg


def test_aliases_resolve_and_are_suggested():
    assert METHODS.get("tinv") is METHODS.get("transformer_inverse")
    with pytest.raises(RegistryError, match=r"Did you mean: tinv\?"):
        METHODS.get("tinvv")


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


def test_third_party_plugins_load_through_entry_points(tmp_path, monkeypatch):
    import importlib.metadata
    import sys

    (tmp_path / "thirdparty_method.py").write_text(
        "from dynbench.methods.base import Method, register_method\n"
        "@register_method('thirdparty')\n"
        "class ThirdParty(Method):\n"
        "    def wrap(self, backbone):\n"
        "        raise NotImplementedError\n"
        "    def budgets(self, n_blocks):\n"
        "        return (1.0,)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("thirdparty", "thirdparty_method", "dynbench.methods")
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_xyz", "dynbench.methods")
    real = importlib.metadata.entry_points

    def fake(**kw):
        return [ep, broken] if kw.get("group") == "dynbench.methods" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.setattr(METHODS, "_discovered", False)
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    assert "thirdparty" in METHODS.names()  # the broken plugin is logged and skipped, not fatal
    assert METHODS.get("thirdparty").__name__ == "ThirdParty"
    monkeypatch.delitem(sys.modules, "thirdparty_method")
