"""Triton kernels on a CUDA device at full size, against float64 PyTorch references.

Run on a GPU machine: ``PYTHONPATH=.:plugins_shim python -m pytest tests/gpu -m gpu -q``.
The references are the exact chunked PyTorch scans in float64 (themselves tested against the
sequential loops in tests/kernels).  Tolerances: max |err| / max |ref| <= 1e-5 (fp32),
1e-2 (bf16/fp16), for outputs and gradients.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 is set: these tests compile for the GPU",
                allow_module_level=True)
pytest.importorskip("triton")

from lrnnx_kernels import diag_scan_chunked, selective_scan_chunked  # noqa: E402
from lrnnx_kernels import triton as kt  # noqa: E402

dev = torch.device("cuda")
f64 = torch.float64
TOL = {torch.float32: 1e-5, torch.complex64: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2,
       f64: 1e-12, torch.complex128: 1e-12}


def up(t):
    if t is None:
        return None
    return t.detach().to(torch.complex128 if t.is_complex() else f64)


def close(x, ref, dtype, what):
    ref = up(ref)
    err = ((up(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()
    assert err <= TOL[dtype], f"{what}: rel err {err:.3e} > {TOL[dtype]:.0e}"


def grads(f, tensors, weights, **kw):
    xs = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    outs = f(*xs, **kw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o * w.to(o.dtype).conj()).real.float().sum() for o, w in zip(outs, weights))
    gs = torch.autograd.grad(loss, [x for x in xs if x is not None])
    return outs, gs


def diag_inputs(B, L, D, dtype, seed, Ba=None, nseq=None):
    g = torch.Generator(device=dev).manual_seed(seed)
    base = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    shape = (Ba or B, L, D)
    r = torch.rand(shape, device=dev, generator=g, dtype=f64) * 0.2 + 0.799  # long memory
    if base.is_complex:
        ph = torch.rand(shape, device=dev, generator=g, dtype=f64) * 0.3
        a = torch.polar(r, ph)
        b = torch.randn((B, L, D), device=dev, generator=g, dtype=torch.complex128)
        h0 = torch.randn((nseq or B, D), device=dev, generator=g, dtype=torch.complex128)
    else:
        a = r
        b = torch.randn((B, L, D), device=dev, generator=g, dtype=f64)
        h0 = torch.randn((nseq or B, D), device=dev, generator=g, dtype=f64)
    return a.to(dtype), b.to(dtype), h0.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("L", [4096, 4097])
@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_full(dtype, L, reverse):
    a, b, h0 = diag_inputs(4, L, 768, dtype, seed=L)
    g = torch.Generator(device=dev).manual_seed(1)
    w = [torch.randn(b.shape, device=dev, generator=g), torch.randn(h0.shape, device=dev,
                                                                     generator=g)]
    out, gr = grads(kt.diag_scan, (a, b, h0), w, reverse=reverse)
    ref, rg = grads(diag_scan_chunked, (up(a), up(b), up(h0)), w, reverse=reverse)
    for o, r, name in zip(out, ref, ("h", "h_last")):
        assert o.dtype == dtype
        close(o, r, dtype, name)
    for x, r, name in zip(gr, rg, ("a", "b", "h0")):
        close(x, r, dtype, f"grad {name}")


@pytest.mark.parametrize("reverse", [False, True])
def test_diag_scan_varlen_and_shared_a(reverse):
    L = 5000
    cu = torch.tensor([0, 1, 1000, 1000, 3333, 4999, 5000], device=dev, dtype=torch.int32)
    a, b, h0 = diag_inputs(1, L, 1000, torch.float32, seed=3, nseq=6)
    g = torch.Generator(device=dev).manual_seed(2)
    w = [torch.randn(b.shape, device=dev, generator=g), torch.randn(h0.shape, device=dev,
                                                                     generator=g)]
    out, gr = grads(kt.diag_scan, (a, b, h0), w, reverse=reverse, cu_seqlens=cu)
    ref, rg = grads(diag_scan_chunked, (up(a), up(b), up(h0)), w, reverse=reverse,
                    cu_seqlens=cu)
    for x, r in zip(out + gr, ref + rg):
        close(x, r, torch.float32, "varlen")
    a, b, _ = diag_inputs(8, 3000, 256, torch.float32, seed=4, Ba=1)
    w = [torch.randn(b.shape, device=dev, generator=g)]
    out, gr = grads(kt.diag_scan, (a, b), w, reverse=reverse)
    ref, rg = grads(diag_scan_chunked, (up(a), up(b)), w, reverse=reverse)
    for x, r in zip(out + gr, ref + rg):
        close(x, r, torch.float32, "shared a")


def ss_inputs(Bt, L, Dm, N, G, dtype, seed, ts=False, cplx=False):
    """S6 inputs; ``cplx``: complex A (Re < 0, any phase), B, C, h0, stored as complex64 (u,
    delta, z in ``dtype``, the other real ones fp32)."""
    g = torch.Generator(device=dev).manual_seed(seed)

    def r(*s):
        return torch.randn(*s, device=dev, generator=g, dtype=f64)

    def c(*s):
        return torch.complex(r(*s), r(*s)) if cplx else r(*s)

    bc = (Bt, L, N) if G is None else (Bt, L, G, N)
    A = -torch.exp(torch.rand(Dm, N, device=dev, generator=g, dtype=f64) * 3 - 1.5)
    if cplx:
        A = torch.complex(A, torch.rand(Dm, N, device=dev, generator=g, dtype=f64) * 6 - 3)
    kw = dict(u=r(Bt, L, Dm), delta=r(Bt, L, Dm) * 0.5 - 2.0, A=A, B=c(*bc), C=c(*bc),
              D=r(Dm), z=r(Bt, L, Dm), delta_bias=r(Dm) * 0.1,
              timesteps=torch.rand(Bt, L, device=dev, generator=g, dtype=f64) + 0.5 if ts
              else None, h0=c(Bt, Dm, N))
    low = {k: (v.to(torch.complex64) if v.is_complex() else
               v.to(dtype) if k not in ("A", "D", "delta_bias") else v.float())
           for k, v in kw.items() if v is not None}
    return low


SS_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "timesteps", "h0")


def ss_run(f, kw, method, **extra):
    names = [k for k in SS_NAMES if k in kw]

    def call(*xs):
        return f(**dict(zip(names, xs)), delta_softplus=True, discretization=method,
                 return_last_state=True, **extra)

    g = torch.Generator(device=dev).manual_seed(5)
    Bt, L, Dm = kw["u"].shape
    hdt = torch.complex64 if kw["h0"].is_complex() else torch.float32  # weights of h_last
    w = [torch.randn(Bt, L, Dm, device=dev, generator=g),
         torch.randn(kw["h0"].shape, device=dev, generator=g, dtype=hdt)]
    return grads(call, [kw[k] for k in names], w), names


@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear", "dirac"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_full(method, dtype):
    kw = ss_inputs(2, 1027, 512, 16, None, dtype, seed=6, ts=method == "zoh")
    (out, gr), names = ss_run(kt.selective_scan, kw, method)
    (ref, rg), _ = ss_run(selective_scan_chunked, {k: up(v) for k, v in kw.items()}, method)
    close(out[0], ref[0], dtype, "y")
    close(out[1], ref[1], torch.float32, "h_last")
    for x, r, n in zip(gr, rg, names):
        close(x, r, dtype, f"grad {n}")


def test_selective_scan_grouped():
    kw = ss_inputs(3, 777, 256, 16, 4, torch.float32, seed=7)
    (out, gr), names = ss_run(kt.selective_scan, kw, "mamba")
    (ref, rg), _ = ss_run(selective_scan_chunked, {k: up(v) for k, v in kw.items()}, "mamba")
    for x, r, n in zip(out + gr, ref + rg, ("y", "h_last", *names)):
        close(x, r, torch.float32, n)


@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear", "dirac"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_complex_full(method, dtype):
    """Complex A, B, C, h0 (complex64), u / delta / z in ``dtype``: y, the complex h_last and every
    input's gradient (PyTorch's conjugate convention) against the complex128 chunked scan."""
    kw = ss_inputs(2, 1027, 512, 16, None, dtype, seed=11, ts=method == "zoh", cplx=True)
    (out, gr), names = ss_run(kt.selective_scan, kw, method)
    (ref, rg), _ = ss_run(selective_scan_chunked, {k: up(v) for k, v in kw.items()}, method)
    assert out[1].dtype == torch.complex64
    close(out[0], ref[0], dtype, "y")
    close(out[1], ref[1], torch.complex64, "h_last")
    for x, r, n in zip(gr, rg, names):
        assert x.dtype == kw[n].dtype, n
        close(x, r, dtype, f"grad {n}")


def test_selective_scan_complex_grouped():
    kw = ss_inputs(3, 777, 256, 16, 4, torch.float32, seed=12, ts=True, cplx=True)
    (out, gr), names = ss_run(kt.selective_scan, kw, "zoh")
    (ref, rg), _ = ss_run(selective_scan_chunked, {k: up(v) for k, v in kw.items()}, "zoh")
    for x, r, n in zip(out + gr, ref + rg, ("y", "h_last", *names)):
        close(x, r, torch.float32, n)


def test_steps_match_scans():
    a, b, h0 = diag_inputs(4, 1, 1024, torch.complex64, seed=8)
    h = kt.diag_step(a[:, 0], b[:, 0], h0)
    close(h, kt.diag_scan(a, b, h0)[1], torch.complex64, "diag_step")
    kw = ss_inputs(4, 1, 768, 16, 2, torch.float32, seed=9, ts=True)
    y, last = kt.selective_scan(**kw, delta_softplus=True, return_last_state=True)
    yt, st = kt.selective_step(kw["u"][:, 0], kw["delta"][:, 0], kw["A"], kw["B"][:, 0],
                               kw["C"][:, 0], kw["h0"], kw["D"], kw["z"][:, 0], kw["delta_bias"],
                               True, "mamba", kw["timesteps"][:, 0])
    close(yt, y[:, 0], torch.float32, "selective_step y")
    close(st, last, torch.float32, "selective_step state")
    kw = ss_inputs(4, 1, 768, 16, 2, torch.float32, seed=13, ts=True, cplx=True)
    y, last = kt.selective_scan(**kw, delta_softplus=True, return_last_state=True,
                                discretization="zoh")
    yt, st = kt.selective_step(kw["u"][:, 0], kw["delta"][:, 0], kw["A"], kw["B"][:, 0],
                               kw["C"][:, 0], kw["h0"], kw["D"], kw["z"][:, 0], kw["delta_bias"],
                               True, "zoh", kw["timesteps"][:, 0])
    close(yt, y[:, 0], torch.float32, "complex selective_step y")
    close(st, last, torch.complex64, "complex selective_step state")


def test_torch_compile_inductor_fullgraph():
    kw = ss_inputs(2, 300, 128, 16, None, torch.float32, seed=10)
    a, b, h0 = diag_inputs(2, 300, 128, torch.float32, seed=11)

    def f(a, b, h0, kw):
        h, last = kt.diag_scan(a, b, h0)
        y = kt.selective_scan(**kw, delta_softplus=True)
        return h.square().mean() + last.sum() + y.square().mean()

    xs = [t.clone().requires_grad_() for t in (a, b, h0)]
    kx = {k: v.clone().requires_grad_() for k, v in kw.items()}
    out = torch.compile(f, fullgraph=True)(*xs, kx)
    out.backward()
    ref = f(a, b, h0, kw)
    close(out, ref, torch.float32, "compiled")
    assert all(x.grad is not None for x in xs + list(kx.values()))


def test_dispatch_picks_triton():
    pytest.importorskip("pydantic")  # lrnnx.ops needs the registry
    import lrnnx.ops as ops
    from lrnnx.registry.core import REGISTRY

    if "triton" not in REGISTRY.names("scan_backend"):
        from lrnnx_plugins.backends.triton_backend import TritonBackend

        REGISTRY.register("scan_backend", TritonBackend)
    ops.clear_backend_cache()
    # the cuda backend (priority 35) takes what it runs fastest; triton is next in line
    name, _ = ops.select_backend("diag_scan", device="cuda", dtype="float32")
    assert name in ("cuda", "triton")
    # complex S6: triton can run it; "auto" keeps it on cuda when cuda is there
    name, why = ops.select_backend("selective_scan", device="cuda", dtype="float32", complex=True)
    assert name in ("cuda", "triton") and "triton" not in why
    # real S6: cuda when its tiled kernels take the problem (N <= 32), triton otherwise
    assert ops.select_backend("selective_scan", device="cuda", dtype="float32",
                              d_state=64)[0] == "triton"
    a, b, h0 = diag_inputs(2, 100, 64, torch.float32, seed=12)
    h, last = ops.diag_scan(a, b, h0, backend="triton")
    close(h, diag_scan_chunked(up(a), up(b), up(h0))[0], torch.float32, "ops.diag_scan")
