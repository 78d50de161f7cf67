"""Tests of lrnnx.models architectures: Classifier (pooling, lengths, events), UNet, model.kind."""

from __future__ import annotations

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError, InputError, UnknownComponentError
from lrnnx.models import (LM, Backbone, Classifier, UNet, build_classifier, build_unet,
                          pool_sequence)

D = 8
#: a registered time-aware recurrent layer for event tests (s4d is built in; fall back to mlp,
#: which accepts and ignores timesteps)
TS_LAYER = "s4d" if "s4d" in lrnnx.list_layers() else "mlp"


def rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def clf(seed=0, **kw) -> Classifier:
    torch.manual_seed(seed)
    kw.setdefault("d_input", 3)
    return build_classifier(d_model=D, num_classes=5, **kw).double().eval()


# ------------------------------------------------------------------------------- pooling

def ref_pool(x, lengths, ts, kind, k):
    """Loop reference of pool_sequence."""
    B, L, d = x.shape
    n = -(-L // k)
    y, new_ts = torch.zeros(B, n, d, dtype=x.dtype), torch.zeros(B, n, dtype=x.dtype)
    for b in range(B):
        for j in range(n):
            idx = [t for t in range(j * k, min((j + 1) * k, L)) if t < lengths[b]]
            if not idx:
                continue
            w = x[b, idx]
            y[b, j] = {"mean": w.mean(0), "max": w.amax(0), "stride": w[-1]}[kind]
            new_ts[b, j] = ts[b, idx].sum()
    return y, new_ts


@pytest.mark.parametrize("kind", ["mean", "max", "stride"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_pool_sequence_matches_loop(kind, k):
    x, ts = rand(3, 7, 2), rand(3, 7, seed=2).abs()
    lengths = torch.tensor([7, 4, 1])
    y, new_len, new_ts = pool_sequence(x, lengths, ts, kind, k)
    ry, rts = ref_pool(x, lengths, ts, kind, k)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(new_ts, rts)  # event-aware: window sums of the timesteps
    assert new_len.tolist() == [-(-n // k) for n in (7, 4, 1)]
    y2, l2, t2 = pool_sequence(x, None, None, kind, k)
    torch.testing.assert_close(y2, ref_pool(x, [7] * 3, ts, kind, k)[0])
    assert l2 is None and t2 is None


def test_pooled_timesteps_are_window_sums():
    ts = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    _, _, new_ts = pool_sequence(torch.zeros(1, 5, 1), None, ts, "stride", 2)
    assert new_ts.tolist() == [[3.0, 7.0, 5.0]]
    _, new_len, new_ts = pool_sequence(torch.zeros(1, 5, 1), torch.tensor([3]), ts, "mean", 2)
    assert new_ts.tolist() == [[3.0, 3.0, 0.0]] and new_len.tolist() == [2]


# ---------------------------------------------------------------------------- classifier

def test_classifier_shapes_and_stage_forms():
    m = clf(stages=[TS_LAYER, "attn(n_heads=2) + mlp"], pool="max", pool_factor=3)
    assert len(m.stages) == 2 and isinstance(m.stages[0], Backbone)
    assert m(rand(4, 10, 3)).shape == (4, 5)
    m = clf(spec=f"{TS_LAYER}*2 + mlp*3", pool_every=2)
    assert [s.spec for s in m.stages] == [f"{TS_LAYER} + {TS_LAYER}", "mlp + mlp", "mlp"]
    assert m(rand(2, 9, 3)).shape == (2, 5)
    tok = build_classifier(d_model=D, num_classes=2, vocab_size=11, spec="mlp + attn(n_heads=2)")
    assert len(tok.stages) == 1
    assert tok(torch.randint(0, 11, (3, 6))).shape == (3, 2)
    assert m(rand(2, 1, 3)).shape == (2, 5)  # shorter than one pooling window


@pytest.mark.parametrize("pool", ["mean", "max", "stride"])
@pytest.mark.parametrize("head_pool", ["mean", "max", "last"])
def test_classifier_padding_does_not_change_the_result(pool, head_pool):
    m = clf(stages=[f"{TS_LAYER} + attn(n_heads=2)", "mlp", TS_LAYER], pool=pool,
            pool_factor=2, head_pool=head_pool)
    lengths = torch.tensor([9, 5, 1])
    x = rand(3, 9, 3)
    x_noisy = x.clone()
    for b, n in enumerate(lengths.tolist()):
        x_noisy[b, n:] = 1e3  # garbage in the padding
    out = m(x_noisy, lengths=lengths)
    torch.testing.assert_close(m(x_noisy, lengths=lengths.int()), out)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[b], m(x[b:b + 1, :n])[0], rtol=1e-10, atol=1e-12)
    # packed form (cu_seqlens) gives the same rows
    packed = torch.cat([x[b, :n] for b, n in enumerate(lengths.tolist())])[None]
    cu = torch.tensor([0, 9, 14, 15])
    torch.testing.assert_close(m(packed, cu_seqlens=cu), out, rtol=1e-10, atol=1e-12)


def test_classifier_padded_fallback_for_causal_non_varlen_stage(register):
    class CumMean(lrnnx.Layer):
        """A causal layer without varlen: running mean over time."""

        name = "test_cummean"
        capabilities = frozenset({"step"})

        def __init__(self, d_model: int):
            super().__init__()
            self.d_model = d_model
            self.w = torch.nn.Parameter(torch.randn(d_model))

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            t = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
            return x.cumsum(1) / t * self.w

    register("layer", CumMean)
    m = clf(stages=["test_cummean + mlp", "test_cummean"], pool="mean")
    x, lengths = rand(2, 7, 3), torch.tensor([7, 3])
    out = m(x, lengths=lengths)
    torch.testing.assert_close(out[1], m(x[1:, :3])[0], rtol=1e-10, atol=1e-12)


def test_classifier_event_aware_timesteps():
    if TS_LAYER != "s4d":
        pytest.skip("needs the built-in time-aware s4d layer")
    m = clf(stages=["s4d", "s4d"], pool="stride", pool_factor=2)
    x, ts = rand(2, 6, 3), rand(2, 6, seed=3).abs() + 0.1
    out = m(x, timesteps=ts)
    assert not torch.allclose(out, m(x, timesteps=ts * 3))  # the stages use the time
    # stage 2 receives the window sums: running it by hand gives the same logits
    h = m.stages[0](m.encoder(x), timesteps=ts)
    h, _, ts2 = pool_sequence(h, None, ts, "stride", 2)
    torch.testing.assert_close(ts2, ts.view(2, 3, 2).sum(-1))
    h = m.stages[1](h, timesteps=ts2)
    torch.testing.assert_close(out, m.head(h.mean(1)), rtol=1e-10, atol=1e-12)
    # padding invariance holds with events too
    lengths = torch.tensor([6, 3])
    out2 = m(x, lengths=lengths, timesteps=ts)
    torch.testing.assert_close(out2[1], m(x[1:, :3], timesteps=ts[1:, :3])[0], rtol=1e-10,
                               atol=1e-12)


def test_classifier_errors():
    with pytest.raises(ConfigError, match="exactly one of vocab_size"):
        build_classifier(d_model=D, num_classes=2, spec="mlp")
    with pytest.raises(ConfigError, match="not both"):
        build_classifier(d_model=D, num_classes=2, d_input=1, spec="mlp", stages=["mlp"])
    with pytest.raises(ConfigError, match="Did you mean 'mean'"):
        build_classifier(d_model=D, num_classes=2, d_input=1, spec="mlp", pool="maen")
    with pytest.raises(ConfigError, match="pool_every"):
        build_classifier(d_model=D, num_classes=2, d_input=1, stages=["mlp"], pool_every=1)
    with pytest.raises(ConfigError, match="non-empty list"):
        build_classifier(d_model=D, num_classes=2, d_input=1, stages="mlp")
    with pytest.raises(ConfigError, match="num_classes"):
        build_classifier(d_model=D, num_classes=0, d_input=1, spec="mlp")
    with pytest.raises(UnknownComponentError, match="did you mean: mlp"):
        build_classifier(d_model=D, num_classes=2, d_input=1, spec="mlp + mpl", pool_every=1)
    with pytest.raises(ConfigError, match="'windw'"):  # a global no stage accepts
        build_classifier(d_model=D, num_classes=2, d_input=1, stages=["mlp", "attn"], windw=2)
    m = clf(stages=["mlp", "attn(n_heads=2)"])
    with pytest.raises(InputError, match=r"lengths must be in \[1, L=4\]"):
        m(rand(2, 4, 3), lengths=torch.tensor([4, 0]))
    with pytest.raises(InputError, match=r"\(B, L, d_input=3\)"):
        m(rand(2, 4, 2))
    with pytest.raises(InputError, match="no stage takes timesteps"):
        clf(stages=["attn(n_heads=2)"])(rand(1, 4, 3), timesteps=torch.ones(1, 4))
    with pytest.raises(InputError, match="no empty sequence"):
        m(rand(1, 4, 3), cu_seqlens=torch.tensor([0, 0, 4]))


# ---------------------------------------------------------------------------------- UNet

def unet(spec=None, seed=0, **kw) -> UNet:
    torch.manual_seed(seed)
    spec = spec or f"{TS_LAYER} + attn(n_heads=2) + mlp"
    return build_unet(spec, d_model=D, **kw).double().eval()


@pytest.mark.parametrize("L", [1, 5, 12, 37])
def test_unet_any_length(L):
    net = unet(d_input=2, d_output=3, factors=(2, 3))
    assert net.total_factor == 6 and net.widths == [8, 16, 32]
    assert net(rand(2, L, 2)).shape == (2, L, 3)
    assert net(rand(2, 0, 2)).shape == (2, 0, 3)


def test_unet_is_causal():
    net = unet(factors=(2, 2))
    x = rand(1, 20, 1).requires_grad_()
    y = net(x)
    for t in (0, 3, 7, 12, 19):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        # FFT-convolution mode (lru/s4d default "auto") leaves round-off of ~1e-17 (float64)
        # on later positions, measured; a real dependence would be O(max |g|).
        later = g[0, t + 1:]
        assert later.numel() == 0 or later.abs().max() <= 1e-12 * g.abs().max(), \
            f"output {t} depends on later inputs"
        assert g[0, : t + 1].abs().max() > 0
    # a prefix gives the prefix of the output (padding on the right cannot leak back)
    with torch.no_grad():
        full = net(x)
        for L in (1, 6, 13):
            torch.testing.assert_close(net(x[:, :L]), full[:, :L], rtol=1e-10, atol=1e-12)


def test_unet_per_level_specs_and_widths():
    net = unet(spec=["mlp", "mlp*2", "attn(n_heads=2)"], factors=(2, 2), widths=[4, 6, 8])
    assert [e.spec for e in net.encoders] == ["mlp", "mlp*2"]
    assert net.bottleneck.spec == "attn(n_heads=2)"
    assert [d.spec for d in net.decoders] == ["mlp", "mlp*2"] and net.widths == [4, 6, 8]
    assert net(rand(1, 9, 1)).shape == (1, 9, 1)
    with pytest.raises(ConfigError, match="3 specs"):
        unet(spec=["mlp", "mlp"], factors=(2, 2))
    with pytest.raises(ConfigError, match="widths needs 3"):
        unet(factors=(2, 2), widths=[4, 4])
    with pytest.raises(ConfigError, match="factors"):
        unet(factors=())
    with pytest.raises(ConfigError, match=r"factors\[i\]"):
        unet(factors=(2, 0))
    with pytest.raises(InputError, match=r"x\[\.\.\., None\]"):
        unet()(rand(1, 9))


# ------------------------------------------------------------------------- model.kind

def test_config_kinds_round_trip(tmp_path):
    c = build_classifier(d_model=D, num_classes=3, d_input=2, spec="mlp*2", pool_every=1,
                         pool="stride", norm="layer")
    cfg = c.config()
    assert cfg["model"]["kind"] == "classifier" and cfg["model"]["stages"] == ["mlp", "mlp"]
    c2 = lrnnx.build_model_from_config(cfg)
    assert isinstance(c2, Classifier) and c2.config() == cfg
    c2.load_state_dict(c.state_dict())
    x = torch.randn(2, 5, 2)
    torch.testing.assert_close(c2(x), c(x))
    u = build_unet("mlp", d_model=4, factors=[2])
    u2 = lrnnx.build_model_from_config(u.config())
    assert isinstance(u2, UNet) and u2.config() == u.config()
    path = tmp_path / "unet.yaml"
    path.write_text("model:\n  kind: unet\n  spec: mlp + attn\n  d_model: 8\n  n_heads: 2\n"
                    "  factors: [2, 2]\n")
    u3 = lrnnx.build_model_from_config(path, overrides=["d_input=2"])
    assert u3.d_input == 2 and u3.encoders[0].blocks[1].mixer.n_heads == 2
    lm = lrnnx.build_model_from_config({"model": {"kind": "lm", "spec": "mlp", "d_model": D,
                                                  "vocab_size": 7}})
    assert isinstance(lm, LM)
    bb = lrnnx.build_model_from_config({"kind": "backbone", "spec": "mlp", "d_model": D})
    assert isinstance(bb, Backbone)


@pytest.mark.parametrize("cfg,match", [
    ({"kind": "clasifier", "spec": "mlp", "d_model": D}, "Did you mean 'classifier'"),
    ({"kind": "lm", "spec": "mlp", "d_model": D}, "needs model.vocab_size"),
    ({"kind": "backbone", "spec": "mlp", "d_model": D, "vocab_size": 3}, "takes no vocab_size"),
    ({"kind": "classifier", "spec": "mlp", "d_model": D, "num_clases": 2, "d_input": 1},
     "'model.num_classes' is missing.*did you mean 'num_clases'"),
    ({"kind": "classifier", "spec": "mlp", "d_model": D, "num_classes": 2, "d_input": 1,
      "n_head": 2}, "'n_head'"),
    ({"kind": "unet", "d_model": D}, "'model.spec' is missing"),
    ({"model": {"kind": "unet", "spec": "mlp", "d_model": D}, "extra": 1},
     "unknown top-level key 'extra'"),
])
def test_config_kind_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        lrnnx.build_model_from_config(cfg)
