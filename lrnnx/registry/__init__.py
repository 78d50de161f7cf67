"""The lrnnx registry: typed interfaces, pluggy hooks, entry points, option validation, specs.

Submodules are imported on demand so ``import lrnnx`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "REGISTRY": "core", "Registry": "core", "Entry": "core", "PluginRecord": "core",
    "BUILTIN_PLUGINS": "core",
    "hookimpl": "hookspecs", "hookspec": "hookspecs", "KINDS": "hookspecs",
    "Layer": "interfaces", "Block": "interfaces", "Parameterization": "interfaces",
    "Discretizer": "interfaces", "ScanBackend": "interfaces", "State": "interfaces",
    "Ref": "options", "validate_options": "options", "option_kinds": "options",
    "list_components": "api", "get_component": "api", "get_entry": "api", "register": "api",
}


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'lrnnx.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
