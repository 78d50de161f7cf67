"""Tests of the residual blocks, lrnnx.build (spec -> layers/models, configs) and lrnnx.models."""

from __future__ import annotations

import os

import pytest
import torch

import lrnnx
from lrnnx.errors import ConfigError, InputError, SpecError, UnknownComponentError
from lrnnx.models import LM, Backbone
from lrnnx.registry import REGISTRY, Ref
from lrnnx.registry.spec import Component
from lrnnx_plugins.attention import Attention
from lrnnx_plugins.blocks import PreNorm, PreNormMLP
from lrnnx_plugins.mlp import GatedMLP

D = 16


def rand(*shape, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def seeded(fn, *a, **kw):
    torch.manual_seed(0)
    return fn(*a, **kw).double().eval()


# ------------------------------------------------------------------------------- blocks

def test_prenorm_is_residual_around_mixer():
    blk = seeded(PreNorm, D, Attention(D), norm="layer")
    x = rand(2, 5, D)
    torch.testing.assert_close(blk(x), x + blk.mixer(blk.norm(x)))
    assert blk.capabilities == {"step", "varlen"}
    assert lrnnx.get_block("prenorm") is PreNorm and lrnnx.get_block("prenorm_mlp") is PreNormMLP


def test_prenorm_mlp_formula():
    blk = seeded(PreNormMLP, D, GatedMLP(D), mlp_expand=2.0)
    x = rand(2, 5, D)
    h = x + blk.mixer(blk.norm(x))
    torch.testing.assert_close(blk(x), h + blk.mlp(blk.norm2(h)))
    assert blk.mlp.hidden == 32 and blk.capabilities == {"step", "varlen", "timesteps"}


def test_block_passes_state_and_steps():
    blk = seeded(PreNormMLP, D, Attention(D, window=3))
    x = rand(2, 7, D)
    y = blk(x)
    st = blk.init_state(2)
    assert set(st) == {"k", "v", "pos"}
    y1, st = blk(x[:, :4], state=st, return_state=True)
    outs = [y1]
    for t in range(4, 7):
        y_t, st = blk.step(x[:, t], st)
        outs.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-12)
    assert st["pos"].tolist() == [7, 7] and st["k"].shape[2] == 2  # the mixer's own cache


def test_block_passes_cu_seqlens_and_timesteps():
    blk = seeded(PreNorm, D, Attention(D))
    x = rand(1, 6, D)
    y = blk(x, cu_seqlens=torch.tensor([0, 2, 6]))
    torch.testing.assert_close(y[:, 2:], blk(x[:, 2:]), rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="timesteps"):
        blk(x, timesteps=torch.ones(1, 6, dtype=torch.float64))
    mblk = seeded(PreNorm, D, GatedMLP(D))
    torch.testing.assert_close(mblk(x, timesteps=torch.ones(1, 6, dtype=torch.float64)), mblk(x))


def test_block_errors():
    with pytest.raises(ConfigError, match="d_model=8"):
        PreNorm(D, Attention(8))
    with pytest.raises(ConfigError, match="norm"):
        PreNorm(D, Attention(D), norm="batch")
    blk = PreNorm(D, Attention(D))
    with pytest.raises(InputError, match="layer 'attn'.*d_model=16"):
        blk(torch.randn(1, 3, 8))


# ------------------------------------------------------------------------- build_model

def kinds(model):
    return [type(b.mixer).__name__ for b in model.blocks]


def test_spec_forms():
    m = lrnnx.build_model("attn*2 + mlp", d_model=D)
    assert isinstance(m, Backbone) and kinds(m) == ["Attention", "Attention", "GatedMLP"]
    assert m.spec == "attn*2 + mlp" and m.layers == ["attn", "attn", "mlp"]
    assert m.blocks[0].mixer is not m.blocks[1].mixer   # repeats get their own weights
    m = lrnnx.build_model("2*(attn + mlp)", d_model=D)
    assert kinds(m) == ["Attention", "GatedMLP"] * 2 and m.spec == "(attn + mlp)*2"
    assert m(torch.randn(2, 5, D)).shape == (2, 5, D)


def test_globals_reach_whoever_accepts_them_and_spec_wins():
    m = lrnnx.build_model("attn + attn(n_heads=2) + mlp(activation=gelu)", d_model=D,
                          n_heads=8, norm="layer", eps=1e-3, block="prenorm_mlp(mlp_expand=4)")
    a0, a1, mlp = (b.mixer for b in m.blocks)
    assert (a0.n_heads, a1.n_heads, mlp.activation) == (8, 2, "gelu")
    assert all(isinstance(b.norm, torch.nn.LayerNorm) and b.norm.eps == 1e-3 for b in m.blocks)
    assert isinstance(m.norm, torch.nn.LayerNorm) and m.blocks[0].mlp.hidden == 64


def test_build_layer():
    layer = lrnnx.build_layer("attn(window=4)", d_model=D, n_heads=2)
    assert isinstance(layer, Attention) and (layer.window, layer.n_heads) == (4, 2)
    layer = lrnnx.build_layer(Component("mlp", (("expand", 2.0),)), d_model=D)
    assert isinstance(layer, GatedMLP) and layer.hidden == 32
    with pytest.raises(SpecError, match="build_model"):
        lrnnx.build_layer("attn + mlp", d_model=D)
    with pytest.raises(ConfigError, match="'window'.*Accepted: layer 'mlp'"):
        lrnnx.build_layer("mlp", d_model=D, window=3)


def test_unknown_layer_has_caret_and_suggestion():
    with pytest.raises(UnknownComponentError) as ei:
        lrnnx.build_model("attn + atn*2", d_model=D)
    msg = str(ei.value)
    assert "did you mean: attn" in msg and "    attn + atn*2\n           ^^^" in msg


def test_option_errors_carry_caret():
    with pytest.raises(ConfigError) as ei:
        lrnnx.build_model("mlp + attn(n_head=2)", d_model=D)
    assert "Did you mean 'n_heads'" in str(ei.value)
    assert str(ei.value).endswith("    mlp + attn(n_head=2)\n          ^^^^")
    with pytest.raises(ConfigError, match="(?s)not divisible.*\n          \\^\\^\\^\\^"):
        lrnnx.build_model("mlp + attn(n_heads=3)", d_model=D)
    with pytest.raises(ConfigError, match="d_model is set"):
        lrnnx.build_model("attn(d_model=8)", d_model=D)
    with pytest.raises(ConfigError, match="plain value"):
        lrnnx.build_model("mlp(activation=gelu(x=1))", d_model=D)


def test_global_accepted_by_nobody():
    with pytest.raises(ConfigError, match="'n_head'.*Did you mean 'n_heads'.*Accepted"):
        lrnnx.build_model("attn", d_model=D, n_head=2)
    with pytest.raises(ConfigError, match="'window'"):  # attn is not in this spec
        lrnnx.build_model("mlp", d_model=D, window=2)
    with pytest.raises(ConfigError, match="tie_embeddings"):  # only an LM has it
        lrnnx.build_model("mlp", d_model=D, tie_embeddings=False)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="d_model"):
        lrnnx.build_model("attn", d_model=0)
    with pytest.raises(ConfigError, match="vocab_size"):
        lrnnx.build_model("attn", d_model=D, vocab_size=-1)
    with pytest.raises(UnknownComponentError, match="did you mean: prenorm"):
        lrnnx.build_model("attn", d_model=D, block="prenrom")
    with pytest.raises(SpecError):
        lrnnx.build_model(42, d_model=D)
    with pytest.raises(ConfigError, match="(?s)mlp_expand=-1.*\n    \\^{11}"):
        lrnnx.build_model("attn", d_model=D, block="prenorm_mlp(mlp_expand=-1)")
    with pytest.raises(ConfigError, match="unknown option 'mlp_expand'"):
        lrnnx.build_model("attn", d_model=D, block="prenorm(mlp_expand=2)")


def test_spec_is_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in ("__import__('os').system('touch x')", "attn + __import__('os').system('touch x')",
                 "attn(n_heads=__import__('os').system('touch x'))"):
        with pytest.raises(SpecError):
            lrnnx.build_model(spec, d_model=D)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def ref_layer():
    """A runtime-registered layer with a Ref("discretizer") option and two discretizers."""

    class Disc(lrnnx.Discretizer):
        name = "test_zoh"

    class Disc2(lrnnx.Discretizer):
        name = "test_bilinear"

    class RefLayer(lrnnx.Layer):
        name = "test_ref_layer"

        def __init__(self, d_model: int, disc: Ref("discretizer") = "test_zoh",
                     mode: str = "a"):
            super().__init__()
            self.d_model, self.disc, self.mode = d_model, disc, mode
            self.w = torch.nn.Parameter(torch.ones(d_model))

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            return x * self.w

    for kind, obj in (("discretizer", Disc()), ("discretizer", Disc2()), ("layer", RefLayer)):
        REGISTRY.register(kind, obj)
    yield RefLayer
    for kind, name in (("discretizer", "test_zoh"), ("discretizer", "test_bilinear"),
                       ("layer", "test_ref_layer")):
        REGISTRY.unregister(kind, name)


def test_ref_fields_resolve_against_their_kind(ref_layer):
    m = lrnnx.build_model("test_ref_layer(disc=test_bilinear, mode=b)", d_model=D)
    layer = m.blocks[0].mixer
    assert layer.disc == Component("test_bilinear") and layer.mode == "b"  # Ref kept, str plain
    with pytest.raises(UnknownComponentError) as ei:
        lrnnx.build_model("attn + test_ref_layer(disc=test_bilinaer)", d_model=D)
    assert "unknown discretizer 'test_bilinaer'" in str(ei.value)
    assert "did you mean: test_bilinear" in str(ei.value) and "^^^" in str(ei.value)


# -------------------------------------------------------------------------------- models

@pytest.mark.parametrize("spec", ["attn*2 + mlp", "attn(window=2) + mlp"])
def test_backbone_step_equals_forward(spec):
    torch.manual_seed(0)
    m = lrnnx.build_model(spec, d_model=D, block="prenorm_mlp").double().eval()
    x = rand(2, 6, D)
    y = m(x)
    y1, st = m(x[:, :3], return_state=True)
    outs = [y1]
    for t in range(3, 6):
        y_t, st = m.step(x[:, t], st)
        outs.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-12)
    st = m.init_state(2)
    assert isinstance(st, list) and len(st) == len(m.blocks) and st[-1] == {}
    with pytest.raises(InputError, match="one state dict per block"):
        m.step(x[:, 0], st[:-1])


def test_backbone_timesteps_and_varlen_routing():
    m = lrnnx.build_model("attn + mlp", d_model=D).double()
    x = rand(1, 5, D)
    ts = torch.ones(1, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x, timesteps=ts), m(x))  # mlp takes them, attn is skipped
    m2 = lrnnx.build_model("attn", d_model=D).double()
    with pytest.raises(InputError, match="no layer takes timesteps"):
        m2(x, timesteps=ts)
    y = m(x, cu_seqlens=torch.tensor([0, 2, 5]))
    torch.testing.assert_close(y[:, 2:], m(x[:, 2:]), rtol=1e-10, atol=1e-12)
    assert m.capabilities == {"step", "varlen", "timesteps"}


def test_lm_shapes_tying_and_step():
    torch.manual_seed(0)
    lm = lrnnx.build_model("attn + mlp", d_model=D, vocab_size=50).double().eval()
    assert isinstance(lm, LM) and lm.head.weight is lm.embedding.weight
    ids = torch.randint(0, 50, (2, 7))
    logits = lm(ids)
    assert logits.shape == (2, 7, 50)
    _, st = lm(ids[:, :4], return_state=True)
    outs = []
    for t in range(4, 7):
        lt, st = lm.step(ids[:, t], st)
        outs.append(lt)
    torch.testing.assert_close(torch.stack(outs, 1), logits[:, 4:], rtol=1e-10, atol=1e-12)
    assert lm.spec == "attn + mlp" and lm.layers == ["attn", "mlp"]
    untied = lrnnx.build_model("mlp", d_model=D, vocab_size=50, tie_embeddings=False)
    assert untied.head.weight is not untied.embedding.weight
    with pytest.raises(InputError, match="vocab_size=50"):
        lm(torch.tensor([[0, 50]]))
    with pytest.raises(TypeError, match="integer token ids"):
        lm(torch.randn(1, 3))


# ------------------------------------------------------------------------------- configs

def test_config_round_trip():
    torch.manual_seed(0)
    m = lrnnx.build_model("2*(attn(window=3) + mlp)", d_model=D, vocab_size=20,
                          block="prenorm_mlp(mlp_expand=2)", n_heads=2, norm="layer")
    cfg = m.config()
    assert cfg == {"model": {"spec": "(attn(window=3) + mlp)*2", "d_model": D, "vocab_size": 20,
                             "block": "prenorm_mlp(mlp_expand=2)", "n_heads": 2,
                             "norm": "layer"}}
    m2 = lrnnx.build_model_from_config(cfg)
    assert m2.config() == cfg
    m2.load_state_dict(m.state_dict())
    ids = torch.randint(0, 20, (1, 5))
    torch.testing.assert_close(m2.eval()(ids), m.eval()(ids))


def test_config_yaml_with_dotted_overrides(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("model:\n  spec: attn*2 + mlp\n  d_model: 16\n  n_heads: 4\n")
    m = lrnnx.build_model_from_config(path, overrides=["model.n_heads=2", "d_model=32",
                                                       "spec=attn(window=2) + mlp",
                                                       "vocab_size=10"])
    assert isinstance(m, LM) and m.d_model == 32 and m.spec == "attn(window=2) + mlp"
    assert m.backbone.blocks[0].mixer.n_heads == 2
    # top-level form, and the saved config() of a model
    path2 = tmp_path / "flat.yaml"
    path2.write_text("spec: mlp\nd_model: 8\nblock: prenorm_mlp\n")
    m = lrnnx.build_model_from_config(str(path2))
    assert m.config()["model"] == {"spec": "mlp", "d_model": 8, "block": "prenorm_mlp"}
    from omegaconf import OmegaConf

    OmegaConf.save(m.config(), tmp_path / "saved.yaml")
    assert lrnnx.build_model_from_config(tmp_path / "saved.yaml").config() == m.config()


def test_config_spec_as_list():
    cfg = {"spec": [{"name": "attn", "kwargs": {"n_heads": 2}}, {"name": "mlp"}],
           "d_model": D}
    m = lrnnx.build_model_from_config(cfg)
    assert m.spec == "attn(n_heads=2) + mlp" and m.blocks[0].mixer.n_heads == 2


@pytest.mark.parametrize("cfg,overrides,exc,match", [
    ({"model": {"spec": "attn", "d_model": D}, "modle": 1}, None, ConfigError,
     "unknown top-level key 'modle'"),
    ({"model": {"spec": "attn", "d_modle": D}}, None, ConfigError,
     "'model.d_model' is missing.*did you mean 'd_modle'"),
    ({"spec": "attn", "d_model": "big"}, None, ConfigError, "d_model"),
    ({"spec": "attn", "d_model": D, "n_haeds": 2}, None, ConfigError, "Did you mean 'n_heads'"),
    ({"spec": "attn", "d_model": D}, ["n_heads"], ConfigError, "key=value"),
    ({"spec": "atn", "d_model": D}, None, UnknownComponentError, "did you mean: attn"),
    ("/nonexistent/model.yaml", None, ConfigError, "does not exist"),
])
def test_config_errors(cfg, overrides, exc, match):
    with pytest.raises(exc, match=match):
        lrnnx.build_model_from_config(cfg, overrides=overrides)
