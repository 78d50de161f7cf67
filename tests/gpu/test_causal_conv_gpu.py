"""Triton causal_conv1d on a CUDA device at full size, against the float64 PyTorch path.

Run on a GPU machine: ``PYTHONPATH=.:plugins_shim python -m pytest tests/gpu -m gpu -q``.
The reference is ``CausalConv1d``'s PyTorch path (``TRITON_MODE = "off"``) in float64 on the GPU.
Tolerances: max |err| / max |ref| <= 1e-5 (fp32), 1e-2 (bf16), for outputs and gradients.
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

from lrnnx_kernels import triton as kt  # noqa: E402
from lrnnx_plugins.common import causal_conv as cc  # noqa: E402
from lrnnx_plugins.common.causal_conv import CausalConv1d  # noqa: E402

dev = torch.device("cuda")
f64 = torch.float64
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def close(x, ref, dtype, what):
    ref = ref.detach().to(f64)
    err = ((x.detach().to(f64) - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()
    assert err <= TOL[dtype], f"{what}: rel err {err:.3e} > {TOL[dtype]:.0e}"


@pytest.fixture
def torch_mode():
    """Run a block with CausalConv1d's PyTorch path."""
    class _Off:
        def __enter__(self):
            self.old, cc.TRITON_MODE = cc.TRITON_MODE, "off"

        def __exit__(self, *exc):
            cc.TRITON_MODE = self.old

    return _Off()


def run(fn, ins, seed):
    ins = [t.detach().clone().requires_grad_() if t is not None else None for t in ins]
    y, ns = fn(*ins)
    g = torch.Generator(device=dev).manual_seed(seed)
    gy = torch.randn(y.shape, device=dev, generator=g, dtype=f64)
    gs = torch.randn(ns.shape, device=dev, generator=g, dtype=f64)
    loss = (y.to(f64) * gy).sum() + (ns.to(f64) * gs).sum()
    gr = torch.autograd.grad(loss, [t for t in ins if t is not None])
    return y, ns, gr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("state", [False, True])
def test_causal_conv_full(dtype, act, state, torch_mode):
    B, L, D, K = 4, 1027, 512, 4
    g = torch.Generator(device=dev).manual_seed(0)
    # x as a chunk of a wider projection (strided rows), as in Mamba
    x = torch.randn(B, L, 2 * D, device=dev, generator=g)[:, :, :D].to(dtype)
    w = (torch.randn(D, K, device=dev, generator=g) * 0.5).to(dtype)
    b = torch.randn(D, device=dev, generator=g).to(dtype)
    s = torch.randn(B, D, K - 1, device=dev, generator=g).to(dtype) if state else None
    ins = [x, w, b, s]
    y, ns, gr = run(lambda *a: kt.causal_conv1d(*a, act), ins, 1)

    conv = CausalConv1d(D, K).to(device=dev, dtype=f64)

    def ref(x, w, b, s):
        with torch_mode:
            return torch.func.functional_call(conv, {"weight": w, "bias": b}, (x, s),
                                              {"activation": act})

    ry, rns, rgr = run(ref, [None if t is None else t.to(f64) for t in ins], 1)
    assert y.dtype == dtype and ns.dtype == dtype
    close(y, ry, dtype, "y")
    torch.testing.assert_close(ns.to(f64), rns, rtol=0, atol=0)
    for gx, rg, name in zip(gr, rgr, ("x", "weight", "bias", "state")):
        assert gx.dtype == dtype, name
        close(gx, rg, dtype, f"grad {name}")


def test_module_uses_kernel_and_matches_torch_path(torch_mode, monkeypatch):
    torch.manual_seed(0)
    conv = CausalConv1d(512, 4).to(dev)
    x = torch.randn(4, 1027, 512, device=dev)
    st = torch.randn(4, 512, 3, device=dev)
    calls = []
    orig = kt.causal_conv1d
    monkeypatch.setattr(kt, "causal_conv1d", lambda *a, **k: calls.append(1) or orig(*a, **k))
    y, s = conv(x, st, activation="silu")
    assert calls == [1]
    with torch_mode:
        ry, rs = conv(x, st, activation="silu")
    assert calls == [1]
    close(y, ry, torch.float32, "module y")
    torch.testing.assert_close(s, rs, rtol=0, atol=0)


@pytest.mark.parametrize("layer_name", ["mamba", "mamba2"])
def test_layer_fwd_bwd_triton_conv_equals_torch_conv(layer_name, torch_mode):
    """Mamba / Mamba2 layer forward + backward: fused conv + silu == PyTorch conv, F.silu."""
    from lrnnx_plugins.mamba import Mamba, Mamba2

    torch.manual_seed(0)
    layer = (Mamba(256, d_state=16) if layer_name == "mamba" else Mamba2(256)).to(dev)
    x = torch.randn(4, 1027, 256, device=dev, requires_grad=True)
    params = [x] + [p for p in layer.parameters() if p.requires_grad]

    def fwd_bwd():
        y = layer(x)
        g = torch.autograd.grad((y.double() ** 2).sum(), params)
        return y, g

    y, g = fwd_bwd()
    with torch_mode:
        ry, rg = fwd_bwd()
    # both fp32: differences are the conv's rounding, propagated through the layer
    err = ((y - ry).abs().max() / ry.abs().max()).item()
    assert err <= 1e-4, f"{layer_name} y: rel err {err:.2e}"
    for a, r in zip(g, rg):
        err = ((a - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
        assert err <= 1e-3, f"{layer_name} grad: rel err {err:.2e}"
