"""Tests of the ``mamba`` layer (lrnnx_plugins.mamba.mamba) against an explicit float64 loop.

Tolerances: float32 outputs are compared with float64 references at rel. 1e-5 of max |ref|;
float64 against float64 at 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError, UnknownComponentError
from lrnnx.registry.core import REGISTRY
from lrnnx_plugins.mamba import Mamba, Mamba2

D = 8
METHODS = ("mamba", "zoh", "bilinear", "dirac")


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


def make(dtype=torch.float32, seed=0, **kw):
    kw.setdefault("d_state", 4)
    torch.manual_seed(seed)
    return Mamba(D, **kw).to(dtype)  # every parameter is real, also with complex=True


def rand(*shape, dtype=torch.float32, seed=1, low=None, high=None):
    g = torch.Generator().manual_seed(seed)
    if low is None:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return (low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype)


def assert_rel(actual, expected, tol, what=""):
    a = actual.detach().to(torch.complex128 if actual.is_complex() else torch.float64)
    e = expected.detach().to(a.dtype)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    scale = e.abs().max().item()
    err = (a - e).abs().max().item()
    rel = err / scale if scale > 0 else err
    assert rel <= tol, f"{what}: rel err {rel:.3g} > {tol:g} (max |ref| {scale:.3g})"


def tol_of(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-10


def ref_mamba(layer, x, timesteps=None, state=None):
    """The Mamba layer written out token by token in float64 (complex128 when complex)."""
    p = {k: v.detach().double() for k, v in layer.named_parameters()}
    x = x.detach().double()
    Bt, L, _ = x.shape
    di, N, R = layer.d_inner, layer.d_state, layer.dt_rank
    nbc = 2 * N if layer.complex else N
    xz = x @ p["in_proj.weight"].T + p.get("in_proj.bias", 0.0)
    u_in, z = xz[..., :di], xz[..., di:]
    A = -torch.exp(p["A_log"])
    if layer.complex:
        A = torch.complex(A, p["A_imag"])
    hist = (state["conv"].double() if state is not None else
            torch.zeros(Bt, di, layer.d_conv - 1, dtype=torch.float64))
    h = torch.zeros(Bt, di, N, dtype=A.dtype) if state is None else state["ssm"].to(A.dtype)
    outs = []
    for t in range(L):
        window = torch.cat([hist, u_in[:, t, :, None]], dim=-1)          # (B, di, K)
        hist = window[..., 1:]
        c = (window * p["conv1d.weight"]).sum(-1) + p.get("conv1d.bias", 0.0)
        u = F.silu(c)
        dbl = u @ p["x_proj.weight"].T
        dr, Bv, Cv = dbl[:, :R], dbl[:, R:R + nbc], dbl[:, R + nbc:]
        if layer.complex:  # interleaved (real, imag) pairs
            Bv = torch.complex(Bv[:, 0::2], Bv[:, 1::2])
            Cv = torch.complex(Cv[:, 0::2], Cv[:, 1::2])
        dt = F.softplus(dr @ p["dt_proj.weight"].T + p["dt_proj.bias"])     # (B, di)
        if timesteps is not None:
            dt = dt * timesteps[:, t, None].double()
        dA = dt[..., None] * A                                             # (B, di, N)
        method = layer.discretization
        if method == "bilinear":
            Abar, s = (1 + dA / 2) / (1 - dA / 2), dt[..., None] / (1 - dA / 2)
        else:
            Abar = torch.exp(dA)
            s = {"mamba": dt[..., None], "zoh": (Abar - 1) / A, "dirac": 1.0}[method]
        h = Abar * h + s * Bv[:, None, :] * u[..., None]
        y = (h * Cv[:, None, :]).sum(-1)
        y = (y.real if y.is_complex() else y) + p["D"] * u
        y = y * F.silu(z[:, t])
        outs.append(y @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0))
    return torch.stack(outs, 1), {"conv": hist, "ssm": h}


def run_steps(layer, x, state, timesteps=None):
    ys = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state,
                              timesteps=None if timesteps is None else timesteps[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


# ------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_float64_reference(method, cplx, dtype):
    layer = make(dtype, discretization=method, complex=cplx, bias=True)
    x = rand(2, 20, D, dtype=dtype)
    y, st = layer(x, return_state=True)
    y_ref, st_ref = ref_mamba(layer, x)
    assert y.dtype == dtype
    assert_rel(y, y_ref, tol_of(dtype), f"{method} complex={cplx} y")
    assert_rel(st["ssm"], st_ref["ssm"], tol_of(dtype), "final ssm state")
    assert_rel(st["conv"], st_ref["conv"], tol_of(dtype), "final conv state")
    assert st["ssm"].is_complex() == cplx


@pytest.mark.parametrize("scan", ["torch", "cpu", "torch_ref"])
def test_every_scan_backend_matches_reference(scan):
    layer = make(scan=scan, d_state=8)
    x = rand(2, 33, D)
    assert_rel(layer(x), ref_mamba(layer, x)[0], 1e-5, f"scan={scan}")


# ------------------------------------------------------------------------------ recurrent
@pytest.mark.parametrize("prefill", [1, 63, 64, 65])
def test_prefill_then_decode_equals_full_forward(prefill):
    layer = make()
    x = rand(2, prefill + 16, D, seed=prefill)
    y_full = make(torch.float64)(x.double())  # same seed -> same parameters
    y_pre, st = layer(x[:, :prefill], return_state=True)
    y_dec, st = run_steps(layer, x[:, prefill:], st)
    assert_rel(torch.cat([y_pre, y_dec], 1), y_full, 1e-5, "prefill + decode vs forward")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cplx", [False, True])
def test_step_equals_forward_for_each_discretization(method, cplx):
    layer = make(torch.float64, discretization=method, complex=cplx)
    x = rand(2, 12, D, dtype=torch.float64)
    ts = rand(2, 12, dtype=torch.float64, seed=4, low=0.3, high=2.0)
    _, s0 = layer(rand(2, 5, D, dtype=torch.float64, seed=9), return_state=True)
    y, st = layer(x, state=s0, timesteps=ts, return_state=True)
    y_s, st_s = run_steps(layer, x, {k: v.clone() for k, v in s0.items()}, timesteps=ts)
    assert_rel(y_s, y, 1e-10, f"{method} step vs forward")
    for k in st:
        assert_rel(st_s[k], st[k], 1e-10, f"{method} state[{k}]")
    y_ref, _ = ref_mamba(layer, x, timesteps=ts, state=s0)
    assert_rel(y, y_ref, 1e-10, f"{method} forward from a state vs reference")


def test_init_state_and_state_dtypes():
    layer = make(complex=True)
    st = layer.init_state(3)
    assert st["conv"].shape == (3, 2 * D, 3) and st["conv"].dtype == torch.float32
    assert st["ssm"].shape == (3, 2 * D, 4) and st["ssm"].dtype == torch.complex64
    assert make().init_state(2, dtype=torch.float64)["ssm"].dtype == torch.float64


# ------------------------------------------------------------------------------ bilinear
def test_bilinear_stays_bounded_for_huge_dt():
    """dt = 1e3: bilinear's A_bar -> -1 stays in the unit disk and B_bar -> 2B/|A| stays finite."""
    layer = make(torch.float64, discretization="bilinear")
    with torch.no_grad():
        layer.dt_proj.bias.fill_(1e3)          # softplus(1e3 + small) ~ 1e3
        layer.dt_proj.weight.mul_(1e-3)
    x = rand(1, 200, D, dtype=torch.float64)
    y, st = layer(x, return_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(st["ssm"]).all()
    A_bar, _ = lrnnx.ops.discretize("bilinear", layer.A().detach(), torch.tensor(1e3))
    assert A_bar.abs().max() < 1.0
    # the state is a sum of alternating-sign terms of size 2|B u| / |A|: it cannot grow with L
    _, st_short = layer(x[:, :20], return_state=True)
    assert st["ssm"].abs().max() < 10 * st_short["ssm"].abs().max() + 10
    assert_rel(y, ref_mamba(layer, x)[0], 1e-10, "bilinear, dt=1e3")


# ------------------------------------------------------------------------------ timesteps
@pytest.mark.parametrize("cplx", [False, True])
def test_timesteps(cplx):
    layer = make(complex=cplx)
    x = rand(2, 17, D)
    ones = torch.ones(2, 17)
    torch.testing.assert_close(layer(x, timesteps=ones), layer(x), rtol=0, atol=0)
    ts = rand(2, 17, seed=3, low=0.1, high=3.0)
    y = layer(x, timesteps=ts)
    assert_rel(y, ref_mamba(layer, x, timesteps=ts)[0], 1e-5, "timesteps vs reference")
    assert (y - layer(x)).abs().max() > 1e-3  # non-trivial timesteps change the output
    # a constant timestep c is the same as scaling every dt by c
    twice = layer(x, timesteps=2 * ones)
    assert_rel(twice, ref_mamba(layer, x, timesteps=2 * ones)[0], 1e-5, "timesteps = 2")


# ------------------------------------------------------------------------------ varlen
@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_equals_per_sequence_loop(with_state):
    layer = make(torch.float64)
    lengths = [3, 0, 1, 9, 2]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    L = sum(lengths)
    x = rand(1, L, D, dtype=torch.float64)
    ts = rand(1, L, dtype=torch.float64, seed=2, low=0.5, high=1.5)
    n = len(lengths)
    s0 = None
    if with_state:
        _, s0 = layer(rand(n, 4, D, dtype=torch.float64, seed=6), return_state=True)
    y, st = layer(x, state=s0, timesteps=ts, cu_seqlens=cu, return_state=True)
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        s_i = None if s0 is None else {k: v[i:i + 1] for k, v in s0.items()}
        y_i, st_i = layer(x[:, a:b], state=s_i, timesteps=ts[:, a:b], return_state=True)
        if b > a:
            assert_rel(y[:, a:b], y_i, 1e-10, f"sequence {i}")
        for k in st:
            assert_rel(st[k][i:i + 1], st_i[k], 1e-10, f"sequence {i} state[{k}]")


def test_varlen_shorter_than_the_conv_window():
    layer = make(torch.float64)
    x = rand(1, 2, D, dtype=torch.float64)
    y = layer(x, cu_seqlens=torch.tensor([0, 1, 1, 2]))
    assert_rel(y[:, :1], layer(x[:, :1]), 1e-10, "first")
    assert_rel(y[:, 1:], layer(x[:, 1:]), 1e-10, "second")
    assert layer(x[:, :0], cu_seqlens=torch.tensor([0, 0])).shape == (1, 0, D)


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("method", ["mamba", "zoh"])
def test_gradcheck(cplx, method):
    layer = make(torch.float64, d_state=2, expand=1, complex=cplx, discretization=method)
    x = rand(2, 4, D, dtype=torch.float64).requires_grad_(True)
    ts = rand(2, 4, dtype=torch.float64, seed=8, low=0.5, high=1.5).requires_grad_(True)
    _, s0 = layer(rand(2, 3, D, dtype=torch.float64, seed=5), return_state=True)
    conv0 = s0["conv"].clone().requires_grad_(True)
    ssm0 = s0["ssm"].clone().requires_grad_(True)

    def f(x, ts, conv0, ssm0):
        y, st = layer(x, state={"conv": conv0, "ssm": ssm0}, timesteps=ts, return_state=True)
        return y, st["conv"], st["ssm"]

    # fast mode (a random projection of the Jacobian): the full Jacobian is the conformance
    # suite's gradcheck; here every discretization/complex combination is covered cheaply
    assert torch.autograd.gradcheck(f, (x, ts, conv0, ssm0), fast_mode=True)
    names, params = zip(*layer.named_parameters())
    leaves = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(layer, dict(zip(names, ps)), (x.detach(),)),
        leaves, fast_mode=True)


# ------------------------------------------------------------------------------ options
def test_init_follows_the_paper():
    torch.manual_seed(0)
    layer = Mamba(32, d_state=16, dt_min=0.001, dt_max=0.1)
    assert layer.d_inner == 64 and layer.dt_rank == 2            # ceil(32 / 16)
    torch.testing.assert_close(layer.A_log[5], torch.log(torch.arange(1, 17.0)))
    assert torch.equal(layer.D, torch.ones(64))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert layer.dt_proj.weight.abs().max() <= 2 ** -0.5
    assert layer.x_proj.out_features == 2 + 2 * 16
    c = Mamba(32, d_state=4, complex=True)
    torch.testing.assert_close(c.A()[0], torch.complex(torch.full((4,), -0.5),
                                                       math.pi * torch.arange(4.0)))
    assert c.x_proj.out_features == 2 + 4 * 4
    assert Mamba(16, dt_rank=5).dt_rank == 5


@pytest.mark.parametrize("kw, match", [
    ({"d_state": 0}, "d_state"), ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
    ({"dt_rank": 0}, "dt_rank"), ({"discretization": "euler2"}, "discretization"),
    ({"dt_scale": 0.0}, "dt_scale"), ({"d_sate": 4}, "d_state"),
])
def test_bad_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        Mamba(D, **kw)


def test_bad_state_is_rejected_with_the_layer_named():
    layer = make()
    x = rand(2, 5, D)
    st = layer.init_state(2)
    with pytest.raises(InputError, match="'mamba'.*missing"):
        layer(x, state={"conv": st["conv"]})
    with pytest.raises(InputError, match=r"state\['ssm'\] must have shape \(2, 16, 4\)"):
        layer(x, state={**st, "ssm": st["ssm"][:, :3]})
    with pytest.raises(InputError, match="sequences in cu_seqlens"):
        layer(x[:1], state=st, cu_seqlens=torch.tensor([0, 2, 3, 5]))
    with pytest.raises(InputTypeError, match="complex"):
        layer.step(x[:, 0], {**st, "ssm": st["ssm"].to(torch.complex64)})


def test_build_from_spec():
    layer = lrnnx.build_layer("mamba(d_state=8, discretization=zoh, scan=torch)", d_model=16)
    assert isinstance(layer, Mamba) and layer.scan == "torch" and layer.d_state == 8
    assert layer(torch.randn(1, 5, 16)).shape == (1, 5, 16)
    assert lrnnx.build_layer("mamba(scan=auto)", d_model=16).scan == "auto"
    with pytest.raises(UnknownComponentError, match="torhc"):
        Mamba(16, scan="torhc")


@pytest.mark.parametrize("cplx", [False, True])
def test_bfloat16_runs_with_the_state_in_float32(cplx):
    layer = make(complex=cplx)
    x = rand(2, 9, D)
    y32 = layer(x)
    layer = layer.to(torch.bfloat16)
    y, st = layer(x.bfloat16(), return_state=True)
    y_t, st = layer.step(x[:, 0].bfloat16(), st)
    assert y.dtype == y_t.dtype == torch.bfloat16
    assert st["ssm"].dtype == (torch.complex64 if cplx else torch.float32)
    assert_rel(y, y32, 3e-2, "bf16 vs fp32")  # bf16 has 8 mantissa bits


# ------------------------------------------------------------------------------ conformance
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conformance(dtype):
    from lrnnx.testing import check_layer

    report = check_layer("mamba", dtype=dtype)
    assert report.ok, str(report)
