"""The ``lru`` (Orvieto et al. 2023) and ``s4d`` (Gu et al. 2022) layers: paper defaults, init,
outputs against paper-form float64 references (LRU's recurrence, S4D's convolution kernel), and
the conformance suite."""

from __future__ import annotations

import math

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError
from lrnnx.testing import parametrize_with_checks
from lrnnx_plugins.parameterizations import LRURing, S4DInv, S4DLin, S4DReal
from lrnnx_plugins.ssm import LRU, S4D, SSM

H = 5
f64, c128 = torch.float64, torch.complex128


def rel(a, ref) -> float:
    a, ref = a.detach().to(c128), ref.detach().to(c128)
    return float((a - ref).abs().max() / ref.abs().max())


def x_and_ts(B=2, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, H, generator=g, dtype=f64),
            0.5 + torch.rand(B, T, generator=g, dtype=f64))


@parametrize_with_checks(["lru", "s4d"])
def test_conformance(layer, check):
    check(layer)


# ----------------------------------------------------------------------------- LRU

def test_lru_defaults_and_registration():
    assert lrnnx.get_layer("lru") is LRU and issubclass(LRU, SSM)
    assert LRU.capabilities == SSM.capabilities
    layer = LRU(d_model=H)
    assert layer.d_state == 256 and isinstance(layer.param, LRURing)
    p = layer.param
    assert (p.r_min, p.r_max, p.max_phase) == (0.0, 1.0, 2 * math.pi) and p.complex
    assert layer.discrete and layer.structure == "mimo"
    assert layer.init_state(3)["h"].shape == (3, 256)


def lru_reference(layer: LRU, x, timesteps=None, h=None):
    """h_t = lambda^(t_k) h + gamma (B x_t), y = Re(C h) + D x, from the raw parameters."""
    p = layer.param
    nu = torch.exp(p.nu_log.detach().double())
    theta = torch.exp(p.theta_log.detach().double())
    log_lam = torch.complex(-nu, theta)
    gamma = torch.exp(p.gamma_log.detach().double())
    Bm = torch.view_as_complex(p.B.detach().double())
    Cm = torch.view_as_complex(p.C.detach().double())
    D = layer.D.detach().double()
    h = torch.zeros(x.shape[0], layer.d_state, dtype=c128) if h is None else h.to(c128)
    ys = []
    for t in range(x.shape[1]):
        step = 1.0 if timesteps is None else timesteps[:, t, None]
        h = torch.exp(step * log_lam) * h + gamma * (x[:, t].to(c128) @ Bm.T)
        ys.append((h @ Cm.T).real + D * x[:, t])
    return torch.stack(ys, 1), h


def test_lru_matches_its_recurrence():
    torch.manual_seed(0)
    layer = LRU(d_model=H, d_state=7, r_min=0.8, r_max=0.99, max_phase=math.pi / 4)
    x, ts = x_and_ts()
    y, st = layer(x.float(), return_state=True)
    y_ref, h_ref = lru_reference(layer, x)
    assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5
    # event stream: a gap of t steps decays by lambda ** t
    y, st = layer(x.float(), timesteps=ts.float(), return_state=True)
    y_ref, h_ref = lru_reference(layer, x, ts)
    assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5


def test_lru_init_on_the_ring():
    torch.manual_seed(0)
    layer = lrnnx.build_layer("lru(d_state=300, r_min=0.9, r_max=0.999, max_phase=0.3)",
                              d_model=H)
    lam = layer.param().A.detach().to(c128)
    assert bool((lam.abs() >= 0.9 - 1e-6).all()) and bool((lam.abs() <= 0.999 + 1e-6).all())
    assert bool((lam.angle() >= 0).all()) and bool((lam.angle() <= 0.3 + 1e-6).all())


def test_lru_equals_ssm_with_lru_ring():
    torch.manual_seed(3)
    a = LRU(d_model=H, d_state=6, r_min=0.5)
    torch.manual_seed(3)
    b = lrnnx.build_layer("ssm(d_state=6, param=lru_ring(r_min=0.5))", d_model=H)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    x, _ = x_and_ts()
    assert torch.equal(a(x.float()), b(x.float()))


def test_real_lru_and_errors():
    torch.manual_seed(0)
    layer = LRU(d_model=H, d_state=4, complex=False, r_min=0.2, r_max=0.7)
    assert layer.init_state(1)["h"].dtype == torch.float32
    x, _ = x_and_ts()
    y = layer(x.float())
    lam = layer.param().A.detach().double()
    h = torch.zeros(2, 4, dtype=f64)
    p = layer.param
    ys = []
    for t in range(x.shape[1]):
        h = lam * h + torch.exp(p.gamma_log.detach().double()) * (x[:, t] @ p.B.detach().double().T)
        ys.append(h @ p.C.detach().double().T + layer.D.detach().double() * x[:, t])
    assert rel(y, torch.stack(ys, 1)) <= 1e-5
    with pytest.raises(ConfigError, match="layer 'lru': parameterization 'lru_ring': the ring"):
        LRU(d_model=H, r_min=0.9, r_max=0.1)
    with pytest.raises(ConfigError, match="unknown option 'disc'"):
        LRU(d_model=H, disc="zoh")  # lru_ring is discrete: no discretizer to choose


# ----------------------------------------------------------------------------- S4D

def test_s4d_defaults_and_options():
    assert lrnnx.get_layer("s4d") is S4D
    layer = S4D(d_model=H)
    assert layer.d_state == 32 and isinstance(layer.param, S4DLin) and layer.disc.name == "zoh"
    assert layer.init_state(2)["h"].shape == (2, H, 32)
    for init, cls in (("lin", S4DLin), ("inv", S4DInv), ("real", S4DReal)):
        s = lrnnx.build_layer(f"s4d(d_state=4, init={init}, dt_min=0.01, dt_max=0.02, "
                              f"disc=bilinear)", d_model=H)
        assert isinstance(s.param, cls) and s.disc.name == "bilinear"
        dt = s.param().dt
        assert bool((dt >= 0.01 * 0.999).all()) and bool((dt <= 0.02 * 1.001).all())
    assert S4D(d_model=H, init="real").init_state(1)["h"].dtype == torch.float32
    assert S4D(d_model=H, init="real", complex=True).init_state(1)["h"].dtype == torch.complex64
    with pytest.raises(ConfigError, match="option 'init' expects one of 'lin', 'inv', 'real'"):
        S4D(d_model=H, init="legs")


@pytest.mark.parametrize("init", ["lin", "inv", "real"])
def test_s4d_init_values(init):
    torch.manual_seed(0)
    A = S4D(d_model=H, d_state=6, init=init).param().A.detach().to(c128)[0]
    n = torch.arange(6, dtype=f64)
    want = {"lin": torch.complex(-0.5 + 0 * n, math.pi * n),
            "inv": torch.complex(-0.5 + 0 * n, 12 / math.pi * (12 / (2 * n + 1) - 1)),
            "real": torch.complex(-(n + 1), 0 * n)}[init]
    torch.testing.assert_close(A, want, rtol=1e-6, atol=1e-5)


def s4d_kernel_output(layer: S4D, x):
    """The paper's convolution form (S4D with ZOH): y = K * x + D x with
    K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l), A_bar = exp(dt A), B_bar = (A_bar - 1)/A B."""
    P = layer.param()
    A = P.A.detach().to(c128)
    Bm, Cm = P.B.detach().to(c128), P.C.detach().to(c128)
    dt = P.dt.detach().double()[:, None]
    A_bar = torch.exp(dt * A)
    B_bar = (A_bar - 1) / A * Bm
    T = x.shape[1]
    powers = A_bar[None] ** torch.arange(T, dtype=f64)[:, None, None]   # (T, H, N)
    K = 2 * (Cm * B_bar * powers).sum(-1).real                          # (T, H)
    y = torch.zeros_like(x)
    for t in range(T):
        y[:, t] = (K[: t + 1].flip(0) * x[:, : t + 1]).sum(1)
    return y + layer.D.detach().double() * x


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_matches_the_convolution_kernel(init):
    torch.manual_seed(0)
    layer = S4D(d_model=H, d_state=8, init=init, dt_min=0.01, dt_max=0.5)
    x, _ = x_and_ts(T=30)
    assert rel(layer(x.float()), s4d_kernel_output(layer, x)) <= 1e-5
    assert rel(layer.double()(x), s4d_kernel_output(layer, x)) <= 1e-10


def test_s4d_equals_ssm_with_s4d_lin_and_zoh():
    torch.manual_seed(5)
    a = S4D(d_model=H, d_state=4)
    torch.manual_seed(5)
    b = lrnnx.build_layer("ssm(d_state=4, param=s4d_lin, disc=zoh)", d_model=H)
    x, _ = x_and_ts()
    assert torch.equal(a(x.float()), b(x.float()))
