"""Lazy build of the C++ scan: import never compiles, failures are reported."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from lrnnx_kernels_testutils import require_cpu_ext

_PRELUDE = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import conftest
import lrnnx_kernels as K
"""


def _run(code, **env):
    out = subprocess.run(
        [sys.executable, "-c", _PRELUDE + code],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_does_not_build():
    assert _run("print(K.diag_scan.cpu._STATE == {})").strip() == "True"


def test_missing_compiler_reports_reason(tmp_path):
    code = "ok, why = K.cpu_available(); print(ok); print(why)"
    out = _run(code, CXX="lrnnx-no-such-compiler", LRNNX_KERNELS_CACHE=str(tmp_path))
    ok, why = out.split("\n", 1)
    assert ok == "False" and "compiler" in why


def test_unavailable_raises_on_call(tmp_path):
    code = (
        "import torch\n"
        "try:\n"
        "    K.diag_scan_cpu(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))\n"
        "except RuntimeError as e:\n"
        "    print('unavailable' in str(e))\n"
    )
    assert _run(code, CXX="lrnnx-no-such-compiler", LRNNX_KERNELS_CACHE=str(tmp_path)).strip() == "True"


def test_available_and_cached():
    require_cpu_ext()
    from lrnnx_kernels import cpu_available, diag_scan_cpu

    assert cpu_available() == (True, "")
    h, last = diag_scan_cpu(torch.ones(1, 3, 2), torch.ones(1, 3, 2))
    assert torch.equal(h[0, :, 0], torch.tensor([1.0, 2.0, 3.0]))


def test_respects_torch_threads():
    require_cpu_ext()
    from lrnnx_kernels import diag_scan_cpu, diag_scan_ref

    a, b = torch.rand(3, 50, 70, dtype=torch.float64), torch.randn(3, 50, 70, dtype=torch.float64)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        h1 = diag_scan_cpu(a, b)[0]
    finally:
        torch.set_num_threads(n)
    assert torch.allclose(h1, diag_scan_ref(a, b)[0], rtol=0, atol=1e-12)


def test_reused_output_blocks_are_overwritten():
    # Outputs >= 4 MiB come from a block cache; a reused block must be fully rewritten.
    require_cpu_ext()
    from lrnnx_kernels import diag_scan_chunked, diag_scan_cpu

    g = torch.Generator().manual_seed(0)
    for i in range(3):
        a = torch.rand(1, 1100, 1024, generator=g) * 0.9
        b = torch.randn(1, 1100, 1024, generator=g)
        cu = torch.tensor([0, 300, 1100]) if i == 2 else None
        a.requires_grad_()
        h, last = diag_scan_cpu(a, b, None, i == 1, cu)
        hc, lc = diag_scan_chunked(a, b, None, i == 1, cu)
        assert torch.allclose(h, hc, rtol=1e-5, atol=1e-5)
        assert torch.allclose(last, lc, rtol=1e-5, atol=1e-5)
        (ga,) = torch.autograd.grad(h.sum(), a)
        (gc,) = torch.autograd.grad(hc.sum(), a)
        assert torch.allclose(ga, gc, rtol=1e-4, atol=1e-4)
        del h, last, ga
