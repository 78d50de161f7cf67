"""Launch-count budgets of the layers' training steps (benchmarks/op_count.py) and checks of the
fused autograd Functions that keep them low."""

import importlib
import importlib.util
import pathlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import lrnnx
from lrnnx_kernels.discretize import _ExpPhi1, _ZohComplex64, discretize
from lrnnx_plugins.lti.conv import _FFTConvSkip, fft_conv, fft_conv_skip

# the modules themselves (the packages re-export a function named ``discretize``)
discretize_module = importlib.import_module("lrnnx_kernels.discretize")
lti_conv_module = importlib.import_module("lrnnx_plugins.lti.conv")

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "op_count.py"
_spec = importlib.util.spec_from_file_location("op_count", _PATH)
op_count = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(op_count)

#: aten ops (kernel launches) of one train step, measured; before the fusion work in brackets:
#: s4d 112 (143; 110 with the gK einsum, whose mul + sum replacement is 2 ops instead of 1 but
#: no (H*F) batch of tiny matmuls), s5(d_state=256) 74 (95), rglru 53 (53), lru(d_state=256) 48 (48)
BUDGETS = {"s4d": 112, "s5(d_state=256)": 74, "rglru": 53, "lru(d_state=256)": 48}


@pytest.mark.parametrize("spec", sorted(BUDGETS))
def test_train_step_op_budget(spec):
    n = sum(op_count.count_spec(spec, batch=2, length=64, d_model=32).values())
    assert n <= BUDGETS[spec], f"{spec}: {n} ops per train step > budget {BUDGETS[spec]}"


@pytest.mark.parametrize("spec", ["s4d", "s5(d_state=16)"])
def test_op_count_independent_of_shape(spec):
    a = op_count.count_spec(spec, batch=2, length=64, d_model=32)
    b = op_count.count_spec(spec, batch=3, length=100, d_model=16)
    assert sum(a.values()) == sum(b.values())


def test_view_ops_not_counted():
    x = torch.randn(3, 4)
    with op_count.OpCounter() as c:
        x.t().unsqueeze(0).transpose(1, 2)
        x + 1
    assert dict(c.counts) == {"add": 1}


# ------------------------------------------------------------------ fused complex64 zoh

def _zoh_ref(A, dt):
    """The generic (Horner-series) zoh in complex128 / float64: the reference."""
    x = dt * A
    E, p = _ExpPhi1.apply(x)
    return E, dt * p


@pytest.mark.parametrize("dt_shape", ["col", "full"])
def test_zoh_complex64_matches_float64_reference(dt_shape):
    g = torch.Generator().manual_seed(0)
    H, N = 6, 5
    A = torch.complex(-torch.rand(H, N, generator=g) * 2, torch.randn(H, N, generator=g) * 20)
    A[0, 0] = 0                      # the A -> 0 limit
    A[1, 1] = complex(-1e-9, 1e-9)   # inside the small-|x| radius
    dt = torch.rand(H, 1 if dt_shape == "col" else N, generator=g) * 0.1 + 1e-3
    A64 = A.to(torch.complex128).requires_grad_()
    dt64 = dt.double().requires_grad_()
    A32 = A.clone().requires_grad_()
    dt32 = dt.clone().requires_grad_()
    E, S = _ZohComplex64.apply(A32, dt32)
    E_r, S_r = _zoh_ref(A64, dt64)
    torch.testing.assert_close(E, E_r.to(E.dtype), rtol=2e-7, atol=1e-7)
    torch.testing.assert_close(S, S_r.to(S.dtype), rtol=2e-7, atol=1e-9)
    gE = torch.randn(H, N, dtype=torch.complex128, generator=g)
    gS = torch.randn(H, N, dtype=torch.complex128, generator=g)
    ga, gd = torch.autograd.grad((E, S), (A32, dt32), (gE.to(E.dtype), gS.to(S.dtype)))
    ga_r, gd_r = torch.autograd.grad((E_r, S_r), (A64, dt64), (gE, gS))
    torch.testing.assert_close(ga.to(ga_r.dtype), ga_r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gd.to(gd_r.dtype), gd_r, rtol=1e-5, atol=1e-6)


def test_zoh_complex64_used_by_discretize_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    A = torch.complex(-torch.rand(3, 4, generator=g), torch.randn(3, 4, generator=g)) \
        .requires_grad_()
    dt = (torch.rand(3, 1, generator=g) * 0.5 + 0.1).requires_grad_()
    A_bar, scale = discretize("zoh", A, dt)
    node = A_bar.grad_fn   # discretize() returns expanded views of the fused outputs
    assert "ZohComplex64" in type(node.next_functions[0][0]).__name__
    # complex64 finite differences: loose tolerances (the float64 check is above)
    assert gradcheck(lambda a, d: _ZohComplex64.apply(a, d), (A, dt), eps=1e-2, atol=2e-2,
                     rtol=2e-2, fast_mode=True)


# ------------------------------------------------------------------ fused FFT conv + skip

@pytest.mark.parametrize("with_skip", [True, False])
def test_fft_conv_skip_gradcheck_float64(with_skip):
    g = torch.Generator().manual_seed(2)
    B, L, H = 2, 7, 3
    x = torch.randn(B, L, H, dtype=torch.float64, generator=g).requires_grad_()
    K = torch.randn(H, L, dtype=torch.float64, generator=g).requires_grad_()
    D = torch.randn(H, dtype=torch.float64, generator=g).requires_grad_() if with_skip else None
    args = (x, K, D) if with_skip else (x, K)
    fn = (lambda a, k, d: fft_conv_skip(a, k, d)) if with_skip else \
        (lambda a, k: fft_conv_skip(a, k, None))
    assert gradcheck(fn, args)
    y = fft_conv_skip(x, K, D)
    ref = fft_conv(x, K) + (D * x if with_skip else 0)
    torch.testing.assert_close(y, ref)
    assert y.is_contiguous()


@pytest.mark.parametrize("with_skip", [True, False])
def test_fft_conv_skip_gradgradcheck_float64(with_skip):
    """Second derivatives (create_graph): the backward recomputes the spectra differentiably."""
    g = torch.Generator().manual_seed(3)
    B, L, H = 2, 5, 3
    x = torch.randn(B, L, H, dtype=torch.float64, generator=g).requires_grad_()
    K = torch.randn(H, L, dtype=torch.float64, generator=g).requires_grad_()
    if with_skip:
        D = torch.randn(H, dtype=torch.float64, generator=g).requires_grad_()
        assert gradgradcheck(fft_conv_skip, (x, K, D))
    else:
        assert gradgradcheck(lambda a, k: fft_conv_skip(a, k, None), (x, K))
    # only some inputs differentiable (needs_input_grad drives what is recomputed)
    assert gradgradcheck(lambda a: fft_conv_skip(a, K.detach(), None), (x,))
    assert gradgradcheck(lambda k: fft_conv_skip(x.detach(), k, None), (K,))


# ------------------------------------------------------------------ second derivatives

def _second_derivatives(zoh, A, dt, gE, gS):
    """d/d(A, dt, gE, gS) of a scalar function of the first gradient of ``zoh`` (which is
    taken with create_graph)."""
    leaves = [t.clone().requires_grad_() for t in (A, dt, gE, gS)]
    A, dt, gE, gS = leaves
    E, S = zoh(A, dt)
    ga, gd = torch.autograd.grad((E, S), (A, dt), (gE, gS), create_graph=True)
    s = (ga.real ** 2 + ga.imag ** 2).sum() + (gd ** 2).sum() + (ga * gS.conj()).real.sum()
    return torch.autograd.grad(s, leaves)


@pytest.mark.parametrize("dt_shape", ["col", "full"])
def test_zoh_complex64_second_derivatives_match_reference(dt_shape):
    g = torch.Generator().manual_seed(4)
    H, N = 6, 5
    A = torch.complex(-torch.rand(H, N, generator=g) * 2, torch.randn(H, N, generator=g) * 20)
    A[0, 0] = 0                       # the A -> 0 limit
    A[1, 1] = complex(-1e-9, 1e-9)    # inside the forward's small-|x| radius
    A[2, 2] = complex(-1e-3, 2e-3)    # small |x|: where a quotient would cancel
    dt = torch.rand(H, 1 if dt_shape == "col" else N, generator=g) * 0.1 + 1e-3
    gE = torch.randn(H, N, dtype=torch.complex64, generator=g)
    gS = torch.randn(H, N, dtype=torch.complex64, generator=g)
    got = _second_derivatives(_ZohComplex64.apply, A, dt, gE, gS)
    ref = _second_derivatives(_zoh_ref, A.to(torch.complex128), dt.double(),
                              gE.to(torch.complex128), gS.to(torch.complex128))
    # measured: <= 1.2e-6 relative elementwise (complex64 rounding of dt * A and the outputs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-5, atol=1e-6 * b.abs().max())


def _gradient_penalty_grads(spec, x):
    """Parameter gradients of ``|d loss / d params|^2`` (a double backward) for a fresh layer."""
    torch.manual_seed(0)
    layer = lrnnx.build_layer(spec, d_model=x.shape[-1])
    params = [p for p in layer.parameters() if p.requires_grad]
    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y
    grads = torch.autograd.grad(y.pow(2).mean(), params, create_graph=True)
    penalty = sum((g.real ** 2 + g.imag ** 2).sum() if g.is_complex() else g.pow(2).sum()
                  for g in grads)
    return torch.autograd.grad(penalty, params, allow_unused=True)


@pytest.mark.parametrize("spec", ["s4d(mode=conv)", "s5(d_state=8, mode=conv)"])
def test_layer_double_backward_matches_unfused(spec, monkeypatch):
    """A gradient penalty through a conv-mode layer: the fused Functions' recorded backward
    gives the same second derivatives as plain autograd (fused Functions bypassed)."""
    x = torch.randn(2, 20, 8, generator=torch.Generator().manual_seed(5))
    calls = {"zoh": 0, "conv": 0}
    zoh_apply, conv_apply = _ZohComplex64.apply, _FFTConvSkip.apply

    def count(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)
        return wrapped

    monkeypatch.setattr(_ZohComplex64, "apply", count("zoh", zoh_apply))
    monkeypatch.setattr(_FFTConvSkip, "apply", count("conv", conv_apply))
    fused = _gradient_penalty_grads(spec, x)
    assert calls["zoh"] == 1 and calls["conv"] == (1 if spec.startswith("s4d") else 0)
    monkeypatch.setattr(lti_conv_module, "fft_conv_skip",
                        lambda a, k, d: fft_conv(a, k) + (0 if d is None else d * a))
    monkeypatch.setattr(discretize_module, "_zoh64_ok", lambda A, dt: False)
    plain = _gradient_penalty_grads(spec, x)
    assert calls["zoh"] == 1 and calls["conv"] == (1 if spec.startswith("s4d") else 0)
    assert any(g is not None and g.abs().max() > 0 for g in fused)
    for a, b in zip(fused, plain):
        assert (a is None) == (b is None)
        if a is not None:
            # float32 layer; the unfused zoh runs a complex64 Horner series: rounding only
            # (measured: <= 1.7e-6 of the largest entry)
            torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-5 * b.abs().max())
