"""CUDA-graph decoding on a CUDA device: same tokens as eager decoding, and its speed.

Run on a GPU machine:
``PYTHONPATH=.:plugins_shim python -m pytest tests/gpu/test_generation_gpu.py -m gpu -q -s``
(``-s`` prints the throughput lines).  The large benchmark (24-layer d_model=768 Mamba LM at
batch 1 and 16, eager vs graph) is also marked ``slow``; deselect it with
``-m "gpu and not slow"``.
"""
from __future__ import annotations

import pytest
import torch

import lrnnx
from lrnnx.generation import benchmark_decode, clear_graph_cache
from lrnnx.generation import cuda_graph as cg
from lrnnx.registry.core import REGISTRY

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

dev = torch.device("cuda")
V = 97
LRNN_CANDIDATES = ("s4d", "lru", "ssm", "mamba", "mamba2", "rglru", "hawk", "mingru", "s7")


@pytest.fixture(scope="module", autouse=True)
def mamba_registered():
    """Register the Mamba plugin for these tests if the registry does not load it yet."""
    added = []
    if "mamba" not in lrnnx.list_layers():
        try:
            from lrnnx_plugins.mamba import Mamba, Mamba2
        except ImportError:
            Mamba = Mamba2 = None
        for cls in (Mamba, Mamba2):
            if cls is not None and cls.name not in lrnnx.list_layers():
                REGISTRY.register("layer", cls)
                added.append(cls.name)
    yield
    for name in added:
        REGISTRY.unregister("layer", name)


@pytest.fixture(autouse=True)
def exact_fp32():
    """No TF32, so eager and graph steps compute in true fp32 (ties are then vanishingly rare)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def lrnn_layers() -> list[str]:
    names = lrnnx.list_layers()
    return [n for n in LRNN_CANDIDATES if n in names and
            "step" in lrnnx.get_layer(n).capabilities]


def make_lm(spec, d_model=64, seed=0):
    torch.manual_seed(seed)
    return lrnnx.build_model(spec, d_model=d_model, vocab_size=V).to(dev).eval()


def prompt(B, L, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, L), generator=g).to(dev)


def spec_params():
    # parameters are made at collection, before the fixture may register mamba: the recurrent
    # layers are looked up inside the test, by index
    return ["attn + mlp", "attn(window=8) + mlp + attn"] + [f"lrnn:{i}" for i in range(9)]


@pytest.mark.parametrize("spec", spec_params())
def test_cuda_graph_decode_equals_eager(spec):
    if spec.startswith("lrnn:"):
        i = int(spec[5:])
        layers = lrnn_layers()
        if i >= len(layers):
            pytest.skip("fewer recurrent layers are registered")
        spec = f"{layers[i]} + attn + mlp"
    lm = make_lm(spec)
    clear_graph_cache(lm)
    for B, L, n in ((2, 7, 40), (2, 12, 30), (3, 5, 20)):
        ids = prompt(B, L, seed=B * 100 + L)
        eager = lm.generate(ids, n, temperature=0, cuda_graph=False)
        graph = lm.generate(ids, n, temperature=0, cuda_graph=True)
        assert torch.equal(graph, eager), f"{spec}: B={B} L={L}"
    # the second call with B=2 reused the captured graph (same capacity bucket), reset in between
    assert cg._CACHE.get(lm) is not None


def test_graph_is_reused_and_recaptured():
    lm = make_lm("attn + mlp")
    clear_graph_cache(lm)
    lm.generate(prompt(2, 4), 5, temperature=0, cuda_graph=True)
    dec = cg._CACHE[lm]
    lm.generate(prompt(2, 9), 5, temperature=0, cuda_graph=True)
    assert cg._CACHE[lm] is dec                       # same batch and capacity: replayed
    lm.generate(prompt(4, 4), 5, temperature=0, cuda_graph=True)
    assert cg._CACHE[lm] is not dec                   # another batch size: captured anew
    lm.generate(prompt(2, 4), cg.CAPACITY_MULTIPLE + 3, temperature=0, cuda_graph=True)
    assert cg._CACHE[lm].state[0]["k"].shape[2] == 2 * cg.CAPACITY_MULTIPLE


def test_graph_sampling_matches_eager_for_recurrent_model():
    """Without attention the captured kernels are the eager ones: sampled tokens match too."""
    layers = lrnn_layers()
    if not layers:
        pytest.skip("no recurrent layer registered")
    lm = make_lm(f"{layers[0]} + mlp")
    ids = prompt(4, 6)
    outs = [lm.generate(ids, 30, temperature=0.9, top_p=0.95, top_k=20, cuda_graph=g,
                        generator=torch.Generator(device="cuda").manual_seed(5))
            for g in (False, True)]
    assert torch.equal(outs[0], outs[1])


def test_graph_needs_eval_mode_and_auto_falls_back():
    lm = make_lm("attn + mlp").train()
    with pytest.raises(lrnnx.InputError, match="eval"):
        lm.generate(prompt(1, 3), 2, cuda_graph=True)
    assert lm.generate(prompt(1, 3), 2, cuda_graph="auto").shape == (1, 5)  # eager in train
    with pytest.raises(lrnnx.InputError, match="torch.Generator\\(device='cuda"):
        lm.eval().generate(prompt(1, 3), 2, generator=torch.Generator())


def test_decode_throughput():
    """Graph replay beats eager stepping where launch overhead dominates (small model, B=1)."""
    layers = lrnn_layers()
    spec = f"{layers[0]}*4 + attn + mlp" if layers else "attn*4 + mlp"
    lm = make_lm(spec)
    eager = benchmark_decode(lm, batch=1, steps=64, cuda_graph=False)
    graph = benchmark_decode(lm, batch=1, steps=64, cuda_graph=True)
    print(f"\n{spec} d_model=64 B=1: eager {eager['tokens_per_s']:.0f} tok/s, graph "
          f"{graph['tokens_per_s']:.0f} tok/s")
    assert graph["tokens_per_s"] > eager["tokens_per_s"]


@pytest.mark.slow
def test_mamba_130m_decode_benchmark():
    """The lead's benchmark: 24-layer d_model=768 Mamba LM, batch 1 and 16, eager vs graph."""
    if "mamba" not in lrnnx.list_layers():
        pytest.skip("the mamba layer is not available")
    lm = make_lm("mamba*24", d_model=768)
    rows = []
    for batch in (1, 16):
        for graph in (False, True):
            r = benchmark_decode(lm, batch=batch, steps=128, cuda_graph=graph)
            rows.append(r)
            print(f"mamba*24 d_model=768 B={batch:2d} cuda_graph={str(graph):5s}: "
                  f"{r['ms_per_step']:.2f} ms/step, {r['tokens_per_s']:.0f} tok/s")
    assert all(r["tokens_per_s"] > 0 for r in rows)
