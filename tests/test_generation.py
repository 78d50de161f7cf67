"""Tests of lrnnx.generation (CPU): generate, sampling, the static-buffer decode step, rollout."""

from __future__ import annotations

import pytest
import torch

import lrnnx
from lrnnx.errors import BackendUnavailableError, InputError, InputTypeError
from lrnnx.generation import (NotGraphable, benchmark_decode, decoder_for, generate, rollout,
                              sample_logits)
from lrnnx.models import LM, LRNNLM

V, D = 40, 16
#: recurrent layers of the brief; those registered (with step) join the test specs
LRNN_CANDIDATES = ("s4d", "lru", "ssm", "mamba", "mamba2", "rglru", "hawk", "mingru", "minlstm",
                   "s4", "s5", "s7", "centaurus", "linoss")


def _term(name: str) -> str:
    """The layer with its smallest valid options (``test_kwargs``), e.g. mamba2(headdim=4)."""
    kw = getattr(lrnnx.get_layer(name), "test_kwargs", {})
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kw.items())})" if kw else name


def _lrnn_layers() -> list[str]:
    names = lrnnx.list_layers()
    return [_term(n) for n in LRNN_CANDIDATES
            if n in names and "step" in lrnnx.get_layer(n).capabilities]


SPECS = ["attn + mlp", "attn(window=3) + mlp + attn"] + \
    [f"{n} + attn + mlp" for n in _lrnn_layers()]


def make_lm(spec="attn + mlp", seed=0, dtype=torch.float64, **kw) -> LM:
    torch.manual_seed(seed)
    return lrnnx.build_model(spec, d_model=D, vocab_size=V, **kw).to(dtype).eval()


def prompt(B=2, L=5, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def greedy_by_full_forward(lm, ids, n):
    """Reference: recompute the whole sequence from scratch for every new token."""
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat((seq, lm(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return seq


# ------------------------------------------------------------------------------ generate

@pytest.mark.parametrize("spec", SPECS)
def test_greedy_equals_full_forward_argmax(spec):
    lm = make_lm(spec)
    ids = prompt()
    out = lm.generate(ids, 8, temperature=0)
    assert out.shape == (2, 13) and out.dtype == torch.long
    torch.testing.assert_close(out, greedy_by_full_forward(lm, ids, 8), rtol=0, atol=0)


def test_lm_alias_and_prompt_is_kept():
    assert LRNNLM is LM
    lm = make_lm()
    ids = prompt(B=3, L=4)
    out = lm.generate(ids.to(torch.int32), 0)
    assert out.dtype == torch.long and torch.equal(out, ids)
    assert torch.equal(lm.generate(ids, 3)[:, :4], ids)


def test_sampling_is_deterministic_with_a_generator():
    lm = make_lm("attn + mlp")
    ids = prompt()
    a = lm.generate(ids, 12, temperature=1.5, generator=torch.Generator().manual_seed(3))
    b = lm.generate(ids, 12, temperature=1.5, generator=torch.Generator().manual_seed(3))
    c = lm.generate(ids, 12, temperature=1.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_1_and_tiny_top_p_are_greedy():
    lm = make_lm("attn + mlp")
    ids = prompt()
    greedy = lm.generate(ids, 10, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(lm.generate(ids, 10, temperature=2.0, top_k=1, generator=g), greedy)
    assert torch.equal(lm.generate(ids, 10, top_p=1e-9, generator=g), greedy)


def test_sample_logits_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, top_p=0.6, generator=g).tolist()) == {0, 1}
    assert set(sample_logits(logits, top_p=0.8, generator=g).tolist()) == {0, 1}
    assert set(sample_logits(logits, top_p=0.81, generator=g).tolist()) == {0, 1, 2}
    assert set(sample_logits(logits, top_k=3, generator=g).tolist()) == {0, 1, 2}
    # top_k then top_p: of the renormalized top-2 (0.625, 0.375) 0.6 keeps token 0 only
    assert set(sample_logits(logits, top_k=2, top_p=0.6, generator=g).tolist()) == {0}
    assert sample_logits(logits[:2], temperature=0).tolist() == [0, 0]
    # a high temperature flattens the distribution: the rare token appears often
    hot = sample_logits(logits, temperature=100.0, generator=g)
    assert (hot == 3).float().mean() > 0.15
    assert sample_logits(logits.bfloat16(), top_k=1, generator=g).tolist() == [0] * 400


def test_eos_keeps_emitting_eos():
    lm = make_lm("attn + mlp")
    ids = prompt(B=2, L=4)
    greedy = lm.generate(ids, 10, temperature=0)
    eos = int(greedy[0, 4 + 2])
    out = lm.generate(ids, 10, temperature=0, eos_token_id=eos)
    first = [int((row[4:] == eos).nonzero()[0]) if (row[4:] == eos).any() else None
             for row in greedy]
    for b, f in enumerate(first):
        if f is None:
            assert torch.equal(out[b], greedy[b])
        else:
            assert torch.equal(out[b, :4 + f + 1], greedy[b, :4 + f + 1])
            assert (out[b, 4 + f:] == eos).all()


def test_eos_early_exit_fills_the_rest(monkeypatch):
    lm = make_lm("attn + mlp")
    ids = prompt(B=1, L=3)
    greedy = lm.generate(ids, 3, temperature=0)
    eos = int(greedy[0, 4])
    calls = []
    orig = lm.step
    monkeypatch.setattr(lm, "step", lambda *a, **k: calls.append(1) or orig(*a, **k))
    out = lm.generate(ids, 40, temperature=0, eos_token_id=eos)
    assert out.shape == (1, 43) and torch.equal(out[0, :5], greedy[0, :5])
    assert (out[0, 4:] == eos).all()
    assert len(calls) == 15  # stopped at the first all-finished check, not after 39 steps


def test_generate_in_train_mode_and_cuda_graph_auto_on_cpu():
    lm = make_lm("attn + mlp")
    ids = prompt()
    ref = lm.generate(ids, 4, temperature=0, cuda_graph=False)
    assert torch.equal(lm.generate(ids, 4, temperature=0, cuda_graph="auto"), ref)
    lm.train()  # no dropout in this model: same tokens, and the mode is left unchanged
    assert torch.equal(lm.generate(ids, 4, temperature=0), ref) and lm.training


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"max_new_tokens": -1}, InputError, "max_new_tokens must be >= 0"),
    ({"max_new_tokens": 2.0}, InputTypeError, "max_new_tokens must be an int"),
    ({"max_new_tokens": True}, InputTypeError, "max_new_tokens must be an int"),
    ({"temperature": -0.5}, InputError, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, InputError, "temperature"),
    ({"temperature": "hot"}, InputTypeError, "temperature"),
    ({"top_p": 0.0}, InputError, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, InputError, r"top_p must be in \(0, 1\]"),
    ({"top_k": 0}, InputError, "top_k must be >= 1"),
    ({"eos_token_id": V}, InputError, "eos_token_id must be in"),
    ({"cuda_graph": "yes"}, InputError, "cuda_graph must be 'auto', True or False"),
    ({"cuda_graph": True}, BackendUnavailableError, r"model.cuda\(\).*cuda_graph='auto'"),
    ({"generator": 0}, InputTypeError, "torch.Generator"),
    ({"input_ids": torch.randn(2, 3)}, InputTypeError, "integer token ids"),
    ({"input_ids": torch.zeros(3, dtype=torch.long)}, InputError, r"shape \(B, L\)"),
    ({"input_ids": torch.zeros(2, 0, dtype=torch.long)}, InputError, "at least one token"),
    ({"input_ids": torch.full((1, 2), V)}, InputError, "vocab_size"),
])
def test_generate_argument_errors(kwargs, exc, match):
    lm = make_lm()
    args = {"input_ids": prompt(), "max_new_tokens": 3, **kwargs}
    with pytest.raises(exc, match=match):
        lm.generate(**args)


def test_generate_rejects_non_lm():
    with pytest.raises(InputTypeError, match="must be an lrnnx LM"):
        generate(lrnnx.build_model("mlp", d_model=D), prompt(), 2)


# ------------------------------------------------------------------- static decode step

@pytest.mark.parametrize("spec", ["attn + mlp", "attn(window=3) + mlp", "attn(window=20) + mlp"]
                         + [f"{n} + attn(window=4)" for n in _lrnn_layers()[:2]])
def test_static_buffer_step_equals_eager_step(spec, monkeypatch):
    """The step the CUDA graph captures (ring-buffer KV cache), run eagerly on CPU."""
    import lrnnx.generation.cuda_graph as cg

    monkeypatch.setattr(cg, "CAPACITY_MULTIPLE", 8)  # small ring: exercise the wrap-around
    lm = make_lm(spec)
    ids = prompt(B=2, L=5)
    _, state = lm(ids, return_state=True)
    dec = decoder_for(lm, state, 2, n_tokens=5 + 11, graph=False)
    if "window=3" in spec:
        assert dec.state[0]["k"].shape[2] == 3
    toks = prompt(B=2, L=11, seed=7)
    for t in range(11):
        ref, state = lm.step(toks[:, t], state)
        torch.testing.assert_close(dec.step(toks[:, t]), ref, rtol=1e-10, atol=1e-12)
    # load() resets the buffers: a second prefill gives the same logits as the eager path
    _, state = lm(ids[:, :2], return_state=True)
    dec.load(state)
    ref, _ = lm.step(toks[:, 0], state)
    torch.testing.assert_close(dec.step(toks[:, 0]), ref, rtol=1e-10, atol=1e-12)
    assert "step" not in vars(lm.backbone.blocks[0].mixer)  # the swap is undone


def test_static_step_detects_growing_state(register):
    class Growing(lrnnx.Layer):
        name = "test_growing"
        capabilities = frozenset({"step"})

        def __init__(self, d_model: int):
            super().__init__()
            self.d_model = d_model
            self.w = torch.nn.Parameter(torch.ones(d_model))

        def init_state(self, batch_size, device=None, dtype=None):
            return {"hist": torch.zeros(batch_size, 0, self.d_model, device=device, dtype=dtype)}

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            y = x * self.w
            return (y, {"hist": x if state is None else torch.cat((state["hist"], x), 1)}) \
                if return_state else y

        def step(self, x_t, state):
            return x_t * self.w, {"hist": torch.cat((state["hist"], x_t[:, None]), 1)}

    register("layer", Growing)
    lm = make_lm("test_growing + mlp")
    _, state = lm(prompt(), return_state=True)
    dec = decoder_for(lm, state, 2, n_tokens=8, graph=False)
    with pytest.raises(NotGraphable, match=r"block 0 \(Growing\).*hist.*static buffer"):
        dec.step(prompt()[:, 0])
    # eager generation still works for such a layer
    assert lm.generate(prompt(), 3, temperature=0).shape == (2, 8)


def test_benchmark_decode_runs_on_cpu():
    res = benchmark_decode(make_lm("mlp", dtype=torch.float32), batch=2, steps=3, repeats=1)
    assert res["batch"] == 2 and res["tokens_per_s"] > 0 and res["device"] == "cpu"
    with pytest.raises(InputError, match="steps >= 2"):
        benchmark_decode(make_lm("mlp"), batch=1, steps=1)


# ------------------------------------------------------------------------------- rollout

def _layer(spec="s4d", seed=0):
    name = spec.split("(")[0]
    if name not in lrnnx.list_layers():
        spec = "attn(n_heads=2)"
    torch.manual_seed(seed)
    return lrnnx.build_layer(spec, d_model=4).double().eval()


def test_rollout_feeds_outputs_back():
    layer = _layer()
    x0 = torch.randn(2, 4, dtype=torch.float64)
    ys = rollout(layer, x0, 6)
    assert ys.shape == (2, 6, 4)
    st, x, ref = layer.init_state(2), x0, []
    for _ in range(6):
        x, st = layer.step(x, st)
        ref.append(x)
    torch.testing.assert_close(ys, torch.stack(ref, 1), rtol=1e-12, atol=1e-12)
    # one step of the rollout equals forward on the sequence of its inputs
    seq = torch.cat((x0[:, None], ys[:, :-1]), 1)
    torch.testing.assert_close(layer(seq), ys, rtol=1e-10, atol=1e-12)


def test_rollout_context_and_continuation():
    layer = _layer()
    ctx = torch.randn(2, 5, 4, dtype=torch.float64)
    ys, st = rollout(layer, ctx, 7, return_state=True)
    torch.testing.assert_close(ys[:, 0], layer(ctx)[:, -1], rtol=1e-10, atol=1e-12)
    first, st1 = rollout(layer, ctx, 3, return_state=True)
    rest = rollout(layer, first[:, -1], 4, state=st1)
    torch.testing.assert_close(torch.cat((first, rest), 1), ys, rtol=1e-10, atol=1e-12)
    assert rollout(layer, ctx, 0).shape == (2, 0, 4)
    backbone = lrnnx.build_model("attn(n_heads=2) + mlp", d_model=4).double().eval()
    assert rollout(backbone, ctx, 3).shape == (2, 3, 4)


def test_rollout_errors():
    layer = _layer()

    class NoStep(lrnnx.Layer):
        name = "test_nostep"

        def __init__(self, d_model: int):
            super().__init__()
            self.d_model = d_model

        def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
            return x

    with pytest.raises(InputError, match="lacks the 'step' capability"):
        rollout(NoStep(4), torch.randn(1, 4), 2)
    with pytest.raises(InputError, match="steps must be >= 0"):
        rollout(layer, torch.randn(1, 4, dtype=torch.float64), -1)
    with pytest.raises(InputTypeError, match="steps must be an int"):
        rollout(layer, torch.randn(1, 4, dtype=torch.float64), 2.5)
    with pytest.raises(InputError, match=r"\(B, d\).*\(B, L, d\)"):
        rollout(layer, torch.randn(4, dtype=torch.float64), 2)
    with pytest.raises(InputError, match="d_model=4"):
        rollout(layer, torch.randn(1, 3, dtype=torch.float64), 2)
    with pytest.raises(InputError, match="length 0"):
        rollout(layer, torch.randn(1, 0, 4, dtype=torch.float64), 2)
