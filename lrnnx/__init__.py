"""lrnnx: linear RNNs and state-space models behind one interface.

``import lrnnx`` is cheap and side-effect free: it imports neither torch nor any plugin.  Names
below are resolved on first use; plugins load on the first registry lookup.

Quickstart::

    import lrnnx, torch
    model = lrnnx.build_model("ssm(d_state=16)*2 + attn", d_model=64)
    y = model(torch.randn(2, 100, 64))
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import (
    BackendUnavailableError,
    ConfigError,
    DuplicateRegistrationError,
    InputError,
    InputTypeError,
    LrnnxError,
    SpecError,
    UnknownComponentError,
)

_LAZY = {
    # registry interfaces and hooks
    "hookimpl": "lrnnx.registry.hookspecs",
    "hookspec": "lrnnx.registry.hookspecs",
    "Layer": "lrnnx.registry.interfaces",
    "Block": "lrnnx.registry.interfaces",
    "Parameterization": "lrnnx.registry.interfaces",
    "Discretizer": "lrnnx.registry.interfaces",
    "ScanBackend": "lrnnx.registry.interfaces",
    "Ref": "lrnnx.registry.options",
    # lookups
    "register": "lrnnx.registry.api",
    "list_components": "lrnnx.registry.api",
    "get_component": "lrnnx.registry.api",
    "list_layers": "lrnnx.registry.api",
    "get_layer": "lrnnx.registry.api",
    "list_blocks": "lrnnx.registry.api",
    "get_block": "lrnnx.registry.api",
    "list_parameterizations": "lrnnx.registry.api",
    "get_parameterization": "lrnnx.registry.api",
    "list_discretizers": "lrnnx.registry.api",
    "get_discretizer": "lrnnx.registry.api",
    "list_scan_backends": "lrnnx.registry.api",
    "get_scan_backend": "lrnnx.registry.api",
    # specs and building
    "parse_spec": "lrnnx.registry.spec",
    "format_spec": "lrnnx.registry.spec",
    "build_layer": "lrnnx.build",
    "build_model": "lrnnx.build",
    "build_model_from_config": "lrnnx.build",
}
_SUBMODULES = {"ops", "testing", "registry", "models", "cli", "build", "errors", "generation", "bench",
               "distributed"}

__all__ = [
    "__version__", "LrnnxError", "SpecError", "UnknownComponentError", "ConfigError",
    "InputError", "InputTypeError", "DuplicateRegistrationError", "BackendUnavailableError",
    *_LAZY,
]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is not None:
        value = getattr(importlib.import_module(mod), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lrnnx.{name}")
    raise AttributeError(f"module 'lrnnx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
