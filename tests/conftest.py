"""Shared fixtures of the lrnnx test suite (keep small: helpers live next to their tests)."""

from __future__ import annotations

import pytest


@pytest.fixture
def register():
    """``register(kind, obj, name=None)`` adds a component to the global registry for one test
    and removes it again afterwards (in reverse order)."""
    from lrnnx.registry.core import REGISTRY

    added: list[tuple[str, str]] = []

    def _register(kind: str, obj, name: str | None = None):
        REGISTRY.register(kind, obj, name)
        added.append((kind, name or obj.name))
        return obj

    yield _register
    for kind, name in reversed(added):
        REGISTRY.unregister(kind, name)
