"""The ``linoss`` layer (Rusch & Rus, ICLR 2025): the IM / IMEX oscillator recurrences against
float64 references written from the paper's discretized ODE (including A = 0, where the 2x2
blocks are Jordan blocks, and the IMEX regime dt^2 A > 4), the Schur form, conv == scan, and the
conformance suite.

Accuracy target: fp32 layer vs float64 reference, rel. error (max abs err / max |ref|) <= 1e-5.
"""

from __future__ import annotations

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError
from lrnnx.registry.core import REGISTRY
from lrnnx.testing import check_layer
from lrnnx_plugins.lti.linoss import LinOSS

f64, c128 = torch.float64, torch.complex128
TOL32 = 1e-5


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register ``linoss`` for this module until the lti plugin is a built-in one."""
    added = "linoss" not in REGISTRY.names("layer")
    if added:
        lrnnx.register("layer", LinOSS)
    yield
    if added:
        REGISTRY.unregister("layer", "linoss")


def rel(a, ref) -> float:
    a, ref = a.detach().to(c128), ref.detach().to(c128)
    return float((a - ref).abs().max() / ref.abs().max())


def rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


def make(d_model=5, d_state=6, seed=0, stress=True, **kw):
    torch.manual_seed(seed)
    layer = LinOSS(d_model, d_state, **kw)
    if stress:
        with torch.no_grad():  # A = 0 (relu: a Jordan block), tiny A, and a stiff oscillator
            layer.osc.A_hat[:3] = torch.tensor([-0.3, 1e-7, 5.0])
    return layer


# ----------------------------------------------------------------------------- conformance

class LinOSSIMEX(LinOSS):
    name = "linoss_imex_subject"
    test_kwargs = {"d_state": 4, "disc": "IMEX"}


class LinOSSConv(LinOSS):
    name = "linoss_conv_subject"
    test_kwargs = {"d_state": 4, "mode": "conv"}


class LinOSSConvIMEX(LinOSS):
    name = "linoss_conv_imex_subject"
    test_kwargs = {"d_state": 4, "mode": "conv", "disc": "IMEX"}


class LinOSSBidirectional(LinOSS):
    name = "linoss_bidirectional_subject"
    capabilities = frozenset({"varlen", "bidirectional"})
    test_kwargs = {"d_state": 3, "bidirectional": True}
    expected_failures = {"causality": "bidirectional: y_t depends on x after t by design"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("subject", ["linoss", LinOSSIMEX, LinOSSConv, LinOSSConvIMEX,
                                     LinOSSBidirectional],
                         ids=["im", "imex", "conv", "conv-imex", "bidirectional"])
def test_conformance(subject, dtype):
    check_layer(subject, dtype=dtype)


# ----------------------------------------------------------------------------- references

def reference(layer: LinOSS, x, h=None, osc=None):
    """The paper's discretized ODE (z = y'), float64, from the raw parameters.

    IM:   z_n = z_{n-1} + dt (-A y_n + u_n),      y_n = y_{n-1} + dt z_n   (solved for y_n)
    IMEX: z_n = z_{n-1} + dt (-A y_{n-1} + u_n),  y_n = y_{n-1} + dt z_n
    """
    o = layer.osc if osc is None else osc
    A = torch.relu(o.A_hat.detach().double())
    dt = torch.sigmoid(o.dt_hat.detach().double())
    B = torch.view_as_complex(o.B.detach().double().contiguous())
    C = torch.view_as_complex(o.C.detach().double().contiguous())
    D = layer.D.detach().double()
    n, P = x.shape[0], A.shape[0]
    z = torch.zeros(n, P, dtype=c128) if h is None else h[:, 0].to(c128)
    y = torch.zeros(n, P, dtype=c128) if h is None else h[:, 1].to(c128)
    outs = []
    for t in range(x.shape[1]):
        u = x[:, t].to(c128) @ B.T
        if layer.disc == "IM":
            y_new = (y + dt * z + dt * dt * u) / (1 + dt * dt * A)
            z = z + dt * (-A * y_new + u)
            y = y_new
        else:
            z = z + dt * (-A * y + u)
            y = y + dt * z
        outs.append((y @ C.T).real + D * x[:, t])
    return torch.stack(outs, 1), torch.stack([z, y], 1)


@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("disc", ["IM", "IMEX"])
def test_matches_the_discretized_ode(disc, mode):
    layer = make(disc=disc, mode=mode)
    x = rand(2, 40, 5)
    y, st = layer(x.float(), return_state=True)
    y_ref, h_ref = reference(layer, x)
    assert rel(y, y_ref) <= TOL32 and rel(st["h"], h_ref) <= TOL32
    y2, st2 = layer(x.float().flip(1), state=st, return_state=True)
    y2_ref, h2_ref = reference(layer, x.flip(1), h=h_ref)
    assert rel(y2, y2_ref) <= TOL32 and rel(st2["h"], h2_ref) <= TOL32


def test_imex_beyond_its_stability_limit_is_still_exact():
    """dt^2 A > 4: real eigenvalues, one of modulus > 1 -- the Schur form still holds."""
    layer = make(disc="IMEX")
    with torch.no_grad():
        layer.osc.A_hat[3] = 30.0
    assert float(torch.sigmoid(layer.osc.dt_hat[3].detach()) ** 2 * 30.0) > 4
    x = rand(2, 12, 5)
    for mode in ("scan", "conv"):
        layer.mode = mode
        y, st = layer(x.float(), return_state=True)
        y_ref, h_ref = reference(layer, x)
        assert rel(y, y_ref) <= TOL32 and rel(st["h"], h_ref) <= TOL32


@pytest.mark.parametrize("disc", ["IM", "IMEX"])
def test_blocks_and_schur_form(disc):
    layer = make(disc=disc)
    with torch.no_grad():
        m11, m12, m21, m22, f1, f2 = (t.double() for t in layer.osc.double().blocks(disc))
        s = {k: v.to(c128) for k, v in layer.osc.schur(disc).items()}
    A = torch.relu(layer.osc.A_hat.detach())
    dt = torch.sigmoid(layer.osc.dt_hat.detach())
    if disc == "IM":  # the paper's M_IM: top-left written 1 - dt^2 A S, which is S
        S = 1 / (1 + dt * dt * A)
        assert torch.allclose(m11, 1 - dt * dt * A * S) and torch.allclose(m22, S)
        assert torch.allclose(s["lam1"].abs() ** 2, S)                 # |lambda| = sqrt(S)
    else:
        assert torch.allclose(m11 * m22 - m12 * m21, torch.ones_like(A))  # det M = 1
    for p in range(A.shape[0]):
        M = torch.tensor([[m11[p], m12[p]], [m21[p], m22[p]]], dtype=c128)
        a = s["a"][p]
        Q = torch.stack([torch.stack([a, torch.ones_like(a)]),
                         torch.stack([torch.ones_like(a), -a.conj()])])
        T = torch.linalg.solve(Q, M @ Q)
        assert abs(T[1, 0]) < 1e-12 and abs(T[0, 0] - s["lam1"][p]) < 1e-12
        assert abs(T[1, 1] - s["lam2"][p]) < 1e-12 and abs(T[0, 1] - s["t12"][p]) < 1e-12
        g = torch.linalg.solve(Q, torch.stack([f1[p], f2[p]]).to(c128))
        assert abs(g[0] - s["g1"][p]) < 1e-12 and abs(g[1] - s["g2"][p]) < 1e-12
        assert float(torch.linalg.cond(Q)) < 1 + 1e-9                 # unitary up to scale


def test_gradients_are_finite_at_a_zero():
    layer = make(d_state=4)
    x = torch.randn(2, 20, 5)
    for mode in ("scan", "conv"):
        layer.mode = mode
        layer.zero_grad()
        layer(x).square().sum().backward()
        for name, p in layer.named_parameters():
            assert bool(torch.isfinite(p.grad).all()), name
        assert float(layer.osc.A_hat.grad[0]) == 0.0  # relu: A_hat < 0 gets no gradient


@pytest.mark.parametrize("disc", ["IM", "IMEX"])
@pytest.mark.parametrize("L", [1, 64, 1000, 4096])
def test_conv_equals_scan(L, disc):
    """With the paper's init (measured: <= 2.5e-6 at L = 4096 over 3 seeds).

    Not with the A = 0 stress oscillators of ``make``: their positions grow like t^1.5 (Jordan
    blocks) and the fp32 *sequential* scan then drifts ~sqrt(L) eps per nesting level from the
    exact recurrence of the same rounded coefficients (measured at L = 4096, IMEX: scan 4.9e-5
    vs conv from the torch_ref loop 1.9e-6); both are checked against float64 at L = 40 above.
    """
    scan = make(d_model=4, d_state=5, disc=disc, mode="scan", stress=False)
    conv = make(d_model=4, d_state=5, disc=disc, mode="conv", stress=False)
    conv.load_state_dict(scan.state_dict())
    x = rand(2, L, 4, seed=L).float()
    h0 = {"h": torch.randn(2, 2, 5, dtype=torch.complex64)}
    ys, ss = scan(x, state=h0, return_state=True)
    yc, sc = conv(x, state=h0, return_state=True)
    assert rel(yc, ys) <= TOL32 and rel(sc["h"], ss["h"]) <= TOL32


def test_varlen_and_bidirectional():
    x = rand(1, 90, 4)
    cu = torch.tensor([0, 30, 30, 75, 90])
    for bidirectional in (False, True):
        scan = make(d_model=4, mode="scan", bidirectional=bidirectional)
        conv = make(d_model=4, mode="conv", bidirectional=bidirectional)
        conv.load_state_dict(scan.state_dict())
        y = scan(x.float(), cu_seqlens=cu)
        assert rel(conv(x.float(), cu_seqlens=cu), y) <= TOL32
        for a, b in ((0, 30), (30, 75), (75, 90)):
            assert rel(y[:, a:b], scan(x[:, a:b].float())) <= TOL32
    # the reverse direction is the forward recurrence of its own oscillators, time-reversed
    bi = make(d_model=4, mode="scan", bidirectional=True)
    y_rev, _ = reference(bi, x.flip(1), osc=bi.osc_rev)
    y_fwd, _ = reference(bi, x)
    y_ref = y_fwd + y_rev.flip(1) - bi.D.detach().double() * x
    assert rel(bi(x.float()), y_ref) <= TOL32


def test_defaults_options_and_errors():
    layer = LinOSS(d_model=8)
    assert (layer.d_state, layer.disc, layer.mode) == (64, "IM", "auto")
    assert layer.D.shape == (8,) and layer.init_state(2)["h"].shape == (2, 2, 64)
    dt = torch.sigmoid(layer.osc.dt_hat)
    assert bool((dt > 0.5).all() and (dt < 0.75).all())       # sigmoid(U[0, 1])
    built = lrnnx.build_layer("linoss(d_state=4, disc=IMEX, mode=conv)", d_model=3)
    assert (built.disc, built.mode, built.d_state) == ("IMEX", "conv", 4)
    with pytest.raises(ConfigError, match="disc"):
        LinOSS(d_model=4, disc="RK4")
    with pytest.raises(ConfigError, match="mode"):
        LinOSS(d_model=4, mode="fft")
    with pytest.raises(ConfigError, match="layer 'linoss'.*d_state"):
        LinOSS(d_model=4, d_state=0)
    x = torch.randn(2, 5, 4)
    small = LinOSS(d_model=4, d_state=3)
    with pytest.raises(InputError, match="layer 'linoss': state\\['h'\\] must be a tensor of "
                                         "shape \\(2, 2, 3\\)"):
        small(x, state={"h": torch.zeros(2, 3, dtype=torch.complex64)})
    with pytest.raises(InputTypeError, match="complex64"):
        small(x, state={"h": torch.zeros(2, 2, 3, dtype=torch.complex128)})
    bi = LinOSS(d_model=4, d_state=3, bidirectional=True)
    with pytest.raises(InputError, match="bidirectional and cannot step"):
        bi.step(x[:, 0], bi.init_state(2))
