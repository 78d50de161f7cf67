"""Registry and plugin loading: attribution, clashes, failure isolation, env switches."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import lrnnx
from lrnnx.errors import DuplicateRegistrationError, UnknownComponentError
from lrnnx.registry import core
from lrnnx.registry.core import Registry


def _layer_class(layer_name: str):
    class Tiny(lrnnx.Layer):
        name = layer_name

        def __init__(self, d_model: int, scale: float = 1.0):
            super().__init__()
            self.d_model = d_model
            self.scale = scale
            self.w = torch.nn.Parameter(torch.ones(d_model))

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            y = x * self.w * self.scale
            return (y, {}) if return_state else y

    Tiny.__name__ = f"Tiny_{layer_name}"
    return Tiny


def _plugin_module(mod_name: str, *layer_names: str, fail_import=False, fail_hook=False):
    mod = types.ModuleType(mod_name)
    if fail_import:
        mod.__lrnnx_fail__ = True
        return mod
    classes = [_layer_class(n) for n in layer_names]

    @lrnnx.hookimpl
    def register_layers(register):
        for c in classes:
            register(c)
        if fail_hook:
            raise RuntimeError("boom in hook")

    mod.register_layers = register_layers
    mod.classes = classes
    return mod


class _FakeEP:
    """Stands in for an importlib.metadata.EntryPoint of a given distribution."""

    def __init__(self, mod, dist="thirdparty", version="1.2.3"):
        self.mod = mod
        self.name = mod.__name__
        self.value = mod.__name__

    def load(self):
        if getattr(self.mod, "__lrnnx_fail__", False):
            raise ImportError(f"cannot import name 'x' from {self.mod.__name__!r}")
        return self.mod


@pytest.fixture
def make_registry(monkeypatch):
    """A fresh Registry whose discovery returns the given fake plugins (no built-ins)."""

    def make(*specs):
        found = []
        for mod, dist, builtin in specs:
            ep = _FakeEP(mod)
            found.append((mod.__name__, mod.__name__, dist, "1.2.3", builtin, ep))
        reg = Registry()
        monkeypatch.setattr(reg, "_discover", lambda: found)
        return reg

    return make


def test_entries_know_plugin_distribution_and_version(make_registry):
    reg = make_registry((_plugin_module("pkg_a", "alpha"), "pkg-a", False))
    e = reg.entry("layer", "alpha")
    assert (e.plugin, e.dist, e.version, e.builtin) == ("pkg_a", "pkg-a", "1.2.3", False)
    assert e.package == "pkg-a@1.2.3"
    assert reg.names("layer") == ["alpha"]


def test_duplicate_name_is_an_error_naming_both_packages(make_registry):
    reg = make_registry((_plugin_module("pkg_a", "same", "onlya"), "pkg-a", False),
                        (_plugin_module("pkg_b", "same", "onlyb"), "pkg-b", False))
    with pytest.raises(DuplicateRegistrationError) as exc:
        reg.get("layer", "same")
    msg = str(exc.value)
    assert "pkg_a" in msg and "pkg_b" in msg and "pkg-a@1.2.3" in msg and "pkg-b@1.2.3" in msg
    assert "LRNNX_DISABLE_PLUGINS" in msg
    # unrelated names still work, the second plugin is marked failed with the reason
    assert reg.get("layer", "onlya").name == "onlya"
    assert reg.get("layer", "onlyb").name == "onlyb"
    assert reg.plugins["pkg_b"].status == "failed"
    assert "same" in reg.plugins["pkg_b"].error


def test_failing_import_is_recorded_and_isolated(make_registry):
    reg = make_registry((_plugin_module("broken", fail_import=True), "broken-dist", False),
                        (_plugin_module("good", "fine"), "good-dist", False))
    assert reg.names("layer") == ["fine"]
    rec = reg.plugins["broken"]
    assert rec.status == "failed"
    assert "ImportError" in rec.error and "broken-dist" == rec.dist
    assert "Traceback" in rec.traceback


def test_failing_hook_registers_nothing_from_that_plugin(make_registry):
    reg = make_registry((_plugin_module("halfway", "first", fail_hook=True), "h", False),
                        (_plugin_module("good", "fine"), "good-dist", False))
    assert reg.names("layer") == ["fine"]  # 'first' was staged, then rolled back
    assert "boom in hook" in reg.plugins["halfway"].error


def test_invalid_component_is_a_recorded_failure(make_registry):
    mod = types.ModuleType("badreg")

    @lrnnx.hookimpl
    def register_layers(register):
        register(object)

    mod.register_layers = register_layers
    reg = make_registry((mod, "bad", False))
    assert reg.names("layer") == []
    assert "expected a subclass" in reg.plugins["badreg"].error


def test_wrong_hook_signature_is_recorded(make_registry):
    mod = types.ModuleType("badsig")

    @lrnnx.hookimpl
    def register_layers(register, extra):  # not in the hookspec
        pass

    mod.register_layers = register_layers
    reg = make_registry((mod, "bad", False))
    reg.ensure_loaded()
    assert reg.plugins["badsig"].status == "failed"


def test_disable_plugins_env(make_registry, monkeypatch):
    monkeypatch.setenv("LRNNX_DISABLE_PLUGINS", "pkg_a, other")
    reg = make_registry((_plugin_module("pkg_a", "alpha"), "pkg-a", False),
                        (_plugin_module("pkg_b", "beta"), "pkg-b", False))
    assert reg.names("layer") == ["beta"]
    assert reg.plugins["pkg_a"].status == "disabled"


def test_disable_autoload_keeps_builtins_only(make_registry, monkeypatch):
    monkeypatch.setenv("LRNNX_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = make_registry((_plugin_module("core_plugin", "builtin_layer"), "lrnnx", True),
                        (_plugin_module("pkg_b", "beta"), "pkg-b", False))
    assert reg.names("layer") == ["builtin_layer"]
    assert reg.plugins["pkg_b"].status == "disabled"


def test_unknown_name_error_lists_close_matches(make_registry):
    reg = make_registry((_plugin_module("p", "mamba", "mamba2", "attn"), "p", False))
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("layer", "mamab")
    msg = str(exc.value)
    assert "unknown layer 'mamab'" in msg and "did you mean: mamba" in msg
    assert "lrnnx list layers" in msg
    assert isinstance(exc.value, LookupError)


def test_pattern_filters(make_registry):
    reg = make_registry((_plugin_module("p", "s4", "s4d", "s5", "lru"), "p", False))
    assert reg.names("layer", "s4*") == ["s4", "s4d"]
    assert reg.names("layer", "5") == ["s5"]


def test_unknown_kind_is_clear(make_registry):
    reg = make_registry()
    with pytest.raises(lrnnx.LrnnxError, match="unknown registry kind"):
        reg.names("layers")


def test_runtime_register_and_replace(make_registry):
    reg = make_registry((_plugin_module("p", "alpha"), "p", False))
    cls = _layer_class("alpha")
    with pytest.raises(DuplicateRegistrationError):
        reg.register("layer", cls)
    reg.register("layer", cls, replace=True)
    assert reg.get("layer", "alpha") is cls


def test_lazy_loading_runs_no_plugin_code_until_lookup(make_registry):
    mod = _plugin_module("p", "alpha")
    reg = make_registry((mod, "p", False))
    assert reg.plugins == {}
    reg.names("layer")
    assert "p" in reg.plugins


def test_builtins_are_registered_through_the_same_hooks():
    # every built-in plugin is a module with lrnnx.hookimpl functions, found by entry point
    lrnnx.list_layers()
    builtins = {n for n, r in core.REGISTRY.plugins.items() if r.builtin}
    assert all(core.REGISTRY.plugins[n].dist == "lrnnx" for n in builtins)
    assert builtins == set(core.BUILTIN_PLUGINS)
    failed = {n: r.error for n, r in core.REGISTRY.plugins.items()
              if r.builtin and r.status != "loaded"}
    assert not failed, failed


def test_import_lrnnx_is_side_effect_free():
    import subprocess

    code = ("import sys, lrnnx; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'lrnnx_plugins' not in sys.modules, 'plugins imported'; "
            "assert not lrnnx.registry.REGISTRY._loaded; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
