"""Tests of the ``attn`` and ``mlp`` layers and the norms (lrnnx_plugins.attention/mlp/norms)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lrnnx
from lrnnx.errors import ConfigError, InputError, InputTypeError
from lrnnx_plugins.attention import Attention, rotary_embed
from lrnnx_plugins.mlp import GatedMLP, hidden_size
from lrnnx_plugins.norms import make_norm

D = 16


def make_attn(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return Attention(D, **kw).to(dtype).eval()


def rand(*shape, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def ref_rotary(x, pos):
    """RoPE as a complex rotation of channel pairs (i, i + hd/2): an independent formula."""
    hd = x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones_like(inv), pos.to(torch.float64)[:, None] * inv)  # (L, hd/2)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * rot[:, None, :]
    return torch.cat((z.real, z.imag), dim=-1)


def ref_attention(layer, x, allowed, positions):
    """Naive float64 attention: explicit scores, a -inf mask from ``allowed`` (L, L), softmax."""
    B, L, _ = x.shape
    H, hd = layer.n_heads, layer.head_dim
    q, k, v = (x @ layer.qkv.weight.T).view(B, L, 3, H, hd).unbind(2)  # (B, L, H, hd)
    if layer.rotary:
        q, k = ref_rotary(q, positions), ref_rotary(k, positions)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(~allowed, float("-inf"))
    o = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)
    return o.reshape(B, L, H * hd) @ layer.out.weight.T


def explicit_mask(L, window=None, cu=None):
    allowed = torch.zeros(L, L, dtype=torch.bool)
    seg = [0] * L
    if cu is not None:
        for s, (a, b) in enumerate(zip(cu, cu[1:])):
            for i in range(a, b):
                seg[i] = s
    for i in range(L):
        for j in range(L):
            allowed[i, j] = j <= i and (window is None or i - j < window) and seg[i] == seg[j]
    return allowed


# --------------------------------------------------------------------------- attention math

@pytest.mark.parametrize("kw", [{}, {"rotary": False}, {"window": 3}, {"n_heads": 2, "head_dim": 6},
                                {"window": 1}])
def test_matches_explicit_reference(kw):
    layer = make_attn(**kw)
    x = rand(2, 9, D)
    ref = ref_attention(layer, x, explicit_mask(9, kw.get("window")), torch.arange(9))
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)


def test_window_semantics_each_query_sees_at_most_window_keys():
    layer = make_attn(window=4)
    x = rand(1, 12, D)
    y = layer(x)
    # changing a token more than window-1 steps in the past leaves the output unchanged
    x2 = x.clone()
    x2[:, 2] += 5.0
    y2 = layer(x2)
    torch.testing.assert_close(y2[:, 6:], y[:, 6:], rtol=0, atol=1e-12)
    assert (y2[:, 2:6] - y[:, 2:6]).abs().amax(-1).min() > 1e-6  # t=2..5 do see it


@pytest.mark.parametrize("window", [None, 2])
def test_causality(window):
    layer = make_attn(window=window)
    x = rand(2, 10, D)
    y = layer(x)
    x2 = x.clone()
    x2[:, 6:] = rand(2, 4, D, seed=7)
    torch.testing.assert_close(layer(x2)[:, :6], y[:, :6], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kw", [{}, {"window": 3}, {"rotary": False, "bias": True}])
def test_step_equals_forward(dtype, tol, kw):
    layer = make_attn(dtype=dtype, **kw)
    x = rand(2, 8, D, dtype=dtype)
    y = layer(x)
    st = layer.init_state(2)
    outs = []
    for t in range(8):
        y_t, st = layer.step(x[:, t], st)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=tol, atol=tol)
    assert int(st["pos"][0]) == 8


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("split", [1, 4, 7])
def test_prefill_then_continue_equals_full(window, split):
    layer = make_attn(window=window)
    x = rand(2, 9, D)
    y = layer(x)
    y1, st = layer(x[:, :split], return_state=True)
    y2, st = layer(x[:, split:split + 1], state=st, return_state=True)   # one more by forward
    y3, st = layer.step(x[:, split + 1], st)                              # then a step
    y4, st = layer(x[:, split + 2:], state=st, return_state=True)         # then the rest
    got = torch.cat([y1, y2, y3[:, None], y4], dim=1)
    torch.testing.assert_close(got, y, rtol=1e-10, atol=1e-12)


def test_window_cache_is_bounded():
    layer = make_attn(window=3)
    _, st = layer(rand(2, 10, D), return_state=True)
    assert st["k"].shape == (2, 4, 2, 4) and st["v"].shape == (2, 4, 2, 4)
    for _ in range(5):
        _, st = layer.step(rand(2, D), st)
    assert st["k"].shape[2] == 2 and st["pos"].tolist() == [15, 15]
    full = make_attn()
    _, st = full(rand(2, 10, D), return_state=True)
    assert st["k"].shape[2] == 10


def test_varlen_equals_per_sequence():
    layer = make_attn(window=3)
    lens = [3, 0, 5, 1]
    cu = [0, 3, 3, 8, 9]
    x = rand(1, 9, D)
    y = layer(x, cu_seqlens=torch.tensor(cu))
    for a, b in zip(cu, cu[1:]):
        if b > a:
            torch.testing.assert_close(y[:, a:b], layer(x[:, a:b]), rtol=1e-10, atol=1e-12)
    # and against the explicit block-diagonal reference with restarting positions
    pos = torch.cat([torch.arange(n) for n in lens])
    ref = ref_attention(layer, x, explicit_mask(9, 3, cu), pos)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)


def test_varlen_with_state_is_rejected():
    layer = make_attn()
    with pytest.raises(InputError, match="cu_seqlens"):
        layer(rand(1, 4, D), cu_seqlens=torch.tensor([0, 2, 4]), return_state=True)


def test_rotary_embed_matches_complex_rotation_and_is_relative():
    x = rand(1, 2, 5, 8)
    pos = torch.arange(3, 8)
    torch.testing.assert_close(rotary_embed(x, pos), ref_rotary(x.transpose(1, 2), pos)
                               .transpose(1, 2), rtol=1e-12, atol=1e-12)
    # q_i . k_j depends only on i - j
    q, k = rand(1, 1, 1, 8, seed=3), rand(1, 1, 1, 8, seed=4)

    def score(i, j):
        return (rotary_embed(q, torch.tensor([i])) * rotary_embed(k, torch.tensor([j]))).sum()

    torch.testing.assert_close(score(5, 2), score(105, 102), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rotary_positions_continue_from_cache():
    layer = make_attn()
    x = rand(1, 6, D)
    _, st = layer(x[:, :4], return_state=True)
    assert st["pos"].tolist() == [4]
    # the cached keys are rotated at positions 0..3: recompute them by hand
    H, hd = layer.n_heads, layer.head_dim
    k = (x[:, :4] @ layer.qkv.weight.T).view(1, 4, 3, H, hd)[:, :, 1]
    torch.testing.assert_close(st["k"], ref_rotary(k, torch.arange(4)).transpose(1, 2),
                               rtol=1e-10, atol=1e-12)


def test_fp32_matches_fp64_reference():
    layer64 = make_attn(window=4)
    layer32 = make_attn(dtype=torch.float32, window=4)
    x = rand(2, 7, D)
    ref = ref_attention(layer64, x, explicit_mask(7, 4), torch.arange(7))
    got = layer32(x.float()).double()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_init_state_and_empty_input():
    layer = make_attn()
    st = layer.init_state(3, dtype=torch.float32)
    assert st["k"].shape == (3, 4, 0, 4) and st["k"].dtype == torch.float32
    assert st["pos"].dtype == torch.long and st["pos"].shape == (3,)
    _, st = layer(rand(3, 2, D), return_state=True)
    y, st2 = layer(rand(3, 0, D), state=st, return_state=True)
    assert y.shape == (3, 0, D) and st2 is st


def test_dropout_only_in_training():
    layer = make_attn(dropout=0.5)
    x = rand(1, 6, D)
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(x), layer.eval()(x))


@pytest.mark.parametrize("kw,match", [
    ({"n_heads": 3}, "divisible by n_heads=3"),
    ({"n_heads": 0}, "n_heads"),
    ({"n_heads": 2, "head_dim": 3}, "even head_dim"),
    ({"window": 0}, "window"),
    ({"dropout": 1.0}, "dropout"),
    ({"n_head": 2}, "did you mean 'n_heads'"),
])
def test_option_errors(kw, match):
    with pytest.raises(ConfigError, match=f"(?i){match}"):
        Attention(D, **kw)


def test_explicit_head_dim_allows_any_width():
    layer = Attention(D, n_heads=3, head_dim=4)
    assert layer(torch.randn(1, 2, D)).shape == (1, 2, D)


def test_bad_state_errors():
    layer = make_attn()
    st = layer.init_state(2)
    with pytest.raises(InputError, match="state\\['k'\\] must have shape"):
        layer.step(rand(3, D), st)
    with pytest.raises(InputError, match="missing"):
        layer.step(rand(2, D), {"k": st["k"]})
    with pytest.raises(InputTypeError, match="init_state"):
        layer.step(rand(2, D), layer.init_state(2, dtype=torch.float32))
    with pytest.raises(InputError, match="pos"):
        layer.step(rand(2, D), {**st, "pos": torch.zeros(2)})


def test_registered():
    assert lrnnx.get_layer("attn") is Attention
    assert Attention.capabilities == {"step", "varlen"}


# ---------------------------------------------------------------------------------- mlp

def test_hidden_size_rounding():
    assert hidden_size(64, 8 / 3) == 176          # 170.67 -> 171 -> 176
    assert hidden_size(48, 8 / 3) == 128          # float noise must not bump it to 136
    assert hidden_size(16, 4) == 64 and hidden_size(2, 1.0) == 8


@pytest.mark.parametrize("activation,fn", [("silu", F.silu), ("gelu", F.gelu)])
def test_mlp_matches_formula_and_steps(activation, fn):
    torch.manual_seed(0)
    mlp = GatedMLP(D, expand=2.0, activation=activation, bias=True).double()
    x = rand(2, 5, D)
    W, b = mlp.w_in.weight, mlp.w_in.bias
    h = mlp.hidden
    ref = (fn(x @ W[:h].T + b[:h]) * (x @ W[h:].T + b[h:])) @ mlp.w_out.weight.T + mlp.w_out.bias
    torch.testing.assert_close(mlp(x), ref, rtol=1e-12, atol=1e-12)
    y, st = mlp(x, return_state=True)
    assert st == {} and mlp.init_state(2) == {}
    y_t, st = mlp.step(x[:, 3], {})
    torch.testing.assert_close(y_t, y[:, 3], rtol=1e-12, atol=1e-12)


def test_mlp_ignores_timesteps_and_accepts_varlen():
    mlp = GatedMLP(D).double()
    x = rand(1, 6, D)
    y = mlp(x)
    torch.testing.assert_close(mlp(x, timesteps=torch.rand(1, 6, dtype=torch.float64)), y)
    torch.testing.assert_close(mlp(x, cu_seqlens=torch.tensor([0, 2, 6])), y)
    y_t, _ = mlp.step(x[:, 0], {}, timesteps=torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(y_t, y[:, 0])


@pytest.mark.parametrize("kw,match", [({"activation": "relu"}, "activation"),
                                      ({"expand": 0.0}, "expand"),
                                      ({"expand": float("inf")}, "expand")])
def test_mlp_option_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        GatedMLP(D, **kw)


# -------------------------------------------------------------------------------- norms

def test_norms():
    x = rand(2, 3, D)
    rms = make_norm("rms", D, eps=1e-6).double()
    torch.testing.assert_close(rms(x), x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6))
    ln = make_norm("layer", D).double()
    torch.testing.assert_close(ln(x), F.layer_norm(x, (D,), eps=1e-5))
    with pytest.raises(ConfigError, match="(?i)did you mean 'rms'"):
        make_norm("rmss", D)
    with pytest.raises(ConfigError, match="eps"):
        make_norm("rms", D, eps=0.0)
