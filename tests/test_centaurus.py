"""The ``centaurus`` layer (Pei 2025): every connectivity against a float64 reference written
in the convolution form of the reference code (kernels ``sum_n E Re(exp(dt A l))``, the
simplified ZOH ``B_bar = dt B``, explicit causal sums), any d_state, both contraction orders,
conv == scan, event timesteps, and the conformance suite.

Accuracy target: fp32 layer vs float64 reference, rel. error (max abs err / max |ref|) <= 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError, InputError
from lrnnx.registry.core import REGISTRY
from lrnnx.testing import check_layer
from lrnnx_plugins.lti.centaurus import Centaurus, kernel_first

f64, c128 = torch.float64, torch.complex128
TOL32 = 1e-5
CONNECTIVITIES = ["pointwise", "neck", "dws", "full"]


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Register ``centaurus`` for this module until the lti plugin is a built-in one."""
    added = "centaurus" not in REGISTRY.names("layer")
    if added:
        lrnnx.register("layer", Centaurus)
    yield
    if added:
        REGISTRY.unregister("layer", "centaurus")


def rel(a, ref) -> float:
    a, ref = a.detach().to(c128), ref.detach().to(c128)
    return float((a - ref).abs().max() / ref.abs().max())


def rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


def make(connectivity, d_model=6, d_state=5, blocks=3, seed=0, **kw):
    torch.manual_seed(seed)
    layer = Centaurus(d_model, d_state=d_state, connectivity=connectivity, blocks=blocks, **kw)
    with torch.no_grad():  # break the init's symmetries (equal B rows, equal poles)
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


# ----------------------------------------------------------------------------- conformance

def subject(connectivity: str, mode: str | None = None, bidirectional: bool = False):
    kw = {"d_state": 3, "blocks": 2, "connectivity": connectivity}
    attrs = {"name": f"centaurus_{connectivity}_{mode or 'auto'}_subject", "test_kwargs": kw}
    if mode:
        kw["mode"] = mode
    if bidirectional:
        kw["bidirectional"] = True
        attrs["name"] = "centaurus_bidirectional_subject"
        attrs["capabilities"] = frozenset({"varlen", "timesteps", "bidirectional"})
        attrs["expected_failures"] = {"causality": "bidirectional: y_t depends on x after t"}
    return type(f"Centaurus_{connectivity}_{mode}", (Centaurus,), attrs)


SUBJECTS = {"default": "centaurus", **{c: subject(c) for c in CONNECTIVITIES[1:]},
            **{f"{c}-conv": subject(c, "conv") for c in CONNECTIVITIES},
            "neck-bidirectional": subject("neck", "conv", bidirectional=True)}


# every subject in float32; float64 for the default layer and two conv subjects (the
# gradcheck of every subject runs in float64 anyway), to keep the file fast on 2 cores
CASES = [(n, torch.float32) for n in SUBJECTS] + \
    [(n, torch.float64) for n in ("default", "neck-conv", "full-conv")]


@pytest.mark.parametrize("name, dtype", CASES,
                         ids=[f"{n}-{str(d)[-7:]}" for n, d in CASES])
def test_conformance(name, dtype):
    check_layer(SUBJECTS[name], dtype=dtype)


# ----------------------------------------------------------------------------- reference

def reference(layer: Centaurus, x, timestep: float = 1.0):
    """The reference code's convolution form in float64: y = sum_l K[l] x[t - l]."""
    core = layer.core
    c, H = core.connectivity, core.H
    A = torch.complex(-torch.nn.functional.softplus(core.A_re.detach().double()),
                      core.A_im.detach().double())
    dt = core.dt().detach().double() * timestep
    Bt, L, _ = x.shape
    lags = torch.arange(L, dtype=f64)

    def K(dtA):  # Re(exp(dt A l)): (..., L)
        return torch.exp(dtA[..., None] * lags).real

    P = {n: getattr(core, n).detach().double() for n in ("B", "C", "E", "W")
         if hasattr(core, n)}
    if c == "pointwise":       # K[d, c, l] = sum_s C[d,s] K_s(l) dt_s B[s,c]
        Kf = torch.einsum("ds,sl,sc->dcl", P["C"], K(dt * A), dt[:, None] * P["B"])
    elif c == "neck":          # dt_j B, k_j(l) = sum_n E[j,n] Re(exp(dt_j A l))
        k = (P["E"][..., None] * K(dt * A)).sum(1)
        Kf = torch.einsum("dj,jl,jc->dcl", P["C"], k, dt * P["B"])
    elif c == "dws":           # depthwise kernels sum_n dt E Re(...), then the 1x1 mixing W
        k = (dt * P["E"])[..., None].mul(K(dt * A)).sum(1)           # (H, L)
        Kf = P["W"][:, :, None] * k[None]
    else:                      # K[d,c,l] = sum_n dt_d E[d,c,n] Re(exp(dt_d A[d,c,n] l))
        Kf = ((dt * P["E"])[..., None] * K(dt * A)).sum(2)
    y = torch.zeros(Bt, L, H, dtype=f64)
    for t in range(L):
        y[:, t] = torch.einsum("dcl,blc->bd", Kf[..., :t + 1], x[:, :t + 1].flip(1))
    return y


@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_matches_the_reference_convolution(connectivity, mode):
    layer = make(connectivity, mode=mode)
    x = rand(2, 25, 6)
    assert rel(layer(x.float()), reference(layer, x)) <= TOL32
    # event streams: all-equal gaps c are the regular layer with every step scaled by c
    y_c = layer(x.float(), timesteps=torch.full((2, 25), 1.7))
    assert rel(y_c, reference(layer, x, timestep=1.7)) <= TOL32


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_any_d_state_and_state_shapes(connectivity):
    for d_model, d_state in ((4, 7), (7, 2), (3, 3)):
        layer = Centaurus(d_model, d_state=d_state, connectivity=connectivity, blocks=2)
        y, st = layer(torch.randn(2, 9, d_model), return_state=True)
        shape = {"pointwise": (2 * d_state,), "neck": (2, d_state), "dws": (d_model, d_state),
                 "full": (d_model, d_model, d_state)}[connectivity]
        assert y.shape == (2, 9, d_model) and st["h"].shape == (2, *shape)


@pytest.mark.parametrize("connectivity", ["pointwise", "neck"])
def test_contraction_orders_agree(connectivity):
    x = rand(3, 50, 6).float()
    ys = [make(connectivity, mode="conv", contraction=o)(x) for o in ("project", "kernel")]
    assert rel(ys[1], ys[0]) <= TOL32


def test_contraction_rule():
    # B=8, H=128, S=64 (the defaults at d_model=128): project first
    assert not kernel_first(8, 128, 128, 64)
    # few channels, large batch, many states: kernel first
    assert kernel_first(64, 4, 4, 64)
    # the rule is the cost comparison L H_in H_out (S + B) < B L S (H_in + H_out)
    for B, H, S in ((8, 16, 32), (2, 4, 8), (128, 8, 256), (4, 64, 4)):
        assert kernel_first(B, H, H, S) == (H * H * (S + B) < B * S * 2 * H)


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("L", [1, 64, 1000, 4096])
def test_conv_equals_scan(L, connectivity):
    kw = dict(d_model=3, d_state=4, blocks=2)
    scan = make(connectivity, mode="scan", **kw)
    conv = make(connectivity, mode="conv", **kw)
    conv.load_state_dict(scan.state_dict())
    x = rand(2, L, 3, seed=L).float()
    h0 = scan.init_state(2)
    h0["h"] = torch.randn_like(h0["h"])
    ys, ss = scan(x, state=h0, return_state=True)
    yc, sc = conv(x, state=h0, return_state=True)
    assert rel(yc, ys) <= TOL32 and rel(sc["h"], ss["h"]) <= TOL32


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_varlen_bidirectional_and_zoh(connectivity):
    x = rand(1, 60, 6).float()
    cu = torch.tensor([0, 20, 20, 51, 60])
    scan = make(connectivity, mode="scan", bidirectional=True, disc="zoh")
    conv = make(connectivity, mode="conv", bidirectional=True, disc="zoh")
    conv.load_state_dict(scan.state_dict())
    y = scan(x, cu_seqlens=cu)
    assert rel(conv(x, cu_seqlens=cu), y) <= TOL32
    for a, b in ((0, 20), (20, 51), (51, 60)):
        assert rel(y[:, a:b], scan(x[:, a:b])) <= TOL32


def test_zero_timestep_and_step():
    layer = make("neck", disc="zoh")
    x = torch.randn(2, 10, 6)
    _, st = layer(x, return_state=True)
    _, st2 = layer.step(torch.randn(2, 6), st, timesteps=torch.zeros(2))
    assert torch.equal(st2["h"], st["h"])      # zoh: A_bar = 1, B_bar = 0


def test_defaults_init_and_errors():
    layer = Centaurus(d_model=8)
    core = layer.core
    assert (layer.d_state, layer.blocks, layer.connectivity, layer.disc.name, layer.mode) == \
        (16, 4, "pointwise", "mamba", "auto")
    A = torch.complex(-torch.nn.functional.softplus(core.A_re), core.A_im)
    assert torch.allclose(A.real, torch.full((64,), -0.5))
    assert torch.allclose(A.imag[:16], math.pi * torch.arange(16.0))
    assert torch.allclose(core.log_dt.exp(), torch.tensor([1e-3, 1e-3 * 100 ** (1 / 3),
                                                           1e-3 * 100 ** (2 / 3), 0.1]))
    assert torch.allclose(core.B, torch.full((64, 8), 8 ** -0.5))
    assert not hasattr(layer, "D")
    with pytest.raises(ConfigError, match="connectivity"):
        Centaurus(d_model=4, connectivity="grouped")
    with pytest.raises(ConfigError, match="layer 'centaurus'.*blocks"):
        Centaurus(d_model=4, blocks=0)
    with pytest.raises(ConfigError, match="dt_min"):
        Centaurus(d_model=4, dt_min=0.5, dt_max=0.1)
    small = Centaurus(d_model=4, d_state=2, connectivity="dws")
    with pytest.raises(InputError, match="layer 'centaurus': state\\['h'\\] must be a tensor of "
                                         "shape \\(2, 4, 2\\)"):
        small(torch.randn(2, 5, 4), state={"h": torch.zeros(2, 8, dtype=torch.complex64)})
    built = lrnnx.build_layer("centaurus(connectivity=full, d_state=2, contraction=kernel)",
                              d_model=3)
    assert built.connectivity == "full" and built.contraction == "kernel"
