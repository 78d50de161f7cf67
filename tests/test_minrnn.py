"""Tests of the ``mingru`` and ``minlstm`` layers (lrnnx_plugins.recurrent.minrnn).

References: float64 sequential loops of the paper's recurrences (Section 3) and, for
``mode="log"``, the paper's log-space parallel scan (Appendix B: log-cumsum-exp, Heinsen 2023)
written out here.  Accuracy target: fp32 layer vs float64 reference, rel. error <= 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrnnx.errors import ConfigError, InputError
from lrnnx.registry.core import REGISTRY
from lrnnx.testing import check_layer
from lrnnx_plugins.recurrent.minrnn import MinGRU, MinLSTM, g

TOL32 = 1e-5
D = 12


def _ensure_registered():
    # until "lrnnx_recurrent" is a built-in plugin (BUILTIN_PLUGINS / pyproject), register the
    # layers at run time so the conformance suite can build them by name
    if "mingru" not in REGISTRY.names("layer"):
        from lrnnx_plugins.recurrent import minrnn, rglru, s7

        for cls in (rglru.RGLRU, rglru.Hawk, s7.S7, minrnn.MinGRU, minrnn.MinLSTM):
            REGISTRY.register("layer", cls, plugin="lrnnx_recurrent")


_ensure_registered()


def rand(*shape, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


def rel_err(actual, ref):
    actual, ref = actual.detach().double(), ref.detach().double()
    return float((actual - ref).abs().max() / ref.abs().max())


def make(cls, seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return cls(D, **kw).to(dtype).eval()


def parts(layer, x):
    k = x.double() @ layer.proj.weight.double().T + layer.proj.bias.double()
    return k.chunk(layer.n_parts, dim=-1)


def out(layer, h):
    if layer.out is None:
        return h
    return h @ layer.out.weight.double().T + layer.out.bias.double()


def ref_loop(layer, x, h0=None):
    """float64 loop of the paper's sequential mode (minGRU / minLSTM, Section 3)."""
    ks = parts(layer, x)
    cand = (lambda v: torch.where(v >= 0, v + 0.5, torch.sigmoid(v))) if layer.mode == "log" \
        else (lambda v: v)
    h = torch.zeros(x.shape[0], layer.hidden, dtype=torch.float64) if h0 is None else h0.double()
    hs = []
    for t in range(x.shape[1]):
        if isinstance(layer, MinGRU):
            z = torch.sigmoid(ks[0][:, t])
            h = (1 - z) * h + z * cand(ks[1][:, t])
        else:
            f, i = torch.sigmoid(ks[0][:, t]), torch.sigmoid(ks[1][:, t])
            h = f / (f + i) * h + i / (f + i) * cand(ks[2][:, t])
        hs.append(h)
    return out(layer, torch.stack(hs, 1)), h


def ref_log_space(layer, x):
    """The paper's log-space parallel mode (Appendix B), from h_0 = 0."""
    ks = parts(layer, x)

    def log_g(v):
        return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))

    if isinstance(layer, MinGRU):
        log_coeffs, log_w = -F.softplus(ks[0]), -F.softplus(-ks[0])
    else:
        diff = F.softplus(-ks[0]) - F.softplus(-ks[1])
        log_coeffs, log_w = -F.softplus(diff), -F.softplus(-diff)
    log_values = log_w + log_g(ks[-1])
    a_star = log_coeffs.cumsum(dim=1)
    log_h = a_star + torch.logcumsumexp(log_values - a_star, dim=1)
    return out(layer, torch.exp(log_h))


CASES = [(cls, mode, expand) for cls in (MinGRU, MinLSTM) for mode in ("log", "plain")
         for expand in (1.0, 1.5)]


@pytest.mark.parametrize("cls,mode,expand", CASES)
def test_forward_matches_sequential_reference(cls, mode, expand):
    for dtype, tol in ((torch.float32, TOL32), (torch.float64, 1e-12)):
        layer = make(cls, mode=mode, expand=expand, dtype=dtype)
        x, h0 = rand(3, 70, D, seed=2), rand(3, layer.hidden, seed=3)
        y, st = layer(x.to(dtype), state={"h": h0.to(dtype)}, return_state=True)
        y_ref, h_ref = ref_loop(layer, x, h0)
        assert rel_err(y, y_ref) <= tol
        assert rel_err(st["h"], h_ref) <= tol


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_log_mode_equals_the_papers_log_space_scan(cls):
    layer = make(cls, mode="log", expand=1.5, dtype=torch.float64)
    x = rand(2, 80, D, seed=4)
    assert rel_err(layer(x), ref_log_space(layer, x)) <= 1e-10


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
@pytest.mark.parametrize("prefill", [1, 63, 64, 65])
def test_prefill_then_decode_equals_full_forward(cls, prefill):
    layer = make(cls, expand=1.5)
    n_dec = 16
    x = rand(2, prefill + n_dec, D, seed=5).float()
    with torch.no_grad():
        y_full, st_full = layer(x, return_state=True)
        y_pre, st = layer(x[:, :prefill], return_state=True)
        ys = [y_pre]
        for t in range(prefill, prefill + n_dec):
            y_t, st = layer.step(x[:, t], st)
            ys.append(y_t[:, None])
    assert rel_err(torch.cat(ys, 1), y_full) <= TOL32
    assert rel_err(st["h"], st_full["h"]) <= TOL32


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_state_passing_across_chunks(cls):
    layer = make(cls)
    x = rand(2, 45, D, seed=6)
    st, ys = None, []
    for a, b in ((0, 1), (1, 30), (30, 45)):
        y, st = layer(x[:, a:b].float(), state=st, return_state=True)
        ys.append(y)
    y_ref, h_ref = ref_loop(layer, x)
    assert rel_err(torch.cat(ys, 1), y_ref) <= TOL32 and rel_err(st["h"], h_ref) <= TOL32


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_varlen_with_states_equals_per_sequence_loop(cls):
    layer = make(cls, expand=2.0, dtype=torch.float64)
    lengths = [5, 0, 21, 1, 8]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    x = rand(1, sum(lengths), D, seed=7)
    h0 = rand(len(lengths), layer.hidden, seed=8)
    y, st = layer(x, state={"h": h0}, return_state=True, cu_seqlens=cu)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_i, st_i = layer(x[:, a:b], state={"h": h0[i:i + 1]}, return_state=True)
        assert torch.allclose(y[:, a:b], y_i, rtol=0, atol=1e-12)
        assert torch.allclose(st["h"][i:i + 1], st_i["h"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
@pytest.mark.parametrize("mode", ["log", "plain"])
def test_gradcheck_float64(cls, mode):
    torch.manual_seed(0)
    layer = cls(3, expand=2.0, mode=mode).double()
    names, params = zip(*layer.named_parameters())
    x = rand(2, 5, 3, seed=9).requires_grad_(True)
    h0 = rand(2, layer.hidden, seed=10).requires_grad_(True)

    def fn(x, h0, *ps):
        y, st = torch.func.functional_call(layer, dict(zip(names, ps)), (x,),
                                           {"state": {"h": h0}, "return_state": True})
        return y, st["h"]

    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(lambda x, h0: fn(x, h0, *params), (x, h0))   # full
    # parameters: gradcheck's randomized fast mode (one projection of the Jacobian)
    assert torch.autograd.gradcheck(fn, (x, h0, *leaves), fast_mode=True)


# ------------------------------------------------------------------------------ parts, options

def test_g_is_positive_and_continuous():
    v = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    assert bool((g(v) > 0).all())
    eps = torch.tensor([-1e-9, 0.0, 1e-9], dtype=torch.float64)
    assert torch.allclose(g(eps), torch.full((3,), 0.5, dtype=torch.float64), atol=1e-8)


def test_minlstm_gates_are_normalized_and_precise():
    layer = make(MinLSTM, dtype=torch.float64)
    k_f = torch.tensor([40.0, -40.0, 0.3, 5.0], dtype=torch.float64)
    k_i = torch.tensor([-40.0, 40.0, -0.2, 5.0], dtype=torch.float64)
    f, i = layer._gates(k_f, k_i)
    sf, si = torch.sigmoid(k_f), torch.sigmoid(k_i)
    assert torch.allclose(f + i, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(f, sf / (sf + si), rtol=1e-12, atol=0)
    assert torch.allclose(i, si / (sf + si), rtol=1e-12, atol=0)      # tiny i' keeps its digits


def test_expand_sets_hidden_width_and_output_projection():
    assert MinGRU(D).hidden == D and MinGRU(D).out is None
    lay = MinLSTM(D, expand=1.5)
    assert lay.hidden == 18 and lay.out is not None and lay.proj.out_features == 3 * 18
    assert MinGRU(D, expand=2.0).init_state(4)["h"].shape == (4, 2 * D)
    with pytest.raises(ConfigError, match="expand"):
        MinGRU(D, expand=0.0)
    with pytest.raises(ConfigError, match="mode"):
        MinGRU(D, mode="logspace")
    with pytest.raises(InputError, match=r"'minlstm'.*state\['h'\]"):
        MinLSTM(D, expand=2.0)(torch.randn(2, 3, D), state={"h": torch.zeros(2, D)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_conformance_suite(name, dtype):
    report = check_layer(name, dtype=dtype)
    assert report.ok, str(report)
