"""lrnnx.param_graphs on CPU: when graphs apply, the cache's copy / pickle behaviour, and the
layers' graph routes (conv kernel, MIMO matrices) against their generic paths.  The routes run
here with eagerly computed parameter tensors (graphs need CUDA), which checks the input-side
code the graphs feed; tests/gpu/test_param_graphs_gpu.py checks the graphs themselves."""
import copy
import io
import pickle

import pytest
import torch

import lrnnx
from lrnnx import param_graphs
from lrnnx.param_graphs import ParamGraphs

# layer spec, sequence length: conv mode (s4d at L >= the auto threshold, bidirectional too) and
# the MIMO scan (lru, s5)
ROUTES = [("s4d", 300), ("s4d(bidirectional=True)", 300), ("lru(d_state=8)", 20),
          ("s5(d_state=8)", 20), ("s5(d_state=8, bidirectional=True)", 20)]


def test_not_eligible_on_cpu_or_without_grad(monkeypatch):
    p = torch.nn.Parameter(torch.randn(3))
    assert not param_graphs.eligible([p])           # CPU tensor
    assert not param_graphs.eligible([])
    with torch.no_grad():
        assert not param_graphs.eligible([p])
    monkeypatch.setenv("LRNNX_PARAM_GRAPHS", "0")
    assert not param_graphs.enabled()
    monkeypatch.setenv("LRNNX_PARAM_GRAPHS", "1")
    assert param_graphs.enabled()


def test_run_falls_back_to_the_function_when_not_eligible():
    g = ParamGraphs("test")
    p = torch.nn.Parameter(torch.randn(3))
    out = g.run("k", lambda: p * 2, [p])
    assert isinstance(out, tuple) and len(out) == 1
    assert torch.equal(out[0], p.detach() * 2) and out[0].requires_grad
    assert not g.entries and g.captures == 0


def test_cache_is_not_copied_or_pickled():
    layer = lrnnx.build_layer("s4d", 8)
    layer._param_graphs.entries["sentinel"] = object()  # stands for a captured pair
    layer._param_graphs.captures = 3
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert other._param_graphs is not layer._param_graphs
        assert not other._param_graphs.entries and other._param_graphs.captures == 0
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert not loaded._param_graphs.entries


def _step(layer, x, **kw):
    xi = x.clone().requires_grad_()
    y = layer(xi, **kw)
    y = y[0] if isinstance(y, tuple) else y
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[-1])).square().sum(),
                                [xi] + list(layer.parameters()))
    return y.detach(), grads


@pytest.mark.parametrize("spec,L", ROUTES)
def test_graph_routes_match_the_generic_paths(spec, L, monkeypatch):
    """The graph routes (with the parameter tensors computed eagerly, as on a CUDA graph
    fallback) give exactly the generic paths' outputs and gradients."""
    torch.manual_seed(0)
    layer = lrnnx.build_layer(spec, 8)
    x = torch.randn(2, L, 8)
    y0, g0 = _step(layer, x)
    used = []

    def forced(self, param, x):  # the route, with an always-eager cache
        used.append(param)
        return ParamGraphs(self.name), self._param_tensors(param)

    monkeypatch.setattr(type(layer), "_graphs_for", forced)
    y1, g1 = _step(layer, x)
    assert used, "the graph route was not taken"
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("spec", ["lru(d_state=8)", "s5(d_state=8)"])
def test_mimo_route_with_state_and_packed_sequences(spec, monkeypatch):
    torch.manual_seed(0)
    layer = lrnnx.build_layer(spec, 8)
    x = torch.randn(1, 12, 8)
    cu = torch.tensor([0, 5, 12])

    def run():
        y1, s1 = layer(x, cu_seqlens=cu, return_state=True)
        y2, s2 = layer(x[:, :7], state={"h": s1["h"][:1]}, return_state=True)
        return y1, s1["h"], y2, s2["h"]

    ref = run()
    monkeypatch.setattr(type(layer), "_graphs_for",
                        lambda self, param, x: (ParamGraphs(self.name),
                                                self._param_tensors(param)))
    for a, b in zip(run(), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_conv_route_declines_state_and_packed_sequences(monkeypatch):
    """Conv mode with a final state or packed sequences keeps the generic path."""
    layer = lrnnx.build_layer("s4d", 8)
    x = torch.randn(1, 300, 8)
    calls = []
    monkeypatch.setattr(type(layer), "_graphs_for",
                        lambda self, param, x: calls.append(1) or (ParamGraphs(self.name),
                                                                   self._param_tensors(param)))
    layer(x, return_state=True)
    layer(x, cu_seqlens=torch.tensor([0, 100, 300]))
    assert not calls
    layer(x)
    assert calls


def test_dropped_graphs_are_destroyed_at_the_next_call():
    """A collected layer's captured graphs are destroyed later, outside any capture."""
    layer = lrnnx.build_layer("s4d", 8)
    sentinel = object()
    layer._param_graphs.entries["k"] = sentinel
    del layer
    import gc

    gc.collect()
    assert any(e is sentinel for e in param_graphs._GRAVEYARD)
    p = torch.nn.Parameter(torch.randn(2))
    ParamGraphs("other").run("k", lambda: p + 1, [p])
    assert not param_graphs._GRAVEYARD


def test_in_backward_detection():
    """Captures are refused while the autograd engine runs (checkpoint recomputation)."""
    seen = []

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            seen.append(param_graphs._in_backward())
            return g * 2

    x = torch.ones(2, requires_grad=True)
    assert not param_graphs._in_backward()
    F.apply(x).sum().backward()
    assert seen == [True]
