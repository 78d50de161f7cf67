"""The ``cuda`` scan backend where it cannot run (this CPU machine), its fake implementations, and
the dispatcher's ``prefer`` hook that chooses between cuda and triton.  The kernels themselves
are tested on a GPU: tests/gpu/test_cuda_gpu.py."""
import pytest
from pathlib import Path

import torch

import lrnnx
import lrnnx.ops as ops
from lrnnx.errors import BackendUnavailableError
from lrnnx.registry.core import REGISTRY

cuda_mod = pytest.importorskip("lrnnx_kernels.cuda")
kops = cuda_mod.ops
needs_cpu_torch = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


@needs_cpu_torch
def test_unavailable_with_reason_and_fallback():
    ops.clear_backend_cache()
    rows = {r["name"]: r for r in ops.backend_table()}
    assert not rows["cuda"]["ok"]
    assert "CPU-only build" in rows["cuda"]["reason"] or "no CUDA device" in rows["cuda"]["reason"]
    name, why = ops.select_backend("diag_scan", device="cuda")
    assert name != "cuda" and "unavailable" in why["cuda"]
    a = torch.rand(2, 5, 3)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        ops.diag_scan(a, a, backend="cuda")
    h, _ = ops.diag_scan(a, a)  # auto runs elsewhere
    assert h.shape == a.shape


@needs_cpu_torch
def test_kernel_call_without_library_raises_clear_error():
    m = torch.empty(1, 4, 2)
    with pytest.raises(BackendUnavailableError, match="CUDA kernels are unavailable"):
        kops.diag_scan(m, m)


def test_supports_rules():
    from lrnnx_plugins.backends.cuda_backend import CudaBackend

    b = CudaBackend()
    assert not b.supports("diag_scan", device="cpu")[0]
    assert b.supports("diag_scan", device="cuda", dtype=torch.complex128)[0]
    ok, why = b.supports("selective_scan", device="cuda", dtype=torch.float32, d_state=256)
    assert not ok and "128" in why
    ok, why = b.supports("selective_scan", device="cuda", dtype=torch.float32, varlen=True)
    assert not ok and "varlen" in why
    assert b.supports("selective_scan", device="cuda", dtype=torch.bfloat16,
                      discretization="bilinear", complex=True)[0]
    # real S6 the tiled kernels take (N <= 32, 32-channel blocks inside a group): cuda, always
    tiled = dict(complex=False, d_state=16, channels=1536, groups=1)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        for grad in (False, True):
            assert b.prefer("selective_scan", dtype=dt, requires_grad=grad, **tiled)[0]
    assert b.prefer("selective_scan", dtype=torch.float32, d_state=32, channels=256, groups=4)[0]
    # outside them (N > 32, fp64, groups splitting a block): triton unless half-precision training
    for other in (dict(d_state=64, channels=1536, groups=1), dict(d_state=16, channels=36, groups=3)):
        assert not b.prefer("selective_scan", dtype=torch.float32, requires_grad=True, **other)[0]
        assert b.prefer("selective_scan", dtype=torch.bfloat16, requires_grad=True, **other)[0]
        ok, why = b.prefer("selective_scan", dtype=torch.bfloat16, requires_grad=False, **other)
        assert not ok and "N > 32" in why
    assert not b.prefer("selective_scan", dtype=torch.float64, d_state=16, channels=64)[0]
    assert not b.prefer("selective_step", complex=False)[0]
    assert b.prefer("selective_scan", complex=True)[0]
    assert b.prefer("diag_scan", width=1)[0]


def test_tiled_selective_rule_matches_the_cuda_source():
    # kernels/cuda/ops.py tiled_selective mirrors selective_tiled_ok in selective_tiled.cu
    from lrnnx_kernels.cuda import ops as kops

    src = (Path(kops.__file__).parent / "csrc" / "selective_tiled.cu").read_text()
    assert f"constexpr int kTileMaxN = {kops.TILED_MAX_N};" in src
    assert "return p.G == 1 || (p.Dm / p.G) % 32 == 0;" in src
    assert "p.cplx || p.dtype == DType::F64 || p.N > kTileMaxN" in src
    f = kops.tiled_selective
    assert f(torch.float32, False, 16, 1536, 1) and f(torch.bfloat16, False, 32, 100, 1)
    assert f(torch.float16, False, 1, 256, 4) and not f(torch.float16, False, 1, 256, 16)
    assert not f(torch.float32, True, 16, 64, 1) and not f(torch.float64, False, 16, 64, 1)
    assert not f(torch.float32, False, 33, 64, 1) and not f(torch.complex64, False, 16, 64, 1)


def test_fake_implementations_shapes():
    m = torch.device("meta")
    a = torch.empty(1, 10, 8, device=m, dtype=torch.bfloat16)
    b = torch.empty(3, 10, 8, device=m, dtype=torch.bfloat16)
    cu = torch.empty(3, device=m, dtype=torch.int32)
    h, last = kops._diag_op(a, b, None, cu, False)
    assert h.shape == (3, 10, 8) and h.dtype == torch.bfloat16
    # half inputs: the kernel writes h_last in the input dtype (no cast op after the scan)
    assert last.shape == (2, 8) and last.dtype == torch.bfloat16
    h, last = kops._diag_op(a.float(), b.float(), None, cu, False)
    assert last.dtype == torch.float32
    for dt, cplx, ck in ((torch.float32, False, 8), (torch.bfloat16, True, 4),
                         (torch.float64, False, 4), (torch.float64, True, 2)):
        u = torch.empty(2, 33, 8, device=m, dtype=dt)
        sdt = torch.float64 if dt == torch.float64 else torch.float32
        if cplx:
            sdt = torch.complex128 if sdt == torch.float64 else torch.complex64
        A = torch.empty(8, 16, device=m, dtype=sdt)
        B = torch.empty(2, 33, 1, 16, device=m, dtype=sdt)
        y, last, cks = kops._sel_op(u, u, A, B, B, None, None, None, None, None, True, 0, True)
        assert y.shape == u.shape and y.dtype == dt and last.dtype == sdt
        assert kops.chunk_len(dt == torch.float64, cplx) == ck
        assert cks.shape == (2, -(-33 // ck), 8, 16)


def test_chunk_len_matches_the_cuda_source():
    # selective.cuh: sel_ck<S>() = 32 / sizeof(S); ops.chunk_len must agree (fake shapes)
    src = (cuda_mod._build.CSRC / "selective.cuh").read_text()
    assert "return (int)(32 / sizeof(S));" in src
    assert [kops.chunk_len(d, c) for d in (False, True) for c in (False, True)] == [8, 4, 4, 2]


def test_build_dir_keys_on_sources_and_arch(tmp_path, monkeypatch):
    monkeypatch.setenv("LRNNX_KERNELS_CACHE", str(tmp_path))
    b = cuda_mod._build
    d90, d80 = b.build_dir("90", "nvcc x"), b.build_dir("80", "nvcc x")
    assert d90 != d80 and d90.parent == tmp_path / "cuda"
    assert torch.__version__.replace("+", "_") in d90.name and "sm_90" in d90.name
    assert b.build_dir("90", "nvcc y") != d90  # another compiler, another build


def test_cli_build_kernels_reports_reason(capsys):
    from lrnnx.cli import main

    rc = main(["build-kernels", "--arch", "nope"])
    assert rc == 2 and "compute capabilities" in capsys.readouterr().out
    if torch.version.cuda is None:
        assert main(["build-kernels"]) == 1
        assert "CPU-only build" in capsys.readouterr().out


class _Fast(lrnnx.ScanBackend):
    name = "pref_fast"
    priority = 99

    def supports(self, op, **p):
        return (p.get("device") == "cpu", "cpu only")

    def prefer(self, op, **p):
        return (p.get("L", 0) >= 100, "measured slower below L=100")

    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        raise AssertionError("not expected")

    diag_step = selective_scan = selective_step = diag_scan


def test_prefer_hook_steps_aside_and_is_fallback():
    REGISTRY.register("scan_backend", _Fast)
    try:
        ops.clear_backend_cache()
        assert ops.select_backend("diag_scan", device="cpu", L=1000)[0] == "pref_fast"
        name, why = ops.select_backend("diag_scan", device="cpu", L=10)
        assert name != "pref_fast" and why["pref_fast"].startswith("not preferred")
        assert "not preferred" in ops.explain("diag_scan", device="cpu", L=10)
    finally:
        REGISTRY.unregister("scan_backend", "pref_fast")
        ops.clear_backend_cache()


def test_direct_path_only_for_plain_eager_tensors(monkeypatch):
    t, p = torch.ones(2), torch.nn.Parameter(torch.ones(2))
    assert kops._direct(t, None, p)
    assert not kops._direct(torch.empty(2, device="meta").as_subclass(_Sub))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not kops._direct(t)


class _Sub(torch.Tensor):
    pass


def test_eager_diag_twin_matches_reference_and_skips_custom_op(monkeypatch):
    # The eager path (autograd.Function around the library's ops) with a stand-in library that
    # computes on the CPU: forward and gradients must equal the reference, and the custom op must
    # not run.
    from lrnnx_kernels import diag_scan_chunked

    calls = []

    class Lib:
        def diag_scan_fwd(self, a, b, h0, cu, reverse):
            calls.append("fwd")
            return diag_scan_chunked(a, b, h0, reverse=reverse)

        def diag_scan_bwd(self, a, h, h0, cu, gh, gl, reverse, need_a):
            calls.append(("bwd", need_a, gh is None, gl is None))
            prev = torch.cat([(h0 if h0 is not None else torch.zeros_like(h[:, 0]))[:, None],
                              h[:, :-1]], 1)
            b = h - a * prev  # recover the inputs of the forward
            xs = [a.detach().requires_grad_(), b.detach().requires_grad_(),
                  (h0 if h0 is not None else torch.zeros_like(h[:, 0])).detach().requires_grad_()]
            with torch.enable_grad():  # backward runs with grad mode off
                out = diag_scan_chunked(*xs)
                pairs = [(o, g) for o, g in zip(out, (gh, gl)) if g is not None]
                ga, gb, g0 = torch.autograd.grad([o for o, _ in pairs], xs,
                                                 [g for _, g in pairs])
            return (ga if need_a else ga.new_empty(0)), gb, g0

    def boom(*a, **k):
        raise AssertionError("the custom op ran in eager mode")

    monkeypatch.setattr(kops, "_impl", lambda: Lib())
    monkeypatch.setattr(kops, "_diag_op", boom)
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 7, 3, generator=g, dtype=torch.float64) * 0.5 + 0.4).requires_grad_()
    b = torch.randn(2, 7, 3, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    h, last = kops.diag_scan(a, b, h0)
    rh, rl = diag_scan_chunked(a, b, h0)
    torch.testing.assert_close(h, rh)
    torch.testing.assert_close(last, rl)
    w = torch.randn(h.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((h * w).sum() + last.sum(), (a, b, h0))
    ref = torch.autograd.grad((rh * w).sum() + rl.sum(), (a, b, h0))
    for x, r in zip(got, ref):
        torch.testing.assert_close(x, r)
    assert calls[0] == "fwd" and calls[1] == ("bwd", True, False, False)
    # only h used: the gradient of h_last arrives as None (no zeros materialized)
    calls.clear()
    h, _ = kops.diag_scan(a, b.detach(), None)
    torch.autograd.grad(h.sum(), a)
    assert calls[1] == ("bwd", True, False, True)
    # no gradient needed: the library's forward runs directly
    calls.clear()
    with torch.no_grad():
        kops.diag_scan(a, b, h0)
    assert calls == ["fwd"]
