"""Shared fixtures of the lrnnx test suite (keep small: helpers live next to their tests)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _import_triton_kernels_for_the_interpreter() -> None:
    """On a machine without CUDA, import Triton and our kernels once with TRITON_INTERPRET=1.

    Triton decides at import/decoration time whether a ``@triton.jit`` function is interpreted;
    if any test imports triton first without the variable (torch.compile does), the interpreter
    fails later with "Cannot call @triton.jit'd outside of the scope of a kernel".  The variable
    is restored afterwards, so the ``triton`` backend stays unavailable for every other CPU test
    (``backend="auto"`` never picks the slow interpreter); the Triton test modules set it again.
    """
    if importlib.util.find_spec("triton") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import lrnnx_kernels.triton  # noqa: F401
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


_import_triton_kernels_for_the_interpreter()


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
