r"""RG-LRU (``rglru``) and the Hawk/Griffin recurrent block (``hawk``).

De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient
Language Models", https://arxiv.org/abs/2402.19427 (Section 2.4).

Real-Gated Linear Recurrent Unit, per channel, with :math:`c = 8`:

.. math::

    r_t = \sigma(W_a x_t + b_a), \quad i_t = \sigma(W_x x_t + b_x), \quad
    \log a_t = -c\,\operatorname{softplus}(-\Lambda)\, r_t \;(= c\, r_t \log\sigma(\Lambda)),

    h_t = a_t \odot h_{t-1} + \sqrt{1 - a_t^2} \odot (i_t \odot x_t).

Fast path: on CUDA tensors (fp16 / bf16 / fp32, eager) the gate math above runs as one fused
Triton kernel forward and one backward (``lrnnx_kernels.triton.rglru_gate``); the PyTorch code
here is its slow twin (CPU, fp64, torch.compile, where inductor fuses it).  ``TRITON_MODE``
(initial value from ``LRNNX_RGLRU_TRITON``): ``"auto"``, ``"off"`` (always PyTorch) or
``"force"`` (also CPU tensors under ``TRITON_INTERPRET=1``: the interpreter tests).

``a_t`` is formed in log space and :math:`\sqrt{1-a_t^2} = \sqrt{-\operatorname{expm1}(2\log
a_t)}`, so the normalizer keeps its precision when :math:`a_t \to 1` (in float32
:math:`\sigma(\Lambda)` itself would round to 1 there).  Its derivative :math:`-a^2/\sqrt{1-a^2}`
diverges at :math:`a = 1`; as in the Griffin reference code (``SqrtBoundDerivative``) the
derivative of the square root is bounded by 1000 (:data:`MAX_SQRT_GRADIENT`), so gradients stay
finite for every gate value.  The scan runs through :func:`lrnnx.ops.diag_scan`.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

import lrnnx
import lrnnx.ops as ops
from lrnnx.errors import ConfigError
from lrnnx_plugins.common.causal_conv import CausalConv1d
from lrnnx_plugins.mlp import hidden_size

from ._common import batch_rows, check_scan, param_dtype_device, state_tensor

#: the constant c of the recurrence gate (``a_t = sigmoid(Lambda) ** (c * r_t)``), paper value 8
C_GATE = 8.0
#: bound on d sqrt(x)/dx in the backward of sqrt(1 - a^2) (Griffin's ``_MAX_SQRT_GRADIENT``)
MAX_SQRT_GRADIENT = 1000.0
#: range of a**c at initialization (paper: "a^c uniformly distributed between 0.9 and 0.999")
A_C_INIT = (0.9, 0.999)


#: "auto" | "off" | "force": when ``RGLRUCore.coefficients`` takes the fused Triton kernels.
TRITON_MODE = os.environ.get("LRNNX_RGLRU_TRITON", "auto")
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HAS_TRITON: bool | None = None


def _use_triton(x: torch.Tensor) -> bool:
    """Cheap (no triton import): may the fused gate kernels run ``x``?"""
    global _HAS_TRITON
    if TRITON_MODE == "off" or x.dtype not in _TRITON_DTYPES or torch.compiler.is_compiling():
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # the interpreter runs CPU tensors only
        ok = TRITON_MODE == "force" and x.device.type == "cpu"
    else:
        ok = x.is_cuda
    if ok and _HAS_TRITON is None:
        _HAS_TRITON = importlib.util.find_spec("triton") is not None
    return ok and bool(_HAS_TRITON)


class _SqrtOneMinusA2(torch.autograd.Function):
    """``sqrt(1 - exp(2 log_a))`` from ``log_a <= 0``, with a bounded derivative near a = 1."""

    @staticmethod
    def forward(ctx, log_a):
        out = torch.sqrt(-torch.expm1(2.0 * log_a))
        ctx.save_for_backward(log_a, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        log_a, out = ctx.saved_tensors
        # d/dlog_a sqrt(x) with x = 1 - a^2: (dx/dlog_a = -2 a^2) * 1/(2 sqrt(x)); Griffin clips
        # 1/(2 sqrt(x)) at MAX_SQRT_GRADIENT, i.e. sqrt(x) at 1/(2 MAX) from below.
        denom = out.clamp(min=0.5 / MAX_SQRT_GRADIENT)
        return grad * (-torch.exp(2.0 * log_a)) / denom


def sqrt_one_minus_a2(log_a: torch.Tensor) -> torch.Tensor:
    r""":math:`\sqrt{1 - a^2}` from :math:`\log a` (see the module docstring for the gradient)."""
    return _SqrtOneMinusA2.apply(log_a)


def init_lambda(width: int, c: float = C_GATE, a_c_range=A_C_INIT) -> torch.Tensor:
    """Lambda with ``sigmoid(Lambda) ** c`` uniform in ``a_c_range``: ``logit(u ** (1/c))``.

    Computed in float64: for u near 0.999, ``u ** (1/8)`` is 1 - 1.25e-4.
    """
    u = torch.empty(width, dtype=torch.float64).uniform_(*a_c_range)
    a = u ** (1.0 / c)
    return (torch.log(a) - torch.log1p(-a)).to(torch.get_default_dtype())


class BlockDiagonalLinear(nn.Module):
    """``y[..., h, :] = x[..., h, :] @ W[h] + b[h]`` over ``n_heads`` blocks of the last dim.

    Griffin's gate weights (block-diagonal per head); ``n_heads = 1`` is a dense Linear.
    Init as in the reference code: ``W ~ N(0, 1/block_width)``, ``b = 0``.
    """

    def __init__(self, width: int, n_heads: int):
        super().__init__()
        self.n_heads, self.block = n_heads, width // n_heads
        self.weight = nn.Parameter(torch.randn(n_heads, self.block, self.block)
                                   / math.sqrt(self.block))
        self.bias = nn.Parameter(torch.zeros(n_heads, self.block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.unflatten(-1, (self.n_heads, self.block))
        y = torch.einsum("...hi,hij->...hj", xs, self.weight) + self.bias
        return y.flatten(-2)


class RGLRUCore(nn.Module):
    """Parameters and math of one RG-LRU of width ``width`` (shared by ``rglru`` and ``hawk``)."""

    def __init__(self, width: int, n_heads: int, c: float):
        super().__init__()
        self.width, self.c = width, c
        self.gate_a = BlockDiagonalLinear(width, n_heads)
        self.gate_x = BlockDiagonalLinear(width, n_heads)
        self.a_param = nn.Parameter(init_lambda(width, c))  # Lambda of the paper

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, sqrt(1 - a_t^2) * i_t * x_t)`` for x (..., width)."""
        coef = -self.c * F.softplus(-self.a_param)  # log sigmoid(L) = -softplus(-L)
        if _use_triton(x) and self.gate_a.n_heads == 1:
            g2 = self._gates_fused(x)
            if g2.dtype in _TRITON_DTYPES:
                from lrnnx_kernels.triton.rglru_gate import rglru_gate_fused

                return rglru_gate_fused(g2, x, coef, MAX_SQRT_GRADIENT)
        ga, gx = self.gate_a(x), self.gate_x(x)
        if _use_triton(x) and ga.dtype in _TRITON_DTYPES and gx.dtype in _TRITON_DTYPES:
            from lrnnx_kernels.triton.rglru_gate import rglru_gate

            return rglru_gate(ga, gx, x, coef, MAX_SQRT_GRADIENT)
        r = torch.sigmoid(ga)
        i = torch.sigmoid(gx)
        log_a = coef * r
        return torch.exp(log_a), sqrt_one_minus_a2(log_a) * (i * x)

    def _gates_fused(self, x: torch.Tensor) -> torch.Tensor:
        """``[ga | gx]`` (..., 2 width) from one matmul (dense gates, ``n_heads == 1``): the
        fused Triton gate reads both halves and returns one gradient, so the backward is one
        matmul pair instead of two einsums and a sum of their input gradients."""
        w = self.width
        weight = torch.cat([self.gate_a.weight.view(w, w), self.gate_x.weight.view(w, w)], 1)
        bias = torch.cat([self.gate_a.bias.view(w), self.gate_x.bias.view(w)])
        return F.linear(x, weight.t(), bias)

    def scan(self, x, h0, cu_seqlens, backend):
        a, b = self.coefficients(x)
        return ops.diag_scan(a, b, h0, cu_seqlens=cu_seqlens, backend=backend)

    def step(self, x_t, h, backend):
        a, b = self.coefficients(x_t)
        return ops.diag_step(a, b, h, backend=backend)


def _check_heads(name: str, width: int, n_heads: int, what: str) -> None:
    if n_heads <= 0:
        raise ConfigError(f"layer {name!r}: option 'n_heads' must be >= 1, got {n_heads}.")
    if width % n_heads:
        raise ConfigError(f"layer {name!r}: {what}={width} is not divisible by n_heads="
                          f"{n_heads} (the gates are block-diagonal with n_heads blocks); choose "
                          f"n_heads dividing {width}.")


class RGLRU(lrnnx.Layer):
    r"""The bare Real-Gated Linear Recurrent Unit of Griffin, width = d_model.

    Recurrence (module docstring): :math:`h_t = a_t \odot h_{t-1} + \sqrt{1-a_t^2} \odot (i_t
    \odot x_t)`, :math:`a_t = \sigma(\Lambda)^{c\, r_t}`; the output is :math:`y_t = h_t`.

    Options: ``n_heads`` (default 1): the gate weights :math:`W_a, W_x` are block-diagonal with
    ``n_heads`` blocks of width ``d_model / n_heads`` as in the paper (Griffin uses blocks of
    width 256, e.g. 10 heads at width 2560); 1 means dense gates, which works for every width.
    ``c`` (default 8). ``scan``: scan backend of :func:`lrnnx.ops.diag_scan` ("auto" or a
    registered name).  Init: :math:`\sigma(\Lambda)^c \sim U[0.9, 0.999]` (the paper's text; the
    reference code instead draws :math:`\sigma(\Lambda)^2 \sim U[0.81, 0.998]`, i.e. a much
    shorter memory :math:`\sigma(\Lambda)^c \in [0.43, 0.99]`).  The sequence-start special case
    of the reference code (no :math:`\sqrt{1-a^2}` scaling at a document's first token) is not
    applied: every token follows the recurrence above, so a state can be carried across calls.

    State: ``{"h": (B, d_model)}`` (``(N_seq, d_model)`` with ``cu_seqlens``).
    Shapes: x (B, L, d_model) -> y (B, L, d_model); step: x_t (B, d_model) -> y_t (B, d_model).

    Example::

        lru = lrnnx.build_layer("rglru(n_heads=2)", d_model=64)
        y, st = lru(torch.randn(2, 10, 64), return_state=True)
        y_t, st = lru.step(torch.randn(2, 64), st)
    """

    name = "rglru"
    capabilities = frozenset({"step", "varlen"})
    test_kwargs = {"n_heads": 2}

    def __init__(self, d_model: int, n_heads: int = 1, c: float = C_GATE, scan: str = "auto"):
        super().__init__()
        if d_model <= 0:
            raise ConfigError(f"layer 'rglru': d_model must be a positive int, got {d_model}.")
        _check_heads("rglru", d_model, n_heads, "d_model")
        if not (c > 0 and math.isfinite(c)):
            raise ConfigError(f"layer 'rglru': option 'c' must be a finite number > 0, got {c}.")
        self.d_model, self.n_heads, self.c = d_model, n_heads, c
        self.scan = check_scan("rglru", scan)
        self.core = RGLRUCore(d_model, n_heads, c)

    def init_state(self, batch_size: int, device=None, dtype=None):
        device, dtype = param_dtype_device(self, device, dtype)
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)}

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        rows = batch_rows(x, cu_seqlens)
        h0 = state_tensor(self, state, "h", (rows, self.d_model), x, cu_seqlens is not None)
        h, h_last = self.core.scan(x, h0, cu_seqlens, self.scan)
        return (h, {"h": h_last}) if return_state else h

    def step(self, x_t, state):
        h = state_tensor(self, state, "h", (x_t.shape[0], self.d_model), x_t)
        h = self.core.step(x_t, h, self.scan)
        return h, {"h": h}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, c={self.c}"


class Hawk(lrnnx.Layer):
    r"""The Griffin/Hawk recurrent (temporal-mixing) block.

    Two branches of width ``d_rnn``:

    .. math::

        g_t = \operatorname{GeLU}(W_g x_t), \qquad
        u = \operatorname{RG\text{-}LRU}(\operatorname{Conv1D}_4(W_u x)), \qquad
        y_t = W_o (u_t \odot g_t).

    (GeLU in its tanh approximation, as the reference code; the conv is causal and depthwise
    with temporal width ``conv_width`` = 4 and a bias, :class:`CausalConv1d`.)  Hawk is a stack of
    these blocks with MLPs; Griffin mixes them with local attention, e.g.
    ``lrnnx.build_model("hawk*2 + attn(window=1024)", d_model=...)``.

    Options: ``expand`` (default 4/3: the paper's :math:`D_{RNN} = 4D/3`, which gives the block
    the parameter count of multi-head attention) -> ``d_rnn = ceil(expand * d_model)`` rounded
    up to a multiple of 8 (aligned matmuls; d_model=768 -> 1024 exactly); ``d_rnn`` sets the
    width explicitly instead; ``n_heads`` (block-diagonal RG-LRU gates, must divide d_rnn);
    ``conv_width`` (4); ``c`` (8); ``scan`` (scan backend).  Linear layers use PyTorch's default
    init and have biases, as the reference code.

    State: ``{"conv": (B, d_rnn, conv_width - 1), "h": (B, d_rnn)}`` (first dim N_seq with
    ``cu_seqlens``).  Shapes: x (B, L, d_model) -> y (B, L, d_model); step: (B, d_model).

    Example::

        griffin = lrnnx.build_model("hawk*2 + attn(window=128)", d_model=64)
        hawk = lrnnx.build_layer("hawk", d_model=64)        # d_rnn = 88
        y, st = hawk(torch.randn(2, 10, 64), return_state=True)
    """

    name = "hawk"
    capabilities = frozenset({"step", "varlen"})
    test_kwargs = {"n_heads": 2}

    def __init__(self, d_model: int, expand: float = 4 / 3, d_rnn: int | None = None,
                 n_heads: int = 1, conv_width: int = 4, c: float = C_GATE, scan: str = "auto"):
        super().__init__()
        if d_model <= 0:
            raise ConfigError(f"layer 'hawk': d_model must be a positive int, got {d_model}.")
        if d_rnn is None:
            if not (expand > 0 and math.isfinite(expand)):
                raise ConfigError(f"layer 'hawk': option 'expand' must be a finite number > 0, "
                                  f"got {expand!r}; d_rnn = expand * d_model.")
            d_rnn = hidden_size(d_model, expand)
        elif d_rnn <= 0:
            raise ConfigError(f"layer 'hawk': option 'd_rnn' must be >= 1, got {d_rnn}.")
        _check_heads("hawk", d_rnn, n_heads, "d_rnn")
        if conv_width < 1:
            raise ConfigError(f"layer 'hawk': option 'conv_width' must be >= 1, got "
                              f"{conv_width}.")
        if not (c > 0 and math.isfinite(c)):
            raise ConfigError(f"layer 'hawk': option 'c' must be a finite number > 0, got {c}.")
        self.d_model, self.d_rnn, self.n_heads = d_model, d_rnn, n_heads
        self.conv_width, self.c = conv_width, c
        self.scan = check_scan("hawk", scan)
        self.linear_gate = nn.Linear(d_model, d_rnn)
        self.linear_x = nn.Linear(d_model, d_rnn)
        self.conv = CausalConv1d(d_rnn, conv_width)
        self.rglru = RGLRUCore(d_rnn, n_heads, c)
        self.linear_out = nn.Linear(d_rnn, d_model)

    def init_state(self, batch_size: int, device=None, dtype=None):
        device, dtype = param_dtype_device(self, device, dtype)
        return {"conv": torch.zeros(batch_size, self.d_rnn, self.conv_width - 1, device=device,
                                    dtype=dtype),
                "h": torch.zeros(batch_size, self.d_rnn, device=device, dtype=dtype)}

    def _states(self, state, rows, like, varlen):
        conv = state_tensor(self, state, "conv", (rows, self.d_rnn, self.conv_width - 1), like,
                            varlen)
        h = state_tensor(self, state, "h", (rows, self.d_rnn), like, varlen)
        return conv, h

    def forward(self, x, state=None, return_state=False, timesteps=None, cu_seqlens=None):
        conv0, h0 = self._states(state, batch_rows(x, cu_seqlens), x, cu_seqlens is not None)
        gate = F.gelu(self.linear_gate(x), approximate="tanh")
        u, conv_state = self.conv(self.linear_x(x), conv0, cu_seqlens=cu_seqlens)
        u, h_last = self.rglru.scan(u, h0, cu_seqlens, self.scan)
        y = self.linear_out(u * gate)
        return (y, {"conv": conv_state, "h": h_last}) if return_state else y

    def step(self, x_t, state):
        conv, h = self._states(state, x_t.shape[0], x_t, False)
        gate = F.gelu(self.linear_gate(x_t), approximate="tanh")
        u, conv = self.conv.step(self.linear_x(x_t), conv)
        h = self.rglru.step(u, h, self.scan)
        return self.linear_out(h * gate), {"conv": conv, "h": h}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_rnn={self.d_rnn}, n_heads={self.n_heads}, "
                f"conv_width={self.conv_width}")
