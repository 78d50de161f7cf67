"""The issue #7 decode benchmark (lrnnx.generation.benchmark, benchmarks/gpu_generate.py) on the
CPU at tiny sizes: our eager rows, the "not installed" rows of mamba_ssm, and the mamba_ssm code
path end to end against a stand-in package (mamba_ssm needs CUDA; the stand-in has its module
layout, its MambaConfig fields, its generate() signature and the transformers 5 import failure of
its generation utils)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

import lrnnx
from lrnnx.errors import InputError
from lrnnx.generation import benchmark as gb
from lrnnx.generation import generate

pytestmark = pytest.mark.skipif("mamba" not in lrnnx.list_layers(),
                                reason="the mamba layer is not registered")


def tiny(**kw) -> gb.DecodeBenchConfig:
    base = dict(d_model=16, n_layer=2, vocab_size=32, d_state=4, batches=(1, 2),
                dtypes=("float32",), prompt_len=3, new_tokens=4, repeats=1, device="cpu")
    return gb.DecodeBenchConfig(**{**base, **kw})


@pytest.fixture
def no_mamba_ssm(monkeypatch):
    """mamba_ssm not importable, whether or not this machine has it."""
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)


def test_eager_decode_rows_on_cpu(no_mamba_ssm):
    res = gb.run_decode_comparison(tiny())
    rows = {(r["batch"], r["impl"]): r for r in res["rows"]}
    assert len(res["rows"]) == 2 * 4
    for b in (1, 2):
        eager = rows[b, "lrnnx eager"]
        assert eager["status"] == "ok" and eager["tokens_per_s"] > 0
        assert eager["tokens_per_s"] == pytest.approx(b * 1000 / eager["ms_per_step"])
        assert eager["agree"] == 1.0 and eager["first_diff"] is None   # the reference itself
        assert rows[b, "lrnnx graph"]["status"] == "skipped"
        assert "CUDA" in rows[b, "lrnnx graph"]["note"]
        for impl in ("mamba_ssm eager", "mamba_ssm graph"):
            assert rows[b, impl]["status"] == "not installed"
            assert "mamba_ssm is not installed" in rows[b, impl]["note"]
    assert res["machine"]["mamba_ssm"] == "not installed"
    assert res["config"]["spec"] == "mamba(d_state=4, d_conv=4, expand=2)*2"
    md = gb.decode_markdown(res)
    assert "| float32 | 1 | mamba_ssm graph | — | — | — | — | not installed |" in md
    assert "| float32 | 2 | lrnnx eager |" in md
    json.dumps(res)  # the results are JSON-serialisable as they are


def test_import_mamba_ssm_not_installed(no_mamba_ssm):
    with pytest.raises(gb.MambaSSMUnavailable, match="not installed") as info:
        gb.import_mamba_ssm()
    assert info.value.status == "not installed"


def test_benchmark_decode_tokens_are_the_greedy_generation():
    lm = gb.build_lrnnx_lm(tiny(), torch.float32, "cpu")
    res = gb.benchmark_decode(lm, batch=2, steps=4, cuda_graph=False, prompt_len=3, repeats=1,
                              return_tokens=True)
    prompt = res["tokens"][:, :3]
    assert torch.equal(res["tokens"], generate(lm, prompt, 4, temperature=0, cuda_graph=False))
    assert set(res) == {"batch", "steps", "cuda_graph", "ms_per_step", "tokens_per_s", "device",
                        "tokens"}


def test_lrnnx_lm_matches_the_issue_config():
    cfg = tiny(n_layer=3)
    lm = gb.build_lrnnx_lm(cfg, torch.bfloat16, "cpu")
    assert lm.embedding.weight.dtype == torch.bfloat16 and not lm.training
    assert lm.head.weight is lm.embedding.weight                       # tied
    blocks = lm.backbone.blocks
    assert len(blocks) == 3 and all(b.mixer.name == "mamba" for b in blocks)
    m = blocks[0].mixer
    assert (m.d_state, m.d_conv, m.expand, m.d_model) == (4, 4, 2, 16)
    assert isinstance(blocks[0].norm, torch.nn.RMSNorm) and blocks[0].norm.eps == 1e-5
    sd = gb.lrnnx_to_mamba_ssm_state_dict(lm)
    assert sd["backbone.layers.2.mixer.conv1d.weight"].shape == (32, 1, 4)
    assert sd["lm_head.weight"] is not None and "backbone.norm_f.weight" in sd
    assert len(sd) == 3 + 3 * 10   # embedding, norm_f, head; per layer norm + 9 mixer tensors


def test_bad_config_is_an_input_error():
    with pytest.raises(InputError, match="dtype 'fp8'"):
        gb.run_decode_comparison(tiny(dtypes=("fp8",)))
    with pytest.raises(InputError, match="unknown impl"):
        gb.run_decode_comparison(tiny(impls=("lrnnx turbo",)))
    with pytest.raises(InputError, match="steps >= 2"):
        gb.benchmark_decode(gb.build_lrnnx_lm(tiny(), torch.float32, "cpu"), 1, 1)


def test_budget_skips_later_rows(no_mamba_ssm):
    res = gb.run_decode_comparison(tiny(budget_s=0.0))
    assert {r["status"] for r in res["rows"]} == {"skipped"}


# ------------------------------------------------------------------ a stand-in mamba_ssm package

_FAKE = {
    "transformers/__init__.py": '__version__ = "5.0.0"\n',
    # transformers 5: GenerateDecoderOnlyOutput, but no GreedySearch/Sample...DecoderOnlyOutput
    "transformers/generation/__init__.py": """
        from dataclasses import dataclass

        @dataclass
        class GenerateDecoderOnlyOutput:
            sequences: object = None
            scores: object = None

        class TextStreamer:
            pass
        """,
    "mamba_ssm/__init__.py": """
        __version__ = "2.3.2"
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        """,
    "mamba_ssm/utils/__init__.py": "",
    "mamba_ssm/utils/generation.py": """
        from transformers.generation import GreedySearchDecoderOnlyOutput, \\
            SampleDecoderOnlyOutput, TextStreamer
        import lrnnx.generation

        CALLS = []

        def decode(input_ids, model, max_length, top_k=1, cg=False, **kw):
            CALLS.append({"max_length": max_length, "top_k": top_k, "cg": cg})
            assert top_k == 1
            n = max_length - input_ids.shape[1]
            seq = lrnnx.generation.generate(model.lm, input_ids, n, temperature=0,
                                            cuda_graph=False)
            return GreedySearchDecoderOnlyOutput(sequences=seq)

        class GenerationMixin:
            def generate(self, input_ids, max_length, top_k=1, top_p=0.0, min_p=0.0,
                         temperature=1.0, return_dict_in_generate=False, output_scores=False,
                         **kwargs):
                out = decode(input_ids, self, max_length, top_k=top_k, **kwargs)
                return out if return_dict_in_generate else out.sequences
        """,
    "mamba_ssm/models/__init__.py": "",
    "mamba_ssm/models/config_mamba.py": """
        from dataclasses import dataclass, field

        @dataclass
        class MambaConfig:
            d_model: int = 2560
            d_intermediate: int = 0
            n_layer: int = 64
            vocab_size: int = 50277
            ssm_cfg: dict = field(default_factory=dict)
            attn_layer_idx: list = field(default_factory=list)
            attn_cfg: dict = field(default_factory=dict)
            rms_norm: bool = True
            residual_in_fp32: bool = True
            fused_add_norm: bool = True
            pad_vocab_size_multiple: int = 8
            tie_embeddings: bool = True
        """,
    # the network through lrnnx (exact, so the greedy tokens must agree), exposing mamba_ssm's
    # parameter names in state_dict / load_state_dict
    "mamba_ssm/models/mixer_seq_simple.py": """
        import torch
        import lrnnx
        from lrnnx.generation.benchmark import lrnnx_to_mamba_ssm_state_dict
        from mamba_ssm.utils.generation import GenerationMixin

        class MambaLMHeadModel(torch.nn.Module, GenerationMixin):
            def __init__(self, config, device=None, dtype=None):
                super().__init__()
                ssm = dict(config.ssm_cfg)
                assert ssm.pop("layer") == "Mamba1" and config.d_intermediate == 0
                assert config.rms_norm and config.tie_embeddings
                assert config.vocab_size % config.pad_vocab_size_multiple == 0
                opts = ", ".join(f"{k}={v}" for k, v in sorted(ssm.items()))
                torch.manual_seed(1234)   # not lrnnx's init: the weights must be copied
                self.lm = lrnnx.build_model(f"mamba({opts})*{config.n_layer}",
                                            d_model=config.d_model,
                                            vocab_size=config.vocab_size).to(device, dtype)

            def state_dict(self, *args, **kwargs):
                return lrnnx_to_mamba_ssm_state_dict(self.lm)

            def load_state_dict(self, sd, strict=True):
                own = lrnnx_to_mamba_ssm_state_dict(self.lm)
                with torch.no_grad():
                    for k, v in sd.items():
                        own[k].copy_(v)
        """,
}


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    for rel, text in _FAKE.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "transformers")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(gb, "MAMBA_SSM_NEEDS_CUDA", False)
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "transformers")]:
        del sys.modules[name]


def test_mamba_ssm_rows_through_the_stand_in(fake_mamba_ssm):
    res = gb.run_decode_comparison(tiny(batches=(2,)))
    rows = {r["impl"]: r for r in res["rows"]}
    for impl in ("mamba_ssm eager", "mamba_ssm graph"):
        r = rows[impl]
        assert r["status"] == "ok", r
        assert r["tokens_per_s"] > 0
        # lrnnx's weights were copied in: the same greedy tokens as lrnnx eager
        assert r["agree"] == 1.0 and r["first_diff"] is None, r
        assert "aliased to GenerateDecoderOnlyOutput" in r["note"], r["note"]
    calls = sys.modules["mamba_ssm.utils.generation"].CALLS
    assert {c["cg"] for c in calls} == {False, True}
    assert {c["max_length"] for c in calls} == {3 + 1, 3 + 4}     # t(1) and t(new_tokens)
    assert res["machine"]["mamba_ssm"] == "2.3.2"
    assert res["machine"]["transformers"] == "5.0.0"


def test_mamba_ssm_import_failure_is_reported(fake_mamba_ssm):
    (fake_mamba_ssm / "mamba_ssm/models/mixer_seq_simple.py").write_text(
        "import causal_conv1d_that_is_missing\n")
    with pytest.raises(gb.MambaSSMUnavailable, match="failed to import") as info:
        gb.import_mamba_ssm()
    assert info.value.status == "unavailable"
    res = gb.run_decode_comparison(tiny(batches=(1,), impls=("mamba_ssm graph",)))
    (row,) = res["rows"]
    assert row["status"] == "unavailable" and "causal_conv1d_that_is_missing" in row["note"]


def test_gpu_generate_script_smoke_on_cpu(tmp_path, no_mamba_ssm, capsys):
    sys.path.insert(0, str(gb.__file__).rsplit("/lrnnx/", 1)[0] + "/benchmarks")
    try:
        import gpu_generate
    finally:
        sys.path.pop(0)
    rc = gpu_generate.main(["--device", "cpu", "--smoke", "--dtypes", "float32",
                            "--batches", "1", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "generate.json").read_text())
    assert [r["impl"] for r in data["rows"]] == list(gb.IMPLS)
    assert data["rows"][0]["status"] == "ok"
    md = (tmp_path / "RESULTS-generate.md").read_text()
    assert "not installed" in md and md in capsys.readouterr().out
    assert gpu_generate.main(["--device", "cpu", "--dtypes", "fp8", "--out",
                              str(tmp_path)]) == 2


def test_time_per_step_stays_positive_when_noise_exceeds_the_decode_time():
    # t(1) > t(N): the difference would be negative (seen on a loaded 2-core CI machine); the
    # repeat falls back to t(N) / N, so tokens/s stays finite and positive
    import time

    def run(n):
        time.sleep(0.02 if n == 1 else 0.004)
        return n

    sec, out = gb._time_per_step(run, steps=4, repeats=3, device=torch.device("cpu"))
    assert out == 4 and 0.0009 < sec < 0.004
    fast = gb._time_per_step(lambda n: time.sleep(0.002 * n), steps=5, repeats=3,
                             device=torch.device("cpu"))[0]
    assert 0.0015 < fast < 0.01  # the normal case is still (t(N) - t(1)) / (N - 1)
