"""torch.compile(fullgraph=True) of every registered layer on the GPU, forward and backward,
against eager (issue #6): the scan ops are torch.library custom ops and the dispatcher decides
at trace time (lrnnx/ops/dispatch.py ``_backend_for``), so no layer may graph-break."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

_spec = importlib.util.spec_from_file_location(
    "gpu_compile", Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_compile.py")
gpu_compile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_compile)


def _layers():
    from lrnnx.registry import REGISTRY

    return REGISTRY.names("layer")


@pytest.mark.parametrize("name", _layers())
def test_layer_compiles_fullgraph(name):
    r = gpu_compile.run_one(name, "cuda", 64)
    report = os.environ.get("LRNNX_COMPILE_REPORT")  # JSON lines, for benchmarks/RESULTS.md
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({k: v for k, v in r.items() if k != "trace"}) + "\n")
    assert r["fullgraph"], f"{name}: {r.get('error')}\n{r.get('trace')}"
    assert r["out_rel_err"] <= 1e-5 and r["grad_rel_err"] <= 1e-5, r
