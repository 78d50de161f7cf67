"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import lrnnx

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quickstart_runs():
    blocks = _python_blocks()
    assert len(blocks) >= 2
    exec(compile(blocks[0], "README quickstart", "exec"), {})


def test_plugin_example_registers_and_passes_conformance():
    ns: dict = {}
    exec(compile(_python_blocks()[1], "README plugin example", "exec"), ns)
    decay = ns["Decay"]
    lrnnx.register("layer", decay, replace=True)
    try:
        model = lrnnx.build_model("decay*2 + lru", d_model=16)
        import torch

        assert model(torch.randn(2, 9, 16)).shape == (2, 9, 16)
        from lrnnx.testing import check_layer

        check_layer("decay")
    finally:
        lrnnx.registry.REGISTRY.unregister("layer", "decay")
