"""selective_scan_chunked / selective_step against the float64 loop."""
import pytest
import torch

from lrnnx_kernels import METHODS, selective_scan_chunked, selective_scan_ref, selective_step
from lrnnx_kernels_testutils import assert_close, require_cpu_ext, up

f64 = torch.float64


def make(Bt=2, L=37, Dm=4, N=3, G=None, cplx=False, cplx_bc=False, dtype=f64, seed=0,
         D=True, z=True, bias=True, ts=False, h0=False):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, dtype=f64, generator=g)

    bc = (Bt, L, N) if G is None else (Bt, L, G, N)
    A = -torch.rand(Dm, N, dtype=f64, generator=g) - 0.2
    if cplx:
        A = torch.complex(A, r(Dm, N) * 2)
    B, C = r(*bc), r(*bc)
    if cplx_bc:
        B, C = torch.complex(B, r(*bc)), torch.complex(C, r(*bc))
    kw = dict(
        u=r(Bt, L, Dm), delta=r(Bt, L, Dm) * 0.5 - 1.0, A=A, B=B, C=C,
        D=r(Dm) if D else None, z=r(Bt, L, Dm) if z else None,
        delta_bias=r(Dm) * 0.1 if bias else None,
        timesteps=torch.rand(Bt, L, dtype=f64, generator=g) + 0.5 if ts else None,
    )
    if h0:
        st = torch.complex128 if (cplx or cplx_bc) else f64
        kw["h0"] = torch.randn(Bt, Dm, N, dtype=st, generator=g)
    if dtype != f64:
        kw = {k: (v.to(torch.complex64 if v.is_complex() else dtype) if v is not None and k != "A" else v)
              for k, v in kw.items()}
        if dtype == torch.float32:
            kw["A"] = kw["A"].to(torch.complex64 if cplx else torch.float32)
    return kw


def ref_of(kw):
    return {k: up(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


CASES = {
    "plain": dict(),
    "grouped": dict(G=2),
    "complex": dict(cplx=True),
    "complex_bc": dict(cplx=True, cplx_bc=True, G=2),
    "timesteps": dict(ts=True),
    "h0": dict(h0=True),
    "bare": dict(D=False, z=False, bias=False),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk", [8, 128])
def test_forward_fp64(method, case, chunk):
    kw = make(seed=hash((method, case)) % 1000, **CASES[case])
    sp = case != "bare"
    y, h = selective_scan_chunked(**kw, delta_softplus=sp, discretization=method,
                                  return_last_state=True, chunk_size=chunk)
    yr, hr = selective_scan_ref(**kw, delta_softplus=sp, discretization=method, return_last_state=True)
    assert y.dtype == f64 and y.shape == kw["u"].shape
    assert h.shape == (2, 4, 3) and h.dtype == hr.dtype
    assert_close(y, yr, f64, "y")
    assert_close(h, hr, hr.dtype, "h_last")


@pytest.mark.parametrize("method", ["mamba", "zoh"])
@pytest.mark.parametrize("case", ["plain", "complex_bc", "timesteps"])
def test_forward_fp32_long(method, case):
    kw = make(L=1000, Dm=4, N=2, dtype=torch.float32, seed=5, h0=True, **CASES[case])
    y, h = selective_scan_chunked(**kw, delta_softplus=True, discretization=method, return_last_state=True)
    yr, hr = selective_scan_ref(**ref_of(kw), delta_softplus=True, discretization=method, return_last_state=True)
    assert y.dtype == torch.float32
    assert h.dtype in (torch.float32, torch.complex64)
    assert_close(y, yr, torch.float32, "y")
    assert_close(h, hr, h.dtype, "h")


def test_bf16_input():
    kw = make(L=65, seed=3)
    kw["u"] = kw["u"].to(torch.bfloat16)
    kw["z"] = kw["z"].to(torch.bfloat16)
    y = selective_scan_chunked(**kw, delta_softplus=True, chunk_size=16)
    yr = selective_scan_ref(**ref_of(kw), delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert_close(y, yr, torch.bfloat16, "y")


NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"]


def _grads(f, kw, method, **extra):
    kw = {k: (v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    y, h = f(**kw, delta_softplus=True, discretization=method, return_last_state=True, **extra)
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, dtype=y.dtype, generator=g)).sum() + h.abs().sum()
    inputs = [kw[n] for n in NAMES if kw.get(n) is not None]
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["plain", "complex_bc", "timesteps"])
def test_gradients_vs_ref(method, case):
    kw = make(L=21, seed=7, h0=True, **CASES[case])
    got = _grads(selective_scan_chunked, kw, method, chunk_size=6)
    ref = _grads(selective_scan_ref, kw, method)
    names = [n for n in NAMES if kw.get(n) is not None]
    for n, x, r in zip(names, got, ref):
        assert x.dtype == r.dtype
        assert_close(x, r, x.dtype, f"grad {n}")


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("method", ["zoh", "bilinear", "mamba"])
def test_gradcheck(cplx, method):
    kw = make(Bt=1, L=5, Dm=2, N=2, G=None, cplx=cplx, cplx_bc=cplx, ts=True, h0=True, seed=2)
    ts = kw.pop("timesteps")
    names = [n for n in NAMES if kw.get(n) is not None]
    args = tuple(kw[n].requires_grad_() for n in names)

    def f(*xs):
        d = dict(zip(names, xs))
        return selective_scan_chunked(**d, timesteps=ts, delta_softplus=True, discretization=method,
                                      return_last_state=True, chunk_size=2)

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("case", ["plain", "complex_bc", "grouped"])
def test_split_sequence_carried_state(case):
    kw = make(L=40, seed=11, h0=True, **CASES[case])
    y, h = selective_scan_chunked(**kw, return_last_state=True, chunk_size=7)

    def part(sl, h0):
        p = {k: (v[:, sl] if k in ("u", "delta", "B", "C", "z", "timesteps") and v is not None else v)
             for k, v in kw.items()}
        p["h0"] = h0
        return selective_scan_chunked(**p, return_last_state=True, chunk_size=7)

    y1, h1 = part(slice(0, 13), kw["h0"])
    y2, h2 = part(slice(13, 40), h1)
    assert_close(torch.cat([y1, y2], 1), y, f64, "split y")
    assert_close(h2, h, h.dtype, "split h")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["grouped", "complex_bc", "timesteps", "h0"])
def test_step_loop_equals_scan(method, case):
    kw = make(L=12, seed=13, **CASES[case])
    y, h = selective_scan_chunked(**kw, delta_softplus=True, discretization=method,
                                  return_last_state=True, chunk_size=5)
    state = kw.get("h0")
    ys = []
    for t in range(12):
        ts = kw["timesteps"][:, t] if kw["timesteps"] is not None else None
        y_t, state = selective_step(kw["u"][:, t], kw["delta"][:, t], kw["A"], kw["B"][:, t], kw["C"][:, t],
                                    state, D=kw["D"], z_t=kw["z"][:, t], delta_bias=kw["delta_bias"],
                                    delta_softplus=True, discretization=method, timesteps_t=ts)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y, f64, "steps y")
    assert_close(state, h, h.dtype, "steps state")


def test_scan_cpu_engine():
    require_cpu_ext()
    kw = make(L=50, seed=17, h0=True, cplx=True, G=2)
    y, h = selective_scan_chunked(**kw, return_last_state=True, chunk_size=16, scan="cpu")
    yr, hr = selective_scan_ref(**kw, return_last_state=True)
    assert_close(y, yr, f64, "y")
    assert_close(h, hr, h.dtype, "h")
    got = _grads(selective_scan_chunked, kw, "zoh", chunk_size=16, scan="cpu")
    ref = _grads(selective_scan_ref, kw, "zoh")
    for x, r in zip(got, ref):
        assert_close(x, r, x.dtype, "grad")


def test_no_grad_and_default_state():
    kw = make(L=9, seed=19, D=False, z=False, bias=False)
    with torch.no_grad():
        y = selective_scan_chunked(**kw, chunk_size=4)
    assert_close(y, selective_scan_ref(**kw), f64, "y")


def test_errors():
    kw = make(L=4, G=3)  # Dm = 4 not divisible by 3 groups
    with pytest.raises(ValueError):
        selective_scan_chunked(**kw)
    kw = make(L=4)
    with pytest.raises(ValueError, match="zoh"):
        selective_scan_chunked(**kw, discretization="rk4")
