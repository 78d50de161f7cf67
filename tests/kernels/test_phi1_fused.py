"""The fused phi1 autograd.Function vs the plain-autograd reference implementation."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from lrnnx_kernels.discretize import _phi1_reference, discretize, exp_phi1, phi1

f64, c128 = torch.float64, torch.complex128

# both sides of the series radius |x| = 0.1, zero, tiny, and well inside each branch
_REAL = [0.0, 1e-12, -1e-7, 0.0999, -0.0999, 0.1001, -0.1001, 0.05, -0.5, 1.3, -7.0]
_COMPLEX = _REAL + [0.07j, -0.06 + 0.08j, 0.0709 + 0.0709j, 0.0708 - 0.0708j,
                    0.0999j, 0.1001j, -0.3 + 2.0j, -1e-3 - 1e-3j, -4.0 + 30.0j]


def _x(dtype):
    vals = _COMPLEX if dtype.is_complex else _REAL
    return torch.tensor(vals, dtype=dtype)


@pytest.mark.parametrize("dtype", [f64, c128])
def test_values_match_reference_fp64(dtype):
    x = _x(dtype)
    torch.testing.assert_close(phi1(x), _phi1_reference(x), rtol=1e-15, atol=1e-15)
    E, p = exp_phi1(x)
    torch.testing.assert_close(E, torch.exp(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [f64, c128])
def test_grad_matches_reference_fp64(dtype):
    x = _x(dtype)
    g = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    (ga,) = torch.autograd.grad(phi1(a), a, g)
    (gb,) = torch.autograd.grad(_phi1_reference(b), b, g)
    torch.testing.assert_close(ga, gb, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_fp32_no_less_accurate_than_reference(dtype):
    """fp32 values agree to rounding; the analytic gradient is at least as close to the
    float64 truth as the plain-autograd one (it is in fact slightly closer)."""
    x = torch.randn(20000, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 0.3
    wide = torch.complex128 if dtype.is_complex else f64

    def grad(f, v):
        v = v.clone().requires_grad_()
        return torch.autograd.grad(f(v), v, torch.ones_like(v))[0]

    torch.testing.assert_close(phi1(x), _phi1_reference(x), rtol=3e-7, atol=0)
    truth = grad(_phi1_reference, x.to(wide))
    err_new = ((grad(phi1, x).to(wide) - truth).abs() / truth.abs())
    err_ref = ((grad(_phi1_reference, x).to(wide) - truth).abs() / truth.abs())
    assert err_new.max() <= 1.1 * err_ref.max() and err_new.mean() <= err_ref.mean()
    assert err_new.max() < 1e-5


@pytest.mark.parametrize("dtype", [f64, c128])
def test_gradcheck_and_gradgradcheck(dtype):
    x = _x(dtype).requires_grad_()
    assert gradcheck(phi1, (x,))
    assert gradgradcheck(phi1, (x,))
    assert gradcheck(lambda t: exp_phi1(t), (x,))
    assert gradgradcheck(lambda t: exp_phi1(t), (x,))


@pytest.mark.parametrize("dtype", [f64, c128])
def test_zoh_gradgradcheck(dtype):
    A = _x(dtype)[1:5].clone().requires_grad_()      # skip exactly 0 for dt * A
    dt = torch.tensor([0.3, 1.0, 0.9, 2.0], dtype=f64, requires_grad=True)
    assert gradcheck(lambda a, d: discretize("zoh", a, d), (A, dt))
    assert gradgradcheck(lambda a, d: discretize("zoh", a, d), (A, dt))


def test_torch_compile_fullgraph():
    x = torch.tensor([0.05 + 0.02j, -0.7 + 1.0j], dtype=torch.complex64, requires_grad=True)
    f = torch.compile(lambda t: discretize("zoh", t, torch.tensor([0.5]))[1].abs().sum(),
                      fullgraph=True, backend="aot_eager")
    (g1,) = torch.autograd.grad(f(x), x)
    (g2,) = torch.autograd.grad(discretize("zoh", x, torch.tensor([0.5]))[1].abs().sum(), x)
    torch.testing.assert_close(g1, g2)
