"""Tests of the ``rglru`` and ``hawk`` layers (lrnnx_plugins.recurrent.rglru).

References are float64 sequential loops written from the paper's formulas (a_t as a power of
sigmoid(Lambda), sqrt(1 - a_t^2) directly, the conv as an explicit sum over taps), independent of
the layer's log-space code.  Accuracy target: fp32 layer vs float64 reference, rel. error
(max abs error / max |reference|) <= 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError, UnknownComponentError
from lrnnx.registry.core import REGISTRY
from lrnnx.testing import check_layer
from lrnnx_plugins.recurrent.rglru import (
    A_C_INIT,
    MAX_SQRT_GRADIENT,
    RGLRU,
    Hawk,
    init_lambda,
    sqrt_one_minus_a2,
)

TOL32 = 1e-5


def _ensure_registered():
    # until "lrnnx_recurrent" is a built-in plugin (BUILTIN_PLUGINS / pyproject), register the
    # layers at run time so the spec and conformance tests can build them by name
    if "rglru" not in REGISTRY.names("layer"):
        from lrnnx_plugins.recurrent import minrnn, rglru, s7

        for cls in (rglru.RGLRU, rglru.Hawk, s7.S7, minrnn.MinGRU, minrnn.MinLSTM):
            REGISTRY.register("layer", cls, plugin="lrnnx_recurrent")


_ensure_registered()


def rand(*shape, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def rel_err(actual, ref):
    actual, ref = actual.detach().double(), ref.detach().double()
    return float((actual - ref).abs().max() / ref.abs().max())


def make(cls, d_model=16, seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    layer = cls(d_model, **kw).to(dtype).eval()
    with torch.no_grad():  # non-zero biases so that every parameter matters in the references
        for n, p in layer.named_parameters():
            if n.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, dtype=p.dtype))
    return layer


# ------------------------------------------------------------------------------ references

def ref_block_diag(x, weight, bias):
    heads, bw = weight.shape[0], weight.shape[1]
    out = [x[..., h * bw:(h + 1) * bw] @ weight[h].double() + bias[h].double()
           for h in range(heads)]
    return torch.cat(out, dim=-1)


def ref_rglru(core, x, h0=None):
    """float64 loop of h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t), a_t = sigmoid(L)^(c r_t)."""
    x = x.double()
    r = torch.sigmoid(ref_block_diag(x, core.gate_a.weight, core.gate_a.bias))
    i = torch.sigmoid(ref_block_diag(x, core.gate_x.weight, core.gate_x.bias))
    base = torch.sigmoid(core.a_param.double())
    h = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(x.shape[1]):
        a = base ** (core.c * r[:, t])
        h = a * h + torch.sqrt(1 - a * a) * i[:, t] * x[:, t]
        ys.append(h)
    return torch.stack(ys, 1), h


def ref_gelu_tanh(v):
    return 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))


def ref_hawk(layer, x, state=None):
    x = x.double()
    lin = lambda m, v: v @ m.weight.double().T + m.bias.double()  # noqa: E731
    gate = ref_gelu_tanh(lin(layer.linear_gate, x))
    u = lin(layer.linear_x, x)
    K = layer.conv_width
    past = (torch.zeros(x.shape[0], layer.d_rnn, K - 1, dtype=torch.float64) if state is None
            else state["conv"].double())
    full = torch.cat([past.transpose(1, 2), u], dim=1)              # (B, K-1+L, d_rnn)
    w, b = layer.conv.weight.double(), layer.conv.bias.double()
    conv = torch.stack([b + sum(w[:, j] * full[:, t + j] for j in range(K))
                        for t in range(x.shape[1])], 1)
    h, h_last = ref_rglru(layer.rglru, conv, None if state is None else state["h"])
    y = lin(layer.linear_out, h * gate)
    return y, {"conv": full[:, full.shape[1] - (K - 1):].transpose(1, 2), "h": h_last}


# ------------------------------------------------------------------------------ correctness

def test_rglru_forward_matches_reference_fp32_and_fp64():
    for dtype, tol in ((torch.float32, TOL32), (torch.float64, 1e-12)):
        layer = make(RGLRU, n_heads=4, dtype=dtype)
        x, h0 = rand(3, 50, 16, seed=2), rand(3, 16, seed=3)
        y, st = layer(x.to(dtype), state={"h": h0.to(dtype)}, return_state=True)
        y_ref, h_ref = ref_rglru(layer.core, x, h0)
        assert rel_err(y, y_ref) <= tol
        assert rel_err(st["h"], h_ref) <= tol


def test_hawk_forward_matches_reference_fp32_and_fp64():
    for dtype, tol in ((torch.float32, TOL32), (torch.float64, 1e-12)):
        layer = make(Hawk, n_heads=2, dtype=dtype)
        x = rand(2, 40, 16, seed=4)
        s0 = {"conv": rand(2, layer.d_rnn, 3, seed=5), "h": rand(2, layer.d_rnn, seed=6)}
        y, st = layer(x.to(dtype), state={k: v.to(dtype) for k, v in s0.items()},
                      return_state=True)
        y_ref, st_ref = ref_hawk(layer, x, s0)
        assert rel_err(y, y_ref) <= tol
        for k in ("conv", "h"):
            assert rel_err(st[k], st_ref[k]) <= tol


@pytest.mark.parametrize("cls", [RGLRU, Hawk])
@pytest.mark.parametrize("prefill", [1, 63, 64, 65])
def test_prefill_then_decode_equals_full_forward(cls, prefill):
    layer = make(cls, n_heads=2)
    n_dec = 16
    x = rand(2, prefill + n_dec, 16, seed=7).float()
    with torch.no_grad():
        y_full, st_full = layer(x, return_state=True)
        y_pre, st = layer(x[:, :prefill], return_state=True)
        ys = [y_pre]
        for t in range(prefill, prefill + n_dec):
            y_t, st = layer.step(x[:, t], st)
            ys.append(y_t[:, None])
    assert rel_err(torch.cat(ys, 1), y_full) <= TOL32
    for k in st_full:
        assert rel_err(st[k], st_full[k]) <= TOL32


@pytest.mark.parametrize("cls", [RGLRU, Hawk])
def test_varlen_with_states_equals_per_sequence_loop(cls):
    layer = make(cls, n_heads=2, dtype=torch.float64)
    lengths = [3, 0, 17, 1, 30]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = rand(1, sum(lengths), 16, seed=8)
    s0 = layer.init_state(len(lengths))
    s0 = {k: rand(*v.shape, seed=9 + i) for i, (k, v) in enumerate(sorted(s0.items()))}
    y, st = layer(x, state=s0, return_state=True, cu_seqlens=cu)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        s_i = {k: v[i:i + 1] for k, v in s0.items()}
        y_i, st_i = layer(x[:, a:b], state=s_i, return_state=True)
        assert torch.allclose(y[:, a:b], y_i, rtol=0, atol=1e-12)
        for k in st_i:
            assert torch.allclose(st[k][i:i + 1], st_i[k], rtol=0, atol=1e-12)


def test_hawk_varlen_shorter_than_conv_window():
    # packed batches shorter than conv_width - 1 tokens (CausalConv1d's varlen path needs a pad)
    layer = make(Hawk, dtype=torch.float64)
    for lengths in ([1], [0, 2], [1, 1]):
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
        x = rand(1, sum(lengths), 16, seed=10)
        y, st = layer(x, return_state=True, cu_seqlens=cu)
        assert st["conv"].shape == (len(lengths), layer.d_rnn, 3)
        for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            y_i, st_i = layer(x[:, a:b], return_state=True)
            assert torch.allclose(y[:, a:b], y_i, atol=1e-12)
            assert torch.allclose(st["h"][i], st_i["h"][0], atol=1e-12)


@pytest.mark.parametrize("cls", [RGLRU, Hawk])
def test_gradcheck_float64(cls):
    layer = make(cls, d_model=4, n_heads=2, dtype=torch.float64)
    names, params = zip(*layer.named_parameters())
    x = rand(2, 5, 4, seed=11).requires_grad_(True)

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(lambda x: layer(x), (x,))            # full Jacobian wrt x
    # every parameter: gradcheck's randomized fast mode (one random projection of the
    # Jacobian; the full one costs a forward per parameter element)
    assert torch.autograd.gradcheck(fn, (x, *leaves), fast_mode=True)


# ------------------------------------------------------------------------------ init, numerics

def test_init_gives_a_pow_c_uniform_in_paper_range():
    torch.manual_seed(0)
    lam = init_lambda(8192).double()
    a_c = torch.sigmoid(lam) ** 8
    lo, hi = A_C_INIT
    assert float(a_c.min()) >= lo - 1e-6 and float(a_c.max()) <= hi + 1e-6
    # uniform: mean and quartiles of U[0.9, 0.999]
    assert abs(float(a_c.mean()) - (lo + hi) / 2) < 2e-3
    q = torch.quantile(a_c, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert abs(float(q[0]) - (lo + 0.25 * (hi - lo))) < 3e-3
    assert abs(float(q[1]) - (lo + 0.75 * (hi - lo))) < 3e-3
    layer = RGLRU(64)
    a_c_layer = torch.sigmoid(layer.core.a_param.double()) ** layer.c
    assert bool(((a_c_layer >= lo - 1e-6) & (a_c_layer <= hi + 1e-6)).all())


def test_sqrt_one_minus_a2_is_precise_near_one():
    log_a = torch.tensor([-1e-7, -1e-4, -0.1, -3.0], dtype=torch.float64)
    exact = torch.sqrt(1 - torch.exp(2 * log_a))
    got = sqrt_one_minus_a2(log_a.float())
    assert float(((got.double() - exact) / exact).abs().max()) < 1e-6


def test_sqrt_gradient_exact_away_from_one_and_bounded_near_it():
    log_a = torch.tensor([-3.0, -0.5, -0.01], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sqrt_one_minus_a2, (log_a,))
    near = torch.tensor([-1e-7, 0.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(sqrt_one_minus_a2(near).sum(), near)
    # the derivative of sqrt is capped at MAX_SQRT_GRADIENT: |d/dlog_a| <= 2 a^2 MAX
    expected = -torch.exp(2 * near.detach()) * 2 * MAX_SQRT_GRADIENT
    assert torch.allclose(g, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [RGLRU, Hawk])
def test_finite_gradients_when_a_is_within_1e7_of_one(cls, dtype):
    layer = make(cls, d_model=4, dtype=dtype)
    core = layer.core if cls is RGLRU else layer.rglru
    with torch.no_grad():
        core.gate_a.weight.zero_()
        core.gate_a.bias.fill_(40.0)                        # r_t = 1 (to rounding)
        a = torch.tensor(1 - 1e-7, dtype=torch.float64) ** (1 / layer.c)
        core.a_param.fill_(float(torch.log(a) - torch.log1p(-a)))
    x = rand(2, 6, 4, seed=12).to(dtype).requires_grad_(True)
    log_a = -layer.c * torch.nn.functional.softplus(-core.a_param.double())
    assert abs(float(-torch.expm1(log_a.detach())[0]) - 1e-7) < 1e-9   # 1 - a = 1e-7 indeed
    y = layer(x)
    assert bool(torch.isfinite(y).all())
    y.pow(2).sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    for n, p in layer.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), n
    # and with the gate closed (r_t = 0, a_t = 1 exactly): still finite
    layer.zero_grad()
    with torch.no_grad():
        core.gate_a.bias.fill_(-200.0)
    layer(x).pow(2).sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in layer.parameters())


# ------------------------------------------------------------------------------ options, errors

def test_hawk_width_rule():
    assert Hawk(16).d_rnn == 24            # ceil(4/3 * 16) = 22 -> multiple of 8
    assert Hawk(768).d_rnn == 1024         # exactly 4/3
    assert Hawk(16, d_rnn=12, n_heads=3).d_rnn == 12
    assert Hawk(16, expand=2.0).d_rnn == 32


def test_bad_options_and_states_raise_clear_errors():
    with pytest.raises(ConfigError, match="n_heads"):
        RGLRU(10, n_heads=3)
    with pytest.raises(ConfigError, match="d_rnn"):
        Hawk(16, d_rnn=10, n_heads=4)
    with pytest.raises(ConfigError, match="conv_width"):
        Hawk(16, conv_width=0)
    with pytest.raises(UnknownComponentError, match="torhc"):
        RGLRU(8, scan="torhc")
    layer = RGLRU(8)
    x = torch.randn(2, 5, 8)
    with pytest.raises(InputError, match=r"'rglru'.*state\['h'\].*\(2, 8\)"):
        layer(x, state={"h": torch.zeros(3, 8)})
    with pytest.raises(InputError, match="missing key 'h'"):
        layer(x, state={})
    with pytest.raises(InputTypeError, match="dtype"):
        layer(x, state={"h": torch.zeros(2, 8, dtype=torch.float64)})
    with pytest.raises(InputError, match="N_seq"):
        layer(x[:1], state={"h": torch.zeros(1, 8)}, cu_seqlens=torch.tensor([0, 2, 5]))


def test_griffin_spec_builds_and_decodes():
    model = lrnnx.build_model("hawk*2 + attn(window=8)", d_model=16).eval()
    assert [type(b.mixer).name for b in model.blocks] == ["hawk", "hawk", "attn"]
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        y_full = model(x)
        y, st = model(x[:, :12], return_state=True)
        ys = [y]
        for t in range(12, 20):
            y_t, st = model.step(x[:, t], st)
            ys.append(y_t[:, None])
    assert y_full.shape == (2, 20, 16)
    assert rel_err(torch.cat(ys, 1), y_full) <= TOL32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["rglru", "hawk"])
def test_conformance_suite(name, dtype):
    report = check_layer(name, dtype=dtype)
    assert report.ok, str(report)
