"""Fused Triton RG-LRU gate on the GPU against the float64 PyTorch twin (forward, gradients),
and the rglru / hawk layers with the kernels on vs off."""
import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import lrnnx  # noqa: E402
from lrnnx_kernels.triton.rglru_gate import rglru_gate  # noqa: E402
from lrnnx_plugins.recurrent import rglru as rg  # noqa: E402

dev = "cuda"


def rel(x, r):
    return ((x.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-300)).item()


def reference(ga, gx, x, coef):
    r, i = torch.sigmoid(ga), torch.sigmoid(gx)
    log_a = coef * r
    return torch.exp(log_a), rg.sqrt_one_minus_a2(log_a) * (i * x)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", [(32, 1024, 256), (3, 37, 100)])
@pytest.mark.parametrize("shift", [0.0, -6.0, 20.0])
def test_gate_matches_float64(dtype, tol, shape, shift):
    g = torch.Generator(device=dev).manual_seed(0)
    ga, gx, x = (torch.randn(shape, device=dev, generator=g, dtype=torch.float64) * s
                 for s in (2, 2, 1))
    lam = rg.init_lambda(shape[-1]).double().to(dev) + shift
    coef = (-rg.C_GATE * torch.nn.functional.softplus(-lam)).float()
    xs = [t.to(dtype).requires_grad_() for t in (ga, gx, x)] + [coef.clone().requires_grad_()]
    a, b = rglru_gate(*xs, rg.MAX_SQRT_GRADIENT)
    ref_in = [t.detach().double().requires_grad_() for t in xs]
    ra, rb = reference(*ref_in)
    assert rel(a, ra) <= tol and rel(b, rb) <= tol
    wa, wb = (torch.randn(shape, device=dev, generator=g, dtype=torch.float64) for _ in range(2))
    got = torch.autograd.grad((a * wa.to(a.dtype)).sum() + (b * wb.to(b.dtype)).sum(), xs)
    ref = torch.autograd.grad((ra * wa).sum() + (rb * wb).sum(), ref_in)
    for name, x_, r_ in zip(("ga", "gx", "x", "coef"), got, ref):
        assert rel(x_, r_) <= tol, f"grad {name}"


@pytest.mark.parametrize("spec", ["rglru", "hawk"])
def test_layer_kernels_on_vs_off(spec, monkeypatch):
    torch.manual_seed(0)
    layer = lrnnx.build_layer(spec, d_model=64).to(dev)
    x = torch.randn(4, 300, 64, device=dev, requires_grad=True)
    outs = []
    for mode in ("auto", "off"):
        monkeypatch.setattr(rg, "TRITON_MODE", mode)
        y = layer(x)
        y = y[0] if isinstance(y, tuple) else y
        outs.append((y.detach(), torch.autograd.grad(y.square().mean(),
                                                     [x] + list(layer.parameters()))))
    assert rel(outs[0][0], outs[1][0]) <= 1e-5
    for a, b in zip(outs[0][1], outs[1][1]):
        assert rel(a, b) <= 1e-5
