"""CUDA-graph replay of the layers' parameter computations (lrnnx.param_graphs) against the
eager computation it replaces: outputs and gradients bit for bit, training trajectories,
gradient accumulation, in-place changes, double backward, recapture and its limit."""
import copy

import pytest
import torch

import lrnnx
from lrnnx import param_graphs

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

# spec, L: conv-mode kernels (s4d, the generic ssm, bidirectional) and MIMO scans (lru, s5)
CASES = [("s4d", 1024), ("s4d(bidirectional=True)", 256), ("ssm", 256),
         ("lru(d_state=64)", 256), ("s5(d_state=64)", 256), ("s5(d_state=64, bidirectional=True)", 64)]


def _layer(spec, seed=0):
    torch.manual_seed(seed)
    return lrnnx.build_layer(spec, 64).cuda()


def _loss(layer, x):
    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y
    return (y * torch.linspace(-1, 1, y.shape[-1], device=y.device)).square().mean(), y


def _grads(layer, x):
    xi = x.clone().requires_grad_()
    loss, y = _loss(layer, xi)
    g = torch.autograd.grad(loss, [xi] + list(layer.parameters()))
    return y.detach(), g


def _assert_used(layer):
    g = layer._param_graphs
    assert g.disabled is None, g.disabled
    assert g.entries, "no graph was captured"


@pytest.mark.parametrize("spec,L", CASES)
def test_graphs_equal_eager(spec, L, monkeypatch):
    layer = _layer(spec)
    x = torch.randn(4, L, 64, device="cuda")
    monkeypatch.setenv("LRNNX_PARAM_GRAPHS", "0")
    y0, g0 = _grads(layer, x)
    assert not layer._param_graphs.entries
    monkeypatch.setenv("LRNNX_PARAM_GRAPHS", "1")
    for _ in range(3):  # capture, then replays
        y1, g1 = _grads(layer, x)
        _assert_used(layer)
        torch.testing.assert_close(y1, y0, rtol=0, atol=0)
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("spec,L", [CASES[0], CASES[4]])
def test_training_trajectory_equals_eager(spec, L, monkeypatch):
    """Adam steps change the parameters in place; the replays read the new values."""
    x = torch.randn(4, L, 64, device="cuda")
    params = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("LRNNX_PARAM_GRAPHS", flag)
        layer = _layer(spec)
        opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
        for _ in range(4):
            opt.zero_grad()
            _loss(layer, x)[0].backward()
            opt.step()
        params[flag] = [p.detach().clone() for p in layer.parameters()]
    _assert_used(layer)
    for a, b in zip(params["1"], params["0"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("spec,L", [CASES[0], CASES[4]])
def test_two_forwards_one_backward(spec, L, monkeypatch):
    """Gradient accumulation through two forwards before one backward: the second replay must
    not corrupt the first forward's outputs or its backward."""
    x1 = torch.randn(2, L, 64, device="cuda")
    x2 = torch.randn(2, L, 64, device="cuda")
    res = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("LRNNX_PARAM_GRAPHS", flag)
        layer = _layer(spec)
        _loss(layer, x1)[0].backward()  # the capture happens here for flag 1
        layer.zero_grad()
        l1, y1 = _loss(layer, x1)
        l2, _ = _loss(layer, x2)
        (l1 + 2 * l2).backward()
        res[flag] = [y1.detach()] + [p.grad.clone() for p in layer.parameters()]
    _assert_used(layer)
    for a, b in zip(res["1"], res["0"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_inplace_change_before_backward_raises():
    layer = _layer("s4d")
    x = torch.randn(2, 256, 64, device="cuda")
    _loss(layer, x)[0].backward()
    loss, _ = _loss(layer, x)
    _assert_used(layer)
    with torch.no_grad():
        next(layer.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("spec,L", [CASES[0], CASES[3]])
def test_double_backward_equals_eager(spec, L, monkeypatch):
    x = torch.randn(2, L, 64, device="cuda")
    res = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("LRNNX_PARAM_GRAPHS", flag)
        layer = _layer(spec)
        _loss(layer, x)[0].backward()
        ps = list(layer.parameters())
        g = torch.autograd.grad(_loss(layer, x)[0], ps, create_graph=True)
        penalty = sum(t.square().sum() for t in g)
        res[flag] = torch.autograd.grad(penalty, ps, allow_unused=True)
    _assert_used(layer)
    for a, b in zip(res["1"], res["0"]):
        if b is None:
            assert a is None
        else:
            # not bit for bit: the graphed step's first backward differentiates a recomputed
            # eager graph in a nested autograd call (H200: rel. 3e-5 on entries of absolute
            # size 1e-12, from cancellation); relative to the gradient's scale it is < 1e-9
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7 * b.abs().max().item())


def test_new_shapes_and_parameters_recapture_then_stop(monkeypatch):
    layer = _layer("s4d")
    for L in (64, 128, 64):
        _grads(layer, torch.randn(2, L, 64, device="cuda"))
    assert layer._param_graphs.captures == 2 and len(layer._param_graphs.entries) == 2
    # parameters replaced (not updated in place): a new capture with the new values
    other = _layer("s4d", seed=1)
    layer.load_state_dict(other.state_dict(), assign=True)
    x = torch.randn(2, 64, 64, device="cuda")
    y, _ = _grads(layer, x)
    assert layer._param_graphs.captures == 3
    torch.testing.assert_close(y, other(x).detach(), rtol=0, atol=0)
    monkeypatch.setattr(param_graphs, "MAX_CAPTURES", 3)
    _grads(layer, torch.randn(2, 96, 64, device="cuda"))  # a 4th capture is refused
    assert layer._param_graphs.disabled and not layer._param_graphs.entries
    _grads(layer, x)  # eager from now on, still correct
    assert layer._param_graphs.captures == 3


def test_not_used_without_grad_or_under_compile_or_capture():
    layer = _layer("s4d")
    x = torch.randn(2, 128, 64, device="cuda")
    with torch.no_grad():
        layer(x)
    with torch.inference_mode():
        layer(x)
    assert not layer._param_graphs.entries
    # inside a caller's CUDA graph capture the layer runs its eager ops (captured into the
    # caller's graph), never a replay of its own
    c = copy.deepcopy(layer)
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            c(static_x)
    torch.cuda.current_stream().wait_stream(s)
    n = c._param_graphs.captures
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = c(static_x)
    assert c._param_graphs.captures == n
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.detach(), layer(x).detach(), rtol=0, atol=0)


def test_save_on_cpu_equals_eager(monkeypatch):
    """Activations offloaded to host memory (torch.autograd.graph.save_on_cpu, a saved-tensor
    hook) around a graphed layer: same results as eager, and the hook never runs inside the
    capture (a copy to pinned host memory there would invalidate it)."""
    x = torch.randn(2, 512, 64, device="cuda")
    res = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("LRNNX_PARAM_GRAPHS", flag)
        layer = _layer("s5")
        for _ in range(2):
            layer.zero_grad()
            xi = x.clone().requires_grad_()
            with torch.autograd.graph.save_on_cpu(pin_memory=True):
                y = layer(xi)
            (y * torch.linspace(-1, 1, 64, device="cuda")).square().mean().backward()
        res[flag] = [xi.grad] + [p.grad.clone() for p in layer.parameters()]
    assert layer._param_graphs.disabled is None and layer._param_graphs.entries
    for a, b in zip(res["1"], res["0"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_equals_eager(reentrant, monkeypatch):
    """torch.utils.checkpoint around a graphed layer: the recomputation inside the backward
    replays the existing graphs (non-reentrant: same saved tensors as the forward) or runs
    eagerly (reentrant: the forward ran without grad, nothing was captured); no capture happens
    inside the backward."""
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(2, 512, 64, device="cuda")
    res = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("LRNNX_PARAM_GRAPHS", flag)
        layer = _layer("s4d")
        for _ in range(2):
            layer.zero_grad()
            xi = x.clone().requires_grad_()
            y = checkpoint(layer, xi, use_reentrant=reentrant)
            (y * torch.linspace(-1, 1, 64, device="cuda")).square().mean().backward()
        res[flag] = [xi.grad] + [p.grad.clone() for p in layer.parameters()]
    assert layer._param_graphs.disabled is None
    assert bool(layer._param_graphs.entries) == (not reentrant)
    for a, b in zip(res["1"], res["0"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
