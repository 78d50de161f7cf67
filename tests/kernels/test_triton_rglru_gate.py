"""Triton RG-LRU gate (``lrnnx_kernels.triton.rglru_gate``) on CPU through the Triton interpreter.

Reference: the PyTorch path of ``RGLRUCore.coefficients`` (``TRITON_MODE = "off"``) in float64.
A module fixture sets ``TRITON_INTERPRET=1`` and ``rglru.TRITON_MODE = "force"``.  Tiles are
small (4 x 8) so rows and channels cross tile boundaries with masked edges.  On a CUDA machine
these tests skip unless TRITON_INTERPRET=1 is set (tests/gpu/test_rglru_gate_gpu.py covers the GPU).
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
    pytest.skip("CUDA present: covered by tests/gpu/test_rglru_gate_gpu.py",
                allow_module_level=True)

from lrnnx_plugins.recurrent import rglru as rg  # noqa: E402

BR, BW = 4, 8


@pytest.fixture(autouse=True, scope="module")
def triton_interpreter():
    old = os.environ.get("TRITON_INTERPRET")
    old_mode = rg.TRITON_MODE
    os.environ["TRITON_INTERPRET"] = "1"
    rg.TRITON_MODE = "force"
    yield
    rg.TRITON_MODE = old_mode
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old


def gate():
    from lrnnx_kernels.triton.rglru_gate import rglru_gate

    return rglru_gate


def reference(ga, gx, x, coef):
    """The PyTorch twin's math (RGLRUCore.coefficients after the projections)."""
    r, i = torch.sigmoid(ga), torch.sigmoid(gx)
    log_a = coef * r
    return torch.exp(log_a), rg.sqrt_one_minus_a2(log_a) * (i * x)


def inputs(shape, seed, shift=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    ga = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    gx = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    lam = rg.init_lambda(shape[-1]).double()
    # shift 0: the initialization (|2 log a| < 0.5, the series branch of 1 - a^2); -6: most
    # entries take the 1 - exp branch; +20: a -> 1, sqrt(1 - a^2) < 5e-4, the clipped derivative
    lam = lam + shift
    coef = -rg.C_GATE * torch.nn.functional.softplus(-lam)
    return [t.to(dtype) for t in (ga, gx, x)] + [coef.to(torch.float32)]


def rel(x, r):
    return ((x.double() - r).abs().max() / r.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("shape", [(3, 5, 13), (1, 4, 8), (2, 1, 17), (7, 64)])
@pytest.mark.parametrize("shift", [0.0, -6.0, 20.0])
def test_forward_and_gradients_match_float64(shape, shift):
    ga, gx, x, coef = inputs(shape, seed=sum(shape), shift=shift)
    xs = [t.clone().requires_grad_() for t in (ga, gx, x, coef)]
    a, b = gate()(*xs, rg.MAX_SQRT_GRADIENT, block_r=BR, block_w=BW)
    ref_in = [t.detach().double().requires_grad_() for t in (ga, gx, x, coef)]
    ra, rb = reference(*ref_in)
    assert a.dtype == torch.float32 and b.dtype == torch.float32
    assert rel(a, ra) <= 1e-6 and rel(b, rb) <= 1e-5, (rel(a, ra), rel(b, rb))
    g = torch.Generator().manual_seed(1)
    wa, wb = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(
        shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((a * wa.float()).sum() + (b * wb.float()).sum(), xs)
    ref = torch.autograd.grad((ra * wa).sum() + (rb * wb).sum(), ref_in)
    for name, x_, r_ in zip(("ga", "gx", "x", "coef"), got, ref):
        assert rel(x_, r_) <= 1e-5, f"grad {name}: {rel(x_, r_):.2e}"


def test_one_output_used_and_partial_gradients():
    ga, gx, x, coef = inputs((2, 9, 10), seed=3)
    for use in ("a", "b"):
        xs = [t.clone().requires_grad_() for t in (ga, gx, x)] + [coef]
        a, b = gate()(*xs, block_r=BR, block_w=BW)
        ref_in = [t.detach().double().requires_grad_() for t in (ga, gx, x)] + [coef.double()]
        ra, rb = reference(*ref_in)
        out, rout = (a, ra) if use == "a" else (b, rb)
        got = torch.autograd.grad(out.sum(), xs[:3])
        ref = torch.autograd.grad(rout.sum(), ref_in[:3], allow_unused=True)
        for x_, r_, t in zip(got, ref, ref_in):
            r_ = torch.zeros_like(t) if r_ is None else r_  # a does not depend on gx, x
            if r_.abs().max() == 0:
                assert x_.abs().max() == 0
            else:
                assert rel(x_, r_) <= 1e-5


def test_half_precision_storage_computes_in_fp32():
    ga, gx, x, coef = inputs((4, 6, 12), seed=5, dtype=torch.bfloat16)
    a, b = gate()(ga, gx, x, coef, block_r=BR, block_w=BW)
    ra, rb = reference(ga.double(), gx.double(), x.double(), coef.double())
    assert a.dtype == torch.float32  # coef is fp32: the twin's promotion
    assert rel(a, ra) <= 1e-6 and rel(b, rb) <= 1e-5


@pytest.mark.parametrize("shape", [(3, 5, 13), (7, 64)])
@pytest.mark.parametrize("shift", [0.0, 20.0])
def test_fused_gates_match_separate_gates(shape, shift):
    """rglru_gate_fused on [ga | gx] (one (..., 2W) tensor) equals rglru_gate on ga, gx, and
    its single gradient is the concatenation of the two gate gradients; float64 reference."""
    from lrnnx_kernels.triton.rglru_gate import rglru_gate_fused

    ga, gx, x, coef = inputs(shape, seed=sum(shape) + 1, shift=shift)
    g2 = torch.cat([ga, gx], -1).requires_grad_()
    xs = [x.clone().requires_grad_(), coef.clone().requires_grad_()]
    a, b = rglru_gate_fused(g2, *xs, rg.MAX_SQRT_GRADIENT, block_r=BR, block_w=BW)
    sep = [t.clone().requires_grad_() for t in (ga, gx, x, coef)]
    a1, b1 = gate()(*sep, rg.MAX_SQRT_GRADIENT, block_r=BR, block_w=BW)
    assert torch.equal(a, a1) and torch.equal(b, b1)
    ref_in = [t.detach().double().requires_grad_() for t in (ga, gx, x, coef)]
    ra, rb = reference(*ref_in)
    assert rel(a, ra) <= 1e-6 and rel(b, rb) <= 1e-5
    g = torch.Generator().manual_seed(2)
    wa = torch.randn(shape, generator=g, dtype=torch.float64)
    wb = torch.randn(shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((a * wa.float()).sum() + (b * wb.float()).sum(), [g2] + xs)
    sgot = torch.autograd.grad((a1 * wa.float()).sum() + (b1 * wb.float()).sum(), sep)
    ref = torch.autograd.grad((ra * wa).sum() + (rb * wb).sum(), ref_in)
    assert got[0].shape == g2.shape
    assert torch.equal(got[0], torch.cat(sgot[:2], -1))
    for name, x_, r_ in zip(("g2", "x", "coef"), got,
                            (torch.cat(ref[:2], -1), ref[2], ref[3])):
        assert rel(x_, r_) <= 1e-5, f"grad {name}: {rel(x_, r_):.2e}"
    with pytest.raises(ValueError, match="rglru_gate_fused"):
        rglru_gate_fused(g2[..., :-1], *xs)


@pytest.mark.parametrize("heads", [1, 2])
def test_layer_uses_the_kernels_and_matches_the_torch_path(monkeypatch, heads):
    """n_heads = 1: one projection for both gates and the fused-gate kernel; n_heads = 2: the
    block-diagonal einsums and the two-tensor kernel.  Both equal the PyTorch path."""
    import lrnnx

    calls = []
    import importlib

    mod = importlib.import_module("lrnnx_kernels.triton.rglru_gate")  # the module, not the function

    fn = mod._RGLRUGate2 if heads == 1 else mod._RGLRUGate
    other = mod._RGLRUGate if heads == 1 else mod._RGLRUGate2
    real = fn.apply
    monkeypatch.setattr(fn, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(other, "apply", lambda *a: pytest.fail("wrong gate variant"))
    torch.manual_seed(0)
    layer = lrnnx.build_layer(f"rglru(n_heads={heads})", d_model=16)
    x = torch.randn(2, 11, 16, requires_grad=True)
    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y
    g = torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))
    assert calls, "the fused gate did not run"
    monkeypatch.setattr(rg, "TRITON_MODE", "off")
    y2 = layer(x)
    y2 = y2[0] if isinstance(y2, tuple) else y2
    g2 = torch.autograd.grad(y2.square().sum(), [x] + list(layer.parameters()))
    assert rel(y, y2.double()) <= 1e-5
    for a, b in zip(g, g2):
        assert rel(a, b.double()) <= 1e-5


def test_shape_errors():
    ga, gx, x, coef = inputs((2, 3, 4), seed=1)
    with pytest.raises(ValueError, match="rglru_gate"):
        gate()(ga, gx[:, :2], x, coef)
    with pytest.raises(ValueError, match="coef"):
        gate()(ga, gx, x, coef[:3])
