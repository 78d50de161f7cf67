"""CausalConv1d: prefill + step == forward, carried state, varlen == per-sequence loop."""

import pytest
import torch

from lrnnx_plugins.common.causal_conv import CausalConv1d


def _ref(conv, x, state=None):
    """float64 loop over t of the definition."""
    B, L, D = x.shape
    K = conv.kernel_size
    hist = state.double() if state is not None else x.new_zeros(B, D, K - 1).double()
    seq = torch.cat([hist, x.double().transpose(1, 2)], 2)
    w = conv.weight.double()
    out = []
    for t in range(L):
        y = (seq[:, :, t:t + K] * w).sum(-1)
        if conv.bias is not None:
            y = y + conv.bias.double()
        out.append(y)
    return torch.stack(out, 1)


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 3, 9])
def test_forward_step_and_split(K, L):
    torch.manual_seed(0)
    conv = CausalConv1d(5, K)
    x = torch.randn(2, L, 5)
    y, st = conv(x)
    torch.testing.assert_close(y.double(), _ref(conv, x), rtol=1e-5, atol=1e-6)
    s = conv.init_state(2)
    ys = []
    for t in range(L):
        yt, s = conv.step(x[:, t], s)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, st)
    cut = L // 2
    y1, s1 = conv(x[:, :cut])
    y2, s2 = conv(x[:, cut:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2, st)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("K", [1, 3, 4])
def test_varlen_equals_loop(K, with_state):
    torch.manual_seed(1)
    conv = CausalConv1d(3, K)
    lens = [1, 2, 5, 0, 3]
    xs = [torch.randn(1, n, 3) for n in lens]
    states = torch.randn(len(lens), 3, K - 1) if with_state else None
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    y, st = conv(torch.cat(xs, 1), states, cu_seqlens=cu)
    for i, xi in enumerate(xs):
        s_i = states[i:i + 1] if with_state else None
        yi, sti = conv(xi, s_i)
        torch.testing.assert_close(y[:, cu[i]:cu[i + 1]], yi, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(st[i:i + 1], sti, rtol=1e-5, atol=1e-6)


def test_varlen_total_shorter_than_window():
    """A packed batch shorter than kernel_size - 1 in total (found by Hawk's tests)."""
    torch.manual_seed(2)
    conv = CausalConv1d(3, 4)
    x = torch.randn(1, 2, 3)
    cu = torch.tensor([0, 1, 2])
    state = torch.randn(2, 3, 3)
    y, st = conv(x, state, cu_seqlens=cu)
    for i in range(2):
        yi, sti = conv(x[:, i:i + 1], state[i:i + 1])
        torch.testing.assert_close(y[:, i:i + 1], yi)
        torch.testing.assert_close(st[i:i + 1], sti)
