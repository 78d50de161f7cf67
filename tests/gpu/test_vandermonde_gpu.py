"""Triton Vandermonde kernel on the GPU against the float64 PyTorch twin (forward, gradients),
at the s4d benchmark's sizes, and an s4d layer with the kernel on vs off."""
import math

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import lrnnx  # noqa: E402
from lrnnx_kernels.triton.vandermonde import vandermonde  # noqa: E402
from lrnnx_plugins.lti import conv  # noqa: E402

dev = "cuda"


def rel(x, r):
    return ((x.to(r.dtype) - r).abs().max() / r.abs().max().clamp_min(1e-300)).item()


def reference(A, W, L):
    old, conv.TRITON_MODE = conv.TRITON_MODE, "off"
    try:
        return conv.vandermonde(A, W, L)
    finally:
        conv.TRITON_MODE = old


@pytest.mark.parametrize("G,Q,N,L", [(256, 1, 32, 1024), (256, 1, 32, 4096), (7, 3, 33, 129)])
def test_matches_float64(G, Q, N, L):
    g = torch.Generator(device=dev).manual_seed(0)
    n = torch.arange(N, dtype=torch.float64, device=dev)
    dt = 0.001 * torch.exp(torch.rand(G, 1, generator=g, dtype=torch.float64, device=dev)
                           * math.log(100.0))
    A = torch.exp(dt * torch.complex(torch.full_like(n, -0.5), math.pi * n))
    W = torch.randn(G, Q, N, 2, generator=g, dtype=torch.float64, device=dev)
    W = torch.view_as_complex(W)
    a, w = (t.to(torch.complex64).requires_grad_() for t in (A, W))
    K = vandermonde(a, w, L)
    ra, rw = (t.detach().to(torch.complex128).requires_grad_() for t in (a, w))
    rK = reference(ra, rw, L)
    assert rel(K, rK) <= 1e-5
    gK = torch.randn(G, Q, L, generator=g, dtype=torch.float64, device=dev)
    got = torch.autograd.grad((K * gK.float()).sum(), [a, w])
    ref = torch.autograd.grad((rK * gK).sum(), [ra, rw])
    for x, r in zip(got, ref):
        assert rel(x, r) <= 1e-5


def test_s4d_layer_kernel_on_vs_off(monkeypatch):
    calls = []
    import lrnnx_kernels.triton.vandermonde as mod

    real = mod._Vandermonde.apply
    monkeypatch.setattr(mod._Vandermonde, "apply", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    layer = lrnnx.build_layer("s4d", d_model=64).to(dev)
    x = torch.randn(4, 300, 64, device=dev, requires_grad=True)
    y = layer(x)
    g = torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))
    assert calls
    monkeypatch.setattr(conv, "TRITON_MODE", "off")
    y2 = layer(x)
    g2 = torch.autograd.grad(y2.square().sum(), [x] + list(layer.parameters()))
    assert rel(y.double(), y2.double()) <= 1e-5
    for a, b in zip(g, g2):
        assert rel(a.to(torch.complex128 if a.is_complex() else torch.float64),
                   b.to(torch.complex128 if b.is_complex() else torch.float64)) <= 1e-5
