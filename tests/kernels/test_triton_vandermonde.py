"""Triton Vandermonde kernel (``lrnnx_kernels.triton.vandermonde``) on CPU through the interpreter.

Reference: the PyTorch ``lrnnx_plugins.lti.conv.vandermonde`` (``TRITON_MODE = "off"``) on
complex128 inputs.  A module fixture sets ``TRITON_INTERPRET=1`` and ``conv.TRITON_MODE =
"force"``.  Blocks are small (8 x 4) so lengths and modes cross block boundaries with masked
edges.  On a CUDA machine these tests skip unless TRITON_INTERPRET=1 is set.
"""
import importlib.util
import math
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        pytest.fail("triton must be installed in CI (pip install -e '.[dev]')", pytrace=False)
    pytest.skip("triton is not installed", allow_module_level=True)
if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("CUDA present: set TRITON_INTERPRET=1 to run these CPU tests",
                allow_module_level=True)

from lrnnx_plugins.lti import conv  # noqa: E402

BL, BN = 8, 4


@pytest.fixture(autouse=True, scope="module")
def triton_interpreter():
    old = os.environ.get("TRITON_INTERPRET")
    old_mode = conv.TRITON_MODE
    os.environ["TRITON_INTERPRET"] = "1"
    conv.TRITON_MODE = "force"
    yield
    conv.TRITON_MODE = old_mode
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old


def kernel():
    from lrnnx_kernels.triton.vandermonde import vandermonde

    return vandermonde


def reference(A, W, L):
    old = conv.TRITON_MODE
    conv.TRITON_MODE = "off"
    try:
        return conv.vandermonde(A, W, L)
    finally:
        conv.TRITON_MODE = old


def system(G, Q, N, seed, dt=0.05):
    """S4D-Lin-like modes: A_bar = exp(dt (-1/2 + i pi n)) (|A| < 1, phases up to ~dt pi N),
    one exact zero and one mode on the unit circle's neighbourhood."""
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(N, dtype=torch.float64)
    dts = dt * torch.exp(torch.randn(G, 1, generator=g, dtype=torch.float64))
    A = torch.exp(dts * torch.complex(torch.full_like(n, -0.5), math.pi * n))
    A[0, -1] = 0.0  # an exact zero (A^0 = 1, A^l = 0 beyond)
    A[-1, 0] = torch.exp(torch.tensor(-1e-4 + 0.9j, dtype=torch.complex128))  # slow decay
    W = torch.complex(torch.randn(G, Q, N, generator=g, dtype=torch.float64),
                      torch.randn(G, Q, N, generator=g, dtype=torch.float64))
    return A, W


def rel(x, r):
    """max |x - r| / max |r| (the absolute difference when r is all zeros, e.g. d/dA at L = 1)."""
    return ((x.to(r.dtype) - r).abs().max() / r.abs().max().clamp_min(1.0 if not r.abs().max()
                                                                      else 0.0)).item()


@pytest.mark.parametrize("G,Q,N,L", [(3, 1, 5, 1), (3, 1, 5, 17), (2, 3, 8, 24), (1, 1, 3, 70),
                                     (2, 2, 9, 300)])
def test_forward_and_gradients_match_float64(G, Q, N, L):
    A64, W64 = system(G, Q, N, seed=G + Q + N + L)
    A = A64.to(torch.complex64).requires_grad_()
    W = W64.to(torch.complex64).requires_grad_()
    K = kernel()(A, W, L, block_l=BL, block_n=BN)
    ra, rw = A.detach().to(torch.complex128).requires_grad_(), W64.clone().requires_grad_()
    rK = reference(ra, rw, L)
    assert K.dtype == torch.float32 and K.shape == (G, Q, L)
    assert rel(K, rK) <= 1e-5, rel(K, rK)
    gK = torch.randn(G, Q, L, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gA, gW = torch.autograd.grad((K * gK.float()).sum(), [A, W])
    rA, rW = torch.autograd.grad((rK * gK).sum(), [ra, rw])
    assert gA.dtype == torch.complex64 and gW.dtype == torch.complex64
    assert rel(gW, rW) <= 1e-5, rel(gW, rW)
    assert rel(gA, rA) <= 1e-5, rel(gA, rA)


def test_long_length_phase_accuracy():
    """L = 4096 with phases up to ~60 rad per step: the phase is reduced in float64, so the
    kernel keeps fp32 accuracy where a float32 phase l * arg(A) would lose ~1e-3."""
    A64, W64 = system(2, 1, 6, seed=9, dt=0.5)
    A, W = A64.to(torch.complex64), W64.to(torch.complex64)
    K = kernel()(A, W, 4096, block_l=256, block_n=8)
    rK = reference(A.to(torch.complex128), W64, 4096)
    assert rel(K, rK) <= 1e-5, rel(K, rK)


def test_conv_vandermonde_dispatch_and_layer(monkeypatch):
    """conv.vandermonde takes the kernel for complex64 (not for complex128 or "off"), and an s4d
    layer's conv-mode forward and gradients match the PyTorch path."""
    import lrnnx
    from lrnnx_kernels.triton import vandermonde as mod

    calls = []
    real = mod._Vandermonde.apply
    monkeypatch.setattr(mod._Vandermonde, "apply", lambda *a: calls.append(1) or real(*a))
    A64, W64 = system(2, 1, 4, seed=1)
    conv.vandermonde(A64, W64, 8)
    assert not calls  # complex128: the PyTorch path
    torch.manual_seed(0)
    layer = lrnnx.build_layer("s4d(d_state=4)", d_model=6)
    x = torch.randn(2, 40, 6, requires_grad=True)
    y = layer(x)
    g = torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))
    assert calls, "the Triton kernel did not run"
    monkeypatch.setattr(conv, "TRITON_MODE", "off")
    y2 = layer(x)
    g2 = torch.autograd.grad(y2.square().sum(), [x] + list(layer.parameters()))
    assert rel(y, y2.double()) <= 1e-5
    for a, b in zip(g, g2):
        assert rel(a, b.to(torch.complex128 if b.is_complex() else torch.float64)) <= 1e-5


def test_bad_inputs():
    A64, W64 = system(2, 1, 4, seed=2)
    with pytest.raises(TypeError, match="complex64"):
        kernel()(A64, W64, 8)
    with pytest.raises(ValueError, match=r"\(G, N\)"):
        kernel()(A64.to(torch.complex64)[0], W64.to(torch.complex64), 8)
