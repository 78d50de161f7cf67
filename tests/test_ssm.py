"""The generic ``ssm`` layer: every parameterization x discretizer x scan backend against a float64
sequential reference written out here, state passing, varlen, timesteps, gradients,
bidirectional, third-party parameterizations and the conformance suite."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError, UnknownComponentError
from lrnnx.testing import check_layer, parametrize_with_checks
from lrnnx_plugins.parameterizations import SSMParams
from lrnnx_plugins.ssm import SSM

PARAMS = ("s4d_lin", "s4d_inv", "s4d_real", "hippo_n", "lru_ring", "selective")
DISCS = ("zoh", "bilinear", "euler", "mamba", "dirac")
BACKENDS = ("cpu", "torch", "torch_ref")
B, L, H, N = 2, 11, 4, 3
f64 = torch.float64


# ----------------------------------------------------------------------------- the reference

def ref_disc(name: str, A: torch.Tensor, dt: torch.Tensor):
    """(A_bar, B_scale) written out (independent of lrnnx.ops.discretize)."""
    x = dt * A
    if name == "zoh":
        return torch.exp(x), (torch.exp(x) - 1) / A
    if name == "bilinear":
        return (1 + x / 2) / (1 - x / 2), dt / (1 - x / 2)
    if name in ("euler", "mamba"):
        return torch.exp(x), dt + 0 * x
    if name == "dirac":
        return torch.exp(x), torch.ones_like(x)
    if name == ToyDisc.name:
        return 1 + x, dt + 0 * x
    raise AssertionError(name)


def reference(layer, x, h0=None, timesteps=None, param=None, reverse=False, disc=None):
    """y (without the D skip) and the final state of one direction, in float64, one token at a
    time: h = A_bar h + B_bar x, y = s Re(C h)."""
    layer = copy.deepcopy(layer).double()
    param = layer.param if param is None else copy.deepcopy(param).double()
    disc = disc or layer.disc.name
    x = x.detach().double()
    Bt, T, Hd = x.shape
    selective = getattr(param, "selective", False)
    discrete = getattr(param, "discrete", False)
    P = param(x) if selective else param()
    mimo = getattr(param, "structure", "siso") == "mimo"
    h = torch.zeros(Bt, *((P.A.shape[0],) if mimo else tuple(P.A.shape)), dtype=torch.complex128)
    if h0 is not None:
        h = h + h0.detach().to(torch.complex128)
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        ts = None if timesteps is None else timesteps[:, t].double()
        if discrete:
            A_bar = P.A if ts is None else torch.exp(ts[:, None] * P.log_A)
            scale = torch.ones(())
        elif selective:
            dt = P.dt[:, t, :, None]                                   # (Bt, H, 1)
            dt = dt if ts is None else dt * ts[:, None, None]
            A_bar, scale = ref_disc(disc, P.A, dt)
        elif mimo:
            dt = P.dt if ts is None else P.dt * ts[:, None]            # (P,) or (Bt, P)
            A_bar, scale = ref_disc(disc, P.A, dt)
        else:  # SISO: dt (H,) or (H, N)
            dt = P.dt[:, None] if P.dt.dim() == 1 else P.dt
            dt = dt if ts is None else dt * ts[:, None, None]
            A_bar, scale = ref_disc(disc, P.A, dt)
        if P.gamma is not None:
            scale = scale * P.gamma
        if mimo:
            h = A_bar * h + scale * (x[:, t].to(torch.complex128) @ P.B.to(torch.complex128).T)
            y = (h @ P.C.to(torch.complex128).T).real
        else:
            Bm = P.B[:, t, None, :] if selective else P.B
            Cm = P.C[:, t, None, :] if selective else P.C
            h = A_bar * h + scale * Bm * x[:, t, :, None]
            y = (Cm * h).sum(-1).real
        ys[t] = 2 * y if P.conj_sym else y
    return torch.stack(ys, 1), h


def ref_forward(layer, x, h0=None, timesteps=None):
    y, h = reference(layer, x, h0, timesteps)
    if layer.bidirectional:
        y = y + reference(layer, x, None, timesteps, param=layer.param_rev, reverse=True)[0]
    return y + layer.D.detach().double() * x.double(), h


def rel(a, ref) -> float:
    """max |a - ref| / max |ref| (absolute when ref is all zeros)."""
    a, ref = a.detach().to(torch.complex128), ref.detach().to(torch.complex128)
    return float((a - ref).abs().max() / ref.abs().max().clamp(min=1e-300))


def build(param="s4d_inv", disc="zoh", scan="auto", seed=0, d_state=N, **kw):
    torch.manual_seed(seed)
    return SSM(d_model=H, d_state=d_state, param=param, disc=disc, scan=scan, **kw)


def data(seed=1, Bt=B, T=L):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bt, T, H, generator=g, dtype=f64)
    ts = 0.5 + 1.5 * torch.rand(Bt, T, generator=g, dtype=f64)
    return x, ts


def combos():
    for p in PARAMS:
        for d in (DISCS if p != "lru_ring" else ("zoh",)):  # lru_ring is discrete: no disc
            for b in BACKENDS:
                yield pytest.param(p, d, b, id=f"{p}-{d}-{b}")


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("param, disc, scan", list(combos()))
def test_forward_matches_float64_reference(param, disc, scan):
    layer = build(param, disc, scan)
    x, ts = data()
    y, st = layer(x.float(), return_state=True)
    y_ref, h_ref = ref_forward(layer, x)
    assert y.dtype == torch.float32 and y.shape == (B, L, H)
    assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5
    # from a carried state, with per-token time steps (event streams)
    h0 = layer.init_state(B)["h"] + torch.randn_like(layer.init_state(B)["h"])
    y, st = layer(x.float(), state={"h": h0}, timesteps=ts.float(), return_state=True)
    y_ref, h_ref = ref_forward(layer, x, h0, ts)
    assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5


@pytest.mark.parametrize("param", PARAMS)
def test_step_matches_forward(param):
    layer = build(param, "bilinear")
    x, ts = data()
    x, ts = x.float(), ts.float()
    h0 = {"h": torch.randn_like(layer.init_state(B)["h"])}
    y_ref, st_ref = layer(x, state=h0, timesteps=ts, return_state=True)
    st, ys = h0, []
    for t in range(L):
        y_t, st = layer.step(x[:, t], st, timesteps=ts[:, t])
        ys.append(y_t)
    assert rel(torch.stack(ys, 1), y_ref) <= 1e-5 and rel(st["h"], st_ref["h"]) <= 1e-5


@pytest.mark.parametrize("param", PARAMS)
def test_split_with_carried_state_equals_full(param):
    layer = build(param)
    x, _ = data()
    x = x.float()
    y_full, st_full = layer(x, return_state=True)
    st, ys = None, []
    for a, b in ((0, 1), (1, 6), (6, 6), (6, L)):
        y, st = layer(x[:, a:b], state=st, return_state=True)
        ys.append(y)
    assert rel(torch.cat(ys, 1), y_full) <= 1e-5 and rel(st["h"], st_full["h"]) <= 1e-5


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_varlen_equals_a_loop_over_sequences(param, bidirectional):
    layer = build(param, bidirectional=bidirectional)
    lengths = (4, 0, 1, 6)
    cu = torch.tensor([0, 4, 4, 5, 11])
    x, ts = data(Bt=1)
    x, ts = x.float(), ts.float()
    kw = {} if bidirectional else {"state": {"h": torch.randn_like(layer.init_state(4)["h"])}}
    y, st = layer(x, cu_seqlens=cu, timesteps=ts, return_state=True, **kw)
    assert y.shape == (1, 11, H) and st["h"].shape[0] == len(lengths)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        kw_i = {} if bidirectional else {"state": {"h": kw["state"]["h"][i:i + 1]}}
        y_i, st_i = layer(x[:, a:b], timesteps=ts[:, a:b], return_state=True, **kw_i)
        if a < b:
            assert rel(y[:, a:b], y_i) <= 1e-5
        assert rel(st["h"][i:i + 1], st_i["h"]) <= 1e-5  # empty: h0[i] (or zeros)


@pytest.mark.parametrize("param", PARAMS)
def test_timesteps_of_ones_change_nothing(param):
    layer = build(param, "zoh")
    x, _ = data()
    y0, s0 = layer(x.float(), return_state=True)
    y1, s1 = layer(x.float(), timesteps=torch.ones(B, L), return_state=True)
    assert rel(y1, y0) <= 1e-6 and rel(s1["h"], s0["h"]) <= 1e-6
    y2 = layer(x.float(), timesteps=torch.full((B, L), 2.0))
    assert rel(y2, y0) > 1e-3  # other time steps do change the output


@pytest.mark.parametrize("disc", ["zoh", "mamba"])
def test_complex_selective(disc):
    """Complex A with real input-dependent B, C (fused selective_scan path)."""
    from lrnnx.registry.spec import Component

    layer = build(Component("selective", (("complex", True),)), disc)
    x, ts = data()
    y, st = layer(x.float(), timesteps=ts.float(), return_state=True)
    assert st["h"].dtype == torch.complex64
    y_ref, h_ref = ref_forward(layer, x, timesteps=ts)
    assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5


@pytest.mark.parametrize("param", PARAMS)
def test_gradcheck_float64(param):
    layer = build(param, "bilinear", d_state=2).double()
    x = torch.randn(1, 3, H, dtype=f64, requires_grad=True)
    h0 = torch.randn_like(layer.init_state(1)["h"]).requires_grad_(True)
    ts = torch.tensor([[0.5, 1.0, 2.0]], dtype=f64)

    def fwd(x, h0):
        y, st = layer(x, state={"h": h0}, timesteps=ts, return_state=True)
        return y, torch.view_as_real(st["h"]) if st["h"].is_complex() else st["h"]

    assert torch.autograd.gradcheck(fwd, (x, h0))
    names, ps = zip(*layer.named_parameters())
    leaves = tuple(p.detach().clone().requires_grad_(True) for p in ps)

    def by_params(*p):
        return torch.func.functional_call(layer, dict(zip(names, p)), (x.detach(),),
                                          {"timesteps": ts})

    assert torch.autograd.gradcheck(by_params, leaves, fast_mode=True)


# ----------------------------------------------------------------------------- bidirectional

def test_bidirectional_sums_two_directions_with_separate_parameters():
    layer = build("s4d_lin", "zoh", bidirectional=True)
    assert layer.param_rev is not None and layer.param_rev is not layer.param
    assert not torch.equal(layer.param.log_dt, layer.param_rev.log_dt)  # independent init
    x, ts = data()
    y, st = layer(x.float(), timesteps=ts.float(), return_state=True)
    y_ref, h_ref = ref_forward(layer, x, timesteps=ts)
    assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5
    with pytest.raises(InputError, match="layer 'ssm' is bidirectional and cannot step"):
        layer.step(x[:, 0].float(), layer.init_state(B))
    with pytest.raises(InputError, match="is bidirectional: it cannot continue from a state"):
        layer(x.float(), state=st)


class BidirectionalSSM(SSM):
    """The bidirectional form as its own conformance subject (not registered)."""

    name = "ssm_bidirectional_subject"
    capabilities = frozenset({"varlen", "timesteps", "bidirectional"})
    test_kwargs = {"d_state": 3, "bidirectional": True}
    expected_failures = {"causality": "bidirectional: y_t depends on x after t by design"}


class SelectiveSSM(SSM):
    """ssm with the input-dependent parameterization (the fused selective_scan path)."""

    name = "ssm_selective_subject"
    test_kwargs = {"d_state": 3, "param": "selective", "disc": "mamba"}


@parametrize_with_checks(["ssm", BidirectionalSSM, SelectiveSSM])
def test_conformance(layer, check):
    check(layer)


def test_conformance_of_a_mimo_variant_in_float64():
    check_layer("ssm", dtype=f64, d_state=3, param="hippo_n", disc="bilinear",
                checks=["step_matches_forward", "split_state", "varlen", "timesteps_ones"])


# ----------------------------------------------------------------------------- plugins

class ToyDecay(lrnnx.Parameterization):
    """A third-party parameterization that does NOT use the built-in base class."""

    name = "test_toy_decay"
    structure = "siso"

    def __init__(self, d_model: int, d_state: int, complex: bool | None = None,
                 decay: float = 0.7):
        super().__init__()
        self.d_model, self.d_state = d_model, d_state
        self.log_neg_a = nn.Parameter(torch.full((d_model, d_state), math.log(decay))
                                      + 0.1 * torch.randn(d_model, d_state))
        self.B = nn.Parameter(torch.randn(d_model, d_state))
        self.C = nn.Parameter(torch.randn(d_model, d_state))
        self.log_dt = nn.Parameter(torch.randn(d_model, d_state) * 0.3 - 1.0)

    def forward(self, x=None):
        return SSMParams(A=-self.log_neg_a.exp(), B=self.B, C=self.C, dt=self.log_dt.exp())


class ToyDisc(lrnnx.Discretizer):
    """A third-party discretizer (forward Euler of the transition, no kernel ``method``)."""

    name = "test_forward_euler"

    def __call__(self, A, dt):
        return 1 + dt * A, dt + 0 * A


@pytest.fixture
def plugins(register):
    """The toy parameterization and discretizer, registered at run time for one test."""
    register("parameterization", ToyDecay)
    register("discretizer", ToyDisc())


@pytest.mark.parametrize("disc", DISCS)
@pytest.mark.parametrize("scan", BACKENDS)
def test_third_party_parameterization_with_every_discretizer_and_backend(plugins, disc, scan):
    torch.manual_seed(0)
    layer = lrnnx.build_layer(f"ssm(d_state=3, param=test_toy_decay(decay=0.5), disc={disc}, "
                              f"scan={scan})", d_model=H)
    assert isinstance(layer.param, ToyDecay) and layer.scan == scan
    x, ts = data()
    y, st = layer(x.float(), timesteps=ts.float(), return_state=True)
    y_ref, h_ref = ref_forward(layer, x, timesteps=ts)
    assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5
    assert st["h"].dtype == torch.float32  # real parameters: a real state (probed)


def test_third_party_discretizer_on_every_structure(plugins):
    """No kernel ``method``: the selective layer runs the generic diag_scan path."""
    for param in ("selective", "hippo_n", "s4d_lin"):
        layer = build(param, ToyDisc.name)
        x, ts = data()
        y, st = layer(x.float(), timesteps=ts.float(), return_state=True)
        y_ref, h_ref = ref_forward(layer, x, timesteps=ts)
        assert rel(y, y_ref) <= 1e-5 and rel(st["h"], h_ref) <= 1e-5


def test_third_party_parameterization_shape_errors_name_it(plugins):
    class Bad(ToyDecay):
        name = "test_bad_shapes"

        def forward(self, x=None):
            P = super().forward()
            return SSMParams(A=P.A, B=P.B[:, :1], C=P.C, dt=P.dt)

    layer = SSM(d_model=H, d_state=3, param=Bad)
    with pytest.raises(ConfigError, match=r"parameterization 'test_bad_shapes' \(siso\): "
                                          r"SSMParams.B must have shape \(4, 3\)"):
        layer(torch.randn(1, 2, H))


# ----------------------------------------------------------------------------- options, errors

def test_param_and_disc_given_in_every_form():
    from lrnnx.registry.spec import Component

    P = lrnnx.get_parameterization("lru_ring")
    for value in ("lru_ring", Component("lru_ring", (("r_min", 0.5),)), P,
                  P(d_model=H, d_state=N, r_min=0.5)):
        layer = SSM(d_model=H, d_state=N, param=value)
        assert isinstance(layer.param, P)
    assert SSM(d_model=H, param=Component("lru_ring", (("r_min", 0.5),))).param.r_min == 0.5
    zoh = lrnnx.get_discretizer("zoh")
    assert SSM(d_model=H, disc=zoh).disc is zoh
    assert SSM(d_model=H, disc=type(zoh)).disc.name == "zoh"
    shared = P(d_model=H, d_state=N)
    bi = SSM(d_model=H, d_state=N, param=shared, bidirectional=True)
    assert bi.param is shared and bi.param_rev is not shared  # never share the two directions


def test_option_errors():
    with pytest.raises(ConfigError, match="'ssm'.*d_state"):
        SSM(d_model=H, d_state=0)
    with pytest.raises(UnknownComponentError, match="did you mean: .*s4d_inv"):
        lrnnx.build_layer("ssm(param=s4d_ivn)", d_model=H)
    with pytest.raises(UnknownComponentError, match="unknown scan_backend 'cuda_fast'") as e:
        SSM(d_model=H, scan="cuda_fast")
    assert "auto" in str(e.value)
    with pytest.raises(ConfigError, match="d_state of 'lru_ring' is set by the layer"):
        lrnnx.build_layer("ssm(param=lru_ring(d_state=3))", d_model=H)
    with pytest.raises(ConfigError, match="layer 'ssm': parameterization 'lru_ring': the ring"):
        lrnnx.build_layer("ssm(param=lru_ring(r_min=2.0))", d_model=H)
    with pytest.raises(ConfigError, match="instance has d_state=5 but the layer has d_state=3"):
        SSM(d_model=H, d_state=3, param=lrnnx.get_parameterization("s4d_lin")(H, 5))
    with pytest.raises(ConfigError, match="option 'param' must name a registered"):
        SSM(d_model=H, param=3.5)


def test_state_errors_name_the_layer():
    real = build("s4d_real")
    x = torch.randn(B, 3, H)
    with pytest.raises(InputError, match=r"layer 'ssm': state\['h'\] must have shape \(2, 4, 3\)"):
        real(x, state={"h": torch.zeros(B, H)})
    with pytest.raises(InputError, match="state must have the key 'h'"):
        real(x, state={"x": torch.zeros(B, H, N)})
    with pytest.raises(InputTypeError, match="this layer's state is real"):
        real(x, state={"h": torch.zeros(B, H, N, dtype=torch.complex64)})
    with pytest.raises(InputError, match=r"one row per packed sequence"):
        real(x[:1], cu_seqlens=torch.tensor([0, 1, 3]), state={"h": torch.zeros(1, H, N)})


def test_init_state_and_dtypes():
    layer = build("s4d_inv")
    assert layer.init_state(3)["h"].shape == (3, H, N)
    assert layer.init_state(3)["h"].dtype == torch.complex64
    assert layer.init_state(3, dtype=f64)["h"].dtype == torch.complex128
    assert build("hippo_n").init_state(2)["h"].shape == (2, N)
    assert build("s4d_real").init_state(2)["h"].dtype == torch.float32
    y = layer.double()(torch.randn(1, 5, H, dtype=f64))
    assert y.dtype == f64


class Recording(lrnnx.ScanBackend):
    """A scan-only third-party backend (no selective_scan, no diag_step) that records calls."""

    name = "test_scan_only"
    calls: list = []

    def diag_scan(self, a, b, h0=None, reverse=False, cu_seqlens=None):
        Recording.calls.append("diag_scan")
        return lrnnx.ops.diag_scan(a, b, h0, reverse=reverse, cu_seqlens=cu_seqlens,
                                   backend="torch_ref")


def test_scan_option_reaches_the_ops_with_fallbacks(register):
    register("scan_backend", Recording)
    Recording.calls.clear()
    layer = build("selective", "zoh", scan="test_scan_only")
    x, _ = data()
    y, st = layer(x.float(), return_state=True)
    assert Recording.calls == ["diag_scan"]  # selective_scan fell back to its diag_scan
    assert rel(y, ref_forward(layer, x)[0]) <= 1e-5
    y_t, _ = layer.step(x[:, 0].float(), st)  # diag_step falls back to "auto"
    assert y_t.shape == (B, H)


@pytest.mark.parametrize("param", ["hippo_n", "lru_ring"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("with_ts", [False, True])
def test_mimo_float32_matches_float64_reference(param, disc, with_ts):
    """MIMO input / readout matmuls (per-mode scale folded into B, interleaved [Re, Im] single
    matmuls, per-token scale with timesteps applied after) in float32 against the float64
    reference, outputs, final state and input gradient."""
    layer = build(param, disc, d_state=6)
    x, ts = data(7, T=40)
    ts = ts if with_ts else None
    x32 = x.float().requires_grad_(True)
    y, st = layer(x32, timesteps=None if ts is None else ts.float(), return_state=True)
    y_ref, h_ref = ref_forward(layer, x, timesteps=ts)
    assert rel(y, y_ref) < 1e-5 and rel(st["h"], h_ref) < 1e-5
    w = torch.cos(x)
    g, = torch.autograd.grad((y * w.float()).sum(), x32)
    x64 = x.clone().requires_grad_(True)
    layer64 = copy.deepcopy(layer).double()
    g64, = torch.autograd.grad((layer64(x64, timesteps=ts) * w).sum(), x64)
    assert rel(g, g64) < 1e-5
