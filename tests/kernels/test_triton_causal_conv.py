"""Triton causal_conv1d on CPU through the Triton interpreter, against the float64 PyTorch path.

The reference is ``CausalConv1d``'s PyTorch path (``TRITON_MODE = "off"``) in float64.  A module
fixture sets ``TRITON_INTERPRET=1`` (before the kernels are first imported) and
``causal_conv.TRITON_MODE = "force"`` (``CausalConv1d`` then runs the kernels on CPU tensors),
and restores both afterwards.  Shapes are tiny and tiles small (``BL``, ``BD``) to cross tile
boundaries; D = 5 is not a multiple of ``BD``.  On a CUDA machine these tests skip unless
TRITON_INTERPRET=1 is already set (tests/gpu/test_causal_conv_gpu.py covers the GPU).
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
    pytest.skip("CUDA present: the kernels are tested by tests/gpu/test_causal_conv_gpu.py (set "
                "TRITON_INTERPRET=1 to run these CPU tests)", allow_module_level=True)

from lrnnx_kernels_testutils import assert_close, up  # noqa: E402
from lrnnx_plugins.common import causal_conv as cc  # noqa: E402
from lrnnx_plugins.common.causal_conv import CausalConv1d  # noqa: E402

BL = 4  # tile length of the sweeps (lengths BL - 1, BL, BL + 1, several tiles)
BD = 4  # channel block: D = 5 gives one full and one masked block
D = 5


@pytest.fixture(autouse=True, scope="module")
def triton_interpreter():
    old = os.environ.get("TRITON_INTERPRET")
    old_mode = cc.TRITON_MODE
    os.environ["TRITON_INTERPRET"] = "1"
    cc.TRITON_MODE = "force"
    yield
    cc.TRITON_MODE = old_mode
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old


def kt():
    from lrnnx_kernels import triton as k

    return k


def torch_path(conv, x, state=None, activation=None):
    """CausalConv1d's PyTorch path (the slow twin) on the given inputs."""
    old = cc.TRITON_MODE
    cc.TRITON_MODE = "off"
    try:
        return conv(x, state, activation=activation)
    finally:
        cc.TRITON_MODE = old


def make(B, L, K, dtype, seed, state=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    base = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    # x as a strided view (a chunk of a wider projection, as in Mamba): read in place
    x = torch.randn(B, L, 2 * D, generator=g, dtype=base)[:, :, :D].to(dtype)
    w = torch.randn(D, K, generator=g, dtype=base).to(dtype)
    b = torch.randn(D, generator=g, dtype=base).to(dtype) if bias else None
    s = torch.randn(B, D, K - 1, generator=g, dtype=base).to(dtype) if state else None
    return x, w, b, s


def run(fn, x, w, b, s, seed):
    """Outputs (y, new_state) and grads of x, w, b, s for a random linear loss of both."""
    ins = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b, s)]
    y, ns = fn(*ins)
    g = torch.Generator().manual_seed(seed + 7)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gs = torch.randn(ns.shape, generator=g, dtype=torch.float64)
    loss = (y.double() * gy).sum() + (ns.double() * gs).sum()
    req = [t for t in ins if t is not None]
    gr = torch.autograd.grad(loss, req)
    it = iter(gr)
    return y, ns, [next(it) if t is not None else None for t in ins]


def reference(x, w, b, s, act):
    """The PyTorch path as a function of (x, weight, bias, state) (float64 inputs)."""
    conv = CausalConv1d(D, w.shape[1], bias=b is not None).double()

    def f(x, w, b, s):
        params = {"weight": w} if b is None else {"weight": w, "bias": b}
        old = cc.TRITON_MODE
        cc.TRITON_MODE = "off"
        try:
            return torch.func.functional_call(conv, params, (x, s), {"activation": act})
        finally:
            cc.TRITON_MODE = old

    return f


def compare(B, L, K, dtype, state, bias, act, seed, bwd_tiles=2):
    x, w, b, s = make(B, L, K, dtype, seed, state, bias)

    def fast(x, w, b, s):
        return kt().causal_conv1d(x, w, b, s, act, block_l=BL, block_d=BD, bwd_tiles=bwd_tiles)

    y, ns, gr = run(fast, x, w, b, s, seed)
    ry, rns, rgr = run(reference(x, w, b, s, act), *(up(t) for t in (x, w, b, s)), seed)
    what = f"B={B} L={L} K={K} {dtype} state={state} bias={bias} act={act}"
    assert y.dtype == dtype and y.shape == (B, L, D), what
    assert ns.dtype == dtype and ns.shape == (B, D, K - 1), what
    assert_close(y, ry, dtype, what + " y")
    if K > 1:
        # the new state is a copy of inputs: equal to the PyTorch path's in the input dtype
        torch.testing.assert_close(ns, torch_path(CausalConv1d(D, K), x, s)[1], rtol=0, atol=0)
    for name, gx, rg in zip(("x", "weight", "bias", "state"), gr, rgr):
        if gx is None:
            continue
        assert gx.dtype == dtype, what + name
        if gx.numel():
            assert_close(gx, rg, dtype, f"{what} grad {name}")


def _lengths(K):
    return sorted({1, 2, max(K - 1, 1), BL - 1, BL, BL + 1, 2 * BL + 1})


@pytest.mark.parametrize("K,L", [(K, L) for K in (1, 2, 3, 4) for L in _lengths(K)])
def test_fp32_sweep(K, L):
    """Every flag on (state, bias, silu) and every flag off, across tile boundaries."""
    compare(1, L, K, torch.float32, True, True, "silu", seed=10 * K + L)
    compare(1, L, K, torch.float32, False, False, None, seed=10 * K + L + 1)


@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", [None, "silu"])
def test_flags(state, bias, act):
    compare(2, BL + 1, 3, torch.float32, state, bias, act, seed=3, bwd_tiles=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    compare(1, BL + 1, 4, dtype, True, True, "silu", seed=5)


def test_wide_kernel_and_default_tiles():
    """K = 8 > L (the new state mixes the old state and x), default tiles."""
    x, w, b, s = make(1, 3, 8, torch.float32, 8)
    y, ns, gr = run(lambda *a: kt().causal_conv1d(*a, "silu"), x, w, b, s, 8)
    ry, rns, rgr = run(reference(x, w, b, s, "silu"), *(up(t) for t in (x, w, b, s)), 8)
    assert_close(y, ry, torch.float32, "K=8 y")
    assert_close(ns, rns, torch.float32, "K=8 state")
    for gx, rg in zip(gr, rgr):
        assert_close(gx, rg, torch.float32, "K=8 grad")


def test_module_dispatch_new_state_and_prefill_step(monkeypatch):
    """CausalConv1d takes the kernel; state equals the PyTorch path's; forward then step (and
    forward on two halves) equals one forward, with and without the fused silu."""
    torch.manual_seed(0)
    conv = CausalConv1d(D, 4)
    x = torch.randn(2, 7, D)
    st0 = torch.randn(2, D, 3)
    for act in (None, "silu"):
        y, st = conv(x, st0, activation=act)
        ry, rst = torch_path(conv, x, st0, act)
        torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(st, rst, rtol=0, atol=0)
        for cut in (1, 2, 5):  # prefill shorter than K-1 too: the state mixes old state and x
            y1, s1 = conv(x[:, :cut], st0, activation=act)
            torch.testing.assert_close(s1, torch_path(conv, x[:, :cut], st0)[1], rtol=0, atol=0)
            ys, s = [y1], s1
            for t in range(cut, 7):
                yt, s = conv.step(x[:, t], s, activation=act)
                ys.append(yt.unsqueeze(1))
            torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(s, st)

    # the kernel really runs (and does not under TRITON_MODE="off")
    k = kt()
    orig = k.causal_conv1d
    calls = []
    monkeypatch.setattr(k, "causal_conv1d", lambda *a, **kw: calls.append(1) or orig(*a, **kw))
    conv(x)
    assert calls == [1]
    monkeypatch.setattr(cc, "TRITON_MODE", "off")
    conv(x)
    assert calls == [1]


def test_mamba_layer_matches_torch_path():
    """Mamba layer forward + backward: fused conv + silu == PyTorch conv then F.silu."""
    from lrnnx_plugins.mamba import Mamba

    torch.manual_seed(1)
    layer = Mamba(4, d_state=2, expand=2, scan="torch")
    x = torch.randn(2, 6, 4, requires_grad=True)
    y = layer(x)
    g = torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))
    cc.TRITON_MODE, old = "off", cc.TRITON_MODE
    try:
        ry = layer(x)
        rg = torch.autograd.grad(ry.square().sum(), [x] + list(layer.parameters()))
    finally:
        cc.TRITON_MODE = old
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-6)
    for a, r in zip(g, rg):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_gradcheck_fp64():
    x, w, b, s = make(1, 3, 3, torch.float64, 2)
    ins = [t.detach().clone().requires_grad_() for t in (x.contiguous(), w, b, s)]
    assert torch.autograd.gradcheck(
        lambda *a: kt().causal_conv1d(*a, "silu", block_l=2, block_d=4)[0], ins, fast_mode=True)


def test_custom_op_opcheck():
    """Schema, fake kernel and autograd registration of lrnnx::triton_causal_conv(_bwd)."""
    kt()  # registers the ops
    x, w, b, s = make(1, BL + 1, 3, torch.float32, 4)
    x = x.contiguous()
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.lrnnx.triton_causal_conv.default,
                          (x.requires_grad_(), w.requires_grad_(), b, s.requires_grad_(), True,
                           BL, BD, 1), test_utils=utils)
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.lrnnx.triton_causal_conv_bwd.default,
                          (x.detach(), w.detach(), b, s.detach(), dy, True, True, True, BL, BD,
                           2), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("need", ["all", "x_only", "weights_only", "no_grad"])
def test_eager_twin_equals_custom_op(need, monkeypatch):
    """Eager calls on plain tensors run the autograd.Function twin (no custom-op dispatch); its
    outputs and gradients equal the custom op's bit for bit, and the op is not called."""
    import lrnnx_kernels.triton.causal_conv as tcc

    x, w, b, s = make(2, 2 * BL + 1, 4, torch.float32, 11)
    flags = {"all": (1, 1, 1, 1), "x_only": (1, 0, 0, 0), "weights_only": (0, 1, 1, 0),
             "no_grad": (0, 0, 0, 0)}[need]

    def inputs():
        return [t.detach().clone().requires_grad_(bool(f)) for t, f in zip((x, w, b, s), flags)]

    gy = torch.randn(2, 2 * BL + 1, D)
    ins = inputs()
    y_op = tcc._conv_op(*ins, True, BL, BD, 2)
    g_op = (torch.autograd.grad((y_op * gy).sum(), [t for t in ins if t.requires_grad])
            if any(flags) else [])

    calls = []
    real = tcc._conv_op
    monkeypatch.setattr(tcc, "_conv_op", lambda *a: calls.append(1) or real(*a))
    ins = inputs()
    y, _ = tcc.causal_conv1d(*ins, "silu", block_l=BL, block_d=BD, bwd_tiles=2)
    g = (torch.autograd.grad((y * gy).sum(), [t for t in ins if t.requires_grad])
         if any(flags) else [])
    assert not calls, "the eager path must not dispatch the custom op"
    assert torch.equal(y, y_op)
    assert len(g) == len(g_op) and all(torch.equal(a, c) for a, c in zip(g, g_op))
    assert tcc._host.plain_eager(x, None, torch.nn.Parameter(w))


def test_torch_compile_fullgraph():
    """No graph break through CausalConv1d's kernel path (aot_eager: the interpreter runs it)."""
    torch.manual_seed(2)
    conv = CausalConv1d(D, 4)
    x = torch.randn(1, BL + 1, D, requires_grad=True)
    st = torch.randn(1, D, 3)

    def f(x, st):
        y, s = conv(x, st, activation="silu")
        return y, s

    y, s = torch.compile(f, fullgraph=True, backend="aot_eager")(x, st)
    y.sum().backward()
    ry, rs = torch_path(conv, x.detach(), st, "silu")
    assert_close(y, ry, torch.float32, "compiled y")
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    assert x.grad is not None and conv.weight.grad is not None


def test_bad_arguments():
    x, w, b, s = make(1, 3, 4, torch.float32, 0)
    with pytest.raises(ValueError, match="activation"):
        kt().causal_conv1d(x, w, b, s, "gelu")
    with pytest.raises(ValueError, match="state"):
        kt().causal_conv1d(x, w, b, s[:, :, :2])
    with pytest.raises(ValueError, match="activation"):
        CausalConv1d(D, 4)(x, activation="relu")
    y, ns = kt().causal_conv1d(x[:, :0], w, b, s)  # L == 0: the state passes through
    assert y.shape == (1, 0, D) and torch.equal(ns, s)
