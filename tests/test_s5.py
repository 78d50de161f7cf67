"""The ``s5`` layer (Smith et al. 2023) and its event-stream form (Event-SSM, Schöne et al.
2024): paper defaults, outputs against float64 paper-form recurrences, conv == scan, long-run
stability of the bilinear transform, event timesteps, and the conformance suite.

Accuracy target: fp32 layer vs float64 reference, rel. error (max abs err / max |ref|) <= 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError, InputError, UnknownComponentError
from lrnnx.registry.core import REGISTRY
from lrnnx.testing import check_layer
from lrnnx_plugins.lti.s5 import S5
from lrnnx_plugins.parameterizations import HippoN

f64, c128 = torch.float64, torch.complex128
TOL32 = 1e-5


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register ``s5`` for this module until the lti plugin is a built-in one."""
    added = "s5" not in REGISTRY.names("layer")
    if added:
        lrnnx.register("layer", S5)
    yield
    if added:
        REGISTRY.unregister("layer", "s5")


def rel(a, ref) -> float:
    a, ref = a.detach().to(c128), ref.detach().to(c128)
    return float((a - ref).abs().max() / ref.abs().max())


def rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


def make(d_model=5, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("d_state", 8)
    kw.setdefault("blocks", 2)
    return S5(d_model, **kw)


# ----------------------------------------------------------------------------- conformance

class S5Conv(S5):
    """Conv mode as its own conformance subject (not registered)."""
    name = "s5_conv_subject"
    test_kwargs = {"d_state": 4, "blocks": 2, "mode": "conv", "disc": "bilinear"}


class S5Bidirectional(S5):
    name = "s5_bidirectional_subject"
    capabilities = frozenset({"varlen", "timesteps", "bidirectional"})
    test_kwargs = {"d_state": 4, "blocks": 1, "bidirectional": True}
    expected_failures = {"causality": "bidirectional: y_t depends on x after t by design"}


class S5Async(S5):
    name = "s5_async_subject"
    test_kwargs = {"d_state": 4, "blocks": 2, "async_input": True, "conj_sym": False}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("subject", ["s5", S5Conv, S5Bidirectional, S5Async],
                         ids=["s5", "conv", "bidirectional", "async"])
def test_conformance(subject, dtype):
    check_layer(subject, dtype=dtype)


# ----------------------------------------------------------------------------- defaults

def test_defaults_are_the_papers():
    layer = S5(d_model=16)
    p = layer.param
    assert isinstance(p, HippoN) and layer.structure == "mimo"
    assert (layer.d_state, p.blocks, p.dt_min, p.dt_max, p.conj_sym) == (128, 8, 0.001, 0.1, True)
    assert layer.disc.name == "zoh" and layer.mode == "auto" and not layer.async_input
    # D: a per-channel (diagonal) feed-through, not an H x H matrix
    assert layer.D.shape == (16,)
    P = p()
    assert torch.allclose(P.A.real, torch.full((128,), -0.5))
    dt = P.dt
    assert bool((dt >= 0.001 - 1e-9).all() and (dt <= 0.1 + 1e-9).all()) and dt.shape == (128,)
    assert layer.init_state(3)["h"].shape == (3, 128) and layer.init_state(1)["h"].is_complex()
    assert lrnnx.get_layer("s5") is S5


def test_options_and_errors():
    layer = lrnnx.build_layer("s5(d_state=8, blocks=4, disc=bilinear, mode=conv)", d_model=4)
    assert layer.param.blocks == 4 and layer.disc.name == "bilinear" and layer.mode == "conv"
    with pytest.raises(ConfigError, match="layer 's5'.*blocks"):
        S5(d_model=4, d_state=6, blocks=4)
    with pytest.raises(ConfigError, match="mode"):
        S5(d_model=4, d_state=4, blocks=1, mode="fft")
    with pytest.raises(UnknownComponentError, match="nope"):
        lrnnx.build_layer("s5(d_state=4, blocks=1, disc=nope)", d_model=4)


# ----------------------------------------------------------------------------- references

def reference(layer: S5, x, disc: str, timesteps=None, h=None, gain_dt_only=False):
    """The S5 recurrence in float64 from the raw parameters, per the paper's formulas."""
    P = layer.param()
    lam, B, C = P.A.detach().to(c128), P.B.detach().to(c128), P.C.detach().to(c128)
    dt, D = P.dt.detach().double(), layer.D.detach().double()
    h = torch.zeros(x.shape[0], lam.shape[0], dtype=c128) if h is None else h.to(c128)
    ys = []
    for t in range(x.shape[1]):
        step = dt if timesteps is None else dt * timesteps[:, t, None]
        gstep = dt if gain_dt_only else step
        if disc == "zoh":
            a, g = torch.exp(lam * step), (torch.exp(lam * gstep) - 1) / lam
        elif disc == "bilinear":
            a = (1 + step * lam / 2) / (1 - step * lam / 2)
            g = gstep / (1 - gstep * lam / 2)
        else:  # dirac
            a, g = torch.exp(lam * step), torch.ones_like(lam)
        h = a * h + g * (x[:, t].to(c128) @ B.T)
        ys.append(2 * (h @ C.T).real + D * x[:, t])
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear", "dirac"])
def test_matches_the_paper_recurrence(disc, mode):
    layer = make(disc=disc, mode=mode, dt_min=0.01, dt_max=0.5)
    x = rand(2, 30, 5)
    y, st = layer(x.float(), return_state=True)
    y_ref, h_ref = reference(layer, x, disc)
    assert rel(y, y_ref) <= TOL32 and rel(st["h"], h_ref) <= TOL32
    # continuing from the carried state
    y2, st2 = layer(x.float().flip(1), state=st, return_state=True)
    y2_ref, h2_ref = reference(layer, x.flip(1), disc, h=h_ref)
    assert rel(y2, y2_ref) <= TOL32 and rel(st2["h"], h2_ref) <= TOL32


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("L", [1, 64, 1000, 4096])
def test_conv_equals_scan(L, disc):
    scan = make(d_model=4, disc=disc, mode="scan")
    conv = make(d_model=4, disc=disc, mode="conv")
    conv.load_state_dict(scan.state_dict())
    x = rand(2, L, 4, seed=L).float()
    h0 = {"h": scan.init_state(2)["h"] + torch.randn(2, 8, dtype=torch.complex64)}
    ys, ss = scan(x, state=h0, return_state=True)
    yc, sc = conv(x, state=h0, return_state=True)
    assert rel(yc, ys) <= TOL32 and rel(sc["h"], ss["h"]) <= TOL32


def test_conv_equals_scan_bidirectional_and_varlen():
    scan = make(d_model=4, mode="scan", bidirectional=True)
    conv = make(d_model=4, mode="conv", bidirectional=True)
    conv.load_state_dict(scan.state_dict())
    x = rand(1, 300, 4).float()
    cu = torch.tensor([0, 100, 100, 260, 300])
    assert rel(conv(x), scan(x)) <= TOL32
    assert rel(conv(x, cu_seqlens=cu), scan(x, cu_seqlens=cu)) <= TOL32
    # the reverse direction on its own: the forward layer on the time-reversed input
    fwd = make(d_model=4, mode="scan")
    fwd.param.load_state_dict(scan.param_rev.state_dict())
    fwd.D.data.zero_()
    scan.D.data.zero_()
    scan.param.B.data.zero_()
    assert rel(scan(x), fwd(x.flip(1)).flip(1)) <= TOL32


@pytest.mark.parametrize("mode", ["scan", "conv"])
def test_bilinear_stays_bounded_over_1e5_steps(mode):
    """|A_bar| < 1 for Re(Lambda) < 0: a constant input settles at the DC gain."""
    layer = make(d_model=2, d_state=4, blocks=1, disc="bilinear", mode=mode, dt_min=0.001,
                 dt_max=0.01)
    L = 100_000
    x = torch.ones(1, L, 2)
    with torch.no_grad():
        y = layer(x)
    P = layer.param()
    lam, dt = P.A.detach().to(c128), P.dt.detach().double()
    a = (1 + dt * lam / 2) / (1 - dt * lam / 2)
    assert float(a.abs().max()) < 1.0
    gain = dt / (1 - dt * lam / 2)
    h_dc = gain / (1 - a) * (torch.ones(2, dtype=c128) @ P.B.detach().to(c128).T)
    y_dc = 2 * (P.C.detach().to(c128) @ h_dc).real + layer.D.detach().double()
    assert bool(torch.isfinite(y).all())
    assert rel(y[0, -1], y_dc) <= 1e-4  # fp32 state after 1e5 steps of decay ~exp(-25)
    assert float(y.abs().max()) <= 2 * float(y_dc.abs().max()) + 10


# ----------------------------------------------------------------------------- event streams

@pytest.mark.parametrize("disc", ["zoh", "bilinear", "dirac"])
def test_equal_timesteps_equal_a_scaled_step(disc):
    c = 2.5
    layer = make(disc=disc)
    scaled = make(disc=disc)
    scaled.load_state_dict(layer.state_dict())
    with torch.no_grad():
        scaled.param.log_dt += math.log(c)
    x = rand(2, 20, 5).float()
    ts = torch.full((2, 20), c)
    y, st = layer(x, timesteps=ts, return_state=True)
    y_ref, st_ref = scaled(x, return_state=True)
    assert rel(y, y_ref) <= TOL32 and rel(st["h"], st_ref["h"]) <= TOL32


def test_events_match_the_asynchronous_recurrence_and_step():
    for async_input in (False, True):
        layer = make(async_input=async_input, dt_min=0.01, dt_max=0.5)
        x = rand(2, 25, 5)
        ts = 3 * torch.rand(2, 25, generator=torch.Generator().manual_seed(4), dtype=f64)
        ts[:, 5] = 0.0
        y, st = layer(x.float(), timesteps=ts.float(), return_state=True)
        y_ref, h_ref = reference(layer, x, "zoh", ts, gain_dt_only=async_input)
        assert rel(y, y_ref) <= TOL32 and rel(st["h"], h_ref) <= TOL32
        state, ys = layer.init_state(2), []
        for t in range(25):
            y_t, state = layer.step(x[:, t].float(), state, timesteps=ts[:, t].float())
            ys.append(y_t)
        assert rel(torch.stack(ys, 1), y_ref) <= TOL32 and rel(state["h"], h_ref) <= TOL32


def test_zero_timestep_leaves_the_state_unchanged():
    layer = make()  # zoh: A_bar = exp(0) = 1, B_bar = 0 * phi1(0) = 0
    x = rand(2, 12, 5).float()
    _, st = layer(x, return_state=True)
    y_t, st2 = layer.step(torch.randn(2, 5), st, timesteps=torch.zeros(2))
    assert torch.equal(st2["h"], st["h"])
    ts = torch.ones(2, 12)
    ts[:, 7:] = 0.0
    _, a = layer(x, timesteps=ts, return_state=True)
    _, b = layer(x[:, :7], timesteps=ts[:, :7], return_state=True)
    assert rel(a["h"], b["h"]) <= 1e-6
    # Event-SSM's async gain still adds a simultaneous event
    ev = make(async_input=True)
    _, st3 = ev.step(torch.ones(2, 5), ev.init_state(2), timesteps=torch.zeros(2))
    assert float(st3["h"].detach().abs().max()) > 0


def test_step_with_timesteps_needs_the_right_shape():
    layer = make()
    with pytest.raises(InputError, match="layer 's5'.*timesteps"):
        layer.step(torch.randn(2, 5), layer.init_state(2), timesteps=torch.ones(3))


def test_event_stream_example_replays_online():
    """examples/event_stream_s5.py: its data and its online replay check (not the training)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "event_stream_s5.py"
    spec = importlib.util.spec_from_file_location("event_stream_s5", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    f, gaps, labels = ex.make_streams(4, torch.Generator().manual_seed(0))
    assert f.shape == (4, ex.L, ex.FEATURES) and gaps.shape == (4, ex.L)
    assert bool((gaps[:, 0] == 0).all() and (gaps >= 0).all())
    torch.manual_seed(0)
    model = ex.EventClassifier()
    assert model(f, gaps).shape == (4, 2)
    ex.replay_online(model, f, gaps)
