"""discretize(): known values, limits, complex A, gradients at A -> 0."""
import math

import pytest
import torch

from lrnnx_kernels import METHODS, discretize, effective_dt
from lrnnx_kernels.discretize import phi1

f64, c128 = torch.float64, torch.complex128


def t(x, dtype=f64):
    return torch.tensor(x, dtype=dtype)


def test_methods_tuple():
    assert set(METHODS) == {"zoh", "bilinear", "mamba", "euler", "dirac"}


def test_unknown_method_lists_methods():
    with pytest.raises(ValueError) as e:
        discretize("rk4", t(-1.0), t(0.1))
    for m in METHODS:
        assert m in str(e.value)


def test_bilinear_known_value():
    A_bar, s = discretize("bilinear", t(-0.5), t(0.1))
    assert abs(A_bar.item() - 0.975 / 1.025) < 1e-15
    assert round(A_bar.item(), 6) == 0.951220
    assert abs(s.item() - 0.1 / 1.025) < 1e-15


def test_zoh_known_value():
    A_bar, s = discretize("zoh", t(-1.0), t(0.5))
    assert abs(A_bar.item() - math.exp(-0.5)) < 1e-15
    assert abs(s.item() - (1 - math.exp(-0.5))) < 1e-15


@pytest.mark.parametrize("method", ["mamba", "euler", "dirac"])
def test_exp_methods(method):
    A = t([-1.0, -0.3, 0.0])
    dt = t([0.5, 0.2, 0.7])
    A_bar, s = discretize(method, A, dt)
    assert torch.allclose(A_bar, torch.exp(dt * A), rtol=0, atol=1e-15)
    expect = dt if method != "dirac" else torch.ones_like(dt)
    assert torch.equal(s, expect)


def test_mamba_equals_euler():
    A = -torch.rand(4, 3, dtype=f64)
    dt = torch.rand(5, 4, 1, dtype=f64)
    for x, y in zip(discretize("mamba", A, dt), discretize("euler", A, dt)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("method", METHODS)
def test_broadcast_shapes_and_dtype(method):
    A = -torch.rand(4, 3, dtype=torch.float32)
    dt = torch.rand(2, 5, 4, 1, dtype=torch.float32)
    A_bar, s = discretize(method, A, dt)
    assert A_bar.shape == s.shape == (2, 5, 4, 3)
    assert A_bar.dtype == s.dtype == torch.float32


def test_zoh_limit_A_to_zero():
    dt = t([0.1, 0.1, 0.1, 0.1])
    A = t([0.0, 1e-300, -1e-12, 1e-6])
    _, s = discretize("zoh", A, dt)
    x = dt * A
    # dt * (1 + x/2 + x^2/6): exact to fp64 for these |x|
    expect = dt * (1 + x / 2 + x * x / 6)
    assert torch.allclose(s, expect, rtol=1e-16, atol=0)
    assert s[0].item() == 0.1


@pytest.mark.parametrize("x", [1e-8, 1e-3, 0.05, 0.0999999, 0.1, 0.1000001, 0.5, -0.5, -3.0, 10.0, -30.0])
def test_phi1_real_matches_expm1(x):
    xt = t(x)
    assert abs(phi1(xt).item() - math.expm1(x) / x) <= 4.5e-16 * abs(math.expm1(x) / x)


@pytest.mark.parametrize("x", [1e-9 + 2e-9j, 0.03 - 0.07j, 0.06 + 0.08j, 0.2 + 0.1j, -1 + 3j, -0.5 - 6.2j, 2j])
def test_phi1_complex(x):
    # Reference in high precision via the series / closed form in Python complex.
    ref = sum(x**k / math.factorial(k + 1) for k in range(40)) if abs(x) < 1 else (complex_exp(x) - 1) / x
    got = complex(phi1(t(x, c128)).item())
    assert abs(got - ref) <= 4e-16 * abs(ref)


def complex_exp(x):
    import cmath

    return cmath.exp(x)


def test_zoh_complex_matches_closed_form():
    A = torch.complex(-torch.rand(6, dtype=f64) - 0.1, torch.randn(6, dtype=f64) * 3)
    dt = torch.rand(6, dtype=f64) + 0.05
    A_bar, s = discretize("zoh", A, dt)
    assert torch.allclose(A_bar, torch.exp(dt * A), rtol=1e-15, atol=0)
    assert torch.allclose(s, (torch.exp(dt * A) - 1) / A, rtol=1e-13, atol=0)
    assert s.dtype == c128


def test_bilinear_complex():
    A = torch.tensor([-0.5 + 2j, -1 - 1j], dtype=c128)
    dt = t([0.1, 0.3])
    A_bar, s = discretize("bilinear", A, dt)
    x = dt * A
    assert torch.allclose(A_bar, (1 + x / 2) / (1 - x / 2), rtol=1e-15, atol=0)
    assert torch.allclose(s, dt / (1 - x / 2), rtol=1e-15, atol=0)


def test_complex_zoh_tiny_limit():
    A = torch.tensor([0j, 1e-14 + 1e-14j, -1e-10j], dtype=c128)
    dt = t([0.2, 0.2, 0.2])
    _, s = discretize("zoh", A, dt)
    assert torch.allclose(s, dt.to(c128) * (1 + dt * A / 2), rtol=1e-15, atol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [f64, c128])
def test_gradients_finite_at_zero(method, dtype):
    A = torch.zeros(3, dtype=dtype, requires_grad=True)
    dt = torch.tensor([0.1, 0.2, 0.3], dtype=f64, requires_grad=True)
    A_bar, s = discretize(method, A, dt)
    (A_bar.abs().sum() + s.abs().sum() + (A_bar * s).real.sum()).backward()
    assert torch.isfinite(A.grad).all() and torch.isfinite(dt.grad).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [f64, c128])
def test_gradcheck(method, dtype):
    # Points on both sides of the series threshold and at A = 0.
    A = torch.tensor([0.0, -1e-4, -0.3, -2.0, 0.5], dtype=f64)
    if dtype == c128:
        A = torch.complex(A, torch.tensor([0.0, 1e-4, 0.2, 1.5, -3.0], dtype=f64))
    dt = torch.tensor([0.1, 0.5, 0.2, 0.3, 0.05], dtype=f64)
    A.requires_grad_()
    dt.requires_grad_()

    def f(A, dt):
        A_bar, s = discretize(method, A, dt)
        return A_bar, s.expand_as(A_bar) * 1.0

    assert torch.autograd.gradcheck(f, (A, dt))


def test_zoh_grad_at_zero_value():
    # d/dA [dt * phi1(dt A)] at A = 0 equals dt^2 / 2.
    A = torch.zeros(1, dtype=f64, requires_grad=True)
    dt = t([0.3])
    _, s = discretize("zoh", A, dt)
    s.sum().backward()
    assert abs(A.grad.item() - 0.045) < 1e-15


def test_effective_dt():
    dt = torch.rand(2, 5, 3, dtype=f64)
    ts = torch.rand(2, 5, dtype=f64)
    assert torch.equal(effective_dt(dt, ts), dt * ts[..., None])
    assert effective_dt(dt, None) is dt
    ts3 = torch.rand(2, 5, 3, dtype=f64)
    assert torch.equal(effective_dt(dt, ts3), dt * ts3)


def test_effective_dt_scales_both_terms():
    # zoh with dt_eff: the same as discretizing with the scaled step.
    A = -torch.rand(3, dtype=f64)
    dt = torch.rand(3, dtype=f64)
    ts = torch.tensor(2.5, dtype=f64)
    a1, s1 = discretize("zoh", A, effective_dt(dt, ts))
    a2, s2 = discretize("zoh", A, dt * 2.5)
    assert torch.equal(a1, a2) and torch.equal(s1, s2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_phi1_fp32_series_matches_float64(dtype):
    """float32 / complex64 use fewer Taylor terms (7): values and gradients still match the
    float64 phi1 to fp32 rounding on and around the series radius."""
    g = torch.Generator().manual_seed(0)
    r = torch.cat([torch.logspace(-7, 0, 200, dtype=f64), torch.tensor([0.0, 0.0999, 0.1001],
                                                                        dtype=f64)])
    if dtype.is_complex:
        x64 = torch.polar(r, 2 * math.pi * torch.rand(r.shape, generator=g, dtype=f64))
    else:
        x64 = r * torch.where(torch.rand(r.shape, generator=g) < 0.5, -1.0, 1.0).to(f64)
    w = torch.randn(r.shape, generator=g, dtype=f64)
    outs = []
    for x in (x64.to(dtype), x64):
        x = x.clone().requires_grad_(True)
        y = phi1(x)
        gr, = torch.autograd.grad((torch.view_as_real(y.to(c128)).sum(-1) * w).sum(), x)
        outs.append((y, gr))
    (y32, g32), (y64, g64) = [(y.detach().to(c128), gr.to(c128)) for y, gr in outs]
    assert float(((y32 - y64).abs() / y64.abs()).max()) < 1e-6
    assert float(((g32 - g64).abs() / g64.abs().clamp_min(1e-3)).max()) < 1e-5
