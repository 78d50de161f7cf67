"""Tests of the ``s7`` layer (lrnnx_plugins.recurrent.s7).

The reference is a float64 sequential loop of the S7 recurrence written from its formulas
(softplus step, StableSSM Lambda, zero-order hold, asynchronous timesteps, gated readout).
Accuracy target: fp32 layer vs float64 reference, rel. error <= 1e-5.  Memory: no tensor of
B * L * d_state * d_model elements may exist in forward or backward.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lrnnx.errors import ConfigError, InputError
from lrnnx.registry.core import REGISTRY
from lrnnx.testing import check_layer
from lrnnx_plugins.recurrent.s7 import S7, stable_lambda

TOL32 = 1e-5


def _ensure_registered():
    # until "lrnnx_recurrent" is a built-in plugin (BUILTIN_PLUGINS / pyproject), register the
    # layers at run time so the conformance suite can build them by name
    if "s7" not in REGISTRY.names("layer"):
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


def make(d_model=12, seed=0, dtype=torch.float32, **kw):
    kw.setdefault("d_state", 8)
    torch.manual_seed(seed)
    layer = S7(d_model, **kw).to(dtype).eval()
    with torch.no_grad():  # spread w so the states decay at different rates
        layer.w.copy_(torch.linspace(0.2, 2.0, layer.d_state, dtype=dtype))
    return layer


def ref_s7(layer, x, h0=None, timesteps=None):
    """float64 loop of the S7 recurrence (see the module docstring of s7.py)."""
    x = x.double()
    dt = F.softplus(x @ layer.dt_proj.weight.double().T + layer.dt_proj.bias.double())
    w = layer.w.double()
    lam = -1.0 / (w * w + 0.5)
    bx = x @ layer.B.weight.double().T
    h = torch.zeros(x.shape[0], layer.d_state, dtype=torch.float64) if h0 is None else h0.double()
    hs = []
    for t in range(x.shape[1]):
        tau = 1.0 if timesteps is None else timesteps[:, t:t + 1].double()
        a = torch.exp(lam * dt[:, t] * tau)
        gain = (torch.exp(lam * dt[:, t]) - 1.0) / lam
        h = a * h + gain * bx[:, t]
        hs.append(h)
    hs = torch.stack(hs, 1)
    s = hs @ layer.C.weight.double().T + layer.D.double() * x
    if layer.gate_proj is not None:
        gel = 0.5 * s * (1 + torch.tanh(math.sqrt(2 / math.pi) * (s + 0.044715 * s ** 3)))
        s = s * torch.sigmoid(gel @ layer.gate_proj.weight.double().T
                              + layer.gate_proj.bias.double())
    return s, h


# ------------------------------------------------------------------------------ correctness

@pytest.mark.parametrize("gate", [True, False])
def test_forward_matches_reference(gate):
    for dtype, tol in ((torch.float32, TOL32), (torch.float64, 1e-12)):
        layer = make(gate=gate, dtype=dtype)
        x, h0 = rand(3, 60, 12, seed=2), rand(3, 8, seed=3)
        y, st = layer(x.to(dtype), state={"h": h0.to(dtype)}, return_state=True)
        y_ref, h_ref = ref_s7(layer, x, h0)
        assert rel_err(y, y_ref) <= tol
        assert rel_err(st["h"], h_ref) <= tol


def test_timesteps_follow_async_discretization():
    layer = make()
    x = rand(2, 40, 12, seed=4)
    ts = torch.rand(2, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    ts[:, 7] = 0.0                       # simultaneous events: no decay, input still added
    y, st = layer(x.float(), timesteps=ts.float(), return_state=True)
    y_ref, h_ref = ref_s7(layer, x, timesteps=ts)
    assert rel_err(y, y_ref) <= TOL32 and rel_err(st["h"], h_ref) <= TOL32
    with torch.no_grad():
        st2 = layer.init_state(2)
        ys = []
        for t in range(40):
            y_t, st2 = layer.step(x[:, t].float(), st2, timesteps=ts[:, t].float())
            ys.append(y_t[:, None])
    assert rel_err(torch.cat(ys, 1), y) <= TOL32


def test_transition_is_strictly_stable_for_any_input():
    layer = make(dtype=torch.float64)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([0.0, 1e-3, 0.5, 1.0, 10.0, -3.0, 100.0, -1e-3]))
    a, _ = layer._coefficients(rand(4, 30, 12, seed=6), None)
    assert bool((a > 0).all()) and bool((a < 1).all())
    # huge inputs: the step underflows/overflows and a_t rounds to 1 or 0, never beyond
    a, b = layer._coefficients(1e3 * rand(4, 30, 12, seed=6), None)
    assert bool((a >= 0).all()) and bool((a <= 1).all()) and bool(torch.isfinite(b).all())
    lam = stable_lambda(layer.w)
    assert bool((lam >= -2).all()) and bool((lam < 0).all())


@pytest.mark.parametrize("prefill", [1, 63, 64, 65])
def test_prefill_then_decode_equals_full_forward(prefill):
    layer = make()
    n_dec = 16
    x = rand(2, prefill + n_dec, 12, seed=7).float()
    with torch.no_grad():
        y_full, st_full = layer(x, return_state=True)
        y_pre, st = layer(x[:, :prefill], return_state=True)
        ys = [y_pre]
        for t in range(prefill, prefill + n_dec):
            y_t, st = layer.step(x[:, t], st)
            ys.append(y_t[:, None])
    assert rel_err(torch.cat(ys, 1), y_full) <= TOL32
    assert rel_err(st["h"], st_full["h"]) <= TOL32


def test_state_passing_across_chunks_matches_reference():
    layer = make()
    x = rand(2, 50, 12, seed=8)
    st = None
    ys = []
    for a, b in ((0, 17), (17, 18), (18, 50)):
        y, st = layer(x[:, a:b].float(), state=st, return_state=True)
        ys.append(y)
    y_ref, h_ref = ref_s7(layer, x)
    assert rel_err(torch.cat(ys, 1), y_ref) <= TOL32 and rel_err(st["h"], h_ref) <= TOL32


def test_varlen_with_states_and_timesteps_equals_per_sequence_loop():
    layer = make(dtype=torch.float64)
    lengths = [4, 0, 19, 1, 9]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = rand(1, sum(lengths), 12, seed=9)
    ts = torch.rand(1, sum(lengths), dtype=torch.float64) + 0.5
    h0 = rand(len(lengths), 8, seed=10)
    y, st = layer(x, state={"h": h0}, timesteps=ts, return_state=True, cu_seqlens=cu)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_i, st_i = layer(x[:, a:b], state={"h": h0[i:i + 1]}, timesteps=ts[:, a:b],
                          return_state=True)
        assert torch.allclose(y[:, a:b], y_i, rtol=0, atol=1e-12)
        assert torch.allclose(st["h"][i:i + 1], st_i["h"], rtol=0, atol=1e-12)


def test_gradcheck_float64():
    layer = make(d_model=4, d_state=3, dtype=torch.float64)
    names, params = zip(*layer.named_parameters())
    x = rand(2, 5, 4, seed=11).requires_grad_(True)
    ts = (torch.rand(2, 5, dtype=torch.float64) + 0.5).requires_grad_(True)
    h0 = rand(2, 3, seed=12).requires_grad_(True)

    def fn(x, ts, h0, *ps):
        y, st = torch.func.functional_call(
            layer, dict(zip(names, ps)), (x,),
            {"timesteps": ts, "state": {"h": h0}, "return_state": True})
        return y, st["h"]

    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    # full Jacobian wrt every input: x, the timesteps, the initial state and all parameters
    assert torch.autograd.gradcheck(fn, (x, ts, h0, *leaves))


# ------------------------------------------------------------------------------ memory

class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor produced by any aten op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel, self.where = 0, ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.where = t.numel(), f"{func} -> {tuple(t.shape)}"
        return out


@pytest.mark.parametrize("scan", ["auto", "torch"])
def test_no_tensor_of_size_B_L_N_dmodel_in_forward_or_backward(scan):
    B, L, H, N = 2, 96, 32, 16
    layer = make(d_model=H, d_state=N, scan=scan)
    x = rand(B, L, H, seed=12).float().requires_grad_(True)
    with _LargestTensor() as probe:
        y = layer(x)
        (y * y).sum().backward()
    # the largest legitimate intermediates are (B, L, max(N, d_model)) activations
    assert probe.numel <= B * L * max(N, H), probe.where
    assert probe.numel < B * L * N * H // 8


def test_peak_memory_of_forward_backward_is_far_below_a_B_L_N_dmodel_buffer():
    # measured in a fresh process: increase of the peak resident set size (ru_maxrss) over
    # forward + backward, after a warm-up call (allocator pools, kernel build excluded)
    B, L, H, N = 2, 2048, 256, 256
    code = (
        "import resource, torch\n"
        "torch.set_num_threads(1)\n"
        "from lrnnx_plugins.recurrent.s7 import S7\n"
        f"layer = S7({H}, d_state={N})\n"
        f"x = torch.randn({B}, {L}, {H}, requires_grad=True)\n"
        f"layer(torch.randn(1, 8, {H})).sum().backward()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "y = layer(x)\n"
        "(y * y).sum().backward()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_bytes = int(out.stdout.strip().splitlines()[-1]) * 1024      # ru_maxrss is in KiB
    one_buffer = B * L * N * H * 4                                     # 1 GiB here
    # measured ~100 MiB (about 25 activations of B * L * 256 floats); a layer that formed
    # B_t x_t from a per-token (N, d_model) matrix would need at least the whole buffer
    assert peak_bytes < one_buffer / 4, (peak_bytes, one_buffer)


# ------------------------------------------------------------------------------ options, errors

def test_init_and_options():
    layer = S7(16)
    assert layer.d_state == 64
    assert torch.allclose(stable_lambda(layer.w), torch.full((64,), -0.5))
    dt = F.softplus(layer.dt_proj.bias.detach().double())
    assert float(dt.min()) >= 1e-3 - 1e-9 and float(dt.max()) <= 1e-1 + 1e-9
    assert S7(16, gate=False).gate_proj is None
    with pytest.raises(ConfigError, match="d_state"):
        S7(16, d_state=0)
    with pytest.raises(ConfigError, match="dt_min"):
        S7(16, dt_min=0.5, dt_max=0.1)
    with pytest.raises(InputError, match=r"'s7'.*state\['h'\]"):
        S7(16, d_state=4)(torch.randn(2, 3, 16), state={"h": torch.zeros(2, 5)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conformance_suite(dtype):
    report = check_layer("s7", dtype=dtype)
    assert report.ok, str(report)
