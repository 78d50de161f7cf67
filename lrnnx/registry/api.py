"""Public lookup functions: ``list_<kind>s(pattern=None)`` and ``get_<kind>(name)`` per kind."""

from __future__ import annotations

from typing import Any

from .core import REGISTRY, Entry


def list_components(kind: str, pattern: str | None = None) -> list[str]:
    """Sorted names of registered components of ``kind`` matching ``pattern`` (glob or substring)."""
    return REGISTRY.names(kind, pattern)


def get_component(kind: str, name: str) -> Any:
    """The registered object of ``kind`` called ``name`` (UnknownComponentError if none)."""
    return REGISTRY.get(kind, name)


def get_entry(kind: str, name: str) -> Entry:
    """The registry entry (object, plugin, distribution, version) of ``kind`` / ``name``."""
    return REGISTRY.entry(kind, name)


def register(kind: str, obj: Any = None, name: str | None = None, *, replace: bool = False):
    """Register a component at run time; usable as a decorator: ``@register("layer")``."""
    if obj is None:
        return lambda o: REGISTRY.register(kind, o, name, replace=replace)
    return REGISTRY.register(kind, obj, name, replace=replace)


def list_layers(pattern: str | None = None) -> list[str]:
    return REGISTRY.names("layer", pattern)


def get_layer(name: str):
    return REGISTRY.get("layer", name)


def list_blocks(pattern: str | None = None) -> list[str]:
    return REGISTRY.names("block", pattern)


def get_block(name: str):
    return REGISTRY.get("block", name)


def list_parameterizations(pattern: str | None = None) -> list[str]:
    return REGISTRY.names("parameterization", pattern)


def get_parameterization(name: str):
    return REGISTRY.get("parameterization", name)


def list_discretizers(pattern: str | None = None) -> list[str]:
    return REGISTRY.names("discretizer", pattern)


def get_discretizer(name: str):
    return REGISTRY.get("discretizer", name)


def list_scan_backends(pattern: str | None = None) -> list[str]:
    return REGISTRY.names("scan_backend", pattern)


def get_scan_backend(name: str):
    return REGISTRY.get("scan_backend", name)
