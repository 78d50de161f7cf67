"""Tests of the chunked SSD algorithm (lrnnx_plugins.mamba.ssd) and the ``mamba2`` layer.

References are explicit float64 token-by-token loops; float32 results must match them at rel.
1e-5 of max |ref|, float64 ones at 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lrnnx
from lrnnx.errors import ConfigError, InputError
from lrnnx.registry.core import REGISTRY
from lrnnx_plugins.mamba import Mamba, Mamba2
from lrnnx_plugins.mamba.ssd import segsum, ssd_chunked, ssd_step

D = 8
F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register the plugin's layers unless the registry already loads the plugin."""
    added = []
    for cls in (Mamba, Mamba2):
        if cls.name not in REGISTRY.names("layer"):
            REGISTRY.register("layer", cls)
            added.append(cls.name)
    yield
    for name in added:
        REGISTRY.unregister("layer", name)


def rand(*shape, dtype=torch.float32, seed=1, low=None, high=None):
    g = torch.Generator().manual_seed(seed)
    if low is None:
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype)
    return (low + (high - low) * torch.rand(*shape, generator=g, dtype=F64)).to(dtype)


def assert_rel(actual, expected, tol, what=""):
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, (what, a.shape, e.shape)
    scale = e.abs().max().item()
    err = (a - e).abs().max().item()
    rel = err / scale if scale > 0 else err
    assert rel <= tol, f"{what}: rel err {rel:.3g} > {tol:g} (max |ref| {scale:.3g})"


# ------------------------------------------------------------------------------ SSD
def ssd_loop(x, dt, A, B, C, D=None, h0=None):
    """H_t = exp(dt A) H_{t-1} + dt x_t B_t^T,  y_t = H_t C_t + D x_t, in float64."""
    b, L, H, P = x.shape
    G, N = B.shape[-2:]
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    Bh, Ch = B.repeat_interleave(H // G, dim=2), C.repeat_interleave(H // G, dim=2)  # (b,L,H,N)
    h = torch.zeros(b, H, P, N, dtype=F64) if h0 is None else h0.double()
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + \
            (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        y = (h * Ch[:, t, :, None, :]).sum(-1)
        if D is not None:
            y = y + D.double()[:, None] * x[:, t]
        ys.append(y)
    return torch.stack(ys, 1), h


def ssd_problem(L, b=2, H=4, P=3, G=2, N=5, dtype=torch.float32, seed=0):
    x = rand(b, L, H, P, dtype=dtype, seed=seed)
    dt = rand(b, L, H, dtype=dtype, seed=seed + 1, low=0.01, high=0.6)
    A = -rand(H, dtype=dtype, seed=seed + 2, low=0.5, high=8.0)
    B = rand(b, L, G, N, dtype=dtype, seed=seed + 3)
    C = rand(b, L, G, N, dtype=dtype, seed=seed + 4)
    return x, dt, A, B, C


def test_segsum_is_the_masked_sum_of_log_decays():
    a = rand(3, 6, dtype=F64)
    s = segsum(a)
    for i in range(6):
        for j in range(6):
            want = a[:, j + 1:i + 1].sum(-1) if j <= i else torch.full((3,), float("-inf"),
                                                                          dtype=F64)
            torch.testing.assert_close(s[:, i, j], want, rtol=0, atol=1e-14)
    b = a.clone()
    b[:, 2] = float("-inf")  # exact with -inf: no inf - inf anywhere
    assert not torch.isnan(segsum(b)).any()
    assert torch.exp(segsum(b))[:, 3:, :2].abs().max() == 0


@pytest.mark.parametrize("L", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_ssd_chunked_matches_sequential_loop(L, with_h0, dtype):
    x, dt, A, B, C = ssd_problem(L, dtype=dtype)
    Dh = rand(4, dtype=dtype, seed=7)
    h0 = rand(2, 4, 3, 5, dtype=dtype, seed=8) if with_h0 else None
    y, h = ssd_chunked(x, dt, A, B, C, chunk_size=64, D=Dh, initial_state=h0,
                       return_final_state=True)
    y_ref, h_ref = ssd_loop(x, dt, A, B, C, Dh, h0)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert y.dtype == dtype and h.dtype == dtype
    assert_rel(y, y_ref, tol, f"y, L={L}")
    assert_rel(h, h_ref, tol, f"final state, L={L}")


@pytest.mark.parametrize("chunk", [1, 3, 16, 1000])
def test_ssd_chunk_size_does_not_change_the_result(chunk):
    x, dt, A, B, C = ssd_problem(37, dtype=F64, seed=3)
    y, h = ssd_chunked(x, dt, A, B, C, chunk_size=chunk, return_final_state=True)
    y_ref, h_ref = ssd_loop(x, dt, A, B, C)
    assert_rel(y, y_ref, 1e-10, "y")
    assert_rel(h, h_ref, 1e-10, "h")


def test_ssd_step_matches_loop():
    x, dt, A, B, C = ssd_problem(9, dtype=F64, seed=5)
    Dh = rand(4, dtype=F64, seed=1)
    h = rand(2, 4, 3, 5, dtype=F64, seed=2)
    y_ref, h_ref = ssd_loop(x, dt, A, B, C, Dh, h)
    ys = []
    for t in range(9):
        y_t, h = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], h, D=Dh)
        ys.append(y_t)
    assert_rel(torch.stack(ys, 1), y_ref, 1e-12, "y")
    assert_rel(h, h_ref, 1e-12, "h")


def test_ssd_seq_start_resets_the_state():
    x, dt, A, B, C = ssd_problem(40, b=1, dtype=F64, seed=4)
    starts = [0, 7, 8, 30]
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, starts] = True
    y = ssd_chunked(x, dt, A, B, C, chunk_size=8, seq_start=mask)
    for a, b in zip(starts, starts[1:] + [40]):
        y_ref, _ = ssd_loop(x[:, a:b], dt[:, a:b], A, B[:, a:b], C[:, a:b])
        assert_rel(y[:, a:b], y_ref, 1e-10, f"segment {a}:{b}")
    # gradients stay finite through the -inf log decays
    xg = x.clone().requires_grad_(True)
    dtg = dt.clone().requires_grad_(True)
    ssd_chunked(xg, dtg, A, B, C, chunk_size=8, seq_start=mask).sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(dtg.grad).all()


def test_ssd_gradients_match_the_loop_and_finite_differences():
    x, dt, A, B, C = ssd_problem(11, dtype=F64, seed=6)
    h0 = rand(2, 4, 3, 5, dtype=F64, seed=3)
    Dh = rand(4, dtype=F64, seed=4)
    w = rand(2, 11, 4, 3, dtype=F64, seed=9)
    wh = rand(2, 4, 3, 5, dtype=F64, seed=10)
    inputs = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, Dh, h0)]

    def loss(fn):
        y, h = fn(*inputs)
        return (y * w).sum() + (h * wh).sum()

    g = torch.autograd.grad(loss(lambda x, dt, A, B, C, Dh, h0: ssd_chunked(
        x, dt, A, B, C, chunk_size=4, D=Dh, initial_state=h0, return_final_state=True)), inputs)
    g_ref = torch.autograd.grad(loss(ssd_loop), inputs)
    for name, a, e in zip(["x", "dt", "A", "B", "C", "D", "h0"], g, g_ref):
        assert_rel(a, e, 1e-10, f"grad wrt {name}")
    small = [t[:, :5].detach().clone().requires_grad_(True) if t.dim() > 1 and t.shape[1] == 11
             else t.detach().clone().requires_grad_(True) for t in (x, dt, A, B, C, Dh, h0)]
    assert torch.autograd.gradcheck(
        lambda *a: ssd_chunked(*a[:5], chunk_size=2, D=a[5], initial_state=a[6],
                               return_final_state=True), tuple(small), fast_mode=True)


def test_ssd_empty_sequence_and_bad_shapes():
    x, dt, A, B, C = ssd_problem(0)
    h0 = rand(2, 4, 3, 5)
    y, h = ssd_chunked(x, dt, A, B, C, initial_state=h0, return_final_state=True)
    assert y.shape == (2, 0, 4, 3) and torch.equal(h, h0)
    x, dt, A, B, C = ssd_problem(5)
    with pytest.raises(ValueError, match="dt must be"):
        ssd_chunked(x, dt[:, :4], A, B, C)
    with pytest.raises(ValueError, match="divisible"):
        ssd_chunked(x, dt, A, B[:, :, :1].expand(2, 5, 3, 5), C[:, :, :1].expand(2, 5, 3, 5))


# ------------------------------------------------------------------------------ the layer
def make(dtype=torch.float32, seed=0, **kw):
    kw = {"d_state": 4, "headdim": 4, "chunk_size": 8, **kw}
    torch.manual_seed(seed)
    return Mamba2(D, **kw).to(dtype)


def ref_mamba2(layer, x, timesteps=None, state=None):
    """The Mamba2 layer written out token by token in float64."""
    p = {k: v.detach().double() for k, v in layer.named_parameters()}
    x = x.detach().double()
    Bt, L, _ = x.shape
    di, H, P, G, N = layer.d_inner, layer.nheads, layer.headdim, layer.ngroups, layer.d_state
    proj = x @ p["in_proj.weight"].T + p.get("in_proj.bias", 0.0)
    z, xbc, dtr = proj[..., :di], proj[..., di:di + layer.conv_dim], proj[..., -H:]
    hist = (state["conv"].double() if state is not None else
            torch.zeros(Bt, layer.conv_dim, layer.d_conv - 1, dtype=F64))
    h = state["ssm"].double() if state is not None else torch.zeros(Bt, H, P, N, dtype=F64)
    A = -torch.exp(p["A_log"])
    outs = []
    for t in range(L):
        window = torch.cat([hist, xbc[:, t, :, None]], dim=-1)
        hist = window[..., 1:]
        c = F.silu((window * p["conv1d.weight"]).sum(-1) + p.get("conv1d.bias", 0.0))
        xs = c[:, :di].reshape(Bt, H, P)
        Bv = c[:, di:di + G * N].reshape(Bt, G, N)
        Cv = c[:, di + G * N:].reshape(Bt, G, N)
        dt = F.softplus(dtr[:, t] + p["dt_bias"])                          # (B, H)
        if timesteps is not None:
            dt = dt * timesteps[:, t, None].double()
        Bh = Bv.repeat_interleave(H // G, dim=1)[:, :, None, :]           # (B, H, 1, N)
        Ch = Cv.repeat_interleave(H // G, dim=1)[:, :, None, :]
        h = torch.exp(dt * A)[..., None, None] * h + (dt[..., None] * xs)[..., None] * Bh
        y = (h * Ch).sum(-1) + p["D"][:, None] * xs                          # (B, H, P)
        y = y.reshape(Bt, di) * F.silu(z[:, t])
        y = y.reshape(Bt, G, di // G)
        y = y / torch.sqrt((y ** 2).mean(-1, keepdim=True) + layer.norm.eps)
        y = y.reshape(Bt, di) * p["norm.weight"]
        outs.append(y @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0))
    return torch.stack(outs, 1), {"conv": hist, "ssm": h}


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_forward_matches_float64_reference(ngroups, dtype):
    layer = make(dtype, ngroups=ngroups, bias=True)
    with torch.no_grad():  # a non-trivial norm weight
        layer.norm.weight.copy_(rand(2 * D, seed=3))
    x = rand(2, 21, D, dtype=dtype)
    y, st = layer(x, return_state=True)
    y_ref, st_ref = ref_mamba2(layer, x)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert y.dtype == dtype
    assert_rel(y, y_ref, tol, "y")
    assert_rel(st["ssm"], st_ref["ssm"], tol, "ssm state")
    assert_rel(st["conv"], st_ref["conv"], tol, "conv state")


@pytest.mark.parametrize("prefill", [1, 63, 64, 65])
def test_prefill_then_decode_equals_full_forward(prefill):
    layer = make(chunk_size=64)
    x = rand(2, prefill + 16, D, seed=prefill)
    y_full = make(F64, chunk_size=64)(x.double())
    y_pre, st = layer(x[:, :prefill], return_state=True)
    ys = [y_pre]
    for t in range(prefill, prefill + 16):
        y_t, st = layer.step(x[:, t], st)
        ys.append(y_t[:, None])
    assert_rel(torch.cat(ys, 1), y_full, 1e-5, "prefill + decode vs forward")


def test_step_from_a_state_with_timesteps_matches_reference():
    layer = make(F64, ngroups=2)
    x = rand(2, 10, D, dtype=F64)
    ts = rand(2, 10, dtype=F64, seed=4, low=0.3, high=2.0)
    _, s0 = layer(rand(2, 5, D, dtype=F64, seed=9), return_state=True)
    y, st = layer(x, state=s0, timesteps=ts, return_state=True)
    y_ref, st_ref = ref_mamba2(layer, x, timesteps=ts, state=s0)
    assert_rel(y, y_ref, 1e-10, "forward vs reference")
    state, ys = {k: v.clone() for k, v in s0.items()}, []
    for t in range(10):
        y_t, state = layer.step(x[:, t], state, timesteps=ts[:, t])
        ys.append(y_t)
    assert_rel(torch.stack(ys, 1), y, 1e-10, "step vs forward")
    for k in st:
        assert_rel(state[k], st_ref[k], 1e-10, f"state[{k}]")


def test_timesteps():
    layer = make()
    x = rand(2, 17, D)
    ones = torch.ones(2, 17)
    torch.testing.assert_close(layer(x, timesteps=ones), layer(x), rtol=0, atol=0)
    ts = rand(2, 17, seed=3, low=0.1, high=3.0)
    y = layer(x, timesteps=ts)
    assert_rel(y, ref_mamba2(layer, x, timesteps=ts)[0], 1e-5, "timesteps vs reference")
    assert (y - layer(x)).abs().max() > 1e-3


@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_equals_per_sequence_loop(with_state):
    layer = make(F64)
    lengths = [3, 0, 1, 19, 2, 9]  # 19 spans chunk boundaries of the packed input
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    L = sum(lengths)
    x = rand(1, L, D, dtype=F64)
    ts = rand(1, L, dtype=F64, seed=2, low=0.5, high=1.5)
    n = len(lengths)
    s0 = None
    if with_state:  # per-sequence states: the one-call-per-sequence path
        _, s0 = layer(rand(n, 4, D, dtype=F64, seed=6), return_state=True)
        y, st = layer(x, state=s0, timesteps=ts, cu_seqlens=cu, return_state=True)
    else:           # the single-pass path (-inf log decay at every sequence start)
        y, st = layer(x, timesteps=ts, cu_seqlens=cu), None
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        s_i = None if s0 is None else {k: v[i:i + 1] for k, v in s0.items()}
        y_i, st_i = layer(x[:, a:b], state=s_i, timesteps=ts[:, a:b], return_state=True)
        if b > a:
            assert_rel(y[:, a:b], y_i, 1e-10, f"sequence {i}")
        if st is not None:
            for k in st:
                assert_rel(st[k][i:i + 1], st_i[k], 1e-10, f"sequence {i} state[{k}]")


def test_gradcheck():
    layer = make(F64, d_state=2, headdim=4, chunk_size=2, ngroups=2)
    x = rand(2, 5, D, dtype=F64).requires_grad_(True)
    ts = rand(2, 5, dtype=F64, seed=8, low=0.5, high=1.5).requires_grad_(True)
    _, s0 = layer(rand(2, 3, D, dtype=F64, seed=5), return_state=True)
    conv0 = s0["conv"].clone().requires_grad_(True)
    ssm0 = s0["ssm"].clone().requires_grad_(True)

    def f(x, ts, conv0, ssm0):
        y, st = layer(x, state={"conv": conv0, "ssm": ssm0}, timesteps=ts, return_state=True)
        return y, st["conv"], st["ssm"]

    assert torch.autograd.gradcheck(f, (x, ts, conv0, ssm0), fast_mode=True)
    names, params = zip(*layer.named_parameters())
    leaves = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (x.detach(),)),
        leaves, fast_mode=True)


def test_init_follows_the_paper():
    torch.manual_seed(0)
    layer = Mamba2(64)  # defaults: d_state 128, headdim 64, expand 2 -> 2 heads
    assert (layer.d_inner, layer.nheads, layer.headdim, layer.d_state) == (128, 2, 64, 128)
    assert layer.in_proj.out_features == 2 * 128 + 2 * 128 + 2
    A = torch.exp(layer.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt = F.softplus(layer.dt_bias)
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert torch.equal(layer.D, torch.ones(2)) and torch.equal(layer.norm.weight,
                                                                torch.ones(128))


@pytest.mark.parametrize("kw, match", [
    ({"headdim": 5}, r"not divisible by headdim=5.*e\.g\. 4"),
    ({"headdim": 4, "ngroups": 3}, "ngroups=3"),
    ({"headdim": 4, "chunk_size": 0}, "chunk_size"),
    ({"headdim": 4, "A_init_range": (0.0, 16.0)}, "A_init_range"),
    ({"headdim": 4, "dt_min": 0.0}, "dt_min"),
])
def test_bad_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        Mamba2(D, **kw)


def test_bad_state_and_spec():
    layer = make()
    st = layer.init_state(2)
    assert st["ssm"].shape == (2, 4, 4, 4) and st["conv"].shape == (2, 2 * D + 8, 3)
    with pytest.raises(InputError, match=r"'mamba2'.*state\['ssm'\] must have shape"):
        layer.step(rand(2, D), {**st, "ssm": st["ssm"][:1]})
    built = lrnnx.build_layer("mamba2(headdim=4, d_state=8, ngroups=2)", d_model=D)
    assert isinstance(built, Mamba2) and built.ngroups == 2
    assert built(rand(1, 9, D)).shape == (1, 9, D)


def test_bfloat16_runs_with_the_state_in_float32():
    layer = make()
    x = rand(2, 9, D)
    y32 = layer(x)
    layer = layer.to(torch.bfloat16)
    y, st = layer(x.bfloat16(), return_state=True)
    y_t, st = layer.step(x[:, 0].bfloat16(), st)
    assert y.dtype == y_t.dtype == torch.bfloat16 and st["ssm"].dtype == torch.float32
    assert_rel(y, y32, 3e-2, "bf16 vs fp32")  # bf16 has 8 mantissa bits


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_conformance(dtype):
    from lrnnx.testing import check_layer

    report = check_layer("mamba2", dtype=dtype)
    assert report.ok, str(report)
