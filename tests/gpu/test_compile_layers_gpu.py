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


# Layers whose graph is captured whole but which inductor cannot generate code for: s4's DPLR
# kernel (Cauchy sums) runs in complex128, and inductor has no complex128 code generation
# (H200, torch 2.11: "InductorError: KeyError: 'complex128'"; torch 2.13 CPU: "self.stride(-1)
# must be 1 to view ComplexDouble as Double").  They are checked with the aot_eager backend
# (capture + autograd, no code generation), which still proves fullgraph=True.
INDUCTOR_COMPLEX_GAP = {"s4"}


@pytest.mark.parametrize("name", _layers())
def test_layer_compiles_fullgraph(name):
    backend = "aot_eager" if name in INDUCTOR_COMPLEX_GAP else "inductor"
    r = gpu_compile.run_one(name, "cuda", 64, backend=backend)
    report = os.environ.get("LRNNX_COMPILE_REPORT")  # JSON lines, for benchmarks/RESULTS.md
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({k: v for k, v in r.items() if k != "trace"}) + "\n")
    assert r["fullgraph"], f"{name}: {r.get('error')}\n{r.get('trace')}"
    assert r["out_rel_err"] <= 1e-5 and r["grad_rel_err"] <= 1e-5, r
