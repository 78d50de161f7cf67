"""Triton fused selective scan / selective step on CPU through the Triton interpreter.

Everything is compared with the float64 / complex128 sequential reference
(``selective_scan_ref``) and the torch discretization (``lrnnx_kernels.discretize``), real and
complex S6 (complex A / B / C / h0, gradients in PyTorch's conjugate convention).
``TRITON_INTERPRET=1`` is set by a module fixture before the kernels are first imported and
restored afterwards (GPU machines run tests/gpu/test_triton_gpu.py).  The interpreter is slow:
tiny shapes, tiles of BL tokens.
"""
import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        pytest.fail("triton must be installed in CI (pip install -e '.[dev]')", pytrace=False)
    pytest.skip("triton is not installed", allow_module_level=True)
if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("CUDA present: the kernels are tested by tests/gpu/test_triton_gpu.py (set "
                "TRITON_INTERPRET=1 to run these CPU tests)", allow_module_level=True)

from lrnnx_kernels import METHODS, discretize, selective_scan_ref, selective_step
from lrnnx_kernels_testutils import TOL, assert_close, up


@pytest.fixture(autouse=True, scope="module")
def triton_interpreter():
    """TRITON_INTERPRET=1 while this module runs.  It must be set when the kernels are first
    imported (``@triton.jit`` reads it then; they are imported lazily, inside the tests), and
    it is restored afterwards so that other test modules never see the triton backend as
    available for CPU tensors."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old


f64 = torch.float64
BL = 4  # tile length for the tests
ALL = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "timesteps", "h0")


def tri():
    from lrnnx_kernels import triton as kt

    return kt


def make(Bt=1, L=BL + 1, Dm=3, N=2, G=None, dtype=torch.float32, seed=0, D=True, z=True,
         bias=True, ts=False, h0=True):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, dtype=f64, generator=g)

    bc = (Bt, L, N) if G is None else (Bt, L, G, N)
    kw = dict(u=r(Bt, L, Dm), delta=r(Bt, L, Dm) * 0.5 - 1.0,
              A=-torch.rand(Dm, N, dtype=f64, generator=g) * 2 - 0.02, B=r(*bc), C=r(*bc),
              D=r(Dm) if D else None, z=r(Bt, L, Dm) if z else None,
              delta_bias=r(Dm) * 0.1 if bias else None,
              timesteps=torch.rand(Bt, L, dtype=f64, generator=g) + 0.5 if ts else None,
              h0=r(Bt, Dm, N) if h0 else None)
    return {k: (v.to(dtype) if v is not None else None) for k, v in kw.items()}


def make_c(Bt=1, L=BL + 1, Dm=3, N=2, G=None, dtype=torch.complex64, seed=0, real=(), **kw):
    """``make`` with complex A (Re < 0, any phase), B, C, h0 in ``dtype`` (complex64/128); the
    names in ``real`` stay real (u, delta, z, D, delta_bias, timesteps always are)."""
    rdt = torch.float64 if dtype == torch.complex128 else torch.float32
    out = make(Bt, L, Dm, N, G, rdt, seed, **kw)
    g = torch.Generator().manual_seed(seed + 100)
    for k in ("A", "B", "C", "h0"):
        if out[k] is not None and k not in real:
            scale = 2.0 if k == "A" else 1.0
            im = torch.randn(out[k].shape, dtype=f64, generator=g) * scale
            out[k] = torch.complex(out[k].to(f64), im).to(dtype)
    return out


def _rv(t):
    return torch.view_as_real(t) if t.is_complex() else t


def run(f, kw, method, softplus=True, seed=1, **extra):
    """(y, h_last, grads of every given input) for a random linear loss of y and h_last (of the
    real and imaginary parts of a complex h_last)."""
    x = {k: (v.detach().clone().requires_grad_() if v is not None else None)
         for k, v in kw.items()}
    y, last = f(**x, delta_softplus=softplus, discretization=method, return_last_state=True,
                **extra)
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, dtype=f64, generator=g).to(y.dtype)
    wl = torch.randn(_rv(last).shape, dtype=f64, generator=g).to(_rv(last).dtype)
    loss = (y * wy).float().sum() + (_rv(last) * wl).float().sum()
    names = [k for k in ALL if x[k] is not None]
    grads = torch.autograd.grad(loss, [x[k] for k in names])
    return y, last, dict(zip(names, grads))


def compare(kw, method, dtype, softplus=True, **extra):
    y, last, g = run(tri().selective_scan, kw, method, softplus, block_l=extra.pop("bl", BL),
                     **extra)
    ry, rl, rg = run(selective_scan_ref, {k: up(v) for k, v in kw.items()}, method, softplus)
    assert y.dtype == kw["u"].dtype
    assert last.is_complex() == rl.is_complex()
    assert_close(y, ry, dtype, f"{method} y")
    assert_close(last, rl, dtype, f"{method} h_last")
    assert set(g) == set(rg)
    for k in g:
        assert g[k].dtype == kw[k].dtype and g[k].shape == kw[k].shape, k
        assert_close(g[k], rg[k], dtype, f"{method} grad {k}")


@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear", "dirac"])
def test_discretize_tl_equals_torch(method):
    """The tl formulas (values and the partial derivatives of the fused backward) equal
    ``lrnnx_kernels.discretize`` in float64, on both sides of zoh's series switch."""
    from lrnnx_kernels.triton._host import DISC_CODES
    from lrnnx_kernels.triton._tl import _discretize_test_kernel

    g = torch.Generator().manual_seed(0)
    dt = torch.cat([torch.rand(40, dtype=f64, generator=g) * 2,
                    torch.rand(24, dtype=f64, generator=g) * 0.01 + 1e-3])
    A = -torch.rand(64, dtype=f64, generator=g) * 3 - 1e-3
    A[::7] = -A[::7]  # a few positive entries
    out = torch.empty(7, 64, dtype=f64)
    _discretize_test_kernel[(1,)](dt, A, out, 64, DISC=DISC_CODES[method], BLOCK=64)
    dtr, Ar = dt.clone().requires_grad_(), A.clone().requires_grad_()
    abar, scale = discretize(method, Ar, dtr)
    assert_close(out[0], abar, f64, "A_bar")
    assert_close(out[1], scale, f64, "B_scale")
    (ga,) = torch.autograd.grad(abar.sum(), Ar, retain_graph=True)  # = dA_bar/dx * dt
    assert_close(out[2], ga / dt, f64, "dA_bar/dx")
    zero = torch.zeros_like(dt)
    if scale.requires_grad:
        ds_ddt, ds_dA = torch.autograd.grad(scale.sum(), (dtr, Ar), allow_unused=True)
    else:  # dirac: a constant scale
        ds_ddt = ds_dA = None
    assert_close(out[3] + 1, (zero if ds_ddt is None else ds_ddt) + 1, f64, "dB_scale/ddt")
    assert_close(out[4] + 1, (zero if ds_dA is None else ds_dA) + 1, f64, "dB_scale/dA")
    assert out[5].abs().max() == 0 and out[6].abs().max() == 0  # both helpers agree


@pytest.mark.parametrize("method", METHODS)
def test_all_methods_fp64(method):
    """Every input, float64 end to end: equal to the reference to ~1e-12."""
    compare(make(dtype=f64, ts=True), method, f64)


@pytest.mark.parametrize("L", [BL - 1, BL, BL + 1, 2 * BL + 1])
def test_lengths_fp32(L):
    compare(make(L=L, seed=L), "mamba", torch.float32)


def test_grouped_bc_timesteps_two_channel_blocks():
    """G = 2 groups over Dm = 4 channels: two channel blocks, each in its own group."""
    compare(make(Bt=2, Dm=4, G=2, ts=True, seed=3), "zoh", torch.float32)


def test_bare_no_softplus():
    compare(make(D=False, z=False, bias=False, h0=False, seed=4), "bilinear", torch.float32,
            softplus=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    kw = make(dtype=dtype, seed=5)
    kw["A"] = kw["A"].float()  # the usual mixed-precision setup: fp32 parameters
    kw["D"] = kw["D"].float()
    compare(kw, "mamba", dtype)


def test_default_tiles_longer_sequence():
    kw = make(L=40, Dm=2, seed=6)
    y, last = tri().selective_scan(**kw, delta_softplus=True, return_last_state=True)
    ry, rl = selective_scan_ref(**{k: up(v) for k, v in kw.items()}, delta_softplus=True,
                                return_last_state=True)
    assert_close(y, ry, torch.float32, "y")
    assert_close(last, rl, torch.float32, "h_last")


def test_one_output_gradient_and_no_grad():
    kw = {k: v for k, v in make(seed=7).items() if v is not None}
    x = {k: v.clone().requires_grad_() for k, v in kw.items()}
    r = {k: up(v).requires_grad_() for k, v in kw.items()}
    # only h_last is used: y's gradient is absent
    tri().selective_scan(**x, return_last_state=True)[1].sum().backward()
    selective_scan_ref(**r, return_last_state=True)[1].sum().backward()
    for k in kw:
        if r[k].grad is None:  # z and D do not reach h_last
            assert x[k].grad is None or not x[k].grad.any(), k
        else:
            assert_close(x[k].grad, r[k].grad, torch.float32, f"grad {k} (h_last only)")
    with torch.no_grad():  # no checkpoints stored, same values
        y = tri().selective_scan(**kw)
    assert_close(y, selective_scan_ref(**{k: up(v) for k, v in kw.items()}), torch.float32, "y")


def test_errors():
    kw = make()
    with pytest.raises(TypeError):  # a complex state for a real recurrence
        tri().selective_scan(**{**kw, "h0": kw["h0"].to(torch.complex64)})
    with pytest.raises(TypeError):
        tri().selective_scan(**{**kw, "u": kw["u"].to(torch.complex64)})
    with pytest.raises(ValueError):
        tri().selective_scan(**{**kw, "D": kw["D"][:2]})
    with pytest.raises(ValueError):
        tri().selective_scan(**kw, discretization="nope")
    y, last = tri().selective_scan(**{k: (v[:, :0] if k in ("u", "delta", "z", "B", "C") else v)
                                      for k, v in kw.items()}, return_last_state=True)
    assert y.shape == (1, 0, 3) and torch.equal(last, kw["h0"])


@pytest.mark.parametrize("method", ["mamba", "zoh"])
def test_selective_step(method):
    kw = make(Bt=2, L=1, Dm=4, G=2, ts=True, seed=8)
    step = {"u_t": kw["u"][:, 0], "delta_t": kw["delta"][:, 0], "A": kw["A"],
            "B_t": kw["B"][:, 0], "C_t": kw["C"][:, 0], "state": kw["h0"], "D": kw["D"],
            "z_t": kw["z"][:, 0], "delta_bias": kw["delta_bias"],
            "timesteps_t": kw["timesteps"][:, 0]}
    x = {k: v.clone().requires_grad_() for k, v in step.items()}
    r = {k: up(v).requires_grad_() for k, v in step.items()}
    y, h = tri().selective_step(**x, delta_softplus=True, discretization=method)
    ry, rh = selective_step(**r, delta_softplus=True, discretization=method)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_close(y, ry, torch.float32, "y_t")
    assert_close(h, rh, torch.float32, "state")
    (y.sum() + h.square().sum()).backward()
    (ry.sum() + rh.square().sum()).backward()
    for k in step:
        assert_close(x[k].grad, r[k].grad, torch.float32, f"step grad {k}")


def test_step_loop_equals_scan():
    kw = make(L=3, ts=True, seed=9)
    y, last = tri().selective_scan(**kw, delta_softplus=True, return_last_state=True)
    h = kw["h0"]
    for t in range(3):
        yt, h = tri().selective_step(kw["u"][:, t], kw["delta"][:, t], kw["A"], kw["B"][:, t],
                                     kw["C"][:, t], h, kw["D"], kw["z"][:, t], kw["delta_bias"],
                                     True, "mamba", kw["timesteps"][:, t])
        assert (yt - y[:, t]).abs().max() <= TOL[torch.float32] * y.abs().max()
    assert_close(h, last, torch.float32, "final state")
    # state=None is the zero state
    args = (kw["u"][:, 0], kw["delta"][:, 0], kw["A"], kw["B"][:, 0], kw["C"][:, 0], None)
    y0, s0 = tri().selective_step(*args, discretization="zoh")
    ry0, rs0 = selective_step(*(up(t) for t in args), discretization="zoh")
    assert_close(y0, ry0, torch.float32, "y_t from zeros")
    assert_close(s0, rs0, torch.float32, "state from zeros")


def test_custom_op_opcheck():
    tri()  # registers the ops
    kw = make(seed=10)
    args = (kw["u"], kw["delta"], kw["A"], kw["B"].unsqueeze(2), kw["C"].unsqueeze(2), kw["D"],
            kw["z"], kw["delta_bias"], None, kw["h0"], True, 1, True, BL, 0)
    torch.library.opcheck(torch.ops.lrnnx.triton_selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    kw = {k: v for k, v in make(seed=11).items() if v is not None}
    kt = tri()

    def f(kw):
        y, last = kt.selective_scan(**kw, delta_softplus=True, return_last_state=True,
                                    block_l=BL)
        y1, h = kt.selective_step(kw["u"][:, 0], kw["delta"][:, 0], kw["A"], kw["B"][:, 0],
                                  kw["C"][:, 0], last, kw["D"], None, kw["delta_bias"], True)
        return y.sum() + y1.sum() + h.sum()

    x = {k: v.clone().requires_grad_() for k, v in kw.items()}
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    out.backward()
    ref = f({k: v.detach() for k, v in kw.items()})
    assert_close(out, ref, torch.float32, "compiled")
    assert all(v.grad is not None for v in x.values())


# ----------------------------------------------------------------------------- complex S6
@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear", "dirac"])
def test_discretize_cplx_tl_equals_torch(method):
    """The complex tl formulas equal ``lrnnx_kernels.discretize`` in complex128; their derivatives
    equal torch autograd's (holomorphic: f'(A) = conj(grad of Re f)), on both sides of zoh's
    series switch and for small |x| with a large imaginary share."""
    from lrnnx_kernels.triton._host import DISC_CODES
    from lrnnx_kernels.triton._tl import _discretize_cplx_test_kernel

    g = torch.Generator().manual_seed(0)
    n = 64
    dt = torch.cat([torch.rand(40, dtype=f64, generator=g) * 2,
                    torch.rand(24, dtype=f64, generator=g) * 0.01 + 1e-3])
    A = torch.complex(-torch.rand(n, dtype=f64, generator=g) * 3 - 1e-3,
                      torch.randn(n, dtype=f64, generator=g) * 3)
    A[::7] = torch.complex(-A[::7].real, A[::7].imag)  # a few Re A > 0
    A[5], A[6] = 1e-4j, 2e-3
    out = torch.empty(7, n, 2, dtype=f64)
    _discretize_cplx_test_kernel[(1,)](dt, torch.view_as_real(A).contiguous(), out, n,
                                       DISC=DISC_CODES[method], BLOCK=n)
    o = torch.view_as_complex(out)
    dtr, Ar = dt.clone().requires_grad_(), A.clone().requires_grad_()
    abar, scale = discretize(method, Ar, dtr)
    scale = scale.to(torch.complex128)
    zero = torch.zeros_like(A)

    def d_dA(f):  # holomorphic derivative
        if not f.requires_grad:
            return zero
        (gr,) = torch.autograd.grad(f.real.sum(), Ar, retain_graph=True, allow_unused=True)
        return zero if gr is None else gr.conj()

    def d_ddt(f):
        if not f.requires_grad:
            return zero
        parts = [torch.autograd.grad(p.sum(), dtr, retain_graph=True, allow_unused=True)[0]
                 for p in (f.real, f.imag)]
        return torch.complex(*[torch.zeros_like(dt) if p is None else p for p in parts])

    c128 = torch.complex128
    assert_close(o[0], abar, c128, "A_bar")
    assert_close(o[1], scale, c128, "B_scale")
    assert_close(o[2], d_dA(abar) / dt, c128, "dA_bar/dx")
    assert_close(o[3] + 1, d_ddt(scale) + 1, c128, "dB_scale/ddt")
    assert_close(o[4] + 1, d_dA(scale) + 1, c128, "dB_scale/dA")
    assert o[5].abs().max() == 0 and o[6].abs().max() == 0  # both helpers agree


@pytest.mark.parametrize("method", METHODS)
def test_complex_all_methods_c128(method):
    """Complex A, B, C, h0 and every other input, complex128 end to end: ~1e-12."""
    compare(make_c(dtype=torch.complex128, ts=True), method, torch.complex128)


@pytest.mark.parametrize("L,method", [(BL - 1, "mamba"), (BL, "zoh"), (BL + 1, "bilinear"),
                                      (2 * BL + 1, "dirac"), (2 * BL + 1, "zoh")])
def test_complex_lengths_c64(L, method):
    """complex64, lengths around the tile size, every input's gradient within 1e-5."""
    compare(make_c(L=L, seed=20 + L), method, torch.complex64)


def test_complex_grouped_bc_timesteps_two_channel_blocks():
    compare(make_c(Bt=2, Dm=4, G=2, ts=True, seed=21), "zoh", torch.complex64)


@pytest.mark.parametrize("atomic", [False, True])
def test_complex_partial_channel_blocks(atomic, monkeypatch):
    """Dm = 5 in blocks of 2 (the last one partial); dB / dC reduced per block or atomically."""
    from lrnnx_kernels.triton import _selective_scan_module as mod

    monkeypatch.setattr(mod, "BWD_ATOMIC", atomic)
    compare(make_c(Dm=5, L=BL + 2, ts=True, seed=22), "bilinear", torch.complex64, block_d=2)


@pytest.mark.parametrize("real", [("A",), ("B", "C", "h0"), ("A", "B", "h0")],
                         ids=["real_A", "real_B_C_h0", "complex_C_only"])
def test_complex_mixed_real_and_complex(real):
    """A complex state from a real A (complex B) or from complex A with real B, C, h0; a complex
    C with real A, B (real state, y reads Re C).  Gradients come back in each input's dtype."""
    compare(make_c(ts=True, seed=23, real=real), "zoh", torch.complex64)


def test_complex_bare_no_softplus():
    compare(make_c(D=False, z=False, bias=False, h0=False, seed=24), "bilinear",
            torch.complex64, softplus=False)


def test_complex_half_precision_inputs():
    """bf16 u / delta / z with complex64 A, B, C, h0 and fp32 D: 1e-2 like the real half case."""
    kw = make_c(seed=25)
    for k in ("u", "delta", "z", "delta_bias"):
        kw[k] = kw[k].to(torch.bfloat16)
    compare(kw, "mamba", torch.bfloat16)


def test_complex_last_state_only_and_no_grad():
    kw = {k: v for k, v in make_c(seed=26, ts=True).items() if v is not None}
    x = {k: v.clone().requires_grad_() for k, v in kw.items()}
    r = {k: up(v).requires_grad_() for k, v in kw.items()}
    # only h_last is used (its real part): y's gradient is absent
    tri().selective_scan(**x, return_last_state=True, discretization="zoh",
                         block_l=BL)[1].real.sum().backward()
    selective_scan_ref(**r, return_last_state=True, discretization="zoh")[1].real.sum().backward()
    for k in kw:
        if r[k].grad is None:  # z and D do not reach h_last
            assert x[k].grad is None or not x[k].grad.any(), k
        else:
            assert_close(x[k].grad, r[k].grad, torch.complex64, f"grad {k} (h_last only)")
    with torch.no_grad():  # no checkpoints stored, default tiles, same values
        y, last = tri().selective_scan(**kw, return_last_state=True)
    ry, rl = selective_scan_ref(**{k: up(v) for k, v in kw.items()}, return_last_state=True)
    assert last.dtype == torch.complex64
    assert_close(y, ry, torch.float32, "y")
    assert_close(last, rl, torch.complex64, "h_last")
    empty = {k: (v[:, :0] if k in ("u", "delta", "z", "B", "C", "timesteps") else v)
             for k, v in kw.items()}
    y, last = tri().selective_scan(**empty, return_last_state=True)
    assert y.shape == (1, 0, 3) and torch.equal(last, kw["h0"])


def test_complex_custom_op_opcheck():
    tri()  # registers the ops
    kw = make_c(seed=27)
    args = (kw["u"], kw["delta"], kw["A"], kw["B"].unsqueeze(2), kw["C"].unsqueeze(2), kw["D"],
            kw["z"], kw["delta_bias"], None, kw["h0"], True, 2, True, BL, 0)
    torch.library.opcheck(torch.ops.lrnnx.triton_selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_complex_torch_compile_fullgraph():
    kw = {k: v for k, v in make_c(seed=28).items() if v is not None}
    kt = tri()

    def f(kw):
        y, last = kt.selective_scan(**kw, delta_softplus=True, return_last_state=True,
                                    block_l=BL)
        return y.sum() + last.real.sum() + last.imag.square().sum()

    x = {k: v.clone().requires_grad_() for k, v in kw.items()}
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    out.backward()
    ref = f({k: v.detach() for k, v in kw.items()})
    assert_close(out, ref, torch.float32, "compiled")
    assert all(v.grad is not None for v in x.values())


@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear"])
def test_complex_selective_step(method):
    """One complex token: y_t, the complex state and every input's gradient (the step's backward
    is the complex scan backward of length 1)."""
    kw = make_c(Bt=2, L=1, Dm=4, G=2, ts=True, seed=30)
    step = {"u_t": kw["u"][:, 0], "delta_t": kw["delta"][:, 0], "A": kw["A"],
            "B_t": kw["B"][:, 0], "C_t": kw["C"][:, 0], "state": kw["h0"], "D": kw["D"],
            "z_t": kw["z"][:, 0], "delta_bias": kw["delta_bias"],
            "timesteps_t": kw["timesteps"][:, 0]}
    x = {k: v.clone().requires_grad_() for k, v in step.items()}
    r = {k: up(v).requires_grad_() for k, v in step.items()}
    y, h = tri().selective_step(**x, delta_softplus=True, discretization=method)
    ry, rh = selective_step(**r, delta_softplus=True, discretization=method)
    assert y.dtype == torch.float32 and h.dtype == torch.complex64
    assert_close(y, ry, torch.float32, "y_t")
    assert_close(h, rh, torch.complex64, "state")
    (y.sum() + (h * h.conj()).real.sum() + h.imag.sum()).backward()
    (ry.sum() + (rh * rh.conj()).real.sum() + rh.imag.sum()).backward()
    for k in step:
        assert x[k].grad.dtype == step[k].dtype, k
        assert_close(x[k].grad, r[k].grad, torch.complex64, f"step grad {k}")


def test_complex_step_loop_equals_scan():
    kw = make_c(L=3, ts=True, seed=31, real=("B",))  # real B: the state is still complex
    y, last = tri().selective_scan(**kw, delta_softplus=True, return_last_state=True,
                                   discretization="zoh")
    h = kw["h0"]
    for t in range(3):
        yt, h = tri().selective_step(kw["u"][:, t], kw["delta"][:, t], kw["A"], kw["B"][:, t],
                                     kw["C"][:, t], h, kw["D"], kw["z"][:, t], kw["delta_bias"],
                                     True, "zoh", kw["timesteps"][:, t])
        assert (yt - y[:, t]).abs().max() <= TOL[torch.float32] * y.abs().max()
    assert_close(h, last, torch.complex64, "final state")
    # state=None is the zero state; a complex C with real A, B keeps the state real
    args = (kw["u"][:, 0], kw["delta"][:, 0], kw["A"].real, kw["B"][:, 0], kw["C"][:, 0], None)
    y0, s0 = tri().selective_step(*args, discretization="bilinear")
    ry0, rs0 = selective_step(*(up(t) for t in args), discretization="bilinear")
    assert not s0.is_complex() and not rs0.is_complex()
    assert_close(y0, ry0, torch.float32, "y_t from zeros")
    assert_close(s0, rs0, torch.float32, "state from zeros")


def test_complex_through_ops_backend():
    """``lrnnx.ops`` validates a complex S6 problem, the triton backend accepts it and runs it."""
    pytest.importorskip("pydantic")  # lrnnx.ops needs the registry
    import lrnnx.ops as ops

    kw = make_c(seed=32, ts=True)
    ops.clear_backend_cache()
    try:
        assert ops.select_backend("selective_scan", device="cpu", dtype=torch.float32,
                                  complex=True)[0] == "triton"
        y, last = ops.selective_scan(**kw, delta_softplus=True, discretization="bilinear",
                                     return_last_state=True, backend="triton")
        yt, st = ops.selective_step(kw["u"][:, 0], kw["delta"][:, 0], kw["A"], kw["B"][:, 0],
                                    kw["C"][:, 0], kw["h0"], backend="triton")
    finally:
        ops.clear_backend_cache()
    ry, rl = selective_scan_ref(**{k: up(v) for k, v in kw.items()}, delta_softplus=True,
                                discretization="bilinear", return_last_state=True)
    assert_close(y, ry, torch.float32, "ops y")
    assert_close(last, rl, torch.complex64, "ops h_last")
    ryt, rst = selective_step(up(kw["u"][:, 0]), up(kw["delta"][:, 0]), up(kw["A"]),
                              up(kw["B"][:, 0]), up(kw["C"][:, 0]), up(kw["h0"]))
    assert_close(yt, ryt, torch.float32, "ops y_t")
    assert_close(st, rst, torch.complex64, "ops state")
