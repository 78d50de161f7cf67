"""CUDA kernels (``lrnnx_kernels.cuda``, backend ``cuda``) on a GPU against float64 references.

Same checks and tolerances as tests/gpu/test_triton_gpu.py (max |err| / max |ref| <= 1e-5 fp32,
1e-2 bf16/fp16, for outputs and gradients), plus complex S6, every state size class (lanes per
channel 1..32), the per-lane atomic path of odd groupings, float64 gradcheck, the decode steps,
torch.compile(fullgraph=True) and the layers running on the backend.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from lrnnx_kernels import diag_scan_chunked, selective_scan_chunked  # noqa: E402
from lrnnx_kernels import cuda as kc  # noqa: E402

from test_triton_gpu import close, diag_inputs, dev, grads, ss_inputs, ss_run, up  # noqa: E402

f64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def built():
    ok, why = kc.status()
    assert ok, f"the CUDA kernels must build on a GPU machine: {why}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16,
                                   torch.complex64, torch.float64, torch.complex128])
@pytest.mark.parametrize("L", [1, 63, 4097])
@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan(dtype, L, reverse):
    D = 768 if dtype not in (f64, torch.complex128) else 96
    a, b, h0 = diag_inputs(3, L, D, dtype, seed=L)
    g = torch.Generator(device=dev).manual_seed(1)
    w = [torch.randn(b.shape, device=dev, generator=g), torch.randn(h0.shape, device=dev,
                                                                     generator=g)]
    out, gr = grads(kc.diag_scan, (a, b, h0), w, reverse=reverse)
    ref, rg = grads(diag_scan_chunked, (up(a), up(b), up(h0)), w, reverse=reverse)
    for o, r, name in zip(out, ref, ("h", "h_last")):
        assert o.dtype == dtype
        close(o, r, dtype, name)
    for x, r, name in zip(gr, rg, ("a", "b", "h0")):
        close(x, r, dtype, f"grad {name}")


@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_varlen_shared_a_no_h0(reverse):
    L = 5000
    cu = torch.tensor([0, 1, 1000, 1000, 3333, 4999, 5000], device=dev, dtype=torch.int32)
    a, b, h0 = diag_inputs(1, L, 1000, torch.float32, seed=3, nseq=6)
    g = torch.Generator(device=dev).manual_seed(2)
    w = [torch.randn(b.shape, device=dev, generator=g), torch.randn(h0.shape, device=dev,
                                                                     generator=g)]
    out, gr = grads(kc.diag_scan, (a, b, h0), w, reverse=reverse, cu_seqlens=cu)
    ref, rg = grads(diag_scan_chunked, (up(a), up(b), up(h0)), w, reverse=reverse,
                    cu_seqlens=cu)
    for x, r in zip(out + gr, ref + rg):
        close(x, r, torch.float32, "varlen")
    a, b, _ = diag_inputs(8, 3000, 256, torch.complex64, seed=4, Ba=1)
    w = [torch.randn(b.shape, device=dev, generator=g, dtype=torch.complex64),
         torch.randn((8, 256), device=dev, generator=g, dtype=torch.complex64)]
    out, gr = grads(kc.diag_scan, (a, b), w, reverse=reverse)
    ref, rg = grads(diag_scan_chunked, (up(a), up(b)), w, reverse=reverse)
    for x, r in zip(out + gr, ref + rg):
        close(x, r, torch.complex64, "shared a, no h0")


@pytest.mark.parametrize("stages", ["default", "0", "2", "3", "4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.complex64])
@pytest.mark.parametrize("L", [63, 4097])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("D", [512, 90])
def test_diag_scan_ring_depths(stages, dtype, L, reverse, D, monkeypatch):
    # Every cp.async ring depth (LRNNX_DIAG_STAGES, 0 = register path) and the launcher's own
    # choice by length ("default": L = 4097 takes the register paths for half-precision pairs)
    # against float64, with and without a gradient for a (the adjoint then skips the
    # forward-state stream).  D = 90 leaves idle lanes in the last block while its tiles are
    # full (the full-tile branch holds the barrier, so it must not depend on the lane: this
    # hung once).
    if stages == "default":
        monkeypatch.delenv("LRNNX_DIAG_STAGES", raising=False)
    else:
        monkeypatch.setenv("LRNNX_DIAG_STAGES", stages)
    a, b, h0 = diag_inputs(2, L, D, dtype, seed=L + 7)
    g = torch.Generator(device=dev).manual_seed(5)
    w = [torch.randn(b.shape, device=dev, generator=g), torch.randn(h0.shape, device=dev,
                                                                     generator=g)]
    out, gr = grads(kc.diag_scan, (a, b, h0), w, reverse=reverse)
    ref, rg = grads(diag_scan_chunked, (up(a), up(b), up(h0)), w, reverse=reverse)
    for o, r, name in zip(out + gr, ref + rg, ("h", "h_last", "grad a", "grad b", "grad h0")):
        close(o, r, dtype, f"stages={stages} {name}")
    bb, hh = b.detach().clone().requires_grad_(), h0.detach().clone().requires_grad_()
    h, last = kc.diag_scan(a, bb, hh, reverse=reverse)
    gb, gh = torch.autograd.grad(
        sum((o * wi.to(o.dtype).conj()).real.float().sum() for o, wi in zip((h, last), w)),
        (bb, hh))
    close(gb, rg[1], dtype, f"stages={stages} grad b (a constant)")
    close(gh, rg[2], dtype, f"stages={stages} grad h0 (a constant)")


@pytest.mark.parametrize("items,warps", [("16", None), ("16", "4"), ("8", "4"), ("8", "2")])
@pytest.mark.parametrize("stages", ["0", "2", "3"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("L", [63, 4097])
@pytest.mark.parametrize("D", [512, 90])
def test_diag_scan_layouts(items, warps, stages, dtype, L, D, monkeypatch):
    # The launch variants for kernel comparisons (LRNNX_DIAG_ITEMS: 16 tokens per thread for the
    # half-precision pairs; LRNNX_DIAG_WARPS: fewer warps per block) against float64, forward and
    # reverse, with the full / partial tile mix of L = 4097 and idle lanes of D = 90.
    monkeypatch.setenv("LRNNX_DIAG_STAGES", stages)
    monkeypatch.setenv("LRNNX_DIAG_ITEMS", items)
    if warps is not None:
        monkeypatch.setenv("LRNNX_DIAG_WARPS", warps)
    for reverse in (False, True):
        a, b, h0 = diag_inputs(2, L, D, dtype, seed=L + 11)
        g = torch.Generator(device=dev).manual_seed(6)
        w = [torch.randn(b.shape, device=dev, generator=g),
             torch.randn(h0.shape, device=dev, generator=g)]
        out, gr = grads(kc.diag_scan, (a, b, h0), w, reverse=reverse)
        ref, rg = grads(diag_scan_chunked, (up(a), up(b), up(h0)), w, reverse=reverse)
        for o, r, name in zip(out + gr, ref + rg, ("h", "h_last", "grad a", "grad b", "grad h0")):
            close(o, r, dtype, f"items={items} warps={warps} stages={stages} rev={reverse} {name}")


@pytest.mark.parametrize("stages", ["0", "2", "4"])
def test_diag_scan_ring_varlen(stages, monkeypatch):
    monkeypatch.setenv("LRNNX_DIAG_STAGES", stages)
    L = 3000
    cu = torch.tensor([0, 1, 700, 700, 2999, 3000], device=dev, dtype=torch.int32)
    for dtype in (torch.bfloat16, torch.float32, torch.complex64):
        a, b, h0 = diag_inputs(1, L, 256, dtype, seed=9, nseq=5)
        g = torch.Generator(device=dev).manual_seed(3)
        w = [torch.randn(b.shape, device=dev, generator=g),
             torch.randn(h0.shape, device=dev, generator=g)]
        out, gr = grads(kc.diag_scan, (a, b, h0), w, cu_seqlens=cu)
        ref, rg = grads(diag_scan_chunked, (up(a), up(b), up(h0)), w, cu_seqlens=cu)
        for x, r in zip(out + gr, ref + rg):
            close(x, r, dtype, f"varlen stages={stages} {dtype}")


def test_diag_gradcheck_float64():
    g = torch.Generator(device=dev).manual_seed(0)
    for cplx in (False, True):
        dt = torch.complex128 if cplx else f64
        a = (torch.rand(2, 37, 5, device=dev, generator=g, dtype=f64) * 0.9).to(dt)
        b = torch.randn(2, 37, 5, device=dev, generator=g, dtype=dt)
        h0 = torch.randn(2, 5, device=dev, generator=g, dtype=dt)
        xs = [t.requires_grad_() for t in (a, b, h0)]
        for rev in (False, True):
            assert torch.autograd.gradcheck(lambda a, b, h: kc.diag_scan(a, b, h, rev), xs)


def _ss_complex(Bt, L, Dm, N, G, seed, ts=False):
    kw = ss_inputs(Bt, L, Dm, N, G, torch.float32, seed, ts=ts)
    g = torch.Generator(device=dev).manual_seed(seed + 100)
    kw["A"] = torch.complex(kw["A"], torch.randn(kw["A"].shape, device=dev, generator=g))
    kw["B"] = torch.complex(kw["B"], torch.randn(kw["B"].shape, device=dev, generator=g))
    kw["h0"] = torch.complex(kw["h0"], torch.randn(kw["h0"].shape, device=dev, generator=g))
    return kw


def _check_ss(kw, method, dtype, state_dtype=torch.float32):
    (out, gr), names = ss_run(kc.selective_scan, kw, method)
    (ref, rg), _ = ss_run(selective_scan_chunked, {k: up(v) for k, v in kw.items()}, method)
    close(out[0], ref[0], dtype, "y")
    close(out[1], ref[1], state_dtype, "h_last")
    # bf16 runs: the loss weights reach the kernel rounded to bf16 (dy is bf16) but the float64
    # reference sees them exact, so every gradient carries that rounding: bf16 tolerance.
    for x, r, n in zip(gr, rg, names):
        tol = dtype if (dtype in (torch.bfloat16, torch.float16) or n in ("u", "delta", "z")) \
            else state_dtype
        close(x, r, tol, f"grad {n}")


@pytest.fixture(params=["states", "tiled", "per_channel"])
def s6_kernel(request, monkeypatch):
    """Real fp32-state S6 with N <= 32 runs the kernels of selective_tiled.cu unless
    LRNNX_SEL_TILED=0: for N <= 16 the state-parallel forward and (fp32 data) backward by
    default, else and with LRNNX_SEL_FWD=tiled / LRNNX_SEL_BWD=tiled the two-pass token-tiled
    ones.  All three kernel families are checked on the same cases."""
    monkeypatch.setenv("LRNNX_SEL_TILED", "0" if request.param == "per_channel" else "1")
    mode = "tiled" if request.param == "tiled" else "states"
    monkeypatch.setenv("LRNNX_SEL_FWD", mode)
    monkeypatch.setenv("LRNNX_SEL_BWD", mode)
    return request.param


@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear", "dirac"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan(method, dtype, s6_kernel):
    kw = ss_inputs(2, 1027, 512, 16, None, dtype, seed=6, ts=method == "zoh")
    _check_ss(kw, method, dtype)


# lengths around the tiled kernel's 8-token pieces and 64-token tiles (8 warps) and the
# state-parallel forward's 32-token tiles, channel counts that leave lanes of the last block
# idle, N at each of its (states per warp, warps) configurations' edges (8 / 9, 16 / 17), up to
# the tiled limit (32) and just past it (33)
@pytest.mark.parametrize("L,Dm,N", [(1, 32, 16), (7, 40, 16), (8, 64, 8), (9, 33, 4),
                                    (31, 64, 9), (33, 64, 17), (64, 96, 32), (65, 32, 33),
                                    (200, 100, 16), (513, 64, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_selective_scan_tiled_shapes(L, Dm, N, dtype, s6_kernel):
    kw = ss_inputs(3, L, Dm, N, None, dtype, seed=L + Dm, ts=L % 2 == 1)
    _check_ss(kw, "zoh" if L % 2 else "mamba", dtype)


@pytest.mark.parametrize("N", [4, 9, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_fwd_states_inference(N, dtype, monkeypatch):
    # the state-parallel forward without autograd (no checkpoints stored) gives the same bits as
    # with it, repeats bit-identically (its sum over the warps' partial outputs has a fixed
    # order), and agrees with the two-pass forward to rounding
    monkeypatch.setenv("LRNNX_SEL_FWD", "states")
    kw = ss_inputs(2, 517, 96, N, None, dtype, seed=N, ts=True)
    args = dict(kw, delta_softplus=True, return_last_state=True)
    with torch.no_grad():
        y1, h1 = kc.selective_scan(**args)
        y2, h2 = kc.selective_scan(**args)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(h1, h2, rtol=0, atol=0)
    leaf = {k: (v.clone().requires_grad_() if k == "u" else v) for k, v in kw.items()}
    y3, h3 = kc.selective_scan(**dict(leaf, delta_softplus=True, return_last_state=True))
    torch.testing.assert_close(y1, y3.detach(), rtol=0, atol=0)
    torch.testing.assert_close(h1, h3.detach(), rtol=0, atol=0)
    monkeypatch.setenv("LRNNX_SEL_FWD", "tiled")
    with torch.no_grad():
        y4, h4 = kc.selective_scan(**args)
    close(y1, y4, dtype, "y vs two-pass")
    close(h1, h4, torch.float32, "h_last vs two-pass")


@pytest.mark.parametrize("fwd,bwd", [("states", "tiled"), ("tiled", "states")])
@pytest.mark.parametrize("method", ["mamba", "zoh"])
def test_selective_scan_mixed_kernels(fwd, bwd, method, monkeypatch):
    # the two forwards store the same checkpoints, so either backward runs after either forward
    monkeypatch.setenv("LRNNX_SEL_FWD", fwd)
    monkeypatch.setenv("LRNNX_SEL_BWD", bwd)
    kw = ss_inputs(2, 301, 64, 16, None, torch.float32, seed=9, ts=method == "zoh")
    _check_ss(kw, method, torch.float32)


@pytest.mark.parametrize("W", ["4", "8", "16"])
def test_selective_scan_tiled_warps(W, monkeypatch):
    # the warps-per-block knob of the tiled kernels (default 8) for fwd and bwd
    monkeypatch.setenv("LRNNX_SEL_TILE_W", W)
    kw = ss_inputs(2, 333, 64, 16, 2, torch.float32, seed=3, ts=True)
    _check_ss(kw, "bilinear", torch.float32)


@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear", "dirac"])
def test_selective_scan_complex(method):
    kw = _ss_complex(2, 515, 128, 16, None, seed=7, ts=method == "bilinear")
    _check_ss(kw, method, torch.float32, torch.complex64)


@pytest.mark.parametrize("N", [1, 5, 16, 64, 128])
def test_selective_scan_state_sizes(N, s6_kernel):
    kw = ss_inputs(2, 300, 64, N, None, torch.float32, seed=N)
    _check_ss(kw, "zoh", torch.float32)


@pytest.mark.parametrize("Dm,G", [(256, 4), (36, 3), (40, 5)])
def test_selective_scan_groups(Dm, G, s6_kernel):
    # (36, 3) / (40, 5): 12 / 8 channels per group -> warps straddle groups (per-lane atomics)
    kw = ss_inputs(3, 333, Dm, 16, G, torch.float32, seed=Dm)
    _check_ss(kw, "mamba", torch.float32)


def test_selective_gradcheck_float64():
    for cplx in (False, True):
        kw = ss_inputs(2, 21, 8, 3, None, f64, seed=11, ts=True)
        kw = {k: v.double() for k, v in kw.items()}
        if cplx:
            kw["A"] = torch.complex(kw["A"], torch.ones_like(kw["A"]))
            kw["C"] = torch.complex(kw["C"], -kw["C"])
            kw["h0"] = kw["h0"].to(torch.complex128)
        names = list(kw)
        xs = [kw[k].clone().requires_grad_() for k in names]
        for method in ("mamba", "zoh", "bilinear", "dirac"):
            def f(*t, method=method):
                y, h = kc.selective_scan(**dict(zip(names, t)), delta_softplus=True,
                                         discretization=method, return_last_state=True)
                return y, torch.view_as_real(h) if h.is_complex() else h
            assert torch.autograd.gradcheck(f, xs), (method, cplx)


def test_steps_match_scans():
    for dtype in (torch.complex64, torch.float32, torch.bfloat16):
        a, b, h0 = diag_inputs(4, 1, 1024, dtype, seed=8)
        h = kc.diag_step(a[:, 0], b[:, 0], h0)
        close(h, kc.diag_scan(a, b, h0)[1], dtype, "diag_step")
    for kw in (ss_inputs(4, 1, 768, 16, 2, torch.float32, seed=9, ts=True),
               _ss_complex(4, 1, 256, 16, None, seed=10)):
        y, last = kc.selective_scan(**kw, delta_softplus=True, return_last_state=True,
                                    discretization="zoh")
        yt, st = kc.selective_step(kw["u"][:, 0], kw["delta"][:, 0], kw["A"], kw["B"][:, 0],
                                   kw["C"][:, 0], kw["h0"], kw["D"], kw["z"][:, 0],
                                   kw["delta_bias"], True, "zoh",
                                   kw["timesteps"][:, 0] if "timesteps" in kw else None)
        close(yt, y[:, 0], torch.float32, "selective_step y")
        close(st, last, last.dtype, "selective_step state")


def test_torch_compile_fullgraph():
    kw = ss_inputs(2, 300, 128, 16, None, torch.float32, seed=10)
    a, b, h0 = diag_inputs(2, 300, 128, torch.float32, seed=11)

    def f(a, b, h0, kw):
        h, last = kc.diag_scan(a, b, h0)
        y = kc.selective_scan(**kw, delta_softplus=True)
        return h.square().mean() + last.sum() + y.square().mean()

    xs = [t.clone().requires_grad_() for t in (a, b, h0)]
    kx = {k: v.clone().requires_grad_() for k, v in kw.items()}
    out = torch.compile(f, fullgraph=True)(*xs, kx)
    out.backward()
    close(out, f(a, b, h0, kw), torch.float32, "compiled")
    assert all(x.grad is not None for x in xs + list(kx.values()))


def test_dispatch_and_layers():
    pytest.importorskip("pydantic")
    import lrnnx
    import lrnnx.ops as ops

    ops.clear_backend_cache()
    assert ops.select_backend("diag_scan", device="cuda", dtype="float32", width=16384)[0] == "cuda"
    # real S6: the tiled cuda kernels (N <= 32); beyond them triton was measured faster
    assert ops.select_backend("selective_scan", device="cuda", dtype="float32", width=512,
                              d_state=16, channels=256)[0] == "cuda"
    name, why = ops.select_backend("selective_scan", device="cuda", dtype="float32", width=512,
                                   d_state=64, channels=256)
    assert name == "triton" and "not preferred" in why["cuda"]
    assert ops.select_backend("selective_scan", device="cuda", dtype="float32", width=12288,
                              complex=True)[0] == "cuda"
    torch.manual_seed(0)
    x = torch.randn(2, 200, 64, device=dev)
    for spec in ("mamba", "lru", "s5", "s4d", "rglru", "s7"):
        outs, grads_ = [], []
        for scan in ("cuda", "torch"):
            torch.manual_seed(1)
            m = lrnnx.build_layer(f"{spec}(scan={scan!r})", 64).to(dev)
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.square().mean().backward()
            outs.append(y.detach())
            grads_.append(xi.grad)
        close(outs[0], outs[1], torch.float32, f"{spec} output")
        close(grads_[0], grads_[1], torch.float32, f"{spec} grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_diag_scan_misaligned_views(dtype):
    # Views that start one element into their storage cannot take the vector (channel-pair)
    # loads; the launcher must notice and use one channel per lane.
    B, L, D = 2, 300, 64
    a0, b0, h00 = diag_inputs(B, L, D, dtype, seed=21)
    a = torch.empty(a0.numel() + 1, dtype=dtype, device=dev)[1:].view(B, L, D).copy_(a0)
    b = torch.empty(b0.numel() + 1, dtype=dtype, device=dev)[1:].view(B, L, D).copy_(b0)
    assert a.data_ptr() % (2 * a.element_size()) != 0  # not aligned for a channel pair
    h, last = kc.diag_scan(a, b, h00)
    ref = diag_scan_chunked(up(a0), up(b0), up(h00))
    close(h, ref[0], dtype, "h (misaligned)")
    close(last, ref[1], dtype, "h_last (misaligned)")
